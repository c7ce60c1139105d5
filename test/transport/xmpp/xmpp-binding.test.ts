import type { Client } from "@xmpp/client";
import { exportJWK } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decryptCommonMessage, encryptCommonMessage } from "../../../src/protocol/jose/common-message.js";
import { deriveEphemeralKey, generateEphemeralKeyPair, importEcdhPublicKey } from "../../../src/protocol/jose/ephemeral-key.js";
import { openJws, RawClient, startTestKms, type TestKms } from "../../helpers/harness.js";
import { prosodyForTests, startProsody, type ProsodyServer } from "../../helpers/prosody.js";
import { connectXmppUser, KMS_COMPONENT, kmsXmppEnv, rawIq, waitForReadyz, xml } from "../../helpers/xmpp-client.js";
import type { JWK } from "jose";
import { Writable } from "node:stream";
import { createLogger } from "../../../src/server/logger.js";
import { PER_SENDER_CONCURRENCY, XmppBinding } from "../../../src/transport/xmpp/xmpp-binding.js";

const NS = "urn:x-keyward:kms:1";
const MAX_MESSAGE_BYTES = 64 * 1024;

/** The text of the reply's `<kms>` payload. */
function kmsText(reply: { getChild(n: string, ns?: string): { text(): string } | undefined }): string {
  const child = reply.getChild("kms", NS);
  if (!child) throw new Error("the IQ result has no kms payload");
  return child.text();
}

async function stanzaErrorOf(p: Promise<unknown>): Promise<{ condition: string; type: string }> {
  try {
    await p;
  } catch (e) {
    const err = e as { name?: string; condition?: string; type?: string };
    expect(err.name).toBe("StanzaError");
    return { condition: err.condition ?? "", type: err.type ?? "" };
  }
  throw new Error("expected a stanza error");
}

const run = prosodyForTests("the XMPP binding suite");

