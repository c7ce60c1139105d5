import { normalizeEntity } from "../../protocol/entity.js";
import { KmsError } from "../../protocol/errors.js";
import type { GenesisPayload, Operation, ParsedBlock } from "./types.js";
import { echo } from "../../protocol/echo.js";

const KMS_URI = /^kms:\/\//i;

/**
 * Whether two principals name the same party: KMS URIs (`kms://<authority>...`) compare with the
 * authority in lower case, entities as the profile compares them (`acct:` prefix removed, domain
 * in lower case, local part exact).
 *
 * @example
 * samePrincipal("kms://KMS.example.com", "kms://kms.example.com") // true
 * samePrincipal("acct:bob@Example.COM", "bob@example.com")        // true
 * samePrincipal("Bob@example.com", "bob@example.com")             // false
 */
export function samePrincipal(a: string, b: string): boolean {
  if (KMS_URI.test(a) || KMS_URI.test(b)) return canonicalKmsUri(a) === canonicalKmsUri(b);
  const na = normalizeEntity(a);
  const nb = normalizeEntity(b);
  return na !== undefined && nb !== undefined ? na === nb : a === b;
}

/** `kms://Host/Path` → `kms://host/Path`: the scheme and authority compare in lower case, the path exactly. */
function canonicalKmsUri(uri: string): string {
  if (!KMS_URI.test(uri)) return uri;
  const rest = uri.slice("kms://".length);
  const slash = rest.indexOf("/");
  return slash === -1 ? `kms://${rest.toLowerCase()}` : `kms://${rest.slice(0, slash).toLowerCase()}${rest.slice(slash)}`;
}

/**
 * The members of a group at one point of its chain: a set of entities, written as the profile
 * writes them (`user@domain`, domain in lower case). The curator is a permanent member that is
 * never listed (§8). Instances are immutable: `applyOperations` returns a new one.
 *
 * @example
 * const m = new Membership(["alice@example.com", "bob@example.com"]);
 * m.has("acct:bob@EXAMPLE.com") // true
 * m.members()                   // ["alice@example.com", "bob@example.com"]
 * m.size                        // 2
 */
export class Membership {
  readonly #entities: ReadonlySet<string>;

  constructor(entities: Iterable<string> = []) {
    const set = new Set<string>();
    for (const e of entities) set.add(normalizeEntity(e) ?? e);
    this.#entities = set;
  }

  /** Whether `entity` (with or without `acct:`, any case of domain) is a member. */
  has(entity: string): boolean {
    return this.#entities.has(normalizeEntity(entity) ?? entity);
  }

  /** The members, sorted (UTF-16 code unit order), as a fresh array. */
  members(): string[] {
    return [...this.#entities].sort();
  }

  /** How many members (the curator not counted). */
  get size(): number {
    return this.#entities.size;
  }

  /** Iterates the members in insertion order. */
  [Symbol.iterator](): IterableIterator<string> {
    return this.#entities.values();
  }
}

/**
 * Applies one block's operations to a membership (§8) and returns the new membership, or throws
 * `KmsError` 400 naming the entity at fault: an `add` of a current member (`ERR_OP_MEMBER`), a
 * `remove` of a non-member (`ERR_OP_NOT_MEMBER`), any operation naming the curator
 * (`ERR_OP_CURATOR`: the curator is a permanent member and is not listed), an entity named twice
 * in the list (`ERR_OP_DUPLICATE`: a block's operations are a set, so their order never matters),
 * an entity that is not an acct entity or an unknown optype (`ERR_OP_INVALID`). The input is not
 * modified.
 *
 * @example
 * const m0 = new Membership(["alice@example.com"]);
 * const m1 = applyOperations(m0, [{ entity: "bob@example.com", optype: "add" }], "kms://kms.example.com");
 * m1.members() // ["alice@example.com", "bob@example.com"]
 * applyOperations(m1, [{ entity: "carol@example.com", optype: "remove" }]) // throws 400 ERR_OP_NOT_MEMBER
 */
export function applyOperations(
  members: Membership | ReadonlySet<string>,
  ops: readonly Operation[],
  curator?: string,
): Membership {
  const next = new Set<string>();
  for (const e of members) next.add(normalizeEntity(e) ?? e);
  const seen = new Set<string>();
  ops.forEach((op, i) => {
    const raw: unknown = op?.entity;
    if (typeof raw !== "string") {
      throw new KmsError(400, "ERR_OP_INVALID", `operations[${i}].entity must be an acct entity`);
    }
    if (curator !== undefined && samePrincipal(raw, curator)) {
      throw new KmsError(
        400,
        "ERR_OP_CURATOR",
        `operations[${i}] names the curator ${curator}: the curator is a permanent member and cannot be added or removed`,
      );
    }
    const entity = normalizeEntity(raw);
    if (entity === undefined) {
      throw new KmsError(400, "ERR_OP_INVALID", `operations[${i}].entity '${echo(raw)}' is not an acct entity`);
    }
    if (seen.has(entity)) {
      throw new KmsError(400, "ERR_OP_DUPLICATE", `operations[${i}] names ${echo(entity)} a second time in the same block`);
    }
    seen.add(entity);
    if (op.optype === "add") {
      if (next.has(entity)) throw new KmsError(400, "ERR_OP_MEMBER", `cannot add ${echo(entity)}: already a member`);
      next.add(entity);
    } else if (op.optype === "remove") {
      if (!next.has(entity)) throw new KmsError(400, "ERR_OP_NOT_MEMBER", `cannot remove ${echo(entity)}: not a member`);
      next.delete(entity);
    } else {
      throw new KmsError(400, "ERR_OP_INVALID", `operations[${i}].optype must be 'add' or 'remove'`);
    }
  });
  return new Membership(next);
}

/**
 * The membership "at block `index`" (§9): blocks[0..index] replayed in order, so block `index`'s
 * own operations are applied. `blocks[0]` must be the genesis block (its curator is honoured as
 * a permanent member). Replays operations only: it verifies neither signatures nor links (use
 * `verifyChain` for that). Throws `RangeError` for an index outside the list and `KmsError` 400
 * when an operation does not apply.
 *
 * @example
 * const { blocks } = await verifyChain(jwsList, opts);
 * membershipAt(blocks, 0).members() // who the genesis block added
 */
export function membershipAt(blocks: readonly ParsedBlock[], index: number): Membership {
  if (!Number.isInteger(index) || index < 0 || index >= blocks.length) {
    throw new RangeError(`block index ${index} is outside the chain (0..${blocks.length - 1})`);
  }
  const first = blocks[0]!;
  if (!first.genesis) throw new KmsError(400, "ERR_BLOCK", "block 0 is not a genesis block");
  const curator = (first.payload as GenesisPayload).curator;
  let members = new Membership();
  for (let i = 0; i <= index; i++) members = applyOperations(members, blocks[i]!.payload.operations, curator);
  return members;
}
