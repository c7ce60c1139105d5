import fc from "fast-check";
import { base64url, exportJWK } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { METHODS } from "../../src/protocol/constants.js";
import { KmsError } from "../../src/protocol/errors.js";
import { encryptCommonMessage } from "../../src/protocol/jose/common-message.js";
import { inspectCompact } from "../../src/protocol/jose/compact.js";
import { generateEphemeralKeyPair } from "../../src/protocol/jose/ephemeral-key.js";
import { parseCredential, parseRequest, requestIdOf } from "../../src/protocol/messages.js";
import { RawClient, startTestKms, type TestKms } from "../helpers/harness.js";
import { channel } from "../helpers/gmbc-fixtures.js";
import {
  anyJsonValue,
  b64urlBytes,
  expectWellFormedStatus,
  fuzzParams,
  fuzzTimeout,
  hostileValue,
  isPlainObject,
  jsonText,
  ReplyOpener,
  sealText,
  type OpenedReply,
} from "../helpers/fuzz-support.js";

/**
 * §4 message decoding, fuzzed: the pure decoders (inspectCompact, parseCredential, parseRequest,
 * requestIdOf) and the core's handle() fed arbitrary strings, near-JOSE strings and mutations of
 * real messages. Whatever comes in, the reply is a well-formed message of the profile, in the form
 * §4 prescribes for the key the message names, and never an internal error.
 */

const AUTHORITY = "kms.example.com";
const STATIC_KID = `kms://${AUTHORITY}`;
const B64URL_PART = /^[A-Za-z0-9_-]*$/;
const exactB64 = (n: number) => fc.uint8Array({ minLength: n, maxLength: n }).map((b) => base64url.encode(b));

/** Accepts a KmsError of one of `statuses`; anything else thrown fails. */
function expectKmsError(e: unknown, statuses: readonly number[]): KmsError {
  expect(e, `only KmsError may escape a decoder, got ${String(e)}`).toBeInstanceOf(KmsError);
  const err = e as KmsError;
  expect(statuses).toContain(err.status);
  expect(typeof err.reason).toBe("string");
  expect(typeof err.code).toBe("string");
  return err;
}

// ─── Values a decoder may be fed ─────────────────────────────────────────────────────────────

const anyString = fc.oneof(
  fc.string({ maxLength: 200 }),
  fc.string({ unit: "binary", maxLength: 200 }),
  fc.string({ unit: fc.constantFrom(..."AZaz09-_.=+/ \n{}\""), maxLength: 200 }),
);

/** A request payload: random JSON, or the request shape with each member random or right. */
const payloadLike: fc.Arbitrary<unknown> = fc.oneof(
  anyJsonValue,
  fc.record(
    {
      client: fc.oneof(
        anyJsonValue,
        fc.record(
          {
            clientId: fc.oneof(fc.string(), anyJsonValue),
            credential: fc.oneof(
              anyJsonValue,
              fc.record({ bearer: fc.oneof(fc.string(), anyJsonValue), userId: anyJsonValue }, { requiredKeys: [] }),
              fc.record({ jwk: anyJsonValue }),
            ),
          },
          { requiredKeys: [] },
        ),
      ),
      method: fc.oneof(fc.constantFrom("create", "retrieve", "update", "delete", "post", "get", "CREATE", "Get", "patch", "__proto__", "constructor", "toString"), anyJsonValue),
      uri: fc.oneof(fc.constantFrom("/ping", "/gks", "kms://kms.example.com/ecdhe", "", "ping"), fc.string(), anyJsonValue),
      requestId: fc.oneof(fc.string(), fc.integer(), anyJsonValue),
    },
    { requiredKeys: [] },
  ),
  fc.constant(JSON.parse('{"__proto__": {"client": {"clientId": "c", "credential": {"bearer": "t"}}}, "method": "update", "uri": "/ping", "requestId": 1}')),
);

// ─── The pure decoders ───────────────────────────────────────────────────────────────────────

