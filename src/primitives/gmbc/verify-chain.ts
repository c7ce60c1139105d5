import { compactVerify, importJWK, type JWK } from "jose";
import { DEFAULT_LIMITS } from "../../protocol/constants.js";
import { KmsError, badRequest } from "../../protocol/errors.js";
import { blockHash } from "../block-hash.js";
import { Membership, applyOperations, samePrincipal } from "./membership.js";
import { parseBlock } from "./parse-block.js";
import type { GenesisPayload, ParsedBlock } from "./types.js";
import { echo } from "../../protocol/echo.js";

/**
 * Stable codes of `ChainVerificationError`, one per way a chain can be wrong.
 *
 * @example
 * const code: ChainErrorCode = "ERR_CHAIN_LINK";
 */
export type ChainErrorCode =
  | "ERR_CHAIN_EMPTY"
  | "ERR_CHAIN_GENESIS"
  | "ERR_CHAIN_SIGNATURE"
  | "ERR_CHAIN_LINK"
  | "ERR_CHAIN_NOT_MEMBER"
  | "ERR_CHAIN_OPERATION"
  | "ERR_CHAIN_MALFORMED"
  /** SDK only: a chain fetched again lacks blocks this client already had (rollback or fork). */
  | "ERR_CHAIN_ROLLBACK";

/**
 * Why a chain failed verification: a stable `code`, the position `index` of the first block
 * that is wrong, and a message naming that block (index and hash prefix) and what is wrong.
 * `cause` holds the underlying `KmsError` when there is one.
 *
 * @example
 * try { await verifyChain(blocks, opts); } catch (e) {
 *   if (e instanceof ChainVerificationError) console.log(e.code, e.index, e.message);
 *   // ERR_CHAIN_LINK 3 "block 3 (ab12cd34…): antecedent is not the hash of block 2 (...)"
 * }
 */
