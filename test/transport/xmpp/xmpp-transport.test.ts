import { component, type Component } from "@xmpp/component";
import type { Client } from "@xmpp/client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeviceKey, GroupKeys, Groups, KmsRequestError, KmsTransportError, XmppTransport, xmppJsConnection, type XmppConnection } from "../../../src/client/index.js";
import { startTestKms, type TestKms } from "../../helpers/harness.js";
import { prosodyForTests, startProsody, type ProsodyServer } from "../../helpers/prosody.js";
import { connectXmppUser, KMS_COMPONENT, kmsClientOverXmpp, kmsXmppEnv, waitForReadyz, xml } from "../../helpers/xmpp-client.js";

/** Rejects with the KmsTransportError `p` rejects with. */
async function transportError(p: Promise<unknown>): Promise<KmsTransportError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(KmsTransportError);
    return e as KmsTransportError;
  }
  throw new Error("expected a KmsTransportError");
}

describe("XmppTransport without a server", () => {
  const never: XmppConnection = { isOnline: () => true, onDisconnect: () => () => {}, iq: () => new Promise(() => {}) };

  it("no reply within the timeout → ERR_TRANSPORT_TIMEOUT", async () => {
    const t = new XmppTransport({ connection: never, to: "kms.example.com", timeoutMs: 100 });
    expect((await transportError(t.send("a.b.c.d.e"))).code).toBe("ERR_TRANSPORT_TIMEOUT");
  });

  it("offline → ERR_TRANSPORT_CLOSED at once; a drop with requests in flight → ERR_TRANSPORT_CLOSED for each", async () => {
    const offline = new XmppTransport({ connection: { ...never, isOnline: () => false }, to: "kms.example.com" });
    expect((await transportError(offline.send("a.b.c.d.e"))).code).toBe("ERR_TRANSPORT_CLOSED");
    const listeners = new Set<() => void>();
    const dropping: XmppConnection = { ...never, onDisconnect: (l) => (listeners.add(l), () => listeners.delete(l)) };
    const t = new XmppTransport({ connection: dropping, to: "kms.example.com", timeoutMs: 60_000 });
    const inFlight = [t.send("1.2.3.4.5"), t.send("6.7.8.9.0"), t.discover()];
    expect(listeners.size).toBe(1); // one subscription per transport, not per request
    for (const l of [...listeners]) l();
    for (const p of inFlight) expect((await transportError(p)).code).toBe("ERR_TRANSPORT_CLOSED");
  });

  it("a message over the stanza limit is refused before it is sent (ERR_TRANSPORT)", async () => {
    let sent = 0;
    const counting: XmppConnection = { ...never, iq: () => (sent++, new Promise(() => {})) };
    const t = new XmppTransport({ connection: counting, to: "kms.example.com", maxStanzaBytes: 10_000 });
    const e = await transportError(t.send("x".repeat(9_500)));
    expect([e.code, e.message]).toEqual(["ERR_TRANSPORT", expect.stringContaining("stanza limit is 10000")]);
    expect(sent).toBe(0);
    const byDefault = new XmppTransport({ connection: counting, to: "kms.example.com" });
    expect((await transportError(byDefault.send("x".repeat(256 * 1024)))).code).toBe("ERR_TRANSPORT");
    expect(sent).toBe(0);
  });

  it("a stanza error → ERR_TRANSPORT; a result without a kms payload → ERR_TRANSPORT", async () => {
    const err = new XmppTransport({ connection: { ...never, iq: async () => ({ type: "error", condition: "service-unavailable" }) }, to: "kms.example.com" });
    const e = await transportError(err.send("a.b.c.d.e"));
    expect([e.code, e.message]).toEqual(["ERR_TRANSPORT", expect.stringContaining("service-unavailable")]);
    const empty = new XmppTransport({ connection: { ...never, iq: async () => ({ type: "result" }) }, to: "kms.example.com" });
    expect((await transportError(empty.send("a.b.c.d.e"))).code).toBe("ERR_TRANSPORT");
  });
});

const run = prosodyForTests("the XmppTransport suite");

