import type { JWK } from "jose";
import {
  ChainVerificationError,
  Membership,
  applyOperations,
  buildAppendedPayload,
  membershipAt,
  parseBlock,
  signAppendedBlock,
  verifyChain,
  type GenesisPayload,
  type Operation,
  type ParsedBlock,
  type VerifiedChain,
  type VerifyChainOptions,
} from "../primitives/gmbc/index.js";
import { blockHash } from "../primitives/block-hash.js";
import { DEFAULT_LIMITS } from "../protocol/constants.js";
import { normalizeEntity } from "../protocol/entity.js";
import { KmsError } from "../protocol/errors.js";
import type { DeviceKey, KeyedJwk } from "./device-key.js";
import { KmsProtocolError, KmsRequestError } from "./errors.js";
import type { KmsClient } from "./kms-client.js";

/** Options of `Groups`. */
export interface GroupsOptions {
  /** The entity this client acts for, `user@domain` (the KmsClient's user). */
  readonly user: string;
  /** This device's entity key: signs the blocks this client appends. */
  readonly device: DeviceKey;
  /** How many times an append is retried after a 409 (another append landed first). Default 5. */
  readonly maxRetries?: number;
}

/** A group just created: its chain URI and its verified genesis block. */
export interface Group {
  readonly uri: string;
  readonly genesis: ParsedBlock;
}

/**
 * An entity's registered key as the KMS lists it (§7): a public JWK with its `kid`; with
 * `includeRevoked`, also when it was registered (`created`) and, if so, revoked (`revoked`).
 */
export type EntityKey = KeyedJwk & { created?: string; revoked?: string };

/** One block of a group's history, for a timeline. */
export interface HistoryEntry {
  /** Position in the chain (0: genesis). */
  readonly index: number;
  readonly hash: string;
  /** RFC 3339, as the block's creator wrote it. */
  readonly created: string;
  /** The KMS URI for the genesis block, else the member who signed the block. */
  readonly creator: string;
  readonly operations: readonly Operation[];
  readonly genesis: boolean;
}

/** What `registerDevice` found: the key is new, or the KMS already had exactly this key. */
export type DeviceRegistration = "registered" | "already-registered";

interface ChainState {
  readonly blocks: readonly ParsedBlock[];
  /** Membership as of the last block. */
  readonly members: Membership;
  readonly curator: string;
}

/**
 * Groups of entities kept as Group Membership Block Chains on the KMS (PROTOCOL.md §7, §8), for
 * one user on one device: register the device key, create groups, add and remove members
 * (blocks signed with the device key, retried on a stale tail), fetch chains incrementally,
 * verify them end to end, and read membership and history.
 *
 * Chains are cached per group. `fetch` only decodes and links what it receives (the KMS is
 * trusted to have checked signatures when it accepted the blocks); `verify` checks every
 * signature, link and operation from the genesis block, signed by the discovered KMS key. If the
 * KMS no longer knows the cached tail (404), the chain is fetched again from scratch; it must
 * still start with the same genesis block and contain every cached block as a prefix (else
 * ChainVerificationError ERR_CHAIN_ROLLBACK: a shorter or forked chain could hide a removal).
 *
 * @example
 * const kms = new KmsClient({ url, user: "alice@example.com", token, trustRoots: [caPem] });
 * const device = await DeviceKey.generate();
 * const groups = new Groups(kms, { user: "alice@example.com", device });
 * await groups.registerDevice();
 * const { uri } = await groups.create(["alice@example.com", "bob@example.com"]);
 * await groups.add(uri, ["carol@example.com"]);
 * const { members } = await groups.verify(uri);
 * members.members() // ["alice@example.com", "bob@example.com", "carol@example.com"]
 */
export class Groups {
  readonly user: string;
  readonly device: DeviceKey;
  readonly maxRetries: number;
  readonly #chains = new Map<string, ChainState>();
  readonly #locks = new Map<string, Promise<unknown>>();

  constructor(
    private readonly kms: KmsClient,
    opts: GroupsOptions,
  ) {
    const user = normalizeEntity(opts.user);
    if (user === undefined) throw new TypeError(`user '${opts.user}' is not an entity (user@domain)`);
    const maxRetries = opts.maxRetries ?? 5;
    if (!Number.isInteger(maxRetries) || maxRetries < 0) throw new TypeError("maxRetries must be a non-negative integer");
    this.user = user;
    this.device = opts.device;
    this.maxRetries = maxRetries;
  }