export class ChainVerificationError extends Error {
  override readonly name = "ChainVerificationError";
  constructor(
    readonly code: ChainErrorCode,
    readonly index: number,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** Options of `verifyChain`. */
export interface VerifyChainOptions {
  /** The KMS static public key: EC P-256 (genesis signed ES256) or RSA (RS256 or PS256). */
  kmsKey: JWK;
  /**
   * Keys the KMS used before a static key rotation (discovery's `previousKeys`): a genesis block
   * signed before the rotation verifies with one of them.
   */
  previousKmsKeys?: readonly JWK[];
  /** The KMS URI, `kms://<authority>`: the genesis block's curator and creator, and the static key's kid. */
  kmsUri: string;
  /**
   * An entity's registered public keys, each with its `kid` (§7). Errors it throws are passed
   * through unchanged: failing to look keys up is not a verdict on the chain.
   */
  keysOf: (entity: string) => Promise<JWK[]>;
  /** When given, the genesis block's `uri` must be this chain URI. */
  chainUri?: string;
  /** Most operations per block (§10); default 10,000. */
  maxOperations?: number;
  /** The time `created` is judged against; default now. */
  now?: Date;
  /** How far in the future a block's `created` may be; default 300 s (§10). */
  clockSkewSeconds?: number;
}

/** A chain that verified: its parsed blocks in order, the current membership and the tail's hash. */
export interface VerifiedChain {
  blocks: ParsedBlock[];
  members: Membership;
  tail: string;
}

const SIGNATURE_ALGORITHMS = { RSA: ["PS256", "RS256"], EC: ["ES256"] } as const;

/**
 * The signature algorithms a public JWK may verify (§2): PS256 and RS256 for RSA keys, ES256
 * for EC P-256 keys, nothing for anything else.
 *
 * @example
 * signatureAlgorithmsFor({ kty: "EC", crv: "P-256", x: "...", y: "..." }) // ["ES256"]
 */
export function signatureAlgorithmsFor(jwk: JWK): readonly string[] {
  if (jwk.kty === "RSA") return SIGNATURE_ALGORITHMS.RSA;
  if (jwk.kty === "EC" && jwk.crv === "P-256") return SIGNATURE_ALGORITHMS.EC;
  return [];
}

/** Only the public members: a `d`, `alg`, `use` or `key_ops` on a registered key must not steer the import. */
function publicMembers(jwk: JWK): JWK {
  return jwk.kty === "RSA" ? { kty: "RSA", n: jwk.n, e: jwk.e } : { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y };
}

/**
 * Whether a compact JWS verifies with a public JWK under `alg` (already checked to fit the key's
 * type); never throws. The default uses jose (WebCrypto); the KMS passes one on node:crypto with
 * cached keys, as it verifies every appended block on its hot path.
 */
export type SignatureVerifier = (jws: string, jwk: JWK, alg: string) => Promise<boolean>;

/** Whether `jws` verifies with `jwk` under `alg` (which must fit the key's type); never throws. */
async function verifiesWith(jws: string, jwk: JWK, alg: string): Promise<boolean> {
  if (!signatureAlgorithmsFor(jwk).includes(alg)) return false;
  try {
    const key = await importJWK(publicMembers(jwk), alg);
    await compactVerify(jws, key, { algorithms: [alg] });
    return true;
  } catch {
    // An invalid key (off-curve point, short modulus) or a bad signature: this key does not verify it.
    return false;
  }
}

/**
 * Verifies an appended block's signature with its creator's registered keys (§8) and returns the
 * key that verified. The header `kid` selects the key; without a `kid`, each key whose type fits
 * the header `alg` is tried. Throws `KmsError` 400 (`ERR_SIGNATURE`) "signature does not verify
 * with a registered key of <creator>" when none verifies, when the `kid` names no key in `keys`,
 * or when `alg` does not fit the key's type (PS256/RS256 ↔ RSA, ES256 ↔ EC P-256).
 *
 * @example
 * const block = await parseBlock(jws, { maxOperations: 10_000 });
 * const key = await verifyAppendedBlockSignature(block, await keysOf(block.payload.creator));
 * key.kid // "alice-laptop"
 */
export async function verifyAppendedBlockSignature(
  block: ParsedBlock,
  keys: readonly JWK[],
  verify: SignatureVerifier = verifiesWith,
): Promise<JWK> {
  const creator = block.payload.creator;
  const { alg, kid } = block.header;
  const refuse = (why?: string) =>
    badRequest(`signature does not verify with a registered key of ${echo(creator)}${why ? `: ${why}` : ""}`, "ERR_SIGNATURE");
  let candidates: readonly JWK[];
  if (kid !== undefined) {
    candidates = keys.filter((k) => k.kid === kid);
    if (candidates.length === 0) throw refuse(`kid '${echo(kid)}' names no key of ${echo(creator)}`);
    if (!candidates.some((k) => signatureAlgorithmsFor(k).includes(alg))) {
      throw refuse(`alg '${echo(alg)}' does not fit the type of key '${echo(kid)}'`);
    }
  } else {
    candidates = keys.filter((k) => signatureAlgorithmsFor(k).includes(alg));
    if (candidates.length === 0) throw refuse(`${echo(creator)} has no registered key for alg '${echo(alg)}'`);
  }
  for (const candidate of candidates) {
    if (await verify(block.jws, candidate, alg)) return candidate;
  }
  throw refuse();
}

/**
 * Verifies a whole GMBC (§8) end to end, block by block in chain order, and stops at the first
 * block that is wrong with a `ChainVerificationError` naming it:
 * - block 0 is a genesis block (`ERR_CHAIN_GENESIS`) whose `curator` and `creator` are `kmsUri`
 *   and whose `uri` is an object of that KMS (and `chainUri`, if given); it is signed by `kmsKey`
 *   under an algorithm fitting its type, and a header `kid`, if present, is `kmsUri`
 *   (`ERR_CHAIN_SIGNATURE`);
 * - every later block is an appended block whose `antecedent` is the hash of the block before it
 *   (`ERR_CHAIN_LINK`), signed by a registered key of its `creator` (`ERR_CHAIN_SIGNATURE`; see
 *   `verifyAppendedBlockSignature`), whose creator is a member as of the block before it, the
 *   curator counting as one (`ERR_CHAIN_NOT_MEMBER`);
 * - every block's operations apply (`ERR_CHAIN_OPERATION`: add of a member, remove of a
 *   non-member, an operation naming the curator);
 * - a block that does not parse, or whose `created` is more than `clockSkewSeconds` after `now`,
 *   is `ERR_CHAIN_MALFORMED` (`alg: none`, HMAC: `ERR_CHAIN_SIGNATURE`); no blocks: `ERR_CHAIN_EMPTY`.
 *
 * @example
 * const { members, tail } = await verifyChain(reply.blocks, {
 *   kmsKey: wellKnown.jwk,
 *   kmsUri: "kms://kms.example.com",
 *   keysOf: (entity) => client.entityKeys(entity),
 * });
 * members.has("bob@example.com") // true
 */
export async function verifyChain(blocks: readonly string[], opts: VerifyChainOptions): Promise<VerifiedChain> {
  if (blocks.length === 0) {
    throw new ChainVerificationError("ERR_CHAIN_EMPTY", 0, "the chain has no blocks (a chain starts with its genesis block)");
  }
  const maxOperations = opts.maxOperations ?? DEFAULT_LIMITS.operationsPerBlock;
  const latest = (opts.now ?? new Date()).getTime() + 1000 * (opts.clockSkewSeconds ?? DEFAULT_LIMITS.clockSkewSeconds);
  const keyLookups = new Map<string, Promise<JWK[]>>();
  const keysOf = (entity: string) => {
    let lookup = keyLookups.get(entity);
    if (!lookup) keyLookups.set(entity, (lookup = opts.keysOf(entity)));
    return lookup;
  };

  const parsed: ParsedBlock[] = [];
  let members = new Membership();
  let curator = opts.kmsUri;

  for (let index = 0; index < blocks.length; index++) {
    const jws: unknown = blocks[index];
    const hash = typeof jws === "string" ? await blockHash(jws) : "";
    const fail = (code: ChainErrorCode, what: string, cause?: unknown) =>
      new ChainVerificationError(code, index, `block ${index} (${hash.slice(0, 8)}…): ${what}`, { cause });

    let block: ParsedBlock;
    try {
      block = await parseBlock(jws as string, { maxOperations, ...(index > 0 ? { curator } : {}) });
    } catch (e) {
      if (!(e instanceof KmsError)) throw e;
      const code: ChainErrorCode =
        e.code === "ERR_ALG" ? "ERR_CHAIN_SIGNATURE" : e.code === "ERR_OP_CURATOR" ? "ERR_CHAIN_OPERATION" : "ERR_CHAIN_MALFORMED";
      throw fail(code, e.reason, e);
    }
    if (Date.parse(block.payload.created.toUpperCase()) > latest) {
      throw fail("ERR_CHAIN_MALFORMED", `'created' ${block.payload.created} is in the future`);
    }

    if (index === 0) {
      if (!block.genesis) throw fail("ERR_CHAIN_GENESIS", "the first block is not a genesis block (it has no 'uri')");
      const genesis = block.payload as GenesisPayload;
      if (!samePrincipal(genesis.curator, opts.kmsUri)) {
        throw fail("ERR_CHAIN_GENESIS", `the genesis curator is ${genesis.curator}, not this KMS (${opts.kmsUri})`);
      }
      if (!samePrincipal(genesis.creator, opts.kmsUri)) {
        throw fail("ERR_CHAIN_GENESIS", `the genesis creator is ${genesis.creator}, not this KMS (${opts.kmsUri})`);
      }
      if (!isObjectOf(genesis.uri, opts.kmsUri)) {
        throw fail("ERR_CHAIN_GENESIS", `the chain uri ${genesis.uri} is not an object of ${opts.kmsUri}`);
      }
      if (opts.chainUri !== undefined && !samePrincipal(genesis.uri, opts.chainUri)) {
        throw fail("ERR_CHAIN_GENESIS", `the chain uri is ${genesis.uri}, not the chain asked for (${opts.chainUri})`);
      }
      const { alg, kid } = block.header;
      if (kid !== undefined && !samePrincipal(kid, opts.kmsUri)) {
        throw fail("ERR_CHAIN_SIGNATURE", `the genesis block names key '${kid}', not the KMS key (${opts.kmsUri})`);
      }
      // The current key first, then keys from before a rotation; each only for algorithms of its type.
      const candidates = [opts.kmsKey, ...(opts.previousKmsKeys ?? [])].filter((k) => signatureAlgorithmsFor(k).includes(alg));
      if (candidates.length === 0) {
        throw fail("ERR_CHAIN_SIGNATURE", `alg '${alg}' does not fit the KMS key (kty ${String(opts.kmsKey.kty)})`);
      }
      let signed = false;
      for (const key of candidates) {
        if (await verifiesWith(block.jws, key, alg)) {
          signed = true;
          break;
        }
      }
      if (!signed) throw fail("ERR_CHAIN_SIGNATURE", "the genesis block is not signed by the KMS static key");
      curator = genesis.curator;
    } else {
      if (block.genesis) throw fail("ERR_CHAIN_GENESIS", "a genesis block after block 0 (only the first block may be one)");
      const previous = parsed[index - 1]!;
      if ((block.payload as { antecedent: string }).antecedent !== previous.hash) {
        throw fail(
          "ERR_CHAIN_LINK",
          `antecedent is not the hash of block ${index - 1} (a block was dropped, reordered or altered)`,
        );
      }
      const creator = block.payload.creator;
      try {
        await verifyAppendedBlockSignature(block, await keysOf(creator));
      } catch (e) {
        if (!(e instanceof KmsError)) throw e;
        throw fail("ERR_CHAIN_SIGNATURE", e.reason, e);
      }
      if (!members.has(creator) && !samePrincipal(creator, curator)) {
        throw fail("ERR_CHAIN_NOT_MEMBER", `its creator ${creator} is not a member as of block ${index - 1}`);
      }
    }

    try {
      members = applyOperations(members, block.payload.operations, curator);
    } catch (e) {
      if (!(e instanceof KmsError)) throw e;
      throw fail("ERR_CHAIN_OPERATION", e.reason, e);
    }
    parsed.push(block);
  }
  return { blocks: parsed, members, tail: parsed[parsed.length - 1]!.hash };
}

/** Whether `uri` is `kms://<authority>/...` for the KMS named `kmsUri` (authority compared in lower case). */
function isObjectOf(uri: string, kmsUri: string): boolean {
  const prefix = `${kmsUri.toLowerCase()}/`;
  return uri.toLowerCase().startsWith(prefix) && uri.length > prefix.length;
}
