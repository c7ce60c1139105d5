/**
 * Interop with Cisco's `node-kms` (npm 0.4.1, draft -02, CommonJS, built on node-jose), driven the
 * way the Webex JS SDK drives it (packages/@webex/internal-plugin-encryption/src/kms.js:
 * `_prepareContext`, `prepareRequest`, `processKmsMessageEvent`). PROTOCOL.md section 11 requires
 * that it completes ECDHE and ping against a KMS with an RSA static key; we check both HTTP forms
 * of section 3.
 *
 * The Webex flow, reproduced here:
 *   1. `ctx = new Context()`; `ctx.clientInfo = {clientId, credential: {userId, bearer}}`;
 *      `ctx.serverInfo = {key: <static JWK>}`.
 *   2. `local = await ctx.createECDHKey()`; `ctx.ephemeralKey = local` (the "partial context").
 *   3. `new Request({uri: `${cluster}/ecdhe`, method: "create", jwk: (await local.asKey()).toJSON()})`
 *      wrapped with `{serverKey: true}` (a JWE to the static key).
 *   4. The reply is unwrapped with the partial context (its keystore holds the local ECDH key and
 *      the static key, so a JWS is verified by the static key's kid), then
 *      `ctx.ephemeralKey = await ctx.deriveEphemeralKey(res.key)`.
 *   5. Every later request is `new Request(payload).wrap(ctx)`: alg `dir` under the derived key.
 */
import { createRequire } from "node:module";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openJws, startTestKms, type TestKms } from "../helpers/harness.js";

// ---- Minimal types for the parts of node-kms (and node-jose) this test touches. ----
type Json = Record<string, unknown>;
interface JoseKey {
  readonly kid: string;
  /** node-jose: without `true`, only the public members. */
  toJSON(exportPrivate?: boolean): Json;
}
interface KmsKeyObject {
  readonly uri: string;
  readonly jwk: Json | undefined;
  readonly userId: string;
  readonly clientId: string;
  readonly createDate: Date | undefined;
  readonly expirationDate: Date | undefined;
  asKey(): Promise<JoseKey>;
  toJSON(): Json;
}
interface KmsContext {
  clientInfo: { clientId: string; credential: { userId?: string; bearer: string } };
  serverInfo: { key?: Json };
  ephemeralKey: KmsKeyObject | null;
  createECDHKey(): Promise<KmsKeyObject>;
  deriveEphemeralKey(remote: unknown): Promise<KmsKeyObject>;
}
interface KmsRequest {
  body: Json;
  requestId: string;
  uri: string;
  method: string;
  wrapped: string;
  wrap(ctx: KmsContext, opts?: { serverKey?: boolean; requestId?: string; contentAlg?: string }): Promise<string>;
}
interface KmsResponse {
  body: Json;
  readonly status: number;
  readonly reason: string;
  readonly requestId: string;
  wrapped: string;
  unwrap(ctx: KmsContext): Promise<Json>;
}
interface NodeKms {
  Context: new () => KmsContext;
  Request: new (body?: Json) => KmsRequest;
  Response: new (wrapped?: string) => KmsResponse;
}

const require = createRequire(import.meta.url);
const KMS = require("node-kms") as NodeKms;

const KMS_URI = "kms://kms.example.com";
const USER = "alice@example.com";

// ---- HTTP bindings (PROTOCOL.md section 3). ----

/** Single form: one compact JOSE in, one out, both application/jose. */
async function postSingle(kms: TestKms, message: string): Promise<string> {
  const res = await fetch(`${kms.url}/kms/messages`, { method: "POST", headers: { "content-type": "application/jose" }, body: message });
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toMatch(/^application\/jose/);
  return res.text();
}

/** Batch form, as the Webex KMS batcher posts it: replies in the same order. */
async function postBatch(kms: TestKms, messages: string[]): Promise<string[]> {
  const res = await fetch(`${kms.url}/kms/messages`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ destination: KMS_URI, kmsMessages: messages }),
  });
  expect(res.status).toBe(200);
  const body = (await res.json()) as { kmsMessages: unknown };
  expect(Array.isArray(body.kmsMessages)).toBe(true);
  const replies = body.kmsMessages as string[];
  expect(replies).toHaveLength(messages.length);
  for (const r of replies) expect(typeof r).toBe("string");
  return replies;
}

type Form = "single" | "batch";
const send = (form: Form) => async (kms: TestKms, message: string): Promise<string> =>
  form === "single" ? postSingle(kms, message) : (await postBatch(kms, [message]))[0]!;