  /**
   * Registers this device's public key for the user (`create /entities/keys`). When the KMS
   * already has a key with this kid (409), the user's keys are listed: the same key means it is
   * already registered; a different key under this kid, or this key revoked, is an Error.
   *
   * @example
   * await groups.registerDevice(); // "registered" the first time, "already-registered" after
   */
  async registerDevice(): Promise<DeviceRegistration> {
    try {
      await this.kms.request("create", "/entities/keys", { jwk: { ...this.device.publicJwk } }, { expect: 201 });
      return "registered";
    } catch (e) {
      if (!(e instanceof KmsRequestError) || e.status !== 409) throw e;
    }
    const keys = await this.keysOf(this.user, { includeRevoked: true });
    const stored = keys.find((k) => k.kid === this.device.kid);
    if (!stored) throw new Error(`the KMS refused device key '${this.device.kid}' of ${this.user} as a duplicate but does not list it`);
    if (!samePublicKey(stored, this.device.publicJwk)) {
      throw new Error(`${this.user} already has a different key registered as '${this.device.kid}': give this device another kid`);
    }
    if (stored.revoked !== undefined) {
      throw new Error(`device key '${this.device.kid}' of ${this.user} was revoked at ${stored.revoked}: generate a new device key`);
    }
    return "already-registered";
  }

  /**
   * The registered keys of an entity (`retrieve /entities/<acct>/keys`). With `includeRevoked`
   * (a Keyward extension) revoked keys are listed too, with `created` and `revoked` dates.
   *
   * @example
   * const keys = await groups.keysOf("bob@example.com");
   * keys.map((k) => k.kid) // ["bob-phone"]
   */
  async keysOf(entity: string, opts: { includeRevoked?: boolean } = {}): Promise<EntityKey[]> {
    const e = entityOrThrow(entity);
    const reply = await this.kms.request("retrieve", `/entities/${encodeURIComponent(e)}/keys`, opts.includeRevoked ? { includeRevoked: true } : {}, { expect: 200 });
    const keys = reply.keys;
    if (!Array.isArray(keys) || !keys.every((k) => typeof k === "object" && k !== null && typeof (k as JWK).kid === "string")) {
      throw new KmsProtocolError("ERR_KEYS_REPLY", `the KMS listed no usable 'keys' for ${e}`);
    }
    return keys as EntityKey[];
  }

  /**
   * Revokes one of the user's device keys (`delete /entities/<acct>/keys/<kid>`), by default this
   * device's. The key then verifies no new block; blocks it signed before still verify (`verify`
   * looks revoked keys up too).
   *
   * @example
   * await groups.revokeDevice("alice-old-laptop");
   */
  async revokeDevice(kid: string = this.device.kid): Promise<void> {
    await this.kms.request("delete", `/entities/${encodeURIComponent(this.user)}/keys/${encodeURIComponent(kid)}`, {}, { expect: 204 });
  }

  /**
   * Creates a group (`create /blocks`): the KMS signs a genesis block adding `members`. The
   * genesis block is checked (signed by the discovered KMS key, adding exactly `members`) and
   * cached. List yourself to be able to read and change the group afterwards.
   *
   * @example
   * const group = await groups.create(["alice@example.com", "bob@example.com"]);
   * group.uri // "kms://kms.example.com/blocks/6f1c..."
   */
  async create(members: readonly string[]): Promise<Group> {
    const operations = normalizeOperations(members.map((entity) => ({ entity, optype: "add" as const })));
    const reply = await this.kms.request("create", "/blocks", { blockPayload: { operations } }, { expect: 201 });
    if (typeof reply.block !== "string") throw new KmsProtocolError("ERR_BLOCK_REPLY", "the KMS created a group but sent no 'block'");
    const { blocks, members: membership } = await verifyChain([reply.block], await this.verifyOptions());
    const genesis = blocks[0]!;
    const asked = new Membership(operations.map((o) => o.entity));
    if (membership.size !== asked.size || !asked.members().every((m) => membership.has(m))) {
      throw new KmsProtocolError("ERR_BLOCK_REPLY", `the KMS's genesis block adds ${membership.members().join(", ")}, not the members asked for`);
    }
    const uri = (genesis.payload as GenesisPayload).uri;
    this.#chains.set(uri, { blocks: [genesis], members: membership, curator: (genesis.payload as GenesisPayload).curator });
    return { uri, genesis };
  }

  /**
   * Adds entities to a group: one block signed by this device. Returns the new tail hash.
   * Throws an Error before sending when an entity already is a member.
   *
   * @example
   * const tail = await groups.add(uri, ["carol@example.com"]);
   */
  add(groupUri: string, entities: readonly string[]): Promise<string> {
    return this.change(groupUri, entities.map((entity) => ({ entity, optype: "add" })));
  }

