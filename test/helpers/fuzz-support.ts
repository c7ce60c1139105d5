import Database from "better-sqlite3";
import pg from "pg";
import fc from "fast-check";
import { base64url, CompactEncrypt, compactVerify, importJWK, type JWK } from "jose";
import { expect } from "vitest";
import { decryptCommonMessage } from "../../src/protocol/jose/common-message.js";
import { startTestKms, staticJwk, type TestKms } from "./harness.js";
import { freshSchema, TEST_POSTGRES_URL } from "./postgres.js";

/**
 * Shared pieces of the property-based fuzzers in test/fuzz/: run counts, hostile JSON values,
 * a JSON serializer that can emit what JSON.stringify cannot (-0, 1e400, unsafe integers), the
 * reply oracle (what a well-formed reply of the profile is), and a snapshot of the SQLite store.
 */

// ─── Run counts and seeds ────────────────────────────────────────────────────────────────────

/**
 * Runs of one property: its default (small enough for CI on a loaded 2-core machine), or
 * `KEYWARD_FUZZ_RUNS=N` for every property. Seeds are random; fast-check prints the seed and the
 * shrunk path of any failure, and `KEYWARD_FUZZ_SEED=<seed>` replays a run.
 *
 * @example
 * await fc.assert(fc.asyncProperty(arb, check), fuzzParams(100));
 */
export function fuzzRuns(defaultRuns: number): number {
  const n = Number(process.env.KEYWARD_FUZZ_RUNS);
  return Number.isInteger(n) && n > 0 ? n : defaultRuns;
}

export function fuzzParams<T>(defaultRuns: number, extra: fc.Parameters<T> = {}): fc.Parameters<T> {
  const seed = Number(process.env.KEYWARD_FUZZ_SEED);
  return { numRuns: fuzzRuns(defaultRuns), ...(Number.isInteger(seed) ? { seed } : {}), ...extra };
}

/** A test timeout that grows with the run count: `msPerRun` per run on top of a base. */
export function fuzzTimeout(defaultRuns: number, msPerRun: number, base = 20_000): number {
  return base + fuzzRuns(defaultRuns) * msPerRun;
}

// ─── JSON values, hostile ones included ──────────────────────────────────────────────────────

/** A JSON text fragment inserted verbatim by `jsonText` (for numbers JSON.stringify cannot write). */
export class RawJson {
  constructor(readonly text: string) {}
  toString(): string {
    return `RawJson(${this.text})`;
  }
}

/** JSON.stringify, with RawJson fragments written as their text. */
export function jsonText(value: unknown): string {
  const raws: string[] = [];
  const text = JSON.stringify(value, (_k, v: unknown) => {
    if (v instanceof RawJson) {
      raws.push(v.text);
      return `\u0000raw${raws.length - 1}\u0000`;
    }
    return v;
  });
  // The placeholder is a JSON string; its NUL characters come out escaped as \u0000.
  return text.replace(/"\\u0000raw(\d+)\\u0000"/g, (_m, i: string) => raws[Number(i)]!);
}

/** Nested arrays/objects `depth` levels deep, built iteratively. */
export function deepArray(depth: number): unknown {
  let v: unknown = [];
  for (let i = 0; i < depth; i++) v = [v];
  return v;
}
export function deepObject(depth: number): unknown {
  let v: unknown = {};
  for (let i = 0; i < depth; i++) v = { a: v };
  return v;
}

/** Objects whose own keys are `__proto__`, `constructor`, `prototype` (made by JSON.parse, as a server sees them). */
const PROTO_OBJECTS = [
  '{"__proto__": {"admin": true, "status": 200}}',
  '{"constructor": {"prototype": {"admin": true}}}',
  '{"__proto__": null}',
  '{"prototype": 1, "hasOwnProperty": 2, "toString": "x", "valueOf": 3}',
  '{"__proto__": [], "length": 1}',
].map((t) => JSON.parse(t) as unknown);

