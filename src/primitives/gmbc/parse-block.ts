import { base64url } from "jose";
import { normalizeEntity } from "../../protocol/entity.js";
import { KmsError } from "../../protocol/errors.js";
import { blockHash } from "../block-hash.js";
import { samePrincipal } from "./membership.js";
import type { AppendedPayload, GenesisPayload, Operation, ParsedBlock } from "./types.js";
import { echo } from "../../protocol/echo.js";
import { isCanonicalBase64url } from "../../protocol/jose/canonical-base64url.js";

/** Options of `parseBlock`. */
export interface ParseBlockOptions {
  /** Most operations one block may carry (§10, default there 10,000); more is a 400. */
  maxOperations: number;
  /**
   * The chain's curator, when known (the KMS URI). An operation naming it is then refused with
   * `ERR_OP_CURATOR` ("names the curator") rather than as an entity that is not an acct URI.
   * A genesis block is always checked against its own `curator`.
   */
  curator?: string;
  /**
   * Leave the checks §8 orders after the tail and membership checks to the caller: an empty
   * operations list is returned as `[]`, and an operation naming `curator` is returned with the
   * curator's URI as its entity. The KMS's append handler uses this; chain verification does not.
   */
  deferOperationChecks?: boolean;
  /** The block-hash function (default: `blockHash`, WebCrypto); the KMS passes node:crypto's. */
  hash?: (jws: string) => string | Promise<string>;
}

