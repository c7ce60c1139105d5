/**
 * The audit log's record format and hash chain (PROTOCOL.md §13, docs/audit.md). The stores write
 * records inside the transaction of the state change they record; this module only defines what a
 * record is, its canonical JSON, its hash, and how a chain of them verifies.
 */
import { createHash } from "node:crypto";

/** The first record's previous hash: 64 zeros. */
export const AUDIT_GENESIS_HASH = "0".repeat(64);

/**
 * What the caller records (the store adds the sequence number and the hashes). Never key
 * material, tokens or payloads: only names, URIs, statuses and kids.
 */
export interface AuditEvent {
  readonly time: Date;
  /** What was done or attempted: `gk.get`, `gmbc.append`, ... (docs/audit.md lists them). */
  readonly operation: string;
  /** The authenticated entity (a user, or `kms://<peer>` for a federation peer); absent when none was authenticated (a 401). */
  readonly actor?: string;
  /** The user a federation peer acts for (§12), when it does. */
  readonly entity?: string;
  /** The URI of the object the operation names (a GK, a chain, a channel, an entity key). */
  readonly object?: string;
  /** The reply's status. */
  readonly status: number;
  /** For a refusal: the error's stable code (never its reason, which may echo request data). */
  readonly code?: string;
  /** For a GK release: the kids of the keys the GK was wrapped to. */
  readonly recipients?: readonly string[];
  /** For a GK release (or its refusal): the policy decision that allowed (or refused) it. */
  readonly decision?: string;
}

/** A stored record: the event with its sequence number, the previous record's hash and its own. */
export interface AuditRecord extends Omit<AuditEvent, "time"> {
  readonly seq: number;
  /** RFC 3339 UTC with milliseconds. */
  readonly time: string;
  /** The previous record's hash (64 zeros for the first). */
  readonly prev: string;
  /** SHA-256(prev || canonicalJson(body)), lower-case hex. */
  readonly hash: string;
}

/** The hashed part of a record: every member but `prev` and `hash`. */
export type AuditBody = Omit<AuditRecord, "prev" | "hash">;

/**
 * Canonical JSON: object members sorted by key (UTF-16 code units, as `Array.prototype.sort`),
 * no whitespace, strings and numbers as `JSON.stringify` writes them, `undefined` members left
 * out. Throws on what JSON cannot hold (non-finite numbers, bigints, functions).
 *
 * @example
 * canonicalJson({ b: 1, a: [true, "x"] }); // '{"a":[true,"x"],"b":1}'
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value === "boolean" || typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new TypeError("canonical JSON: a number must be finite");
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined);
    entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
  }
  throw new TypeError(`canonical JSON: cannot encode a ${typeof value}`);
}

/**
 * The body of record `seq` for `event` (times as RFC 3339 with milliseconds, absent members
 * left out).
 *
 * @example
 * auditBody(1, { time: new Date(0), operation: "gk.get", status: 200 }); // { seq: 1, time: "1970-01-01T00:00:00.000Z", ... }
 */
export function auditBody(seq: number, event: AuditEvent): AuditBody {
  return {
    seq,
    time: event.time.toISOString(),
    operation: event.operation,
    ...(event.actor !== undefined ? { actor: event.actor } : {}),
    ...(event.entity !== undefined ? { entity: event.entity } : {}),
    ...(event.object !== undefined ? { object: event.object } : {}),
    status: event.status,
    ...(event.code !== undefined ? { code: event.code } : {}),
    ...(event.recipients !== undefined ? { recipients: [...event.recipients] } : {}),
    ...(event.decision !== undefined ? { decision: event.decision } : {}),
  };
}

/**
 * `SHA-256(prev || canonicalJson(body))`, lower-case hex; `prev` is the previous hash as its 64
 * ASCII hex characters, the JSON as UTF-8.
 *
 * @example
 * auditHash(AUDIT_GENESIS_HASH, body); // "3f0a..."
 */
