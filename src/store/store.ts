/**
 * The storage interface ("physical" in Vault's words). Every implementation (SQLite embedded,
 * PostgreSQL for several nodes) passes the same contract suite (test/store/contract.ts).
 *
 * Nothing secret reaches a store in the clear: fields named `sealed*` hold barrier ciphertext
 * (src/server/barrier), and the store never sees the keys that open them.
 */
import type { AuditEvent, AuditRecord } from "./audit.js";

export type { AuditEvent, AuditRecord } from "./audit.js";

/** What became of a key registration (see Store.registerEntityKey). */
export type RegisterKeyOutcome = "registered" | "duplicate" | "limit";

/**
 * The store cannot be reached or cannot write right now (connection refused, reset or timed out,
 * the server shutting down, a read-only or full disk, a lock held past its timeout): a condition
 * of the deployment, not of the request, that may pass. Each store classifies its driver's errors
 * into this one type; the core answers it with 503 "store unavailable" (PROTOCOL.md §3, `/readyz`).
 * `code` and `message` name the failure only (a driver code, a socket error): never request data.
 *
 * @example
 * try { await store.getChannel(uri); } catch (e) { if (e instanceof StoreUnavailableError) retryLater(e.code); }
 */
export class StoreUnavailableError extends Error {
  override readonly name = "StoreUnavailableError";
  constructor(
    /** Which store failed. */
    readonly store: "postgres" | "sqlite",
    /** The driver's code (`ECONNREFUSED`, `57P01`, `SQLITE_READONLY`, `QUERY_TIMEOUT`, ...). */
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** What to log: the store, the code and the driver's message (no statement, no values). */
  logFields(): { store: string; code: string; message: string } {
    return { store: this.store, code: this.code, message: this.message };
  }
}

export interface Store {
  /** Applies pending schema migrations; safe to call on every start and from several nodes. */
  migrate(): Promise<void>;
  /** Cheap round trip for /readyz. */
  ping(): Promise<void>;
  close(): Promise<void>;

  /** The barrier's data-encryption key, sealed under the master key (one row, created once). */
  getKeyring(): Promise<string | undefined>;
  /** Stores the sealed keyring unless one exists; returns the one that is stored (first writer wins). */
  initKeyring(sealed: string): Promise<string>;

  /**
   * Stores a new channel; false (and nothing stored) when its client key thumbprint was seen.
   *
   * Audit (§13), here and in every method that changes state: `audit`, when given, is appended to
   * the audit chain in the same transaction as the change, and only when the change happens
   * (nothing changed, as here when false is returned: no record). A record that cannot be written
   * fails the call and undoes the change.
   */
  createChannel(channel: ChannelRecord, audit?: AuditEvent): Promise<boolean>;
  getChannel(uri: string): Promise<ChannelRecord | undefined>;
  /** Deletes a channel and its replay records; false when it did not exist. */
  deleteChannel(uri: string, audit?: AuditEvent): Promise<boolean>;
  /**
   * Atomically: refuses a requestId seen before on this channel, refuses a channel at its message
   * limit, otherwise records the requestId and counts the message.
   */
  recordChannelMessage(uri: string, requestId: string, messageLimit: number): Promise<RecordOutcome>;
  /**
   * Counts a message without a replay record ("recorded" when counted): for a refusal the KMS
   * answers on the channel's key before the requestId is known or checked. Every encryption under
   * the key counts toward the limit, whoever caused it.
   */
  countChannelMessage(uri: string, messageLimit: number): Promise<CountOutcome>;
  /** Removes channels that expired before `before` (with their replay records); returns how many. */
  purgeChannels(before: Date): Promise<number>;

  // ── Entity key directory (§7) ──────────────────────────────────────────────────────────────
  /**
   * Registers a device key, atomically with its two checks (nothing stored unless "registered"):
   * "duplicate" when the entity already has a key with that kid (revoked ones included), "limit"
   * when it already has `maxActiveKeys` unrevoked keys (§10). Concurrent registrations of one
   * entity, on any node, never exceed the limit.
   */
  registerEntityKey(key: EntityKeyRecord, maxActiveKeys: number, audit?: AuditEvent): Promise<RegisterKeyOutcome>;
  /** An entity's keys, oldest first; revoked ones only when asked. */
  listEntityKeys(entity: string, opts?: { includeRevoked?: boolean }): Promise<EntityKeyRecord[]>;
  /** Marks a key revoked; false when the entity has no such active key. */
  revokeEntityKey(entity: string, kid: string, at: Date, audit?: AuditEvent): Promise<boolean>;

