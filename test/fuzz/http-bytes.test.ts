import fc from "fast-check";
import { base64url } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encryptCommonMessage } from "../../src/protocol/jose/common-message.js";
import { RawClient, startTestKms, type TestKms } from "../helpers/harness.js";
import { channel } from "../helpers/gmbc-fixtures.js";
import { rawHttp, type RawExchange } from "../helpers/fuzz-http.js";
import { fuzzParams, fuzzTimeout, isPlainObject, snapshotDiff, storeSnapshot } from "../helpers/fuzz-support.js";

/**
 * A byte-level fuzzer over the HTTP binding (§3, §10): raw TCP requests to a live KMS with random
 * methods, paths, headers (Content-Type variants, Content-Length lies, chunked bodies with bad
 * chunk sizes, duplicated headers), bodies in the single and batch forms, and truncations. The
 * server answers with a status of the profile's set (or closes a connection it cannot parse),
 * never 500, never crashes, and `GET /healthz` still answers after each case.
 */

/** Every HTTP status the profile's binding may give (§3), plus 100 Continue as an interim response. */
const PROFILE_STATUSES = [200, 204, 400, 404, 405, 408, 413, 415, 429, 431];
const MIB = 1024 * 1024;

const crlf = "\r\n";
/** `arb` one time in `n`, else undefined. */
const rarely = <T,>(arb: fc.Arbitrary<T>, n: number): fc.Arbitrary<T | undefined> =>
  fc.oneof({ weight: n - 1, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: arb });
/** `arb` except one time in `n` (then undefined). */
const mostly = <T,>(arb: fc.Arbitrary<T>, n: number): fc.Arbitrary<T | undefined> =>
  fc.oneof({ weight: 1, arbitrary: fc.constant(undefined) }, { weight: n - 1, arbitrary: arb });
const token = fc.stringMatching(/^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}$/);
const printable = fc.string({ unit: fc.constantFrom(..." !\"#$%&'()*+,-./0123456789:;<=>?@ABCXYZ[\\]^_`abcxyz{|}~\t"), maxLength: 40 });

interface Framing {
  readonly kind: "length" | "chunked" | "none";
  /** Content-Length: the true length plus this (a lie when not 0), or a raw value. */
  readonly lengthDelta: number;
  readonly rawLength?: string;
  readonly duplicateLength?: "same" | "different";
  /** Chunked: the chunk sizes to declare (hex text) for each piece, or the true ones. */
  readonly badChunk?: "garbage" | "negative" | "too-big" | "too-small" | "no-terminator" | "extension" | "trailer" | "huge";
  readonly pieces: number;
}

interface RawRequest {
  readonly method: string;
  readonly path: string;
  readonly version: string;
  readonly headers: readonly (readonly [string, string])[];
  readonly body: Buffer;
  readonly framing: Framing;
  /** Cut the serialized request at this fraction of its length (undefined: send it whole). */
  readonly truncateAt?: number;
}

/** A Buffer that fast-check prints as its length and first bytes (a counterexample may be megabytes). */
function shortPrinted(b: Buffer): Buffer {
  return Object.assign(b, { [fc.toStringMethod]: () => `<${b.length} bytes: ${JSON.stringify(b.subarray(0, 80).toString("latin1"))}>` });
}

