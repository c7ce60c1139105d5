import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { CompactSign, compactDecrypt, decodeProtectedHeader, exportJWK, importPKCS8 } from "jose";
import {
  DeviceKey,
  GroupKeys,
  Groups,
  HttpTransport,
  KmsClient,
  KmsProtocolError,
  KmsRequestError,
  type KmsTransport,
} from "../../src/client/index.js";
import { decryptCommonMessage, encryptCommonMessage } from "../../src/protocol/jose/common-message.js";
import { deriveEphemeralKey, generateEphemeralKeyPair, importEcdhPublicKey } from "../../src/protocol/jose/ephemeral-key.js";
import { createDevCa, derToPem, generateStaticKeyPair, issueKmsCertificate, toX5c } from "../../src/pki/dev-ca.js";
import { startTestKms, type TestKms } from "../helpers/harness.js";

/**
 * Finding 1 and 2 of the SDK review: the SDK must never take its own request, a reply to another
 * request, an unexpected success status or a replayed JWS error of another request as the reply.
 */

const ALICE = "alice@example.com";

async function protocolError(p: Promise<unknown>, code: string): Promise<KmsProtocolError> {
  const e = await p.then(
    (v: unknown) => expect.fail(`expected ${code}, got a result: ${JSON.stringify(v)}`),
    (err: unknown) => err,
  );
  expect(e, code).toBeInstanceOf(KmsProtocolError);
  expect((e as KmsProtocolError).code, (e as Error).message).toBe(code);
  return e as KmsProtocolError;
}

/** Everything an error exposes to the application, as text. */
const exposed = (e: unknown) => {
  const err = e as Error & Record<string, unknown>;
  return JSON.stringify({ ...err, message: err.message, stack: err.stack, cause: String(err.cause ?? "") });
};

/**
 * An untrusted transport in front of a real KMS: key agreement passes; channel requests pass,
 * or are sent back to the client unchanged ("echo", never reaching the KMS), or answered with the
 * last reply seen on the channel ("replay": the reply to another requestId).
 */
class HostileTransport implements KmsTransport {
  mode: "pass" | "echo" | "replay" = "pass";
  readonly replies: string[] = [];
  /** Channel requests that reached the KMS. */
  forwarded = 0;
  /** Channel requests the client sent. */
  sent = 0;
  constructor(private readonly inner: KmsTransport) {}
  discover(): Promise<unknown> {
    return this.inner.discover();
  }
  async send(message: string): Promise<string> {
    const onChannel = decodeProtectedHeader(message).alg === "dir";
    if (!onChannel) return this.inner.send(message);
    this.sent++;
    if (this.mode === "echo") return message;
    if (this.mode === "replay") return this.replies.at(-1)!;
    this.forwarded++;
    const reply = await this.inner.send(message);
    this.replies.push(reply);
    return reply;
  }
}