describe.skipIf(!run)("KmsClient over XmppTransport, through Prosody and the KMS component", () => {
  let prosody: ProsodyServer;
  let kms: TestKms;
  let mute: Component;
  const closers: Array<() => Promise<unknown>> = [];

  beforeAll(async () => {
    prosody = await startProsody({ components: { [KMS_COMPONENT]: "kms-secret", "mute.localhost": "mute-secret", "closing.localhost": "closing-secret" } });
    kms = await startTestKms({ env: kmsXmppEnv(prosody) });
    // A component that takes IQs and never answers them: for timeouts and drops with requests in flight.
    mute = component({ service: prosody.componentService, domain: "mute.localhost", password: "mute-secret" });
    mute.on("error", () => {});
    mute.reconnect.stop();
    mute.middleware.use(() => new Promise(() => {}));
    await mute.start();
    await waitForReadyz(kms.url, 200);
  });

  afterAll(async () => {
    for (const close of closers) await close().catch(() => {});
    await mute?.stop().catch(() => {});
    await kms?.close();
    await prosody?.stop();
  });

  async function xmppUser(name: string, resource?: string): Promise<Client> {
    const c = await connectXmppUser(prosody, name, resource);
    closers.push(() => c.stop());
    return c;
  }

  it("ping, register a device, create a group, GK create (bound) and get: every request over XMPP", async () => {
    const a = await kmsClientOverXmpp(kms, prosody, "alice");
    const b = await kmsClientOverXmpp(kms, prosody, "bob");
    closers.push(a.close, b.close);
    // kmsClientOverXmpp gives the client no URL: nothing can go over HTTP.
    await a.kms.ping();
    const aliceDevice = await DeviceKey.generate({ type: "ec", kid: "alice-xmpp" });
    const bobDevice = await DeviceKey.generate({ type: "rsa", kid: "bob-xmpp" });
    const aliceGroups = new Groups(a.kms, { user: "alice@example.com", device: aliceDevice });
    const bobGroups = new Groups(b.kms, { user: "bob@example.com", device: bobDevice });
    await aliceGroups.registerDevice();
    await bobGroups.registerDevice();
    const group = await aliceGroups.create(["alice@example.com", "bob@example.com"]);
    const aliceGks = new GroupKeys(a.kms, { user: "alice@example.com", device: aliceDevice, chains: aliceGroups });
    const gk = await aliceGks.create({ block: group.genesis.hash });
    expect(gk.block).toBe(group.genesis.hash);
    const jwe = await aliceGks.encrypt(gk, new TextEncoder().encode("over xmpp"));

    const bobGks = new GroupKeys(b.kms, { user: "bob@example.com", device: bobDevice, chains: bobGroups });
    const fetched = await bobGks.fetch(gk.uri);
    expect(fetched.uri).toBe(gk.uri);
    expect(new TextDecoder().decode((await bobGks.decrypt(jwe)).plaintext)).toBe("over xmpp");

    // carol is no member: her refusal comes back over XMPP as a KMS error (403), not a transport error.
    const c = await kmsClientOverXmpp(kms, prosody, "carol");
    closers.push(c.close);
    const carolDevice = await DeviceKey.generate({ type: "ec", kid: "carol-xmpp" });
    const carolGroups = new Groups(c.kms, { user: "carol@example.com", device: carolDevice });
    await carolGroups.registerDevice();
    const refused = await new GroupKeys(c.kms, { user: "carol@example.com", device: carolDevice, chains: carolGroups }).fetch(gk.uri).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(KmsRequestError);
    expect((refused as KmsRequestError).status).toBe(403);
  });

  it("discover() over XMPP gives the /.well-known/kms document", async () => {
    const alice = await xmppUser("alice", "disco");
    const t = new XmppTransport({ connection: xmppJsConnection(alice, xml), to: KMS_COMPONENT });
    expect(await t.discover()).toEqual(await (await fetch(`${kms.url}/.well-known/kms`)).json());
  });

  it("pipelined requests on one XMPP connection", async () => {
    const a = await kmsClientOverXmpp(kms, prosody, "alice", { resource: "pipeline" });
    closers.push(a.close);
    await a.kms.ping();
    await Promise.all(Array.from({ length: 10 }, () => a.kms.ping()));
  });

  it("a stanza error (the JID is a user's client, not a KMS) → ERR_TRANSPORT", async () => {
    const alice = await xmppUser("alice", "stanza");
    await xmppUser("bob", "desk");
    const t = new XmppTransport({ connection: xmppJsConnection(alice, xml), to: "bob@localhost/desk", timeoutMs: 10_000 });
    const e = await transportError(t.send("a.b.c.d.e"));
    expect(e.code).toBe("ERR_TRANSPORT");
    expect(e.message).toContain("service-unavailable");
  });

  it("no reply in time → ERR_TRANSPORT_TIMEOUT", async () => {
    const alice = await xmppUser("alice", "timeout");
    const t = new XmppTransport({ connection: xmppJsConnection(alice, xml), to: "mute.localhost", timeoutMs: 300 });
    expect((await transportError(t.send("a.b.c.d.e"))).code).toBe("ERR_TRANSPORT_TIMEOUT");
  });

  it("the XMPP connection drops with requests in flight → ERR_TRANSPORT_CLOSED, fast; then sends fail at once", async () => {
    const alice = await connectXmppUser(prosody, "alice", "drop");
    const t = new XmppTransport({ connection: xmppJsConnection(alice, xml), to: "mute.localhost", timeoutMs: 30_000 });
    const inFlight = [t.send("a.b.c.d.e"), t.send("f.g.h.i.j")];
    await new Promise((r) => setTimeout(r, 200));
    const started = Date.now();
    void alice.stop();
    for (const p of inFlight) expect((await transportError(p)).code).toBe("ERR_TRANSPORT_CLOSED");
    expect(Date.now() - started).toBeLessThan(10_000);
    expect((await transportError(t.send("k.l.m.n.o"))).code).toBe("ERR_TRANSPORT_CLOSED");
  });

  it("Kms.close() takes the component off the XMPP server: its JID then answers with a stanza error, and SDK requests fail with ERR_TRANSPORT", async () => {
    const second = await startTestKms({ env: kmsXmppEnv(prosody, "closing.localhost") });
    let closed = false;
    try {
      await waitForReadyz(second.url, 200);
      const alice = await xmppUser("alice", "closing");
      const t = new XmppTransport({ connection: xmppJsConnection(alice, xml), to: "closing.localhost", timeoutMs: 10_000 });
      expect(await t.discover()).toMatchObject({ uri: `kms://${second.authority}` });
      await second.close();
      closed = true;
      expect(prosody.log()).toMatch(/component disconnected: closing\.localhost/);
      const e = await transportError(t.discover());
      expect(e.code).toBe("ERR_TRANSPORT");
    } finally {
      if (!closed) await second.close();
    }
  });
});