  /**
   * Removes entities from a group: one block signed by this device. Returns the new tail hash.
   * Throws an Error before sending when an entity is not a member.
   *
   * @example
   * await groups.remove(uri, ["bob@example.com"]);
   */
  remove(groupUri: string, entities: readonly string[]): Promise<string> {
    return this.change(groupUri, entities.map((entity) => ({ entity, optype: "remove" })));
  }

  /**
   * Appends one block with `ops` to the group's chain (§8 Append) and returns the new tail hash:
   * fetches the new blocks, checks the operations against the current membership (an Error,
   * nothing sent, when one does not apply), signs the block with the device key (`kid` = the
   * device's) and sends it. When another append landed first (409), fetches again and retries,
   * up to `maxRetries` times with a short random pause. Other refusals are KmsRequestError
   * (403: the user is not a member; 400: e.g. the device key is not registered).
   *
   * @example
   * await groups.change(uri, [{ entity: "dave@example.com", optype: "add" }, { entity: "bob@example.com", optype: "remove" }]);
   */
  async change(groupUri: string, ops: readonly Operation[]): Promise<string> {
    const operations = normalizeOperations(ops);
    for (let attempt = 0; ; attempt++) {
      const chain = await this.#sync(groupUri);
      try {
        applyOperations(chain.members, operations, chain.curator);
      } catch (e) {
        if (e instanceof KmsError) throw new Error(`cannot change ${groupUri}: ${e.reason}`, { cause: e });
        throw e;
      }
      const antecedent = chain.blocks[chain.blocks.length - 1]!.hash;
      const payload = buildAppendedPayload({ antecedent, creator: this.user, operations });
      const jws = await signAppendedBlock(payload, await this.device.signingKey(), { alg: this.device.alg, kid: this.device.kid });
      let reply;
      try {
        reply = await this.kms.request("create", groupUri, { blocks: [jws] }, { expect: 200 });
      } catch (e) {
        if (e instanceof KmsRequestError && e.status === 409 && attempt < this.maxRetries) {
          await sleep(5 + Math.random() * 20 * (attempt + 1));
          continue;
        }
        throw e;
      }
      const hash = await blockHash(jws);
      if (reply.tail !== hash) throw new KmsProtocolError("ERR_APPEND_REPLY", `the KMS appended to ${groupUri} but answered tail ${String(reply.tail)}, not ${hash}`);
      await this.#recordAppended(groupUri, antecedent, jws);
      return hash;
    }
  }