function b64urlJson(part: string): Json {
  return JSON.parse(Buffer.from(part, "base64url").toString("utf8")) as Json;
}
/** The protected header of a compact JWS (3 parts) or JWE (5 parts). */
function headerOf(compact: string): Json {
  return b64urlJson(compact.split(".")[0]!);
}
function partsOf(compact: string): number {
  return compact.split(".").length;
}

async function staticJwkOf(kms: TestKms): Promise<Json> {
  const doc = (await (await fetch(`${kms.url}/.well-known/kms`)).json()) as { uri: string; jwk: Json };
  expect(doc.uri).toBe(KMS_URI);
  expect(doc.jwk.kid).toBe(KMS_URI);
  return doc.jwk;
}

/** A Webex-SDK-shaped user of node-kms. */
class WebexLikeClient {
  readonly ctx = new KMS.Context();
  ecdheRequest?: KmsRequest;
  ecdheReply?: string;
  ecdheResponse?: KmsResponse;
  localEcdhKey?: KmsKeyObject;

  constructor(readonly kms: TestKms, readonly sendOne: (kms: TestKms, message: string) => Promise<string>) {}

  /** `_prepareContext`: context, local ECDH key, ECDHE to the static key, derive. */
  async connect(): Promise<void> {
    this.ctx.clientInfo = {
      clientId: "https://wdm.example.com/devices/node-kms-interop",
      credential: { userId: USER, bearer: await this.kms.token(USER) },
    };
    this.ctx.serverInfo = { key: await staticJwkOf(this.kms) };
    const local = await this.ctx.createECDHKey();
    this.localEcdhKey = local;
    this.ctx.ephemeralKey = local;
    const localJoseKey = await local.asKey();

    // Webex: `uri: `${cluster}/ecdhe``, the cluster being the KMS URI; `jwk: localECDHKey.toJSON()`
    // on the node-jose key, i.e. the public part only.
    const req = new KMS.Request({ uri: `${KMS_URI}/ecdhe`, method: "create", jwk: localJoseKey.toJSON() });
    await req.wrap(this.ctx, { serverKey: true });
    this.ecdheRequest = req;

    this.ecdheReply = await this.sendOne(this.kms, req.wrapped);
    const res = new KMS.Response(this.ecdheReply);
    await res.unwrap(this.ctx);
    this.ecdheResponse = res;
    if (res.status !== 201) throw new Error(`ECDHE refused: ${res.status} ${res.reason}`);

    this.ctx.ephemeralKey = await this.ctx.deriveEphemeralKey(res.body.key);
  }

  /** `prepareRequest` + send + `processKmsMessageEvent` for a request on the channel. */
  async request(payload: Json): Promise<{ req: KmsRequest; reply: string; res: KmsResponse }> {
    const req = await this.wrap(payload);
    const reply = await this.sendOne(this.kms, req.wrapped);
    return { req, reply, res: await this.unwrap(reply) };
  }

  async wrap(payload: Json): Promise<KmsRequest> {
    const req = new KMS.Request(payload);
    await req.wrap(this.ctx);
    return req;
  }

  async unwrap(reply: string): Promise<KmsResponse> {
    const res = new KMS.Response(reply);
    await res.unwrap(this.ctx);
    return res;
  }

  get channelUri(): string {
    return this.ctx.ephemeralKey!.uri;
  }
}