describe("an untrusted transport in front of a real KMS", () => {
  let kms: TestKms;
  const tokens: string[] = [];
  const clients: KmsClient[] = [];

  /**
   * A client whose every token is remembered, behind a hostile transport. HTTP only, unlike the
   * e2e suites (groups, group-keys, channel.e2e): the hostile transport wraps whichever transport
   * it is given and plays the KMS's part itself, so the SDK checks it exercises are the same over
   * every transport.
   */
  const hostileClient = (user: string) => {
    const transport = new HostileTransport(new HttpTransport(kms.url));
    const client = kms.client(user, {
      transport,
      token: async () => {
        const t = await kms.token(user);
        tokens.push(t);
        return t;
      },
    });
    clients.push(client);
    return { client, transport };
  };
  const honest = () => {
    const c = kms.client(ALICE);
    clients.push(c);
    return new Groups(c, { user: ALICE, device: { kid: "none" } as DeviceKey });
  };

  /** The operation rejects with ERR_REPLY_MISMATCH, was sent once (no retry), and no token leaks. */
  async function refusedAsMismatch(transport: HostileTransport, op: () => Promise<unknown>) {
    const before = transport.sent;
    const e = await protocolError(op(), "ERR_REPLY_MISMATCH");
    expect(transport.sent - before).toBe(1);
    expect(tokens.length).toBeGreaterThan(0);
    for (const t of tokens) expect(exposed(e)).not.toContain(t);
    return e;
  }

  beforeAll(async () => {
    kms = await startTestKms();
  });
  afterAll(async () => {
    for (const c of clients) await c.close().catch(() => undefined);
    await kms?.close();
  });

  it("ping: its own request echoed back, or an earlier reply replayed, is ERR_REPLY_MISMATCH", async () => {
    const { client, transport } = hostileClient(ALICE);
    await client.ping();
    transport.mode = "echo";
    const e = await refusedAsMismatch(transport, () => client.ping());
    expect(e.message).toMatch(/no integer 'status'/);
    transport.mode = "replay";
    const r = await refusedAsMismatch(transport, () => client.ping());
    expect(r.message).toMatch(/does not echo this request's requestId/);
    // A bare request() without an expected status is bound just the same.
    transport.mode = "echo";
    await refusedAsMismatch(transport, () => client.request("update", "/ping"));
    transport.mode = "pass";
    await client.ping();
  });

  it("registerDevice: an echo does not register, and nothing reaches the KMS", async () => {
    const { client, transport } = hostileClient(ALICE);
    const groups = new Groups(client, { user: ALICE, device: await DeviceKey.generate({ kid: "echoed" }) });
    await client.ping();
    const forwarded = transport.forwarded;
    transport.mode = "echo";
    await refusedAsMismatch(transport, () => groups.registerDevice());
    expect(transport.forwarded).toBe(forwarded);
    expect((await honest().keysOf(ALICE, { includeRevoked: true })).map((k) => k.kid)).not.toContain("echoed");
    // The ping reply (200, another requestId) replayed as the registration's reply.
    transport.mode = "replay";
    await refusedAsMismatch(transport, () => groups.registerDevice());
    expect((await honest().keysOf(ALICE, { includeRevoked: true })).map((k) => k.kid)).not.toContain("echoed");
  });

  it("revokeDevice: an echo or a replayed reply does not resolve; the KMS still holds the key", async () => {
    const { client, transport } = hostileClient(ALICE);
    const groups = new Groups(client, { user: ALICE, device: await DeviceKey.generate({ kid: "kept" }) });
    expect(await groups.registerDevice()).toBe("registered");
    transport.mode = "echo";
    await refusedAsMismatch(transport, () => groups.revokeDevice());
    // The registration's reply (201, another requestId) replayed as the revocation's.
    transport.mode = "replay";
    await refusedAsMismatch(transport, () => groups.revokeDevice());
    const stored = (await honest().keysOf(ALICE, { includeRevoked: true })).find((k) => k.kid === "kept");
    expect(stored).toBeDefined();
    expect(stored!.revoked).toBeUndefined();
    transport.mode = "pass";
    await groups.revokeDevice();
    expect((await honest().keysOf(ALICE, { includeRevoked: true })).find((k) => k.kid === "kept")?.revoked).toEqual(expect.any(String));
  });

  it("GK get: an echo, or the reply that created the same GK replayed, is refused", async () => {
    const { client, transport } = hostileClient(ALICE);
    const device = await DeviceKey.generate({ kid: "gk-device" });
    const groups = new Groups(client, { user: ALICE, device });
    await groups.registerDevice();
    const gk = await new GroupKeys(client, { user: ALICE, device }).create();
    transport.mode = "echo";
    await refusedAsMismatch(transport, () => new GroupKeys(client, { user: ALICE, device }).fetch(gk.uri));
    // The create reply carries this very GK, signed by the KMS: only its requestId betrays it.
    transport.mode = "replay";
    await refusedAsMismatch(transport, () => new GroupKeys(client, { user: ALICE, device }).fetch(gk.uri));
    transport.mode = "pass";
    expect((await new GroupKeys(client, { user: ALICE, device }).fetch(gk.uri)).uri).toBe(gk.uri);
  });
});

/**
 * A KMS double: a trusted certificate and static key, real key agreement, and channel requests
 * answered by `answer` (a payload to seal on the channel, or a raw JOSE string).
 */
async function kmsDouble() {
  const KMS = "kms://kms.example.com";
  const ca = await createDevCa();
  const key = await generateStaticKeyPair("ec");
  const { cert } = await issueKmsCertificate({ ca: { cert: ca.cert, privateKey: ca.keys.privateKey }, dnsNames: ["example.com"], publicKey: key.publicKey });
  const pem = derToPem(key.pkcs8Der, "PRIVATE KEY");
  const decryptKey = await importPKCS8(pem, "ECDH-ES+A256KW");
  const signKey = await importPKCS8(pem, "ES256");
  const jwk = { ...key.publicJwk, kid: KMS, x5c: toX5c([cert]) };
  const channels = new Map<string, Uint8Array>();
  type Request = Record<string, unknown> & { requestId: string; method: string; uri: string };
  const answerOk = async (req: Request, _message: string): Promise<Record<string, unknown> | string> => ({ status: 200, requestId: req.requestId });
  const double = {
    ecdhe: 0,
    /** What a channel request gets; default: 200 with the requestId. */
    answer: answerOk,
    /** What a key agreement gets; default: a working channel. */
    agree: undefined as undefined | ((req: Request) => Promise<string | undefined>),
    sign: (payload: unknown) => new CompactSign(new TextEncoder().encode(JSON.stringify(payload))).setProtectedHeader({ alg: "ES256", kid: KMS }).sign(signKey),
    transport: {
      discover: async () => ({ uri: KMS, jwk, protocol: "draft-abiggs-saag-key-management-service-03" }),
      send: async (message: string): Promise<string> => {
        const header = decodeProtectedHeader(message);
        if (header.kid === KMS) {
          double.ecdhe++;
          const req = JSON.parse(new TextDecoder().decode((await compactDecrypt(message, decryptKey)).plaintext)) as Request;
          const override = await double.agree?.(req);
          if (override !== undefined) return override;
          const pair = await generateEphemeralKeyPair();
          const uri = `${KMS}/ecdhe/${double.ecdhe}`;
          channels.set(uri, await deriveEphemeralKey(pair.privateKey, await importEcdhPublicKey(req.jwk)));
          const ek = { uri, jwk: await exportJWK(pair.publicKey), userId: ALICE, clientId: "c", createDate: new Date().toISOString(), expirationDate: new Date(Date.now() + 3_600_000).toISOString() };
          return double.sign({ status: 201, requestId: req.requestId, key: ek, "ephemeral-key": ek });
        }
        const channelKey = channels.get(String(header.kid))!;
        const req = (await decryptCommonMessage(channelKey, message)).payload as Request;
        const out = await double.answer(req, message);
        return typeof out === "string" ? out : encryptCommonMessage(channelKey, String(header.kid), out);
      },
    } satisfies KmsTransport,
    trustRoot: ca.certPem,
    reset: () => {
      double.answer = answerOk;
      double.agree = undefined;
    },
    client: () => new KmsClient({ transport: double.transport, user: ALICE, token: "a-bearer-token", trustRoots: [ca.certPem] }),
  };
  return double;
}

describe("a KMS double: success statuses, unbound replies and JWS errors", () => {
  let double: Awaited<ReturnType<typeof kmsDouble>>;
  beforeAll(async () => {
    double = await kmsDouble();
  });
  beforeEach(() => double.reset());

  it("each SDK operation accepts exactly its success status; another 2xx is ERR_REPLY_STATUS", async () => {
    const client = double.client();
    const device = await DeviceKey.generate({ kid: "d" });
    const groups = new Groups(client, { user: ALICE, device });
    const gks = new GroupKeys(client, { user: ALICE, device });
    const wrong: [name: string, run: () => Promise<unknown>, expected: number, sent: number][] = [
      ["ping", () => client.ping(), 200, 204],
      ["registerDevice", () => groups.registerDevice(), 201, 200],
      ["revokeDevice", () => groups.revokeDevice(), 204, 200],
      ["keysOf", () => groups.keysOf("bob@example.com"), 200, 201],
      ["create (genesis)", () => groups.create([ALICE]), 201, 200],
      ["fetch (chain get)", () => groups.fetch("kms://kms.example.com/blocks/1"), 200, 201],
      ["GK create", () => gks.create(), 201, 200],
      ["GK bind", () => gks.bind("kms://kms.example.com/gks/1", "a".repeat(64)), 200, 201],
      ["GK get", () => gks.fetch("kms://kms.example.com/gks/1"), 200, 202],
    ];
    for (const [name, run, expected, sent] of wrong) {
      double.answer = async (req) => ({ status: sent, requestId: req.requestId });
      const e = await protocolError(run(), "ERR_REPLY_STATUS");
      expect(e.message, name).toMatch(new RegExp(`answered status ${sent}, not ${expected}$`));
    }
    // close: the channel's delete is 204.
    double.reset();
    await client.ping();
    double.answer = async (req) => ({ status: 200, requestId: req.requestId });
    expect((await protocolError(client.close(), "ERR_REPLY_STATUS")).message).toMatch(/answered status 200, not 204$/);
    // A status that is not 2xx and not an error: never a success, even without an expected status.
    double.answer = async (req) => ({ status: 302, requestId: req.requestId });
    await protocolError(client.request("update", "/ping"), "ERR_REPLY_STATUS");
  });

  it("the append's status is checked too (200, not 201)", async () => {
    const client = double.client();
    const device = await DeviceKey.generate({ kid: "d" });
    const groups = new Groups(client, { user: ALICE, device });
    // A genesis block the double signs, so that the chain is cached and an append can be built.
    const chainUri = "kms://kms.example.com/blocks/g";
    const genesis = await double.sign({ uri: chainUri, nonce: "n", curator: "kms://kms.example.com", creator: "kms://kms.example.com", created: "2026-01-01T00:00:00Z", operations: [{ entity: ALICE, optype: "add" }] });
    double.answer = async (req) =>
      req.method === "retrieve" ? { status: 200, requestId: req.requestId, blocks: req.antecedent ? [] : [genesis] } : { status: 201, requestId: req.requestId, tail: "x" };
    await groups.fetch(chainUri);
    const e = await protocolError(groups.add(chainUri, ["bob@example.com"]), "ERR_REPLY_STATUS");
    expect(e.message).toMatch(/answered status 201, not 200$/);
  });

  it("a reply with a non-integer status, a requestId of another JSON type, none, or a 'client' member is ERR_REPLY_MISMATCH", async () => {
    const client = double.client();
    const bad: [string, (req: { requestId: string }) => Record<string, unknown>][] = [
      ["status as a string", (req) => ({ status: "200", requestId: req.requestId })],
      ["a fractional status", (req) => ({ status: 200.5, requestId: req.requestId })],
      ["no status", (req) => ({ requestId: req.requestId })],
      ["an error without requestId (only a bad header gets one)", () => ({ status: 400, reason: "bad header" })],
      ["another requestId", () => ({ status: 200, requestId: "another" })],
      ["the requestId as another JSON type", (req) => ({ status: 200, requestId: [req.requestId] })],
      ["a 'client' member", (req) => ({ status: 200, requestId: req.requestId, client: { clientId: "c" } })],
    ];
    for (const [name, reply] of bad) {
      double.answer = async (req) => reply(req);
      await protocolError(client.ping(), "ERR_REPLY_MISMATCH").catch((e: unknown) => {
        throw new Error(`${name}: ${String(e)}`);
      });
    }
  });

  it("a JWS error with another request's requestId is ERR_REPLY_MISMATCH, not the refusal, and causes no re-keying", async () => {
    const client = double.client();
    await client.ping();
    const ecdhe = double.ecdhe;
    for (const status of [400, 401, 403, 404]) {
      double.answer = async () => double.sign({ status, reason: "replayed", requestId: "an-earlier-request" });
      const e = await protocolError(client.ping(), "ERR_REPLY_MISMATCH");
      expect(e.message).toMatch(/does not echo this request's requestId/);
    }
    expect(double.ecdhe).toBe(ecdhe);
    // A signed success (e.g. an ECDHE reply) on a channel: not an answer either, bound or not.
    double.answer = async (req) => double.sign({ status: 200, requestId: req.requestId });
    await protocolError(client.ping(), "ERR_REPLY_MISMATCH");
    double.answer = async () => double.sign({ status: 201 });
    await protocolError(client.ping(), "ERR_REPLY_MISMATCH");
  });

  it("a JWS error with this request's requestId is the KMS's refusal (401: re-key and retry once)", async () => {
    const client = double.client();
    await client.ping();
    let calls = 0;
    double.answer = async (req) => (++calls === 1 ? double.sign({ status: 401, reason: "unknown ephemeral key", requestId: req.requestId }) : { status: 200, requestId: req.requestId });
    const ecdhe = double.ecdhe;
    await client.ping();
    expect(double.ecdhe).toBe(ecdhe + 1);
    double.answer = async (req) => double.sign({ status: 404, reason: "not found", requestId: req.requestId });
    const e = await client.ping().catch((err: unknown) => err);
    expect(e).toBeInstanceOf(KmsRequestError);
    expect((e as KmsRequestError).status).toBe(404);
  });

  it("residual limit: a JWS error without requestId cannot be bound; it re-keys once (401/403) or fails the operation, never succeeds", async () => {
    const client = double.client();
    await client.ping();
    const ecdhe = double.ecdhe;
    double.answer = async () => double.sign({ status: 401, reason: "unknown ephemeral key" });
    const e = await client.ping().catch((err: unknown) => err);
    expect(e).toBeInstanceOf(KmsRequestError);
    expect((e as KmsRequestError).status).toBe(401);
    expect((e as KmsRequestError).form).toBe("jws");
    expect(double.ecdhe).toBe(ecdhe + 1); // one re-keying, then the operation fails
    double.answer = async () => double.sign({ status: 400, reason: "not JOSE" });
    expect(((await client.ping().catch((err: unknown) => err)) as KmsRequestError).status).toBe(400);
    expect(double.ecdhe).toBe(ecdhe + 1);
  });

  it("key agreement: a replayed JWS refusal or reply of another key agreement is ERR_REPLY_MISMATCH", async () => {
    const replayed: [string, (req: { requestId: string }) => Promise<string>][] = [
      ["a 401 of another key agreement", () => double.sign({ status: 401, reason: "bad token", requestId: "an-earlier-ecdhe" })],
      ["a 201 of another key agreement", () => double.sign({ status: 201, requestId: "an-earlier-ecdhe", key: {} })],
      ["a 201 without requestId", () => double.sign({ status: 201, key: {} })],
      ["a 200 for this key agreement", (req) => double.sign({ status: 200, requestId: req.requestId })],
    ];
    try {
      for (const [name, reply] of replayed) {
        double.agree = (req) => reply(req);
        const e = await double.client().ping().catch((err: unknown) => err);
        expect(e, name).toBeInstanceOf(KmsProtocolError);
        expect((e as KmsProtocolError).code, name).toBe(name.includes("200") ? "ERR_REPLY_STATUS" : "ERR_REPLY_MISMATCH");
      }
      // An unbound refusal (the KMS could not read the request) stays a refusal.
      double.agree = () => double.sign({ status: 401, reason: "does not decrypt" });
      const e = await double.client().ping().catch((err: unknown) => err);
      expect(e).toBeInstanceOf(KmsRequestError);
      expect((e as KmsRequestError).status).toBe(401);
    } finally {
      double.agree = undefined;
    }
  });

  it("the key agreement's own request echoed back is not a reply", async () => {
    const echo: KmsTransport = { discover: double.transport.discover, send: async (m) => m };
    const client = new KmsClient({ transport: echo, user: ALICE, token: "a-bearer-token", trustRoots: [double.trustRoot] });
    const e = await protocolError(client.ping(), "ERR_KMS_SIGNATURE");
    expect(exposed(e)).not.toContain("a-bearer-token");
  });
});