/** Hand-picked hostile values: huge and odd strings, deep nesting, prototype keys, edge numbers. */
export const HOSTILE_VALUES: readonly unknown[] = [
  "",
  " ",
  "a".repeat(256),
  "a".repeat(257),
  "a".repeat(5_000),
  "x".repeat(200_000),
  "\u0000",
  "\ud800",
  "\udfff",
  "a\ud800b",
  "\ud83d",
  "\u202e\u0000\uffff",
  "NaN",
  "Infinity",
  "-Infinity",
  "-0",
  "1e400",
  "0x10",
  " 7",
  "null",
  "undefined",
  "true",
  "%00%ff",
  "../../../etc/passwd",
  "/gks/../ecdhe",
  "kms://evil.example.com/gks/1",
  "acct:",
  "@",
  "alice@",
  "@example.com",
  "alice@example.com",
  "ACCT:alice@EXAMPLE.com",
  "kms://kms.example.com",
  "0".repeat(64),
  "f".repeat(64),
  0,
  -1,
  1.5,
  2 ** 53,
  2 ** 53 - 1,
  2 ** 53 + 2,
  -(2 ** 53),
  -(2 ** 53) + 1,
  Number.MAX_VALUE,
  Number.MIN_VALUE,
  1e21,
  new RawJson("-0"),
  new RawJson("1e400"),
  new RawJson("-1e400"),
  new RawJson("9007199254740993"),
  new RawJson("1.0"),
  new RawJson("1E2"),
  new RawJson("0.1e-400"),
  new RawJson('"\\ud800"'),
  new RawJson('"\\udc00\\ud800"'),
  true,
  false,
  null,
  [],
  {},
  [null],
  deepArray(200),
  deepObject(200),
  // Deeper nesting as raw text, so that only the server (not this test's own JSON.stringify) recurses.
  new RawJson("[".repeat(20_000) + "]".repeat(20_000)),
  new RawJson('{"a":'.repeat(20_000) + "{}" + "}".repeat(20_000)),
  ...PROTO_OBJECTS,
];

export const hostileValue: fc.Arbitrary<unknown> = fc.constantFrom(...HOSTILE_VALUES);

/** A random JSON value of any type, or a hostile one. */
export const anyJsonValue: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 3, arbitrary: fc.jsonValue({ maxDepth: 3 }) },
  { weight: 2, arbitrary: hostileValue },
);

/** Marks a field to be removed rather than replaced. */
export const DELETE = Symbol("delete");
export const replacement: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 8, arbitrary: anyJsonValue },
  { weight: 1, arbitrary: fc.constant(DELETE) },
);

/** A deep copy of `base` with the value at `path` replaced (or removed, with DELETE). */
export function withField(base: Record<string, unknown>, path: readonly string[], value: unknown): Record<string, unknown> {
  const copy = structuredClone(base);
  let node: Record<string, unknown> = copy;
  for (const key of path.slice(0, -1)) {
    const next = node[key];
    if (typeof next !== "object" || next === null) {
      node[key] = {};
    }
    node = node[key] as Record<string, unknown>;
  }
  const last = path[path.length - 1]!;
  if (value === DELETE) delete node[last];
  else Object.defineProperty(node, last, { value, enumerable: true, writable: true, configurable: true });
  return copy;
}

export const b64urlBytes = (maxLength = 48): fc.Arbitrary<string> => fc.uint8Array({ maxLength }).map((b) => base64url.encode(b));

// ─── Talking to a channel with raw plaintext ─────────────────────────────────────────────────

/** A common message (§4) on `kid` whose plaintext is `text`, exactly. */
export function sealText(key: Uint8Array, kid: string, text: string): Promise<string> {
  return new CompactEncrypt(new TextEncoder().encode(text)).setProtectedHeader({ alg: "dir", enc: "A256GCM", kid }).encrypt(key);
}