  /**
   * Fetches the group's new blocks (all of them the first time, then those after the cached
   * tail) and returns the whole cached chain. Blocks are decoded, linked and replayed, not
   * signature-checked: use `verify` for that.
   *
   * @example
   * const blocks = await groups.fetch(uri);
   * blocks.length // 3
   */
  async fetch(groupUri: string): Promise<readonly ParsedBlock[]> {
    return (await this.#sync(groupUri)).blocks;
  }

  /**
   * Fetches and verifies the group's whole chain (`verifyChain`): the genesis block signed by the
   * discovered KMS key, each later block linked to the one before and signed by a registered
   * (possibly since revoked) key of a member. Throws ChainVerificationError naming the block.
   *
   * @example
   * const { members, tail, blocks } = await groups.verify(uri);
   */
  async verify(groupUri: string): Promise<VerifiedChain> {
    const chain = await this.#sync(groupUri);
    return verifyChain(
      chain.blocks.map((b) => b.jws),
      await this.verifyOptions(groupUri),
    );
  }

  /**
   * The options `verify` gives `verifyChain`: the discovered KMS key and URI, the chain URI, and
   * key lookups that include revoked keys (blocks signed before a revocation still verify).
   *
   * @example
   * await verifyChain(myCopyOfTheBlocks, await groups.verifyOptions(uri));
   */
  async verifyOptions(groupUri?: string): Promise<VerifyChainOptions> {
    const info = await this.kms.discover();
    const { x5c: _x5c, ...kmsKey } = info.jwk;
    return {
      kmsKey,
      // Genesis blocks signed before a static key rotation verify with the previous keys.
      previousKmsKeys: info.previousJwks.map(({ x5c: _p, ...jwk }) => jwk),
      kmsUri: info.uri,
      keysOf: async (entity) => (await this.keysOf(entity, { includeRevoked: true })).map(({ created: _c, revoked: _r, ...jwk }) => jwk),
      ...(groupUri !== undefined ? { chainUri: groupUri } : {}),
    };
  }

  /**
   * The group's membership as of the cached tail (call `fetch` or `verify` first to catch up; a
   * group not cached yet is fetched), or as of block `at` (its hash, or its index), that block's
   * own operations applied. The curator (the KMS) is a permanent member and is not listed.
   *
   * @example
   * (await groups.members(uri)).members()              // now
   * (await groups.members(uri, genesis.hash)).members() // at creation
   */
  async members(groupUri: string, at?: string | number): Promise<Membership> {
    let chain = this.#chains.get(groupUri) ?? (await this.#sync(groupUri));
    if (at === undefined) return chain.members;
    const find = () => (typeof at === "number" ? (at < chain.blocks.length ? at : -1) : chain.blocks.findIndex((b) => b.hash === at));
    let index = find();
    if (index < 0) {
      chain = await this.#sync(groupUri);
      index = find();
    }
    if (index < 0) throw new RangeError(`${typeof at === "number" ? `index ${at}` : `block ${at}`} is not in ${groupUri}`);
    return membershipAt(chain.blocks, index);
  }

  /**
   * The group's blocks as a timeline (fetched first): who changed what, when.
   *
   * @example
   * for (const h of await groups.history(uri)) console.log(h.index, h.created, h.creator, h.operations);
   */
  async history(groupUri: string): Promise<HistoryEntry[]> {
    return historyOf((await this.#sync(groupUri)).blocks);
  }

  /** Brings the cached chain up to date: incrementally after the cached tail, else from scratch. */
  #sync(groupUri: string): Promise<ChainState> {
    return this.#locked(groupUri, async () => {
      const cached = this.#chains.get(groupUri);
      let next: ChainState | undefined;
      if (cached) {
        const tail = cached.blocks[cached.blocks.length - 1]!.hash;
        try {
          const reply = await this.kms.request("retrieve", groupUri, { antecedent: tail }, { expect: 200 });
          next = await extendChain(cached, reply.blocks);
        } catch (e) {
          // 404: the KMS does not know the cached tail any more (the chain is then fetched anew).
          if (!(e instanceof KmsRequestError && e.status === 404)) throw e;
        }
      }
      if (!next) {
        const reply = await this.kms.request("retrieve", groupUri, {}, { expect: 200 });
        next = await extendChain(undefined, reply.blocks);
        const genesis = next.blocks[0]!;
        if (cached && cached.blocks[0]!.hash !== genesis.hash) {
          throw new ChainVerificationError("ERR_CHAIN_GENESIS", 0, `block 0 (${genesis.hash.slice(0, 8)}…): ${groupUri} now starts with another genesis block`);
        }
        if ((genesis.payload as GenesisPayload).uri !== groupUri) {
          throw new ChainVerificationError("ERR_CHAIN_GENESIS", 0, `block 0 (${genesis.hash.slice(0, 8)}…): the chain uri is ${(genesis.payload as GenesisPayload).uri}, not ${groupUri}`);
        }
        if (cached) refuseRollback(groupUri, cached, next);
      }
      this.#chains.set(groupUri, next);
      return next;
    });
  }

  /** After a successful append: the block is the new tail (unless a concurrent fetch already has it). */
  #recordAppended(groupUri: string, antecedent: string, jws: string): Promise<void> {
    return this.#locked(groupUri, async () => {
      const cached = this.#chains.get(groupUri);
      if (cached && cached.blocks[cached.blocks.length - 1]!.hash === antecedent) {
        this.#chains.set(groupUri, await extendChain(cached, [jws]));
      }
    });
  }

  /** Runs `fn` after every earlier call for the same group (the chain cache is updated in order). */
  async #locked<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.#locks.get(key) ?? Promise.resolve();
    const run = previous.then(fn, fn);
    const settled = run.catch(() => undefined);
    this.#locks.set(key, settled);
    try {
      return await run;
    } finally {
      if (this.#locks.get(key) === settled) this.#locks.delete(key);
    }
  }
}

/**
 * A chain's blocks (e.g. `verify(uri).blocks`) as a timeline.
 *
 * @example
 * const { blocks } = await groups.verify(uri);
 * historyOf(blocks)[0].operations // the genesis block's adds
 */
export function historyOf(blocks: readonly ParsedBlock[]): HistoryEntry[] {
  return blocks.map((b, index) => ({
    index,
    hash: b.hash,
    created: b.payload.created,
    creator: b.payload.creator,
    operations: b.payload.operations.map(({ entity, optype }) => ({ entity, optype })),
    genesis: b.genesis,
  }));
}