describe.skipIf(!run)("the XMPP binding (§3) on a real Prosody", () => {
  let prosody: ProsodyServer;
  let kms: TestKms;
  let alice: Client;

  beforeAll(async () => {
    prosody = await startProsody({ components: { [KMS_COMPONENT]: "kms-secret", "gate.localhost": "gate-secret" } });
    kms = await startTestKms({ env: { ...kmsXmppEnv(prosody), KEYWARD_MAX_MESSAGE_BYTES: String(MAX_MESSAGE_BYTES) } });
    await waitForReadyz(kms.url, 200);
    alice = await connectXmppUser(prosody, "alice", "phone");
  });

  afterAll(async () => {
    await alice?.stop().catch(() => {});
    await kms?.close();
    await prosody?.stop();
  });

  /** Key agreement and a ping, both over XMPP; returns the channel. */
  async function channelOverXmpp(raw: RawClient): Promise<{ key: Uint8Array; uri: string }> {
    const pair = await generateEphemeralKeyPair();
    const { kty, crv, x, y } = await exportJWK(pair.publicKey);
    const payload = { client: await raw.credential(), method: "create", uri: "/ecdhe", requestId: "ka-1", jwk: { kty, crv, x, y } };
    const reply = await rawIq(alice, "set", xml("kms", { xmlns: NS }, await raw.ecdheMessage(payload)));
    const { payload: body } = await openJws(kms.url, kmsText(reply));
    expect(body).toMatchObject({ status: 201, requestId: "ka-1" });
    const key = body.key as { uri: string; jwk: JWK };
    return { key: await deriveEphemeralKey(pair.privateKey, await importEcdhPublicKey(key.jwk)), uri: key.uri };
  }

  it("a kms IQ set gets the core's reply as an IQ result from the component to the sender's full JID, same id", async () => {
    const raw = new RawClient(kms);
    const { key, uri } = await channelOverXmpp(raw);
    const request = xml("iq", { type: "set", to: KMS_COMPONENT, id: "ping-42" }, xml("kms", { xmlns: NS }, await encryptCommonMessage(key, uri, await raw.payload({ requestId: 42 }))));
    const reply = await alice.iqCaller.request(request, 10_000);
    expect(reply.attrs).toMatchObject({ type: "result", id: "ping-42", from: KMS_COMPONENT, to: "alice@localhost/phone" });
    const { payload } = await decryptCommonMessage(key, kmsText(reply));
    expect(payload).toEqual({ status: 200, requestId: 42 });
  });

  it("pipelined IQs each get their own reply", async () => {
    const raw = new RawClient(kms);
    const { key, uri } = await channelOverXmpp(raw);
    const replies = await Promise.all(
      Array.from({ length: 8 }, async (_, i) => rawIq(alice, "set", xml("kms", { xmlns: NS }, await encryptCommonMessage(key, uri, await raw.payload({ requestId: `p${i}` }))))),
    );
    const ids = await Promise.all(replies.map(async (r) => ((await decryptCommonMessage(key, kmsText(r))).payload as { requestId: string }).requestId));
    expect(ids).toEqual(Array.from({ length: 8 }, (_, i) => `p${i}`));
  });

  it("KMS errors are IQ results, not stanza errors: non-JOSE text → JWS 400, an unknown ephemeral key → JWS 401", async () => {
    const before = kms.channelCount();
    const notJose = await rawIq(alice, "set", xml("kms", { xmlns: NS }, "hello, KMS"));
    expect(notJose.attrs.type).toBe("result");
    expect((await openJws(kms.url, kmsText(notJose))).payload).toMatchObject({ status: 400 });

    const raw = new RawClient(kms);
    const { key } = await channelOverXmpp(raw);
    const stray = await encryptCommonMessage(key, `kms://${kms.authority}/ecdhe/does-not-exist`, await raw.payload());
    const unknown = await rawIq(alice, "set", xml("kms", { xmlns: NS }, stray));
    expect(unknown.attrs.type).toBe("result");
    expect((await openJws(kms.url, kmsText(unknown))).payload).toMatchObject({ status: 401 });
    expect(kms.channelCount()).toBe(before + 1); // only the channel channelOverXmpp opened
  });

  it("a key agreement with a bad credential is refused end to end (JWS 401 in an IQ result), the sender's JID notwithstanding", async () => {
    const before = kms.channelCount();
    const raw = new RawClient(kms);
    const pair = await generateEphemeralKeyPair();
    const { kty, crv, x, y } = await exportJWK(pair.publicKey);
    // alice@localhost is an authenticated XMPP user; that is no KMS identity (§3).
    const payload = { client: { clientId: "x", credential: { bearer: "not-a-token" } }, method: "create", uri: "/ecdhe", requestId: "r", jwk: { kty, crv, x, y } };
    const reply = await rawIq(alice, "set", xml("kms", { xmlns: NS }, await raw.ecdheMessage(payload)));
    expect(reply.attrs.type).toBe("result");
    expect((await openJws(kms.url, kmsText(reply))).payload).toMatchObject({ status: 401 });
    const noCredential = { method: "create", uri: "/ecdhe", requestId: "r2", jwk: { kty, crv, x, y } };
    const reply2 = await rawIq(alice, "set", xml("kms", { xmlns: NS }, await raw.ecdheMessage(noCredential)));
    expect((await openJws(kms.url, kmsText(reply2))).payload).toMatchObject({ status: 401 });
    expect(kms.channelCount()).toBe(before);
  });

  it.each([
    ["an empty kms element", "set", () => xml("kms", { xmlns: NS }), "bad-request"],
    ["a kms element of whitespace only", "set", () => xml("kms", { xmlns: NS }, " \n\t "), "bad-request"],
    ["a kms element holding an element, no text", "set", () => xml("kms", { xmlns: NS }, xml("jwe", {})), "bad-request"],
    ["a kms payload in an IQ get", "get", () => xml("kms", { xmlns: NS }, "eyJ.x.y.z.w"), "bad-request"],
    ["another payload", "get", () => xml("query", { xmlns: "jabber:iq:version" }), "service-unavailable"],
    ["another payload (set)", "set", () => xml("command", { xmlns: "http://jabber.org/protocol/commands" }), "service-unavailable"],
    ["a kms element in another namespace", "set", () => xml("kms", { xmlns: "urn:example:other" }, "eyJ.x.y.z.w"), "service-unavailable"],
    ["a discovery element in another namespace", "get", () => xml("discovery", { xmlns: "urn:example:other" }), "service-unavailable"],
  ] as const)("%s (IQ %s) → the stanza error %s", async (_what, type, payload, expected) => {
    const before = kms.channelCount();
    const error = await stanzaErrorOf(rawIq(alice, type, payload()));
    expect(error.condition).toBe(expected);
    expect(kms.channelCount()).toBe(before);
  });

  it("a kms IQ to a JID under the component's domain (someone@kms.localhost) → service-unavailable: only the component's JID is the KMS", async () => {
    const before = kms.channelCount();
    const raw = new RawClient(kms);
    const pair = await generateEphemeralKeyPair();
    const { kty, crv, x, y } = await exportJWK(pair.publicKey);
    const payload = { client: await raw.credential(), method: "create", uri: "/ecdhe", requestId: "elsewhere", jwk: { kty, crv, x, y } };
    const error = await stanzaErrorOf(rawIq(alice, "set", xml("kms", { xmlns: NS }, await raw.ecdheMessage(payload)), `someone@${KMS_COMPONENT}`));
    expect(error.condition).toBe("service-unavailable");
    expect(kms.channelCount()).toBe(before);
  });

  it("an IQ with two payloads is a bad-request (RFC 6120 §8.2.3)", async () => {
    const iq = xml("iq", { type: "set", to: KMS_COMPONENT }, xml("kms", { xmlns: NS }, "a.b.c.d.e"), xml("kms", { xmlns: NS }, "a.b.c.d.e"));
    expect((await stanzaErrorOf(alice.iqCaller.request(iq, 10_000))).condition).toBe("bad-request");
  });

  it("discovery: the /.well-known/kms document as JSON in <discovery/>", async () => {
    const reply = await rawIq(alice, "get", xml("discovery", { xmlns: NS }));
    expect(reply.attrs.type).toBe("result");
    const doc = JSON.parse(reply.getChild("discovery", NS)!.text()) as unknown;
    const http = (await (await fetch(`${kms.url}/.well-known/kms`)).json()) as unknown;
    expect(doc).toEqual(http);
    expect(doc).toMatchObject({ uri: `kms://${kms.authority}`, protocol: "draft-abiggs-saag-key-management-service-03" });
  });

  it("XEP-0030 disco#info lists an identity and the feature urn:x-keyward:kms:1", async () => {
    const reply = await rawIq(alice, "get", xml("query", { xmlns: "http://jabber.org/protocol/disco#info" }));
    const query = reply.getChild("query", "http://jabber.org/protocol/disco#info")!;
    expect(query.getChildren("identity").map((i) => i.attrs)).toEqual([{ category: "component", type: "generic", name: "Keyward KMS" }]);
    expect(query.getChildren("feature").map((f) => f.attrs.var)).toContain(NS);
    const node = await stanzaErrorOf(rawIq(alice, "get", xml("query", { xmlns: "http://jabber.org/protocol/disco#info", node: "x" })));
    expect(node.condition).toBe("item-not-found");
  });

  it("a message over the KMS's limit gets an IQ result with a JWS 413, nothing processed", async () => {
    const before = kms.channelCount();
    const raw = new RawClient(kms);
    const pair = await generateEphemeralKeyPair();
    const { kty, crv, x, y } = await exportJWK(pair.publicKey);
    const big = { client: await raw.credential(), method: "create", uri: "/ecdhe", requestId: "big", jwk: { kty, crv, x, y }, padding: "x".repeat(MAX_MESSAGE_BYTES) };
    const reply = await rawIq(alice, "set", xml("kms", { xmlns: NS }, await raw.ecdheMessage(big)));
    expect(reply.attrs.type).toBe("result");
    const { payload } = await openJws(kms.url, kmsText(reply));
    expect(payload).toMatchObject({ status: 413 });
    expect(String(payload.reason)).toContain(String(MAX_MESSAGE_BYTES));
    expect(kms.channelCount()).toBe(before);
  });

  it("/metrics has the link gauge keyward_xmpp_connected", async () => {
    const text = await (await fetch(`${kms.url}/metrics`)).text();
    expect(text).toMatch(/^keyward_xmpp_connected 1$/m);
  });

  describe("XmppBinding itself", () => {
    const logger = createLogger("silent");
    const base = { handle: async () => "x", wellKnown: () => ({}), refuse: async () => "r", maxMessageBytes: 1024, logger, backoff: { initialMs: 100, maxMs: 500 } };

    it("more messages in progress than maxInFlight → a JWS 429 in an IQ result for the extra ones (no stanza error); the others are answered", async () => {
      let open!: () => void;
      const gate = new Promise<void>((r) => (open = r));
      const binding = XmppBinding.start({
        ...base,
        service: prosody.componentService,
        domain: "gate.localhost",
        secret: "gate-secret",
        maxInFlight: 2,
        refuse: async (status, reason) => JSON.stringify({ status, reason }),
        handle: async (m) => {
          await gate;
          return `echo ${m.length}`;
        },
      });
      try {
        await binding.online();
        const first = [rawIq(alice, "set", xml("kms", { xmlns: NS }, "a.b.c.d.e"), "gate.localhost"), rawIq(alice, "set", xml("kms", { xmlns: NS }, "a.b.c.d.e"), "gate.localhost")];
        await new Promise((r) => setTimeout(r, 300)); // both are in the handler now
        const third = await rawIq(alice, "set", xml("kms", { xmlns: NS }, "a.b.c.d.e"), "gate.localhost");
        expect(third.attrs.type).toBe("result");
        expect(JSON.parse(kmsText(third))).toEqual({ status: 429, reason: "the KMS is overloaded: retry later" });
        open();
        for (const reply of await Promise.all(first)) expect(kmsText(reply)).toBe("echo 9");
      } finally {
        open();
        await binding.close();
      }
    });

    it(`one sender has at most ${PER_SENDER_CONCURRENCY} messages in the core at once; the rest wait their turn and are all answered`, async () => {
      let open!: () => void;
      const gate = new Promise<void>((r) => (open = r));
      let running = 0;
      let peak = 0;
      const binding = XmppBinding.start({
        ...base,
        service: prosody.componentService,
        domain: "gate.localhost",
        secret: "gate-secret",
        maxInFlight: 1000,
        handle: async (m) => {
          peak = Math.max(peak, ++running);
          await gate;
          running--;
          return `done ${m}`;
        },
      });
      const bob = await connectXmppUser(prosody, "bob", "other");
      try {
        await binding.online();
        const many = Array.from({ length: PER_SENDER_CONCURRENCY + 20 }, (_, i) => rawIq(alice, "set", xml("kms", { xmlns: NS }, `a${i}`), "gate.localhost", 20_000));
        await new Promise((r) => setTimeout(r, 500));
        expect(running).toBe(PER_SENDER_CONCURRENCY);
        // Another sender is not stuck behind alice's pipeline.
        const fromBob = rawIq(bob, "set", xml("kms", { xmlns: NS }, "b"), "gate.localhost", 20_000);
        await new Promise((r) => setTimeout(r, 300));
        expect(running).toBe(PER_SENDER_CONCURRENCY + 1);
        open();
        const replies = await Promise.all(many);
        expect(replies.map(kmsText)).toEqual(Array.from({ length: PER_SENDER_CONCURRENCY + 20 }, (_, i) => `done a${i}`));
        expect(kmsText(await fromBob)).toBe("done b");
        expect(peak).toBe(PER_SENDER_CONCURRENCY + 1);
      } finally {
        open();
        await bob.stop().catch(() => {});
        await binding.close();
      }
    });

    it("a reply over the XMPP server's stanza limit is replaced by a JWS 413; the component link stays up", async () => {
      const binding = XmppBinding.start({
        ...base,
        service: prosody.componentService,
        domain: "gate.localhost",
        secret: "gate-secret",
        maxInFlight: 10,
        handle: async (m) => "x".repeat(Number(m)),
        refuse: async (status, reason) => JSON.stringify({ status, reason }),
      });
      try {
        await binding.online();
        const drops = () => (prosody.log().match(/component disconnected: gate\.localhost/g) ?? []).length;
        const dropsBefore = drops();
        const small = await rawIq(alice, "set", xml("kms", { xmlns: NS }, "400000"), "gate.localhost");
        expect(kmsText(small)).toHaveLength(400_000);
        // Prosody's default component stanza limit is 512 KiB: sent as is, it would close the link.
        const big = await rawIq(alice, "set", xml("kms", { xmlns: NS }, "600000"), "gate.localhost");
        expect(JSON.parse(kmsText(big))).toMatchObject({ status: 413, reason: expect.stringContaining("stanza limit") });
        await new Promise((r) => setTimeout(r, 300));
        expect(binding.connected).toBe(true);
        expect(drops()).toBe(dropsBefore);
      } finally {
        await binding.close();
      }
    });

    it("a wrong component secret: the link never comes up, it keeps trying, and close() stops it", async () => {
      const lines: string[] = [];
      const binding = XmppBinding.start({
        ...base,
        service: prosody.componentService,
        domain: "gate.localhost",
        secret: "not-the-secret",
        maxInFlight: 10,
        logger: createLogger("warn", new Writable({ write: (c, _e, cb) => (lines.push(String(c)), cb()) })),
      });
      await expect(binding.online(1_500)).rejects.toThrow(/did not come up/);
      expect(binding.connected).toBe(false);
      expect(() => binding.assertReady()).toThrow(/down/);
      expect(lines.join("")).toMatch(/xmpp link error/);
      expect(lines.join("")).not.toContain("not-the-secret");
      await binding.close();
    });

    it("a second KMS on a component JID already held is refused by Prosody (<conflict/>); the first keeps serving", async () => {
      const second = XmppBinding.start({ ...base, service: prosody.componentService, domain: KMS_COMPONENT, secret: "kms-secret", maxInFlight: 10 });
      try {
        await expect(second.online(1_500)).rejects.toThrow();
        const reply = await rawIq(alice, "get", xml("discovery", { xmlns: NS }));
        expect(JSON.parse(reply.getChild("discovery", NS)!.text())).toMatchObject({ uri: `kms://${kms.authority}` });
      } finally {
        await second.close();
      }
    });
  });

  // Last: it restarts Prosody.
  it("Prosody stopped: /readyz 503 and the gauge 0; Prosody back: the KMS reconnects, /readyz 200, IQs served again", { timeout: 60_000 }, async () => {
    await alice.stop().catch(() => {});
    await prosody.suspend();
    await waitForReadyz(kms.url, 503, 10_000);
    expect(await (await fetch(`${kms.url}/metrics`)).text()).toMatch(/^keyward_xmpp_connected 0$/m);
    await new Promise((r) => setTimeout(r, 1_500)); // a few failed attempts: the backoff grows
    await prosody.resume();
    await waitForReadyz(kms.url, 200, 30_000);
    expect(await (await fetch(`${kms.url}/metrics`)).text()).toMatch(/^keyward_xmpp_connected 1$/m);
    alice = await connectXmppUser(prosody, "alice", "phone");
    const reply = await rawIq(alice, "get", xml("discovery", { xmlns: NS }));
    expect(reply.attrs.type).toBe("result");
    expect(kms.logs()).toMatch(/xmpp link down/);
  });
});