// ─── The reply oracle ────────────────────────────────────────────────────────────────────────

export type OpenedReply =
  | { form: "jws"; header: Record<string, unknown>; payload: Record<string, unknown> }
  | { form: "jwe"; kid: string; header: Record<string, unknown>; payload: Record<string, unknown> };

/** Opens replies: JWS verified with the static key, common messages decrypted with a known channel key. */
export class ReplyOpener {
  private constructor(
    private readonly kms: TestKms,
    private readonly verifyKey: CryptoKey,
    private readonly alg: string,
  ) {}

  static async for(kms: TestKms): Promise<ReplyOpener> {
    const jwk = await staticJwk(kms.url);
    const { x5c: _x, ...bare } = jwk as JWK;
    const alg = jwk.kty === "EC" ? "ES256" : "RS256";
    return new ReplyOpener(kms, (await importJWK(bare, alg)) as CryptoKey, alg);
  }

  /**
   * Opens `reply`; fails the test unless it is a JWS signed by the static key (header kid = static
   * kid) or a common message `{"alg":"dir","enc":"A256GCM","kid":<channel uri>}` that decrypts with
   * that channel's key (`keys`: channel uri → key). Either way the payload is a JSON object.
   */
  async open(reply: string, keys: ReadonlyMap<string, Uint8Array>): Promise<OpenedReply> {
    const parts = reply.split(".");
    expect([3, 5], `a reply is a compact JWS or JWE: ${reply.slice(0, 80)}`).toContain(parts.length);
    const header = JSON.parse(new TextDecoder().decode(base64url.decode(parts[0]!))) as Record<string, unknown>;
    if (parts.length === 3) {
      expect(header.kid, "a JWS reply names the static key").toBe(this.kms.kid);
      expect(header.alg).toBe(this.alg);
      const { payload } = await compactVerify(reply, this.verifyKey, { algorithms: [this.alg] });
      const json = JSON.parse(new TextDecoder().decode(payload)) as unknown;
      expect(isPlainObject(json), "a JWS reply's payload is a JSON object").toBe(true);
      return { form: "jws", header, payload: json as Record<string, unknown> };
    }
    expect(Object.keys(header).sort(), "a common message's header has exactly alg, enc, kid").toEqual(["alg", "enc", "kid"]);
    expect({ alg: header.alg, enc: header.enc }).toEqual({ alg: "dir", enc: "A256GCM" });
    const key = keys.get(header.kid as string);
    expect(key, `a common-message reply names a channel the client holds (${String(header.kid)})`).toBeDefined();
    expect(parts[1], "a dir JWE has an empty encrypted key").toBe("");
    const { payload } = await decryptCommonMessage(key!, reply);
    expect(isPlainObject(payload), "a common message's payload is a JSON object").toBe(true);
    return { form: "jwe", kid: header.kid as string, header, payload: payload as Record<string, unknown> };
  }
}