  // ── Group Membership Block Chains (§8) ─────────────────────────────────────────────────────
  /** Stores a new chain with its genesis block (position 0) and opens the genesis members' intervals. */
  createChain(chain: { uri: string; requester: string; created: Date }, genesis: NewBlock, members: readonly string[], audit?: AuditEvent): Promise<void>;
  /**
   * Appends blocks if, and only if, the chain's tail is still `expectedTail`: the tail check, the
   * inserts and the membership index update are one atomic step, so the chain never forks.
   * `changes` are the membership operations of the new blocks, in order, with their positions.
   */
  appendBlocks(chainUri: string, expectedTail: string, blocks: readonly NewBlock[], changes: readonly MembershipChange[], audit?: AuditEvent): Promise<"appended" | "conflict" | "unknown">;
  getChain(uri: string): Promise<ChainRecord | undefined>;
  /** Blocks of a chain in order, those after `afterPosition` (default: all). */
  getBlocks(chainUri: string, afterPosition?: number): Promise<BlockRecord[]>;
  /** Where a block (by hash) is, in any chain of this KMS. */
  findBlock(hash: string): Promise<{ chainUri: string; position: number } | undefined>;
  /** Membership index: was `entity` a member once the block at `position` was applied? */
  isMemberAt(chainUri: string, entity: string, position: number): Promise<boolean>;
  /** Membership index: was `entity` ever a member of the chain? */
  wasEverMember(chainUri: string, entity: string): Promise<boolean>;

  // ── Group Keys (§9) ─────────────────────────────────────────────────────────────────────────
  createGk(gk: GkRecord, audit?: AuditEvent): Promise<void>;
  getGk(uri: string): Promise<GkRecord | undefined>;
  /** Binds an unbound GK to a block; false (nothing changed) when it is already bound or unknown. */
  bindGk(uri: string, block: BlockRef, audit?: AuditEvent): Promise<boolean>;

  // ── Audit log (§13) ─────────────────────────────────────────────────────────────────────────
  /**
   * Appends a record that goes with no state change (a GK release on get, a 401/403 refusal);
   * resolves once it is committed, with the stored record.
   */
  appendAudit(event: AuditEvent): Promise<AuditRecord>;
  /** Records in sequence order, those after `after` (a seq; default: from the first), at most `limit`. */
  auditRecords(opts: { after?: number; limit: number }): Promise<AuditRecord[]>;
  /** The chain's head: the last record's seq and hash (0 and 64 zeros while empty). */
  auditHead(): Promise<{ seq: number; hash: string }>;
}

/** Where a block stands: its hash, its chain and its position there. */
export interface BlockRef {
  readonly hash: string;
  readonly chainUri: string;
  readonly position: number;
}

export interface GkRecord {
  readonly uri: string;
  /** The entity that asked for the GK (only it may bind it, only it may fetch it while unbound). */
  readonly requester: string;
  readonly created: Date;
  /** The 256-bit key, sealed by the barrier with AAD `gk:<uri>`: the store never sees it in the clear. */
  readonly sealedKey: string;
  readonly block?: BlockRef;
}

export interface EntityKeyRecord {
  /** `user@domain`, domain lower case. */
  readonly entity: string;
  readonly kid: string;
  /** The public JWK as registered (public members only). */
  readonly jwk: Readonly<Record<string, unknown>>;
  readonly created: Date;
  readonly revoked?: Date;
}

export interface NewBlock {
  readonly position: number;
  /** Lower-case hex SHA-256 of `jws`. */
  readonly hash: string;
  readonly jws: string;
  readonly creator: string;
  readonly created: Date;
}

export interface BlockRecord extends NewBlock {
  readonly chainUri: string;
}

export interface ChainRecord {
  readonly uri: string;
  /** Who asked the KMS to create the chain (audit; not in the block). */
  readonly requester: string;
  readonly created: Date;
  /** Number of blocks; the tail is at position length - 1. */
  readonly length: number;
  readonly tailHash: string;
}

export interface MembershipChange {
  readonly entity: string;
  readonly optype: "add" | "remove";
  /** Position of the block whose operation this is. */
  readonly position: number;
}

export type RecordOutcome = "recorded" | "replay" | "exhausted" | "unknown";
export type CountOutcome = Exclude<RecordOutcome, "replay">;

export interface ChannelRecord {
  /** kms://<authority>/ecdhe/<uuid> */
  readonly uri: string;
  /** The identity authenticated when the channel was created (§5: the channel is bound to it). */
  readonly entity: string;
  readonly clientId: string;
  readonly credentialKind: "bearer" | "certificate";
  /** RFC 7638 thumbprint of a certificate credential's JWK (§6), else undefined. */
  readonly credentialThumbprint?: string;
  /**
   * RFC 7638 thumbprint of the client's ECDHE public key. Unique: a client MUST use a fresh key
   * per ECDHE (draft §4.6.1), and refusing a reused one also refuses a replayed ECDHE request.
   */
  readonly clientKeyThumbprint: string;
  /** K_ephemeral sealed by the barrier, bound to `uri` as AAD. */
  readonly sealedKey: string;
  readonly createdAt: Date;
  readonly expiresAt: Date;
  readonly messageCount: number;
}