describe("fuzz: the HTTP binding byte by byte (§3)", () => {
  let kms: TestKms;
  let port: number;
  let raw: RawClient;
  /** Real compact messages to put in bodies (key agreement, a ping on a channel). */
  let real: string[];

  beforeAll(async () => {
    kms = await startTestKms();
    port = Number(new URL(kms.url).port);
    raw = await channel(kms, "alice@example.com");
    real = [];
    for (let i = 0; i < 3; i++) real.push(await encryptCommonMessage(raw.key!, raw.uri!, await raw.payload()));
    real.push(await raw.ecdheMessage({ client: await raw.credential(), method: "create", uri: "/ecdhe", requestId: "http-fuzz", jwk: { kty: "EC" } }));
  }, 60_000);
  afterAll(async () => {
    await kms?.close();
  });

  // ─── Generators ────────────────────────────────────────────────────────────────────────────

  const method = fc.oneof(
    { weight: 6, arbitrary: fc.constantFrom("POST", "GET") },
    { weight: 3, arbitrary: fc.constantFrom("PUT", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE", "post", "BREW", "GET POST", "") },
    { weight: 1, arbitrary: token },
  );
  const path = fc.oneof(
    { weight: 8, arbitrary: fc.constant("/kms/messages") },
    {
      weight: 4,
      arbitrary: fc.constantFrom(
        "/healthz",
        "/readyz",
        "/metrics",
        "/.well-known/kms",
        "/.well-known/webfinger?resource=acct:alice@example.com",
        "/.well-known/webfinger",
        "/entities/alice@example.com/jwks",
        "/entities/%zz/jwks",
        "/kms/messages/",
        "/KMS/messages",
        "/kms/messages?x=1",
        "/kms/messages#f",
        "*",
        "http://kms.example.com/kms/messages",
        "//kms/messages",
        "/%00",
        "/..%2f..%2f",
        "/kms/ws",
        "/" + "a".repeat(9_000),
      ),
    },
    { weight: 1, arbitrary: printable.map((p) => "/" + p.replace(/[ \t]/g, "")) },
  );
  const version = fc.oneof({ weight: 10, arbitrary: fc.constant("HTTP/1.1") }, { weight: 2, arbitrary: fc.constantFrom("HTTP/1.0", "HTTP/0.9", "HTTP/2.0", "HTTP/1.2", "http/1.1", "HTTP/1.1 extra", "") });
  const contentType = fc.oneof(
    { weight: 6, arbitrary: fc.constantFrom("application/jose", "application/json") },
    {
      weight: 3,
      arbitrary: fc.constantFrom(
        "application/jose; charset=utf-8",
        "APPLICATION/JOSE",
        "application/json;",
        "application/jose, application/json",
        " application/json ",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jose+json",
        "",
        ";",
      ),
    },
    { weight: 1, arbitrary: printable },
  );
  const extraHeader = fc.oneof(
    fc.tuple(fc.constantFrom("Connection"), fc.constantFrom("close", "keep-alive", "Upgrade", "close, close")),
    fc.tuple(fc.constantFrom("Origin"), fc.constantFrom("https://app.example.com", "null")),
    fc.tuple(fc.constantFrom("Accept-Encoding", "Accept"), printable),
    fc.tuple(token, printable),
    fc.tuple(fc.constantFrom("X-Big"), fc.constantFrom("a".repeat(20_000), "b".repeat(70_000))),
    fc.tuple(fc.constantFrom("Bad Name", "Bad:Name", ""), printable),
    fc.tuple(fc.constantFrom("X-Ctl"), fc.constantFrom("a\u0000b", "a\rb", "a\nb", "\u007f")),
  );

  /** A body: JOSE-ish, a batch envelope, JSON that is not one, or random bytes (printed short on failure). */
  const body = fc.oneof(
    { weight: 3, arbitrary: fc.nat(3).map((i) => Buffer.from(real[i]!)) },
    { weight: 2, arbitrary: fc.tuple(fc.nat(3), fc.constantFrom("  ", "\n", "\r\n\t")).map(([i, ws]) => Buffer.from(ws + real[i]! + ws)) },
    {
      weight: 3,
      arbitrary: fc
        .record(
          {
            destination: fc.oneof(fc.constant("kms://kms.example.com"), fc.jsonValue()),
            kmsMessages: fc.oneof(
              fc.array(fc.oneof(fc.nat(3).map((i) => real[i]!), fc.string(), fc.jsonValue()), { maxLength: 6 }),
              fc.constant(Array.from({ length: 51 }, () => "x")),
              fc.jsonValue(),
            ),
          },
          { requiredKeys: [] },
        )
        .map((o) => Buffer.from(JSON.stringify(o))),
    },
    { weight: 1, arbitrary: fc.jsonValue().map((v) => Buffer.from(JSON.stringify(v))) },
    { weight: 2, arbitrary: fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)) },
    { weight: 1, arbitrary: fc.string({ unit: "binary", maxLength: 200 }).map((s) => Buffer.from(s)) },
    { weight: 1, arbitrary: fc.constant(Buffer.alloc(0)) },
    { weight: 1, arbitrary: fc.constantFrom(MIB + 1, 2 * MIB).map((n) => Buffer.alloc(n, 0x41)) },
  ).map(shortPrinted);
  const framing: fc.Arbitrary<Framing> = fc.oneof(
    {
      weight: 5,
      arbitrary: fc.record({
        kind: fc.constant("length" as const),
        lengthDelta: fc.oneof({ weight: 4, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: -10, max: 10 }) }),
        rawLength: rarely(fc.constantFrom("-1", "abc", "1 2", "0x10", "99999999999999999999", "", "+5", " 5"), 8),
        duplicateLength: rarely(fc.constantFrom("same" as const, "different" as const), 6),
        pieces: fc.constant(1),
      }),
    },
    {
      weight: 3,
      arbitrary: fc.record({
        kind: fc.constant("chunked" as const),
        lengthDelta: fc.constant(0),
        badChunk: rarely(fc.constantFrom("garbage" as const, "negative" as const, "too-big" as const, "too-small" as const, "no-terminator" as const, "extension" as const, "trailer" as const, "huge" as const), 2),
        pieces: fc.integer({ min: 1, max: 4 }),
      }),
    },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant("none" as const), lengthDelta: fc.constant(0), pieces: fc.constant(1) }) },
  );
  const request: fc.Arbitrary<RawRequest> = fc.record({
    method,
    path,
    version,
    headers: fc
      .tuple(
        mostly(contentType, 8),
        rarely(contentType, 8),
        fc.oneof({ weight: 7, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
        fc.array(extraHeader, { maxLength: 3 }),
        rarely(fc.constantFrom("chunked", "gzip, chunked", "chunked, gzip", "identity", "chunked, chunked"), 8),
      )
      .map(([ct, ct2, host, extra, te]) => {
        const h: [string, string][] = [];
        if (host) h.push(["Host", "kms.example.com"]);
        if (ct !== undefined) h.push(["Content-Type", ct]);
        if (ct2 !== undefined) h.push(["content-type", ct2]);
        if (te !== undefined) h.push(["Transfer-Encoding", te]);
        return [...h, ...extra];
      }),
    body,
    framing,
    truncateAt: rarely(fc.double({ min: 0, max: 1, noNaN: true }), 4),
  });

  function serialize(r: RawRequest): Buffer {
    const head: string[] = [`${r.method} ${r.path}${r.version ? " " + r.version : ""}`];
    for (const [k, v] of r.headers) head.push(`${k}: ${v}`);
    let payload: Buffer = r.body;
    const f = r.framing;
    if (f.kind === "length") {
      const value = f.rawLength ?? String(r.body.length + f.lengthDelta);
      head.push(`Content-Length: ${value}`);
      if (f.duplicateLength === "same") head.push(`Content-Length: ${value}`);
      if (f.duplicateLength === "different") head.push(`Content-Length: ${r.body.length + 1}`);
    } else if (f.kind === "chunked") {
      if (!r.headers.some(([k]) => k.toLowerCase() === "transfer-encoding")) head.push("Transfer-Encoding: chunked");
      const pieces: Buffer[] = [];
      const n = f.pieces;
      const size = Math.ceil(r.body.length / n) || 1;
      for (let i = 0; i < r.body.length; i += size) pieces.push(r.body.subarray(i, i + size));
      const out: Buffer[] = [];
      pieces.forEach((p, i) => {
        let declared = p.length.toString(16);
        if (i === 0 && f.badChunk === "garbage") declared = "zz";
        if (i === 0 && f.badChunk === "negative") declared = "-" + declared;
        if (i === 0 && f.badChunk === "too-big") declared = (p.length + 5).toString(16);
        if (i === 0 && f.badChunk === "too-small") declared = Math.max(0, p.length - 1).toString(16);
        if (i === 0 && f.badChunk === "huge") declared = "ffffffffffffffffff";
        if (i === 0 && f.badChunk === "extension") declared += ";name=value";
        out.push(Buffer.from(declared + crlf), p, Buffer.from(crlf));
      });
      if (f.badChunk !== "no-terminator") out.push(Buffer.from(f.badChunk === "trailer" ? `0${crlf}X-Trailer: 1${crlf}${crlf}` : `0${crlf}${crlf}`));
      payload = Buffer.concat(out);
    }
    const whole = Buffer.concat([Buffer.from(head.join(crlf) + crlf + crlf, "latin1"), payload]);
    return r.truncateAt === undefined ? whole : whole.subarray(0, Math.floor(whole.length * r.truncateAt));
  }

  /** A request the server cannot complete without more bytes: the client half-closes it at once. */
  function knownIncomplete(r: RawRequest): boolean {
    const f = r.framing;
    if (r.truncateAt !== undefined) return true;
    if (f.kind === "length") return f.lengthDelta > 0 || f.rawLength !== undefined || f.duplicateLength === "different";
    if (f.kind === "chunked") return f.badChunk === "too-big" || f.badChunk === "no-terminator" || f.badChunk === "huge";
    return false;
  }

  function describeRequest(r: RawRequest): string {
    return JSON.stringify({ ...r, body: `${r.body.length} bytes: ${r.body.subarray(0, 60).toString("latin1")}`, headers: r.headers.map(([k, v]) => [k, v.slice(0, 40)]) });
  }

  async function healthy(): Promise<void> {
    const res = await fetch(`${kms.url}/healthz`);
    expect(res.status, "GET /healthz still answers").toBe(200);
    await res.text();
  }

  function expectProfileStatuses(ex: RawExchange, what: string): void {
    for (const r of ex.responses) {
      expect(r.status, `never an internal error: ${what}`).not.toBe(500);
      expect(PROFILE_STATUSES, `a status of the profile's set: ${what}`).toContain(r.status);
    }
    // Whatever the server wrote is a response, or it closed the connection (unparseable HTTP).
    expect(ex.trailing.length === 0 || ex.closedByServer, `no garbage after the responses: ${what}`).toBe(true);
    expect(ex.responses.length > 0 || ex.closedByServer, `an answer or a closed connection: ${what}`).toBe(true);
  }

  it("random requests: a status of the profile's set or a closed connection, never 500; /healthz answers after each", async () => {
    const seen = new Map<string, number>();
    await fc.assert(
      fc.asyncProperty(request, async (r) => {
        const ex = await rawHttp(port, serialize(r), { head: r.method === "HEAD", halfClose: knownIncomplete(r) ? "now" : "after-response", idleMs: 1_500 });
        expect(ex.timedOut, `the server answers or closes: ${describeRequest(r)}`).toBe(false);
        expectProfileStatuses(ex, describeRequest(r));
        const outcome = ex.responses.length ? String(ex.responses[0]!.status) : "closed";
        seen.set(outcome, (seen.get(outcome) ?? 0) + 1);
        await healthy();
      }),
      fuzzParams(150),
    );
    // The generator reaches the binding's main outcomes (a fuzzer that only ever gets 400 tests little).
    if (fuzzParams(150).numRuns! >= 100) {
      expect(seen.size, `outcomes seen: ${JSON.stringify([...seen])}`).toBeGreaterThanOrEqual(4);
    }
    if (process.env.KEYWARD_FUZZ_STATS) console.log("HTTP outcomes", JSON.stringify([...seen].sort()));
  }, fuzzTimeout(150, 150));

  /** What §3 says a well-framed POST /kms/messages gets. */
  function expectedStatus(type: string | undefined, bodyBytes: Buffer): number {
    const t = (type ?? "").split(";")[0]!.trim().toLowerCase();
    if (t !== "application/jose" && t !== "application/json") return 415;
    if (bodyBytes.length > MIB) return 413;
    const text = bodyBytes.toString("utf8");
    if (t === "application/jose") return isCompactJose(text.trim()) ? 200 : 400;
    let env: unknown;
    try {
      env = JSON.parse(text);
    } catch {
      return 400;
    }
    if (!isPlainObject(env) || !Array.isArray(env.kmsMessages) || (env.destination !== undefined && typeof env.destination !== "string")) return 400;
    if (env.kmsMessages.length > 50) return 413;
    return 200;
  }

  function isCompactJose(s: string): boolean {
    const parts = s.split(".");
    if ((parts.length !== 3 && parts.length !== 5) || parts[0] === "" || !parts.every((p) => /^[A-Za-z0-9_-]*$/.test(p)) || parts[0]!.length % 4 === 1) return false;
    try {
      return isPlainObject(JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(base64url.decode(parts[0]!))));
    } catch {
      return false;
    }
  }

  it("well-framed POST /kms/messages: the status §3 gives, a JOSE body for the single form, one reply per batch item", async () => {
    const wellFramed = fc.record({
      type: mostly(contentType, 10),
      body,
      chunked: fc.boolean(),
    });
    await fc.assert(
      fc.asyncProperty(wellFramed, async ({ type, body: b, chunked }) => {
        const r: RawRequest = {
          method: "POST",
          path: "/kms/messages",
          version: "HTTP/1.1",
          headers: [["Host", "kms.example.com"], ...(type !== undefined ? [["Content-Type", type] as const] : [])],
          body: b,
          framing: chunked ? { kind: "chunked", lengthDelta: 0, pieces: 2 } : { kind: "length", lengthDelta: 0, pieces: 1 },
        };
        const before = (await storeSnapshot(kms));
        // Well framed, so the client waits for the answer before it half-closes (generously: the machine is loaded).
        const ex = await rawHttp(port, serialize(r), { idleMs: 15_000, timeoutMs: 25_000 });
        expect(ex.timedOut).toBe(false);
        const what = describeRequest(r);
        expectProfileStatuses(ex, what);
        expect(ex.responses.length, what).toBeGreaterThanOrEqual(1);
        const res = ex.responses[0]!;
        const want = expectedStatus(type, b);
        expect(res.status, what).toBe(want);
        const t = (type ?? "").split(";")[0]!.trim().toLowerCase();
        if (t === "application/jose" && (want === 200 || want === 400)) {
          expect(res.headers["content-type"]).toBe("application/jose");
          expect(isCompactJose(res.body.toString("utf8")), "the reply is a compact JOSE message").toBe(true);
        }
        if (t === "application/json" && want === 200) {
          const sent = (JSON.parse(b.toString("utf8")) as { kmsMessages: unknown[] }).kmsMessages;
          const replies = (JSON.parse(res.body.toString("utf8")) as { kmsMessages: unknown[] }).kmsMessages;
          expect(replies).toHaveLength(sent.length);
          for (const reply of replies) expect(typeof reply === "string" && isCompactJose(reply)).toBe(true);
        }
        // No body here holds a request that stores anything (pings, and a key agreement whose jwk
        // is refused), so the store is unchanged whatever the status.
        expect(snapshotDiff(before, (await storeSnapshot(kms)))).toEqual([]);
        await healthy();
      }),
      fuzzParams(60),
    );
  }, fuzzTimeout(60, 300));

  it("§10: a batch body over 1 MiB is refused with 413, nothing processed", async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 2, max: 4 }), fc.integer({ min: 300_000, max: 900_000 }), async (n, size) => {
        const items = Array.from({ length: n }, (_v, i) => (i === 0 ? real[0]! : "A".repeat(size)));
        const b = Buffer.from(JSON.stringify({ destination: "kms://kms.example.com", kmsMessages: items }));
        // The whole body is what §10 limits (not the item count times the item size).
        fc.pre(b.length > MIB);
        const before = (await storeSnapshot(kms));
        const ex = await rawHttp(port, serialize({ method: "POST", path: "/kms/messages", version: "HTTP/1.1", headers: [["Host", "x"], ["Content-Type", "application/json"]], body: b, framing: { kind: "length", lengthDelta: 0, pieces: 1 } }));
        expect(ex.responses[0]?.status).toBe(413);
        expect(snapshotDiff(before, (await storeSnapshot(kms)))).toEqual([]);
      }),
      fuzzParams(3, { endOnFailure: true }),
    );
  }, 60_000);
});