describe("fuzz: the message decoders (§4), pure", () => {
  it("inspectCompact: a JWS/JWE with an object header, or a 400; nothing else", () => {
    const nearCompact = fc
      .tuple(fc.oneof(b64urlBytes(), fc.jsonValue().map((v) => base64url.encode(JSON.stringify(v))), anyString), fc.array(fc.oneof(b64urlBytes(), anyString), { maxLength: 6 }))
      .map(([h, rest]) => [h, ...rest].join("."));
    fc.assert(
      fc.property(fc.oneof(anyString, nearCompact), (message) => {
        let info;
        try {
          info = inspectCompact(message);
        } catch (e) {
          expect(expectKmsError(e, [400]).code).toBe("ERR_NOT_JOSE");
          return;
        }
        const parts = message.split(".");
        expect(info.kind).toBe(parts.length === 3 ? "jws" : "jwe");
        expect([3, 5]).toContain(parts.length);
        expect(parts.every((p) => B64URL_PART.test(p))).toBe(true);
        expect(isPlainObject(info.header)).toBe(true);
      }),
      fuzzParams(1_000),
    );
  });

  it("requestIdOf: the payload's requestId when it is a string or a finite number, else undefined", () => {
    fc.assert(
      fc.property(payloadLike, (payload) => {
        const id = requestIdOf(payload);
        if (id === undefined) return;
        expect(typeof id === "string" || (typeof id === "number" && Number.isFinite(id))).toBe(true);
        expect(Object.is(id, (payload as Record<string, unknown>).requestId)).toBe(true);
      }),
      fuzzParams(1_000),
    );
  });

  it("parseCredential: a bearer or a jwk credential, or 401 (no credential) / 400 (not an object)", () => {
    fc.assert(
      fc.property(payloadLike, (payload) => {
        let credential;
        try {
          credential = parseCredential(payload);
        } catch (e) {
          const err = expectKmsError(e, [400, 401]);
          expect(err.status === 400).toBe(!isPlainObject(payload));
          return;
        }
        if ("bearer" in credential) {
          expect(typeof credential.bearer).toBe("string");
          expect(credential.bearer.length).toBeGreaterThan(0);
        } else {
          expect(isPlainObject(credential.jwk)).toBe(true);
        }
      }),
      fuzzParams(1_000),
    );
  });

  it("parseRequest: credential first (401), then fields (400 naming the field); a result has every required member", () => {
    fc.assert(
      fc.property(payloadLike, (payload) => {
        let credentialError: unknown;
        try {
          parseCredential(payload);
        } catch (e) {
          credentialError = e;
        }
        let request;
        try {
          request = parseRequest(payload);
        } catch (e) {
          const err = expectKmsError(e, [400, 401]);
          if (credentialError) {
            expect(err.status).toBe((credentialError as KmsError).status);
          } else {
            expect(err.status).toBe(400);
            expect(err.reason).toMatch(/client\.clientId|requestId|method|uri/);
          }
          return;
        }
        expect(credentialError).toBeUndefined();
        expect(METHODS).toContain(request.method);
        expect(typeof request.uri).toBe("string");
        expect(request.uri.length).toBeGreaterThan(0);
        expect(typeof request.client.clientId).toBe("string");
        expect(requestIdOf(request)).toBeDefined();
      }),
      fuzzParams(1_000),
    );
  });
});

// ─── The core, fed anything ──────────────────────────────────────────────────────────────────