/**
 * Decodes `jwsList` and appends it to `base` (or starts a chain with it): each block must parse,
 * link to the block before it and have operations that apply. Signatures are not checked here.
 */
async function extendChain(base: ChainState | undefined, jwsList: unknown): Promise<ChainState> {
  if (!Array.isArray(jwsList) || !jwsList.every((j) => typeof j === "string")) {
    throw new KmsProtocolError("ERR_BLOCKS_REPLY", "the KMS reply has no 'blocks' list of JWS strings");
  }
  if (!base && jwsList.length === 0) throw new ChainVerificationError("ERR_CHAIN_EMPTY", 0, "the chain has no blocks");
  const blocks = [...(base?.blocks ?? [])];
  let members = base?.members ?? new Membership();
  let curator = base?.curator ?? "";
  for (const jws of jwsList as string[]) {
    const index = blocks.length;
    const fail = (code: ConstructorParameters<typeof ChainVerificationError>[0], what: string, cause?: unknown) =>
      new ChainVerificationError(code, index, `block ${index}: ${what}`, { cause });
    let block: ParsedBlock;
    try {
      block = await parseBlock(jws, { maxOperations: DEFAULT_LIMITS.operationsPerBlock, ...(index > 0 ? { curator } : {}) });
    } catch (e) {
      if (e instanceof KmsError) throw fail("ERR_CHAIN_MALFORMED", e.reason, e);
      throw e;
    }
    if (index === 0) {
      if (!block.genesis) throw fail("ERR_CHAIN_GENESIS", "the first block is not a genesis block");
      curator = (block.payload as GenesisPayload).curator;
    } else {
      if (block.genesis) throw fail("ERR_CHAIN_GENESIS", "a genesis block after block 0");
      if ((block.payload as { antecedent: string }).antecedent !== blocks[index - 1]!.hash) {
        throw fail("ERR_CHAIN_LINK", `antecedent is not the hash of block ${index - 1}`);
      }
    }
    try {
      members = applyOperations(members, block.payload.operations, curator);
    } catch (e) {
      if (e instanceof KmsError) throw fail("ERR_CHAIN_OPERATION", e.reason, e);
      throw e;
    }
    blocks.push(block);
  }
  return { blocks, members, curator };
}

/**
 * A chain fetched again from scratch (after a 404 on the cached tail) must hold every block this
 * client already had, as a prefix, by hash: the chain never forks nor loses blocks (§8), so a
 * shorter chain, or one that forks before the cached tail, is a rollback that could hide a
 * membership change (a removal). ChainVerificationError ERR_CHAIN_ROLLBACK names the first block
 * that is missing or different; the cache keeps the blocks it had.
 */
function refuseRollback(groupUri: string, cached: ChainState, next: ChainState): void {
  const index = cached.blocks.findIndex((b, i) => next.blocks[i]?.hash !== b.hash);
  if (index < 0) return;
  const known = cached.blocks[index]!;
  const got = next.blocks[index];
  throw new ChainVerificationError(
    "ERR_CHAIN_ROLLBACK",
    index,
    `block ${index} (${known.hash.slice(0, 8)}…): ${groupUri} was fetched again ` +
      (got ? `with another block at ${index} (${got.hash.slice(0, 8)}…)` : `with only ${next.blocks.length} block(s)`) +
      `, but this client already had ${cached.blocks.length}: a rollback or a fork, refused (it could hide a membership change)`,
  );
}

/** Operations with entities normalized; an Error (nothing sent) for an empty list or a bad entity. */
function normalizeOperations(ops: readonly Operation[]): Operation[] {
  if (ops.length === 0) throw new Error("no operations: name at least one entity");
  return ops.map((op) => {
    if (op.optype !== "add" && op.optype !== "remove") throw new Error(`optype must be 'add' or 'remove', not '${String(op.optype)}'`);
    return { entity: entityOrThrow(op.entity), optype: op.optype };
  });
}

function entityOrThrow(entity: string): string {
  const e = typeof entity === "string" ? normalizeEntity(entity) : undefined;
  if (e === undefined) throw new TypeError(`'${String(entity)}' is not an entity (user@domain)`);
  return e;
}

/** Whether two JWKs hold the same public key (the members that define it). */
function samePublicKey(a: JWK, b: JWK): boolean {
  if (a.kty !== b.kty) return false;
  if (a.kty === "RSA") return a.n === b.n && a.e === b.e;
  return a.crv === b.crv && a.x === b.x && a.y === b.y;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