describe("node-kms 0.4.1 against a Keyward KMS with an RSA static key", () => {
  let kms: TestKms;
  beforeAll(async () => {
    kms = await startTestKms({ keyType: "rsa" });
  });
  afterAll(() => kms.close());

  for (const form of ["single", "batch"] as const) {
    describe(`${form} HTTP form`, () => {
      it("completes ECDHE (RSA-OAEP + A256GCM to the static kid; RS256 JWS reply) and pings twice on one channel", async () => {
        const before = kms.channelCount();
        const client = new WebexLikeClient(kms, send(form));
        await client.connect();

        // What node-kms sent: a JWE to the static key, RSA-OAEP (SHA-1) + A256GCM, kid = static kid.
        const sent = client.ecdheRequest!;
        expect(partsOf(sent.wrapped)).toBe(5);
        expect(headerOf(sent.wrapped)).toMatchObject({ alg: "RSA-OAEP", enc: "A256GCM", kid: KMS_URI });
        // Its plaintext (node-kms JSON.stringify's `req.body`) carries only the public half of the
        // client ECDH key, and the credential from clientInfo.
        const jwk = sent.body.jwk as Json;
        expect(jwk).toMatchObject({ kty: "EC", crv: "P-256" });
        expect(typeof jwk.x).toBe("string");
        expect(typeof jwk.y).toBe("string");
        expect(jwk).not.toHaveProperty("d");
        expect(sent.body).toMatchObject({ method: "create", uri: `${KMS_URI}/ecdhe`, client: { credential: { userId: USER } } });
        expect(typeof sent.requestId).toBe("string");

        // What the KMS answered: a JWS signed by the static key, header kid = static kid.
        const reply = client.ecdheReply!;
        expect(partsOf(reply)).toBe(3);
        expect(headerOf(reply)).toMatchObject({ alg: "RS256", kid: KMS_URI });
        expect((await openJws(kms.url, reply)).payload.status).toBe(201);
        // node-kms really verifies it: the reply unwraps with the final context too, and the same
        // reply with one signature byte changed is refused.
        await expect(new KMS.Response(reply).unwrap(client.ctx)).resolves.toMatchObject({ status: 201 });
        const [h, p, sig] = reply.split(".") as [string, string, string];
        const badSig = Buffer.from(sig, "base64url");
        badSig[0] = badSig[0]! ^ 1;
        await expect(new KMS.Response(`${h}.${p}.${badSig.toString("base64url")}`).unwrap(client.ctx)).rejects.toThrow();

        // What node-kms made of it (it verified the JWS with serverInfo.key, by kid).
        const res = client.ecdheResponse!;
        expect(res.status).toBe(201);
        expect(res.requestId).toBe(sent.requestId);
        const key = res.body.key as Json;
        expect(key.uri).toMatch(/^kms:\/\/kms\.example\.com\/ecdhe\/[0-9a-f-]{36}$/);
        expect(key.jwk).toMatchObject({ kty: "EC", crv: "P-256" });
        expect(key.jwk).not.toHaveProperty("d");
        expect(key.userId).toBe(USER);
        expect(typeof key.expirationDate).toBe("string");

        // The derived key: an A256GCM oct key whose kid is the ephemeral uri, with the KMS's dates.
        const channel = client.ctx.ephemeralKey!;
        expect(channel.uri).toBe(key.uri);
        expect(channel.jwk).toMatchObject({ kty: "oct", alg: "A256GCM", kid: key.uri });
        expect(channel.expirationDate!.getTime()).toBe(Date.parse(key.expirationDate as string));
        expect(kms.channelCount()).toBe(before + 1);

        // Ping: node-kms sends `dir` + A256GCM with kid = ephemeral uri; the reply is the same form.
        const ping1 = await client.request({ method: "update", uri: "/ping" });
        expect(partsOf(ping1.req.wrapped)).toBe(5);
        expect(headerOf(ping1.req.wrapped)).toMatchObject({ alg: "dir", enc: "A256GCM", kid: channel.uri });
        expect(partsOf(ping1.reply)).toBe(5);
        expect(headerOf(ping1.reply)).toMatchObject({ alg: "dir", enc: "A256GCM", kid: channel.uri });
        expect(ping1.res.body).toEqual({ status: 200, requestId: ping1.req.requestId });

        // A second ping reuses the channel: same key, no new channel, a fresh requestId.
        const ping2 = await client.request({ method: "update", uri: "/ping" });
        expect(headerOf(ping2.req.wrapped).kid).toBe(channel.uri);
        expect(headerOf(ping2.reply).kid).toBe(channel.uri);
        expect(ping2.req.requestId).not.toBe(ping1.req.requestId);
        expect(ping2.res.body).toEqual({ status: 200, requestId: ping2.req.requestId });
        expect(client.channelUri).toBe(channel.uri);
        expect(kms.channelCount()).toBe(before + 1);
      });

      it("an error after key agreement (404) comes back as a dir JWE that node-kms unwraps", async () => {
        const client = new WebexLikeClient(kms, send(form));
        await client.connect();
        const { req, reply, res } = await client.request({ method: "retrieve", uri: "/nothing" });
        // A JWS here would be verified by node-kms too, but the Webex SDK routes any message whose
        // header kid is the static kid to the (already deleted) partial context: section 11.
        expect(partsOf(reply)).toBe(5);
        expect(headerOf(reply)).toMatchObject({ alg: "dir", enc: "A256GCM", kid: client.channelUri });
        expect(res.status).toBe(404);
        expect(res.requestId).toBe(req.requestId);
        expect(typeof res.reason).toBe("string");
        // The channel still works afterwards.
        const ping = await client.request({ method: "update", uri: "/ping" });
        expect(ping.res.body).toEqual({ status: 200, requestId: ping.req.requestId });
      });
    });
  }

  it("deleting the channel: 204 as a dir JWE; afterwards the key is unknown and the KMS answers a JWS 401", async () => {
    const client = new WebexLikeClient(kms, send("single"));
    await client.connect();
    const uri = client.channelUri;
    const del = await client.request({ method: "delete", uri });
    expect(headerOf(del.reply)).toMatchObject({ alg: "dir", kid: uri });
    expect(del.res.body).toEqual({ status: 204, requestId: del.req.requestId });
    // The next request names a deleted key: a JWS error signed by the static key (section 4). node-kms
    // itself verifies it with serverInfo.key; (the Webex SDK would route it by its static kid to the
    // partial context, which is gone by then: the mishandling section 11 mentions).
    const after = await client.request({ method: "update", uri: "/ping" });
    expect(partsOf(after.reply)).toBe(3);
    expect(headerOf(after.reply).kid).toBe(KMS_URI);
    expect(after.res.status).toBe(401);
  });

  it("batch form: two pings from node-kms in one POST get two replies, in order", async () => {
    const client = new WebexLikeClient(kms, send("batch"));
    await client.connect();
    const a = await client.wrap({ method: "update", uri: "/ping" });
    const b = await client.wrap({ method: "update", uri: `${KMS_URI}/ping` });
    expect(a.requestId).not.toBe(b.requestId);
    const replies = await postBatch(kms, [a.wrapped, b.wrapped]);
    const [ra, rb] = await Promise.all(replies.map((r) => client.unwrap(r)));
    expect(ra!.body).toEqual({ status: 200, requestId: a.requestId });
    expect(rb!.body).toEqual({ status: 200, requestId: b.requestId });
  });

  it("a naive client that sends the KeyObject's jwk (private `d` included) still gets a channel: `d` is ignored", async () => {
    // Surprise in node-kms: createECDHKey() stores `k.toJSON(true)`, so `KeyObject.jwk` carries the
    // private `d`. The Webex SDK avoids sending it by re-exporting with `asKey().toJSON()`.
    const client = new WebexLikeClient(kms, send("single"));
    client.ctx.clientInfo = { clientId: "naive", credential: { userId: USER, bearer: await kms.token(USER) } };
    client.ctx.serverInfo = { key: await staticJwkOf(kms) };
    const local = await client.ctx.createECDHKey();
    expect(local.jwk).toHaveProperty("d");
    client.ctx.ephemeralKey = local;
    const req = new KMS.Request({ uri: "/ecdhe", method: "create", jwk: local.jwk });
    await req.wrap(client.ctx, { serverKey: true });
    const res = await client.unwrap(await postSingle(kms, req.wrapped));
    expect(res.status).toBe(201);
    client.ctx.ephemeralKey = await client.ctx.deriveEphemeralKey(res.body.key);
    const ping = await client.request({ method: "update", uri: "/ping" });
    expect(ping.res.body).toEqual({ status: 200, requestId: ping.req.requestId });
  });
});