describe("fuzz: the core's handle() (§4): every reply well formed, in the form the named key prescribes", () => {
  let kms: TestKms;
  let opener: ReplyOpener;
  let live: RawClient;
  let deletedUri: string;
  let keys: Map<string, Uint8Array>;
  /** Real messages to mutate. */
  let seeds: string[];
  /** A valid EC P-256 `epk` header value (so that static-key messages get past the point check). */
  let epk: Record<string, unknown>;

  beforeAll(async () => {
    kms = await startTestKms();
    opener = await ReplyOpener.for(kms);
    live = await channel(kms, "alice@example.com");
    const gone = await channel(kms, "alice@example.com");
    deletedUri = gone.uri!;
    const del = await gone.request({ method: "delete", uri: gone.uri });
    expect(del.payload.status).toBe(204);
    keys = new Map([[live.uri!, live.key!]]);
    const pair = await generateEphemeralKeyPair();
    const { kty, crv, x, y } = await exportJWK(pair.publicKey);
    epk = { kty, crv, x, y };
    const ecdhe = await live.ecdheMessage({ client: await live.credential(), method: "create", uri: "/ecdhe", requestId: "seed", jwk: epk });
    const ping = await encryptCommonMessage(live.key!, live.uri!, await live.payload({ requestId: "seed-ping" }));
    const gk = await encryptCommonMessage(live.key!, live.uri!, await live.payload({ method: "create", uri: "/gks", requestId: 7 }));
    seeds = [ecdhe, ping, gk];
  }, 60_000);
  afterAll(async () => {
    await kms?.close();
  });

  /** §1: the path an ephemeral-key uri names, if it is one of this KMS's (kid by uri or by path). */
  function ecdhePathOf(kid: unknown): string | undefined {
    if (typeof kid !== "string") return undefined;
    let path: string;
    if (kid.startsWith("kms://")) {
      const rest = kid.slice(6);
      const slash = rest.indexOf("/");
      if ((slash === -1 ? rest : rest.slice(0, slash)).toLowerCase() !== AUTHORITY) return undefined;
      path = slash === -1 ? "/" : rest.slice(slash);
    } else if (kid.startsWith("/")) path = kid;
    else return undefined;
    const segments = path.replace(/[?#].*$/, "").split("/").filter((s) => s.length > 0);
    return segments.length === 2 && segments[0] === "ecdhe" ? `kms://${AUTHORITY}/ecdhe/${segments[1]}` : undefined;
  }

  /** The header of `message` when it is a JOSE compact serialization, else undefined (independent of the server's decoder). */
  function joseHeader(message: string): Record<string, unknown> | undefined {
    const parts = message.split(".");
    if (parts.length !== 3 && parts.length !== 5) return undefined;
    if (parts[0] === "" || !parts.every((p) => B64URL_PART.test(p))) return undefined;
    if (parts[0]!.length % 4 === 1) return undefined; // not a base64url length
    try {
      const header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(Buffer.from(parts[0]!, "base64url")));
      return isPlainObject(header) ? header : undefined;
    } catch {
      return undefined;
    }
  }

  /** The header checks §2/§4 make on a common message before decrypting it. */
  function commonHeaderBroken(h: Record<string, unknown>): boolean {
    return h.alg !== "dir" || h.enc !== "A256GCM" || h.crit !== undefined || h.zip !== undefined;
  }

  /** §2: a key-agreement header that must be refused with 400 before decrypting. */
  function staticHeaderBroken(h: Record<string, unknown>): boolean {
    return (
      typeof h.alg !== "string" ||
      !["ECDH-ES+A256KW", "ECDH-ES"].includes(h.alg) ||
      h.enc !== "A256GCM" ||
      h.crit !== undefined ||
      h.zip !== undefined
    );
  }

  /** Outcomes per kind of key named (KEYWARD_FUZZ_STATS=1 prints them: a fuzzer that never reaches a branch tests little). */
  const outcomes = new Map<string, number>();
  const count = (what: string) => outcomes.set(what, (outcomes.get(what) ?? 0) + 1);
  afterAll(() => {
    if (process.env.KEYWARD_FUZZ_STATS) console.log("core outcomes", JSON.stringify([...outcomes].sort()));
  });

  /** Sends `message` to the core and checks the reply against §4. */
  async function checkReply(message: string): Promise<OpenedReply> {
    const reply = await kms.kms.core.handle(message);
    const opened = await opener.open(reply, keys);
    const status = expectWellFormedStatus(opened.payload, `for ${JSON.stringify(message.slice(0, 120))}`);
    const header = joseHeader(message);
    const form = `${opened.form} ${status}`;
    const named = header?.kid === STATIC_KID ? "static" : ecdhePathOf(header?.kid) === live.uri ? "live" : header ? "other" : "not-jose";
    count(`${named}: ${form}`);
    if (!header || message.split(".").length === 3) {
      // Not JOSE at all, or a JWS (never a request): a JWS 400.
      expect(form).toBe("jws 400");
      return opened;
    }
    if (header.kid === STATIC_KID) {
      expect(opened.form, "key agreement: every reply is a JWS").toBe("jws");
      expect([201, 400, 401, 404, 405, 409]).toContain(status);
      if (staticHeaderBroken(header)) expect(status).toBe(400);
      return opened;
    }
    if (ecdhePathOf(header.kid) === live.uri) {
      if (commonHeaderBroken(header)) {
        expect(form, "a bad header on a live key: common 400, without decrypting").toBe("jwe 400");
        expect(opened.payload).not.toHaveProperty("requestId");
      } else if (opened.form === "jws") {
        expect(status, "a live key's message that does not decrypt: JWS 401").toBe(401);
      } else {
        expect(opened.kid).toBe(live.uri);
      }
      return opened;
    }
    // An unknown or deleted ephemeral key, or a kid that names no key at all: JWS 401.
    expect(form).toBe("jws 401");
    return opened;
  }

  it("the seeds themselves are answered as the profile says (so that the mutations start from real messages)", async () => {
    const ecdhe = await checkReply(seeds[0]!);
    expect(ecdhe.payload.status).toBe(201);
    const ping = await checkReply(seeds[1]!);
    expect({ form: ping.form, status: ping.payload.status, requestId: ping.payload.requestId }).toEqual({ form: "jwe", status: 200, requestId: "seed-ping" });
    // Sent again, each is refused (409), still in its key's form.
    expect((await checkReply(seeds[0]!)).payload.status).toBe(409);
    expect((await checkReply(seeds[1]!)).payload).toMatchObject({ status: 409, requestId: "seed-ping" });
  });

  it("arbitrary strings → JWS 400 unless they are JOSE", async () => {
    await fc.assert(
      fc.asyncProperty(anyString, async (message) => {
        await checkReply(message);
      }),
      fuzzParams(300),
    );
  }, fuzzTimeout(300, 20));

  it("near-JOSE strings (random parts, random or plausible headers naming any key) → the form §4 prescribes", async () => {
    const kid = fc.oneof(
      { weight: 6, arbitrary: fc.constantFrom(STATIC_KID, "STATIC", "LIVE", "LIVE_PATH", "LIVE_UPPER", "DELETED", `kms://${AUTHORITY}/ecdhe/00000000-0000-0000-0000-000000000000`, "kms://other.example.com/ecdhe/x", "", "/ecdhe", "kms://kms.example.com/ecdhe/a/b") },
      { weight: 1, arbitrary: anyJsonValue },
    );
    const alg = fc.oneof(
      { weight: 5, arbitrary: fc.constantFrom("dir", "ECDH-ES+A256KW", "ECDH-ES", "RSA-OAEP", "RSA-OAEP-256", "none", "HS256", "A256KW", "ES256", "DIR") },
      { weight: 1, arbitrary: anyJsonValue },
    );
    const enc = fc.oneof({ weight: 5, arbitrary: fc.constantFrom("A256GCM", "A128GCM", "A256CBC-HS512") }, { weight: 1, arbitrary: anyJsonValue });
    const header = fc.record(
      {
        alg,
        enc,
        kid,
        crit: fc.oneof(fc.constant(["exp"]), anyJsonValue),
        zip: fc.constantFrom("DEF", null),
        epk: fc.oneof(fc.constant("VALID"), anyJsonValue, fc.record({ kty: fc.constant("EC"), crv: fc.constant("P-256"), x: b64urlBytes(32), y: b64urlBytes(32) })),
        typ: fc.string(),
      },
      { requiredKeys: ["alg", "enc", "kid"] },
    );
    const resolveHeader = (h: Record<string, unknown>): Record<string, unknown> => {
      const names: Record<string, string> = {
        STATIC: STATIC_KID,
        LIVE: live.uri!,
        LIVE_PATH: new URL(live.uri!.replace("kms://", "http://")).pathname,
        LIVE_UPPER: live.uri!.replace(AUTHORITY, AUTHORITY.toUpperCase()),
        DELETED: deletedUri,
      };
      const out = { ...h };
      if (typeof h.kid === "string" && names[h.kid]) out.kid = names[h.kid];
      if (h.epk === "VALID") out.epk = epk;
      return out;
    };
    const headerText = fc.oneof(
      { weight: 6, arbitrary: header.map((h) => JSON.stringify(resolveHeader(h))) },
      { weight: 1, arbitrary: fc.jsonValue().map((v) => JSON.stringify(v)) },
      { weight: 1, arbitrary: fc.string() },
    );
    const body = fc.oneof(
      // The shape of a real message: empty or random encrypted key, 12-byte IV, 16-byte tag.
      fc.tuple(fc.constantFrom("", "AAAA"), exactB64(12), b64urlBytes(64), exactB64(16)).map((p) => p.join(".")),
      fc.array(fc.oneof(b64urlBytes(), fc.string({ maxLength: 8 })), { minLength: 1, maxLength: 5 }).map((p) => p.join(".")),
      fc.array(b64urlBytes(), { minLength: 4, maxLength: 4 }).map((p) => p.join(".")),
    );
    await fc.assert(
      fc.asyncProperty(headerText, body, async (h, rest) => {
        await checkReply(`${base64url.encode(h)}.${rest}`);
      }),
      fuzzParams(400),
    );
  }, fuzzTimeout(400, 30));

  it("truncations, bit flips and splices of real messages (ECDHE, ping, GK create) → the form §4 prescribes", async () => {
    const mutation = fc.oneof(
      fc.record({ kind: fc.constant("truncate" as const), at: fc.nat() }),
      fc.record({ kind: fc.constant("flip" as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 6 }) }),
      fc.record({ kind: fc.constant("replace" as const), at: fc.nat(), ch: fc.constantFrom(..."Aa0_-.=+/ \u0000é") }),
      fc.record({ kind: fc.constant("delete" as const), at: fc.nat(), n: fc.integer({ min: 1, max: 8 }) }),
      fc.record({ kind: fc.constant("insert" as const), at: fc.nat(), text: fc.string({ maxLength: 8 }) }),
      fc.record({ kind: fc.constant("swap-parts" as const), a: fc.nat(4), b: fc.nat(4) }),
      fc.record({ kind: fc.constant("splice" as const), part: fc.nat(4), from: fc.nat(2) }),
    );
    type Mutation = typeof mutation extends fc.Arbitrary<infer M> ? M : never;
    const apply = (m: string, mut: Mutation, other: string): string => {
      switch (mut.kind) {
        case "truncate":
          return m.slice(0, mut.at % (m.length + 1));
        case "flip": {
          const i = mut.at % m.length;
          return m.slice(0, i) + String.fromCharCode(m.charCodeAt(i) ^ (1 << mut.bit)) + m.slice(i + 1);
        }
        case "replace": {
          const i = mut.at % m.length;
          return m.slice(0, i) + mut.ch + m.slice(i + 1);
        }
        case "delete": {
          const i = mut.at % m.length;
          return m.slice(0, i) + m.slice(i + mut.n);
        }
        case "insert": {
          const i = mut.at % (m.length + 1);
          return m.slice(0, i) + mut.text + m.slice(i);
        }
        case "swap-parts": {
          const p = m.split(".");
          const a = mut.a % p.length;
          const b = mut.b % p.length;
          [p[a], p[b]] = [p[b]!, p[a]!];
          return p.join(".");
        }
        case "splice": {
          // One part taken from another real message (e.g. a ping's header on an ECDHE body).
          const p = m.split(".");
          const q = other.split(".");
          p[mut.part % p.length] = q[mut.part % q.length]!;
          return p.join(".");
        }
      }
    };
    await fc.assert(
      fc.asyncProperty(fc.nat(2), fc.nat(2), fc.array(mutation, { minLength: 1, maxLength: 3 }), async (s, o, muts) => {
        const message = muts.reduce((m, mut) => apply(m, mut, seeds[o]!), seeds[s]!);
        await checkReply(message);
      }),
      fuzzParams(400),
    );
  }, fuzzTimeout(400, 30));

  it("hostile JSON payloads on a live channel → a common message, never 500", async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(payloadLike, hostileValue), async (payload) => {
        const text = typeof payload === "string" ? payload : jsonText(payload);
        const message = await sealText(live.key!, live.uri!, text);
        const opened = await checkReply(message);
        // It decrypted, so the reply is a common message (§4), whatever the payload was.
        expect(opened.form).toBe("jwe");
      }),
      fuzzParams(200),
    );
  }, fuzzTimeout(200, 40));
});
