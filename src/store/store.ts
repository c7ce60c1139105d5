/**
 * The storage interface ("physical" in Vault's words). Every implementation (SQLite embedded,
 * PostgreSQL for several nodes) passes the same contract suite (test/store/contract.ts).
 *
 * Nothing secret reaches a store in the clear: fields named `sealed*` hold barrier ciphertext
 * (src/server/barrier), and the store never sees the keys that open them.
 */
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

  /** Stores a new channel; false (and nothing stored) when its client key thumbprint was seen. */
  createChannel(channel: ChannelRecord): Promise<boolean>;
  getChannel(uri: string): Promise<ChannelRecord | undefined>;
  /** Deletes a channel and its replay records; false when it did not exist. */
  deleteChannel(uri: string): Promise<boolean>;
  /**
   * Atomically: refuses a requestId seen before on this channel, refuses a channel at its message
   * limit, otherwise records the requestId and counts the message.
   */
  recordChannelMessage(uri: string, requestId: string, messageLimit: number): Promise<RecordOutcome>;
  /** Removes channels that expired before `before` (with their replay records); returns how many. */
  purgeChannels(before: Date): Promise<number>;
}

export type RecordOutcome = "recorded" | "replay" | "exhausted" | "unknown";

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
