import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { base64url, CompactEncrypt, exportJWK } from "jose";
import { encryptCommonMessage } from "../../src/protocol/jose/common-message.js";
import { generateEphemeralKeyPair } from "../../src/protocol/jose/ephemeral-key.js";
import { openJws, post, RawClient, startTestKms, type TestKms } from "../helpers/harness.js";
import { goodClaims, hmacWithPublicKey, signWithForeignKey, signWithProviderKey, unsecuredToken } from "../helpers/tokens.js";

const b64json = (o: unknown) => base64url.encode(JSON.stringify(o));
/** A JWE-shaped compact string with any header (the rest is filler: the header is refused first). */
const fakeJwe = (header: unknown) => `${b64json(header)}.${base64url.encode("k")}.${base64url.encode("iv-iv-iv-iv")}.${base64url.encode("ct")}.${base64url.encode("tag-tag-tag-tag!")}`;

async function freshEcdhePayload(raw: RawClient, fields: Record<string, unknown> = {}) {
  const pair = await generateEphemeralKeyPair();
  const { kty, crv, x, y } = await exportJWK(pair.publicKey);
  return { client: await raw.credential(), method: "create", uri: "/ecdhe", requestId: "ka-1", jwk: { kty, crv, x, y }, ...fields };
}

describe("refusals (PROTOCOL.md §2-6, §10): status, reason, form, and nothing stored", () => {
  let kms: TestKms;
  let rsa: TestKms;
  beforeAll(async () => {
    [kms, rsa] = await Promise.all([startTestKms({ env: { KEYWARD_OAUTH_LEEWAY: "0" } }), startTestKms({ keyType: "rsa" })]);
  });
  afterAll(async () => {
    await Promise.all([kms.close(), rsa.close()]);
  });

  /** Sends a key-agreement message and expects a JWS error; checks that no channel was created. */
  async function expectKeyAgreementRefused(target: TestKms, message: string, status: number, reason: RegExp, requestId?: unknown) {
    const before = target.channelCount();
    const res = await post(target.url, message);
    expect(res.status).toBe(200);
    expect(res.body.split(".")).toHaveLength(3);
    const { header, payload } = await openJws(target.url, res.body);
    expect(header.kid).toBe(target.kid);
    expect(payload.status).toBe(status);
    expect(String(payload.reason)).toMatch(reason);
    if (requestId !== undefined) expect(payload.requestId).toEqual(requestId);
    expect(target.channelCount()).toBe(before);
  }

  describe("key agreement (§2, §5): every error is a JWS error", () => {
    it.each([
      ["alg none", { alg: "none", enc: "A256GCM", kid: "kms://kms.example.com" }, /none/],
      ["HMAC", { alg: "HS256", enc: "A256GCM", kid: "kms://kms.example.com" }, /HMAC/],
      ["dir to the static key", { alg: "dir", enc: "A256GCM", kid: "kms://kms.example.com" }, /dir/],
      ["RSA algorithm to an EC key", { alg: "RSA-OAEP", enc: "A256GCM", kid: "kms://kms.example.com" }, /does not match/],
      ["unknown crit", { alg: "ECDH-ES+A256KW", enc: "A256GCM", kid: "kms://kms.example.com", crit: ["x-unknown"], "x-unknown": 1 }, /crit/],
      ["enc other than A256GCM", { alg: "ECDH-ES+A256KW", enc: "A128GCM", kid: "kms://kms.example.com" }, /A256GCM/],
      ["compression (zip)", { alg: "ECDH-ES+A256KW", enc: "A256GCM", zip: "DEF", kid: "kms://kms.example.com" }, /zip/],
    ])("%s → 400", async (_name, header, reason) => {
      await expectKeyAgreementRefused(kms, fakeJwe(header), 400, reason);
    });

    it("EC algorithm to an RSA key → 400", async () => {
      await expectKeyAgreementRefused(rsa, fakeJwe({ alg: "ECDH-ES+A256KW", enc: "A256GCM", kid: rsa.kid }), 400, /does not match/);
    });

    it("a JWE epk that is not on P-256 → 400 (invalid-curve attack), before any ECDH", async () => {
      const raw = new RawClient(kms);
      const good = await raw.ecdheMessage(await freshEcdhePayload(raw));
      const header = JSON.parse(new TextDecoder().decode(base64url.decode(good.split(".")[0]!)));
      header.epk.y = header.epk.x; // almost surely off the curve
      const parts = good.split(".");
      parts[0] = b64json(header);
      await expectKeyAgreementRefused(kms, parts.join("."), 400, /not a valid point/);
    });

    it("a request that does not decrypt → 401", async () => {
      const raw = new RawClient(kms);
      const parts = (await raw.ecdheMessage(await freshEcdhePayload(raw))).split(".");
      const ct = base64url.decode(parts[3]!);
      ct[0] = ct[0]! ^ 0xff;
      parts[3] = base64url.encode(ct);
      await expectKeyAgreementRefused(kms, parts.join("."), 401, /does not decrypt/);
    });

    it("RSA-OAEP (SHA-1) and RSA-OAEP-256 both work with an RSA static key", async () => {
      for (const alg of ["RSA-OAEP", "RSA-OAEP-256"]) {
        const raw = new RawClient(rsa);
        const res = await post(rsa.url, await raw.ecdheMessage(await freshEcdhePayload(raw), {}, alg));
        expect((await openJws(rsa.url, res.body)).payload.status).toBe(201);
      }
    });

    it("ECDH-ES (direct) works with an EC static key", async () => {
      const raw = new RawClient(kms);
      const res = await post(kms.url, await raw.ecdheMessage(await freshEcdhePayload(raw), {}, "ECDH-ES"));
      expect((await openJws(kms.url, res.body)).payload.status).toBe(201);
    });

    it("a payload that decrypts but is not JSON → 400", async () => {
      const raw = new RawClient(kms);
      await expectKeyAgreementRefused(kms, await raw.ecdheMessage("this is not json"), 400, /not JSON/);
    });

    it("missing client → 401; missing credential → 401 (authentication, not a field error)", async () => {
      const raw = new RawClient(kms);
      const p = await freshEcdhePayload(raw);
      const { client: _c, ...noClient } = p;
      await expectKeyAgreementRefused(kms, await raw.ecdheMessage(noClient), 401, /client/, "ka-1");
      await expectKeyAgreementRefused(kms, await raw.ecdheMessage({ ...p, client: { clientId: "x" } }), 401, /credential/, "ka-1");
    });

    it.each([
      ["garbage token", async () => "not-a-token", /not a valid JWT/],
      ["alg none token", async (k: TestKms) => unsecuredToken(goodClaims(k)), /not a valid|algorithm/],
      ["HS256 with the provider's public key", async (k: TestKms) => hmacWithPublicKey(k, goodClaims(k)), /algorithm/],
      ["signed by a key the provider does not publish", async (k: TestKms) => signWithForeignKey(k, goodClaims(k)), /signature/],
      ["expired", async (k: TestKms) => signWithProviderKey(k, { ...goodClaims(k), exp: Math.floor(Date.now() / 1000) - 60 }), /expired/],
      ["not yet valid (nbf)", async (k: TestKms) => signWithProviderKey(k, { ...goodClaims(k), nbf: Math.floor(Date.now() / 1000) + 600 }), /nbf/],
      ["issued in the future (iat)", async (k: TestKms) => signWithProviderKey(k, { ...goodClaims(k), iat: Math.floor(Date.now() / 1000) + 600 }), /iat/],
      ["no exp", async (k: TestKms) => signWithProviderKey(k, { ...goodClaims(k), exp: undefined }), /exp/],
      ["wrong issuer", async (k: TestKms) => signWithProviderKey(k, { ...goodClaims(k), iss: "https://evil.example" }), /iss/],
      ["token for another service (audience)", async (k: TestKms) => signWithProviderKey(k, { ...goodClaims(k), aud: "https://files.example.com" }), /aud/],
      ["typ is not at+jwt", async (k: TestKms) => signWithProviderKey(k, goodClaims(k), { typ: "JWT" }), /typ/],
      ["no entity claim (no fallback to sub)", async (k: TestKms) => signWithProviderKey(k, { ...goodClaims(k), email: undefined }), /email/],
    ])("credential refused on ECDHE: %s → 401, no channel", async (_name, makeToken, reason) => {
      const raw = new RawClient(kms);
      const p = await freshEcdhePayload(raw, { client: { clientId: "t", credential: { bearer: await makeToken(kms) } } });
      await expectKeyAgreementRefused(kms, await raw.ecdheMessage(p), 401, reason, "ka-1");
    });

    it("a certificate credential is refused while no trust roots are configured → 401", async () => {
      const raw = new RawClient(kms);
      const p = await freshEcdhePayload(raw, { client: { clientId: "t", credential: { jwk: { kty: "EC", x5c: ["AAAA"] } } } });
      await expectKeyAgreementRefused(kms, await raw.ecdheMessage(p), 401, /trust roots/);
    });

    it.each([
      ["no jwk", { jwk: undefined }, 400, /'jwk'/],
      ["jwk not EC P-256", { jwk: { kty: "RSA", n: "AQAB", e: "AQAB" } }, 400, /'jwk'/],
      ["jwk off the curve", { jwk: { kty: "EC", crv: "P-256", x: base64url.encode(new Uint8Array(32).fill(1)), y: base64url.encode(new Uint8Array(32).fill(2)) } }, 400, /not a valid point/],
      ["no requestId", { requestId: undefined }, 400, /'requestId'/],
      ["requestId an object", { requestId: { a: 1 } }, 400, /'requestId'/],
      ["no clientId", { client: "replace" }, 400, /'client.clientId'/],
      ["unknown method", { method: "frobnicate" }, 400, /'method'/],
      ["method not a string", { method: 5 }, 400, /'method'/],
      ["no uri", { uri: undefined }, 400, /'uri'/],
      ["uri neither absolute nor a path", { uri: "ecdhe" }, 400, /'uri'/],
      ["another request to the static key", { uri: "/ping", method: "update" }, 400, /static key/],
      ["retrieve /ecdhe", { method: "retrieve" }, 405, /not supported/],
      ["another KMS's authority", { uri: "kms://other.example.net/ecdhe" }, 404, /another KMS/],
    ])("ECDHE request with %s → %i", async (_name, fields, status, reason) => {
      const raw = new RawClient(kms);
      const p: Record<string, unknown> = await freshEcdhePayload(raw, fields);
      if (p.client === "replace") p.client = { credential: (await raw.credential()).credential };
      await expectKeyAgreementRefused(kms, await raw.ecdheMessage(p), status, reason);
    });

    it("a client ECDHE key used twice → 409 and no second channel (a replayed ECDHE is refused)", async () => {
      const raw = new RawClient(kms);
      const message = await raw.ecdheMessage(await freshEcdhePayload(raw));
      const first = await post(kms.url, message);
      expect((await openJws(kms.url, first.body)).payload.status).toBe(201);
      await expectKeyAgreementRefused(kms, message, 409, /fresh key pair/, "ka-1");
    });

    it("a JWS sent as a request → JWS 400", async () => {
      const res = await post(kms.url, `${b64json({ alg: "ES256", kid: kms.kid })}.${b64json({})}.c2ln`);
      expect(res.status).toBe(200);
      expect((await openJws(kms.url, res.body)).payload).toMatchObject({ status: 400 });
    });
  });

  describe("on a channel (§4, §5)", () => {
    it("unknown ephemeral key → JWS 401; no kid → JWS 401", async () => {
      const raw = new RawClient(kms);
      await raw.ecdhe();
      const unknown = await encryptCommonMessage(raw.key!, "kms://kms.example.com/ecdhe/00000000-0000-4000-8000-000000000000", await raw.payload());
      expect(await raw.send(unknown)).toMatchObject({ form: "jws", payload: { status: 401 } });
      const noKid = fakeJwe({ alg: "dir", enc: "A256GCM" });
      expect(await raw.send(noKid)).toMatchObject({ form: "jws", payload: { status: 401 } });
    });

    it.each([
      ["alg other than dir", { alg: "A256KW", enc: "A256GCM" }, /dir/],
      ["alg none", { alg: "none", enc: "A256GCM" }, /none/],
      ["enc other than A256GCM", { alg: "dir", enc: "A128CBC-HS256" }, /A256GCM/],
      ["unknown crit", { alg: "dir", enc: "A256GCM", crit: ["zip2"] }, /crit/],
      ["compression (zip)", { alg: "dir", enc: "A256GCM", zip: "DEF" }, /zip/],
    ])("a header with %s → common message 400 on that key, without requestId", async (_n, header, reason) => {
      const raw = new RawClient(kms);
      await raw.ecdhe();
      const reply = await raw.send(fakeJwe({ ...header, kid: raw.uri }));
      expect(reply.form).toBe("jwe");
      expect(reply.payload.status).toBe(400);
      expect(String(reply.payload.reason)).toMatch(reason);
      expect(reply.payload).not.toHaveProperty("requestId");
    });

    it("a tampered common message → JWS 401", async () => {
      const raw = new RawClient(kms);
      await raw.ecdhe();
      const parts = (await encryptCommonMessage(raw.key!, raw.uri!, await raw.payload())).split(".");
      const tag = base64url.decode(parts[4]!);
      tag[0] = tag[0]! ^ 1;
      parts[4] = base64url.encode(tag);
      expect(await raw.send(parts.join("."))).toMatchObject({ form: "jws", payload: { status: 401 } });
    });

    it("a payload that is not JSON → common 400", async () => {
      const raw = new RawClient(kms);
      await raw.ecdhe();
      const jwe = await new CompactEncrypt(new TextEncoder().encode("{{")).setProtectedHeader({ alg: "dir", enc: "A256GCM", kid: raw.uri! }).encrypt(raw.key!);
      expect(await raw.send(jwe)).toMatchObject({ form: "jwe", payload: { status: 400 } });
    });

    it.each([
      ["no client", { client: undefined }, 401, /client/],
      ["no credential", { client: { clientId: "x" } }, 401, /credential/],
      ["no requestId", { requestId: undefined }, 400, /'requestId'/],
      ["unknown method", { method: "patch" }, 400, /'method'/],
      ["uri that names nothing", { uri: "/nothing/here" }, 404, /nothing/],
      ["another KMS's object", { uri: "kms://other.example.net/ping" }, 404, /another KMS/],
      ["method the object does not support", { method: "delete", uri: "/ping" }, 405, /not supported/],
      ["create /ecdhe on a channel", { method: "create", uri: "/ecdhe" }, 405, /not supported/],
      ["delete of an unknown ephemeral key", { method: "delete", uri: "/ecdhe/00000000-0000-4000-8000-000000000000" }, 404, /no ephemeral key/],
    ])("%s → common %i with a reason", async (_n, fields, status, reason) => {
      const raw = new RawClient(kms);
      await raw.ecdhe();
      const before = kms.channelCount();
      const reply = await raw.request(fields);
      expect(reply.form).toBe("jwe");
      expect(reply.payload.status).toBe(status);
      expect(String(reply.payload.reason)).toMatch(reason);
      expect(kms.channelCount()).toBe(before);
    });

    it("a credential naming another identity → 403; an invalid token → 401", async () => {
      const raw = new RawClient(kms, "alice@example.com");
      await raw.ecdhe();
      const bob = { clientId: "x", credential: { bearer: await kms.token("bob@example.com") } };
      expect((await raw.request({ client: bob })).payload).toMatchObject({ status: 403 });
      const bad = { clientId: "x", credential: { bearer: await signWithForeignKey(kms, goodClaims(kms)) } };
      expect((await raw.request({ client: bad })).payload).toMatchObject({ status: 401 });
    });

    it("a bearer token that expires while its channel lives → 401 on the next request", async () => {
      const token = await kms.token("dave@example.com", { lifetimeSeconds: 2 });
      const raw = new RawClient(kms, "dave@example.com");
      raw.credential = async () => ({ clientId: "raw", credential: { bearer: token } });
      expect((await raw.ecdhe()).status).toBe(201);
      expect((await raw.request()).payload.status).toBe(200);
      await new Promise((r) => setTimeout(r, 2100));
      const reply = await raw.request();
      expect(reply).toMatchObject({ form: "jwe", payload: { status: 401 } });
      expect(String(reply.payload.reason)).toMatch(/expired/);
    });

    it("a replayed requestId → 409, not executed; 7 and \"7\" are different requestIds", async () => {
      const raw = new RawClient(kms);
      await raw.ecdhe();
      const message = await encryptCommonMessage(raw.key!, raw.uri!, await raw.payload({ requestId: 7 }));
      expect((await raw.send(message)).payload).toEqual({ status: 200, requestId: 7 });
      const again = await raw.send(message);
      expect(again.payload).toMatchObject({ status: 409, requestId: 7 });
      expect(String(again.payload.reason)).toMatch(/replay/);
      expect((await raw.request({ requestId: "7" })).payload).toEqual({ status: 200, requestId: "7" });
      // A replayed delete is refused too, so the channel survives it... the first delete ends it.
    });

    it("delete: 204, then the key is unknown (JWS 401); deleting another channel's key → 403", async () => {
      const a = new RawClient(kms);
      const b = new RawClient(kms);
      await a.ecdhe();
      await b.ecdhe();
      const onB = await b.request({ method: "delete", uri: a.uri });
      expect(onB.payload).toMatchObject({ status: 403 });
      const del = await a.request({ method: "delete", uri: a.uri });
      expect(del.payload).toEqual({ status: 204, requestId: expect.anything() });
      expect(await a.request()).toMatchObject({ form: "jws", payload: { status: 401 } });
    });

    it("an exhausted channel (2^24 messages) → JWS 403", async () => {
      const raw = new RawClient(kms);
      await raw.ecdhe();
      const db = new Database(kms.config.store.kind === "sqlite" ? kms.config.store.path : "");
      db.prepare("UPDATE channels SET message_count = ? WHERE uri = ?").run(2 ** 24, raw.uri);
      db.close();
      const reply = await raw.request();
      expect(reply).toMatchObject({ form: "jws", payload: { status: 403, reason: "ephemeral key exhausted" } });
    });
  });

  describe("expiry and lifetime (§5)", () => {
    it("an expired ephemeral key → JWS 403; the lifetime comes from KEYWARD_EPHEMERAL_KEY_LIFETIME", async () => {
      const short = await startTestKms({ env: { KEYWARD_EPHEMERAL_KEY_LIFETIME: "1" } });
      try {
        const raw = new RawClient(short);
        const reply = await raw.ecdhe();
        const key = reply.key as { createDate: string; expirationDate: string };
        expect(Date.parse(key.expirationDate) - Date.parse(key.createDate)).toBe(1000);
        await new Promise((r) => setTimeout(r, 2100));
        const refused = await raw.request();
        expect(refused).toMatchObject({ form: "jws", payload: { status: 403 } });
        expect(String(refused.payload.reason)).toMatch(/expired/);
        // The SDK re-keys when refused.
        const client = short.client("alice@example.com", { rekeyMarginMs: 0 });
        await client.ping();
        await client.close();
      } finally {
        await short.close();
      }
    });
  });

  describe("HTTP binding (§3, §10)", () => {
    it("a body over 1 MiB → 413, nothing processed", async () => {
      const res = await post(kms.url, "a".repeat(1024 * 1024 + 1));
      expect(res.status).toBe(413);
    });

    it("a batch of more than 50 messages → 413", async () => {
      const res = await post(kms.url, JSON.stringify({ destination: kms.kid, kmsMessages: Array(51).fill("x.y.z") }), "application/json");
      expect(res.status).toBe(413);
    });

    it("another content type → 415", async () => {
      expect((await post(kms.url, "hello", "text/plain")).status).toBe(415);
    });

    it("a single-form body that is not JOSE → HTTP 400 with a JWS 400", async () => {
      const res = await post(kms.url, "hello world");
      expect(res.status).toBe(400);
      expect(res.type).toMatch(/application\/jose/);
      expect((await openJws(kms.url, res.body)).payload).toMatchObject({ status: 400 });
    });

    it.each([["not JSON", "{"], ["no kmsMessages", "{}"], ["kmsMessages not an array", '{"kmsMessages": "x"}'], ["an array", "[]"]])(
      "a JSON body that is not the batch form (%s) → 400",
      async (_n, body) => {
        expect((await post(kms.url, body, "application/json")).status).toBe(400);
      },
    );

    it("well-known is application/json; unknown paths 404", async () => {
      expect((await fetch(`${kms.url}/.well-known/kms`)).headers.get("content-type")).toMatch(/^application\/json/);
      expect((await fetch(`${kms.url}/nope`)).status).toBe(404);
    });
  });
});