describe("node-kms 0.4.1 against a Keyward KMS with an EC P-256 static key", () => {
  let kms: TestKms;
  beforeAll(async () => {
    kms = await startTestKms({ keyType: "ec" });
  });
  afterAll(() => kms.close());

  for (const form of ["single", "batch"] as const) {
    it(`${form} form: node-jose picks ECDH-ES (direct) + A256GCM; ECDHE (ES256 reply) and ping work`, async () => {
      const client = new WebexLikeClient(kms, send(form));
      await client.connect();
      // node-jose's EC key offers ["ECDH-ES", "ECDH-ES+A128KW", ...] for wrapping and takes the
      // first: direct key agreement, with an `epk` in the header.
      const header = headerOf(client.ecdheRequest!.wrapped);
      expect(header).toMatchObject({ alg: "ECDH-ES", enc: "A256GCM", kid: KMS_URI, epk: { kty: "EC", crv: "P-256" } });
      expect(partsOf(client.ecdheReply!)).toBe(3);
      expect(headerOf(client.ecdheReply!)).toMatchObject({ alg: "ES256", kid: KMS_URI });
      expect(client.ecdheResponse!.status).toBe(201);
      const ping = await client.request({ method: "update", uri: "/ping" });
      expect(headerOf(ping.reply)).toMatchObject({ alg: "dir", enc: "A256GCM", kid: client.channelUri });
      expect(ping.res.body).toEqual({ status: 200, requestId: ping.req.requestId });
    });
  }
});