export function auditHash(prev: string, body: AuditBody | string): string {
  return createHash("sha256").update(prev, "utf8").update(typeof body === "string" ? body : canonicalJson(body), "utf8").digest("hex");
}

/**
 * The next record after the chain head (`head.seq`, `head.hash`): what a store inserts, inside the
 * transaction that holds the head. `json` is the body's canonical JSON, as stored.
 *
 * @example
 * const { record, json } = nextAuditRecord({ seq: 0, hash: AUDIT_GENESIS_HASH }, event);
 */
export function nextAuditRecord(head: { seq: number; hash: string }, event: AuditEvent): { record: AuditRecord; json: string } {
  const body = auditBody(head.seq + 1, event);
  const json = canonicalJson(body);
  return { record: { ...body, prev: head.hash, hash: auditHash(head.hash, json) }, json };
}

/**
 * The canonical JSON of `event`'s body around its sequence number, for a store that numbers and
 * hashes the record itself (PostgreSQL, in one statement under the head lock):
 * `canonicalJson(auditBody(seq, event)) === prefix + String(seq) + suffix` for every seq. The
 * members are sorted and `seq` is neither first (`operation` sorts before it) nor last (`status`
 * and `time` after), and no other member is named `seq`, so the split is unambiguous.
 *
 * @example
 * const { prefix, suffix } = auditBodyAroundSeq(event); // '{"actor":...,"seq":' and ',"status":200,...}'
 */
export function auditBodyAroundSeq(event: AuditEvent): { prefix: string; suffix: string } {
  const json = canonicalJson(auditBody(0, event));
  const at = json.indexOf(',"seq":0,');
  if (at < 0) throw new Error("audit body: no seq member");
  return { prefix: json.slice(0, at + ',"seq":'.length), suffix: json.slice(at + ',"seq":0'.length) };
}

/** A stored record from its stored body JSON and hashes (what `auditRecords` returns). */
export function auditRecordFromRow(json: string, prev: string, hash: string): AuditRecord {
  return { ...(JSON.parse(json) as AuditBody), prev, hash };
}

export type AuditVerification =
  | { readonly ok: true; readonly count: number; readonly head: { seq: number; hash: string } }
  | { readonly ok: false; readonly count: number; readonly seq: number; readonly problem: string };

/**
 * Verifies records in order: sequence numbers consecutive from `from.seq + 1`, each `prev` the
 * hash before it, each `hash` recomputed from the record's members. `from` is where the records
 * start (default: the chain's beginning); the first failure is reported with its seq.
 *
 * @example
 * const v = verifyAuditChain(await store.auditRecords({ limit: 1000 }));
 * if (!v.ok) console.error(`record ${v.seq}: ${v.problem}`);
 */
export function verifyAuditChain(records: Iterable<AuditRecord>, from: { seq: number; hash: string } = { seq: 0, hash: AUDIT_GENESIS_HASH }): AuditVerification {
  let { seq, hash } = from;
  let count = 0;
  for (const r of records) {
    const expected = seq + 1;
    if (r.seq !== expected) return { ok: false, count, seq: r.seq, problem: `sequence number ${r.seq} where ${expected} was expected (a record removed or inserted)` };
    if (r.prev !== hash) return { ok: false, count, seq: r.seq, problem: "its previous hash is not the hash of the record before it" };
    const { prev: _prev, hash: stated, ...body } = r;
    let recomputed: string;
    try {
      recomputed = auditHash(hash, body);
    } catch {
      return { ok: false, count, seq: r.seq, problem: "it does not encode as canonical JSON" };
    }
    if (recomputed !== stated) return { ok: false, count, seq: r.seq, problem: "its hash does not match its contents (the record was altered)" };
    seq = r.seq;
    hash = stated;
    count++;
  }
  return { ok: true, count, head: { seq, hash } };
}