/** §4: a status that is an integer, never 500, and a string reason on every error. */
export function expectWellFormedStatus(payload: Record<string, unknown>, context = ""): number {
  const status = payload.status;
  expect(Number.isInteger(status), `status is an integer ${context}`).toBe(true);
  expect(status, `never an internal error ${context}: ${String(payload.reason)}`).not.toBe(500);
  expect(status as number).toBeGreaterThanOrEqual(200);
  expect(status as number).toBeLessThan(500);
  if ((status as number) >= 400) expect(typeof payload.reason, `an error has a string reason ${context}`).toBe("string");
  return status as number;
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

// ─── The store, as a client could see it ─────────────────────────────────────────────────────

/** Rows of each table, as sorted JSON lines, with the bookkeeping left out (see storeSnapshot). */
function bookkeepingFree(tables: Record<string, Record<string, unknown>[]>): string {
  const out: Record<string, string[]> = {};
  for (const [table, rows] of Object.entries(tables)) {
    if (table === "channel_requests") continue;
    // The audit log records refusals by design (§13: every 401/403); its own tests
    // (test/server/audit.test.ts) check what a refusal writes there. It is no state a client sees.
    if (table === "audit_log" || table === "audit_head") continue;
    out[table] = rows
      .map((r) => {
        if (table !== "channels") return JSON.stringify(r);
        const { message_count: _c, ...rest } = r;
        return JSON.stringify(rest);
      })
      .sort();
  }
  return JSON.stringify(Object.fromEntries(Object.entries(out).sort(([a], [b]) => (a < b ? -1 : 1))));
}

/**
 * Every table of the store except the replay records, with the channels' message counter left
 * out: both are channel bookkeeping that any authenticated request may change
 * (docs/protocol-decisions.md decision 4). Everything else must be unchanged by a refusal.
 * SQLite is read through its file; PostgreSQL through the schema named in the store URL.
 */
export async function storeSnapshot(kms: TestKms): Promise<string> {
  const store = kms.config.store;
  if (store.kind === "postgres") {
    const url = new URL(store.url);
    const schema = url.searchParams.get("schema") ?? "public";
    url.searchParams.delete("schema");
    const client = await snapshotClient(url.toString());
    const names = (await client.query<{ table_name: string }>("SELECT table_name FROM information_schema.tables WHERE table_schema = $1", [schema])).rows;
    const tables: Record<string, Record<string, unknown>[]> = {};
    for (const { table_name } of names) tables[table_name] = (await client.query(`SELECT * FROM "${schema}"."${table_name}"`)).rows;
    return bookkeepingFree(tables);
  }
  const db = new Database(store.path, { readonly: true });
  try {
    const names = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as { name: string }[]).map((t) => t.name);
    return bookkeepingFree(Object.fromEntries(names.map((t) => [t, db.prepare(`SELECT * FROM "${t}"`).all() as Record<string, unknown>[]])));
  } finally {
    db.close();
  }
}

/** One PostgreSQL connection per server for snapshots (a connection per snapshot costs more than the request). */
const snapshotClients = new Map<string, Promise<pg.Client>>();
function snapshotClient(url: string): Promise<pg.Client> {
  let client = snapshotClients.get(url);
  if (!client) {
    client = (async () => {
      const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 });
      c.on("error", () => {});
      await c.connect();
      return c;
    })();
    snapshotClients.set(url, client);
  }
  return client;
}

/** Closes the snapshot connections (call in afterAll of a suite that snapshots PostgreSQL). */
export async function closeSnapshotClients(): Promise<void> {
  const clients = [...snapshotClients.values()];
  snapshotClients.clear();
  await Promise.all(clients.map(async (c) => (await c).end().catch(() => {})));
}

/** The differing tables of two snapshots, for a readable failure. */
export function snapshotDiff(before: string, after: string): string[] {
  const a = JSON.parse(before) as Record<string, string[]>;
  const b = JSON.parse(after) as Record<string, string[]>;
  return Object.keys({ ...a, ...b }).filter((t) => JSON.stringify(a[t]) !== JSON.stringify(b[t]));
}

/**
 * A test KMS on the given store: SQLite in its temp data dir, or PostgreSQL in a fresh schema of
 * the test server (`dropSchema` removes it; undefined for SQLite).
 *
 * @example
 * const { kms, dropSchema } = await startTestKmsOn("postgres");
 */
export async function startTestKmsOn(storeKind: "sqlite" | "postgres"): Promise<{ kms: TestKms; dropSchema?: () => Promise<void> }> {
  if (storeKind === "sqlite") return { kms: await startTestKms() };
  const fresh = freshSchema();
  const url = new URL(TEST_POSTGRES_URL);
  url.searchParams.set("schema", fresh.schema);
  return { kms: await startTestKms({ env: { KEYWARD_STORE_URL: url.toString() } }), dropSchema: fresh.dropSchema };
}