const B64URL = /^[A-Za-z0-9_-]+$/;
const HEX64 = /^[0-9a-f]{64}$/;
const ABSOLUTE_URI = /^[A-Za-z][A-Za-z0-9+.-]*:[^\s]+$/;
const KMS_URI = /^kms:\/\/[^\s/?#@]+$/i;
const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?(?:[Zz]|[+-](\d{2}):(\d{2}))$/;
const utf8 = new TextDecoder("utf-8", { fatal: true });

const malformed = (reason: string, code = "ERR_BLOCK") => new KmsError(400, code, reason);
const fieldError = (field: string, what: string) => malformed(`block field '${field}' ${what}`);

/**
 * Decodes one GMBC block (§8) WITHOUT verifying its signature, and validates its shape. Throws
 * `KmsError` 400 whose reason names the field at fault: code `ERR_BLOCK` for shape problems,
 * `ERR_ALG` for `alg: none` or an HMAC algorithm, `ERR_CRIT` for any `crit` header,
 * `ERR_OP_CURATOR` for an operation naming the curator.
 *
 * - compact JWS, three base64url parts, protected header a JSON object with a string `alg` and
 *   (optionally) a string `kid`; payload a JSON object;
 * - appended block (has `antecedent`): `antecedent` 64 lower-case hex digits, `creator` an acct
 *   entity, `created` an RFC 3339 date-time, `operations` 1..maxOperations of `{entity, optype}`
 *   with `optype` `add` or `remove` and no entity twice;
 * - genesis block (has `uri`, no `antecedent`): `uri` an absolute URI, `nonce` a non-empty string,
 *   `curator` and `creator` a `kms://` URI or an acct entity, `created`, and operations as above,
 *   all `add`.
 *
 * Entities come back normalized (`acct:` removed, domain lower-cased); the payload holds only the
 * members its type names. `hash` is the block hash of `jws` exactly as given.
 *
 * @example
 * const block = await parseBlock(jws, { maxOperations: 10_000 });
 * block.genesis        // false
 * block.payload.creator // "alice@example.com"
 * block.hash           // "335c570a..."
 */
export async function parseBlock(jws: string, opts: ParseBlockOptions): Promise<ParsedBlock> {
  if (typeof jws !== "string") throw malformed("a block must be a JWS compact serialization (a string)");
  const parts = jws.split(".");
  if (parts.length !== 3) throw malformed("a block must be a JWS compact serialization (three dot-separated parts)");
  const [headerPart, payloadPart, signaturePart] = parts as [string, string, string];
  // §10: one spelling per block, so that its hash (of the text) is fixed by its signed content.
  for (const [part, what] of [[headerPart, "protected header"], [payloadPart, "payload"], [signaturePart, "signature"]] as const) {
    if (part !== "" && B64URL.test(part) && !isCanonicalBase64url(part)) {
      throw malformed(`block ${what} is not canonical base64url (decoding and re-encoding it gives other text)`, "ERR_BLOCK_NOT_CANONICAL");
    }
  }

  const header = decodeJson(headerPart, "protected header");
  const { alg, kid } = header;
  if (typeof alg !== "string" || alg === "") throw malformed("block protected header has no string 'alg'", "ERR_ALG");
  if (alg.toLowerCase() === "none") throw malformed("block protected header 'alg: none' is refused", "ERR_ALG");
  if (/^HS\d+$/i.test(alg)) throw malformed(`block protected header: HMAC algorithm '${echo(alg)}' is refused on a signed block`, "ERR_ALG");
  if (header.crit !== undefined) throw malformed("block protected header: unknown 'crit' header parameter", "ERR_CRIT");
  if (kid !== undefined && (typeof kid !== "string" || kid === "")) {
    throw malformed("block protected header 'kid' must be a non-empty string");
  }
  if (signaturePart === "" || !B64URL.test(signaturePart)) throw malformed("block has no base64url signature");

  const payload = decodeJson(payloadPart, "payload");
  const hasAntecedent = Object.hasOwn(payload, "antecedent");
  const hasUri = Object.hasOwn(payload, "uri");
  if (hasAntecedent && hasUri) {
    throw malformed("block payload has both 'uri' (genesis) and 'antecedent' (appended block)");
  }
  const genesis = hasUri;
  const parsedPayload = genesis ? parseGenesis(payload, opts) : parseAppended(payload, opts);
  return {
    jws,
    hash: await (opts.hash ?? blockHash)(jws),
    header: kid === undefined ? { alg } : { alg, kid: kid as string },
    payload: parsedPayload,
    genesis,
  };
}

function decodeJson(part: string, what: string): Record<string, unknown> {
  if (!B64URL.test(part)) throw malformed(`block ${what} is not base64url`);
  let value: unknown;
  try {
    value = JSON.parse(utf8.decode(base64url.decode(part)));
  } catch {
    throw malformed(`block ${what} is not base64url-encoded UTF-8 JSON`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw malformed(`block ${what} is not a JSON object`);
  }
  return value as Record<string, unknown>;
}

function parseAppended(p: Record<string, unknown>, opts: ParseBlockOptions): AppendedPayload {
  const { antecedent, creator } = p;
  if (antecedent === undefined) throw fieldError("antecedent", "is missing (a block is either a genesis block with 'uri' or has an 'antecedent')");
  if (typeof antecedent !== "string" || !HEX64.test(antecedent)) {
    throw fieldError("antecedent", "must be a block hash: 64 lower-case hex digits");
  }
  if (creator === undefined) throw fieldError("creator", "is missing");
  const normalizedCreator = typeof creator === "string" ? normalizeEntity(creator) : undefined;
  if (normalizedCreator === undefined) throw fieldError("creator", "must be an acct entity (user@domain)");
  return {
    antecedent,
    creator: normalizedCreator,
    created: parseCreated(p.created),
    operations: parseOperations(p.operations, opts.maxOperations, opts.curator, false, opts.deferOperationChecks === true),
  };
}

function parseGenesis(p: Record<string, unknown>, opts: ParseBlockOptions): GenesisPayload {
  const { uri, nonce } = p;
  if (typeof uri !== "string" || !ABSOLUTE_URI.test(uri)) throw fieldError("uri", "must be an absolute URI");
  if (nonce === undefined) throw fieldError("nonce", "is missing");
  if (typeof nonce !== "string" || nonce === "") throw fieldError("nonce", "must be a non-empty string");
  const curator = parsePrincipal(p.curator, "curator");
  const creator = parsePrincipal(p.creator, "creator");
  return {
    uri,
    nonce,
    curator,
    creator,
    created: parseCreated(p.created),
    operations: parseOperations(p.operations, opts.maxOperations, curator, true),
  };
}

/** A genesis `curator` or `creator`: the KMS URI `kms://<authority>` or an acct entity. */
function parsePrincipal(value: unknown, field: string): string {
  if (value === undefined) throw fieldError(field, "is missing");
  if (typeof value === "string") {
    if (KMS_URI.test(value)) return value;
    const entity = normalizeEntity(value);
    if (entity !== undefined) return entity;
  }
  throw fieldError(field, "must be a kms:// URI or an acct entity");
}

function parseCreated(value: unknown): string {
  if (value === undefined) throw fieldError("created", "is missing");
  if (typeof value !== "string" || !isRfc3339(value)) {
    throw fieldError("created", "must be an RFC 3339 date-time, e.g. 2015-11-02T19:02:15Z");
  }
  return value;
}

/** RFC 3339 `date-time` with its ranges checked (Date.parse alone accepts February 30th). */
function isRfc3339(value: string): boolean {
  const m = RFC3339.exec(value);
  if (!m) return false;
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  const offH = m[8] === undefined ? 0 : Number(m[8]);
  const offM = m[9] === undefined ? 0 : Number(m[9]);
  const daysInMonth = new Date(Date.UTC(year, month, 0)).getUTCDate();
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth) return false;
  if (hour > 23 || minute > 59 || second > 59 || offH > 23 || offM > 59) return false;
  return !Number.isNaN(Date.parse(value.toUpperCase()));
}

/**
 * The operations of a genesis block as a client proposes them (`create /blocks`, §8): 1..max
 * `add`s of distinct acct entities, returned normalized. Throws a 400 KmsError naming the field.
 *
 * @example
 * parseGenesisOperations([{ entity: "acct:Bob@Example.com", optype: "add" }], 10_000) // [{ entity: "Bob@example.com", optype: "add" }]
 */
export function parseGenesisOperations(value: unknown, maxOperations: number): Operation[] {
  return parseOperations(value, maxOperations, undefined, true);
}

function parseOperations(value: unknown, maxOperations: number, curator: string | undefined, genesis: boolean, defer = false): Operation[] {
  if (value === undefined) throw fieldError("operations", "is missing");
  if (!Array.isArray(value)) throw fieldError("operations", "must be an array");
  if (value.length === 0 && !defer) throw fieldError("operations", "must not be empty");
  if (value.length > maxOperations) {
    throw fieldError("operations", `has ${value.length} operations, more than the limit of ${maxOperations}`);
  }
  const seen = new Set<string>();
  return value.map((item: unknown, i): Operation => {
    const at = `operations[${i}]`;
    if (typeof item !== "object" || item === null || Array.isArray(item)) throw fieldError(at, "must be an object {entity, optype}");
    const { entity, optype } = item as Record<string, unknown>;
    if (typeof entity !== "string") throw fieldError(`${at}.entity`, "must be an acct entity (user@domain)");
    if (curator !== undefined && samePrincipal(entity, curator)) {
      if (defer && optype !== undefined && (optype === "add" || optype === "remove")) return { entity: curator, optype };
      throw new KmsError(
        400,
        "ERR_OP_CURATOR",
        `block field '${at}.entity' names the curator ${curator}: the curator is a permanent member and cannot be added or removed`,
      );
    }
    const normalized = normalizeEntity(entity);
    if (normalized === undefined) throw fieldError(`${at}.entity`, `'${echo(entity)}' is not an acct entity (user@domain)`);
    if (optype !== "add" && optype !== "remove") throw fieldError(`${at}.optype`, "must be 'add' or 'remove'");
    if (genesis && optype !== "add") throw fieldError(`${at}.optype`, "must be 'add' in a genesis block");
    if (seen.has(normalized)) throw fieldError(`${at}.entity`, `names ${echo(normalized)} a second time in the same block`);
    seen.add(normalized);
    return { entity: normalized, optype };
  });
}
