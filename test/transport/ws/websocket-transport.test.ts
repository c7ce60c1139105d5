import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket, WebSocketServer } from "ws";
import {
  DeviceKey,
  GroupKeys,
  Groups,
  KmsTransportError,
  WebSocketTransport,
  type KmsClient,
} from "../../../src/client/index.js";
import { startTestKms, type TestKms } from "../../helpers/harness.js";
import { kmsClient, startTcpRelay, wsTransport } from "../../helpers/transports.js";

const ALICE = "alice@example.com";
const BOB = "bob@example.com";

let kms: TestKms;
const clients: KmsClient[] = [];
const transports: WebSocketTransport[] = [];

beforeAll(async () => {
  kms = await startTestKms();
});
afterAll(async () => {
  for (const c of clients) await c.close().catch(() => undefined);
  for (const t of transports) t.close();
  await kms?.close();
});

async function transportError(p: Promise<unknown>): Promise<KmsTransportError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(KmsTransportError);
  return e as KmsTransportError;
}

/** A WebSocket server on loopback that runs `onFrame` for each frame it gets (the KMS's part, played by the test). */
async function fakeKms(onFrame: (ws: WebSocket, frame: { id: string; kmsMessage: string }) => void) {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, handleProtocols: (p) => (p.has("keyward.kms.v1") ? "keyward.kms.v1" : false) });
  await new Promise<void>((r) => wss.once("listening", () => r()));
  const protocols: string[] = [];
  wss.on("connection", (ws, req) => {
    protocols.push(String(req.headers["sec-websocket-protocol"] ?? ""));
    ws.on("message", (data) => onFrame(ws, JSON.parse(data.toString()) as { id: string; kmsMessage: string }));
  });
  const { port } = wss.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    protocols,
    close: () =>
      new Promise<void>((r) => {
        for (const c of wss.clients) c.terminate();
        wss.close(() => r());
      }),
  };
}

describe("KmsClient over a WebSocketTransport, end to end", () => {
  it("ping, register devices, create a group, create a GK bound to it and get it as another member", async () => {
    const alice = kmsClient(kms, ALICE, "ws");
    const bob = kmsClient(kms, BOB, "ws");
    clients.push(alice, bob);
    await alice.ping();
    expect(alice.channel?.uri).toMatch(/^kms:\/\/kms\.example\.com\/ecdhe\//);

    const aliceDevice = await DeviceKey.generate({ kid: "alice-ws" });
    const bobDevice = await DeviceKey.generate({ type: "rsa", kid: "bob-ws" });
    const aliceGroups = new Groups(alice, { user: ALICE, device: aliceDevice });
    const bobGroups = new Groups(bob, { user: BOB, device: bobDevice });
    expect(await aliceGroups.registerDevice()).toBe("registered");
    expect(await bobGroups.registerDevice()).toBe("registered");

    const group = await aliceGroups.create([ALICE, BOB]);
    expect(group.uri).toMatch(/^kms:\/\/kms\.example\.com\/blocks\//);
    expect((await bobGroups.members(group.uri)).members()).toEqual([ALICE, BOB]);

    const aliceGks = new GroupKeys(alice, { user: ALICE, device: aliceDevice, chains: aliceGroups });
    const gk = await aliceGks.create({ block: group.genesis.hash });
    const forBob = await new GroupKeys(bob, { user: BOB, device: bobDevice }).fetch(gk.uri);
    expect(forBob.key).toEqual(gk.key);
    expect(forBob.block).toBe(group.genesis.hash);
  });
});

describe("WebSocketTransport", () => {
  it("derives ws(s)://<host>/kms/ws from an http(s) origin and keeps a ws(s) URL; discovery is HTTP GET on the same origin", async () => {
    const seen: string[] = [];
    const fetchStub = (async (url: string) => {
      seen.push(url);
      return new Response('{"uri":"kms://x"}', { status: 200 });
    }) as unknown as typeof fetch;
    expect(new WebSocketTransport({ url: "http://127.0.0.1:8484", WebSocket }).url).toBe("ws://127.0.0.1:8484/kms/ws");
    expect(new WebSocketTransport({ url: "https://kms.example.com/", WebSocket }).url).toBe("wss://kms.example.com/kms/ws");
    expect(new WebSocketTransport({ url: "wss://kms.example.com/custom", WebSocket }).url).toBe("wss://kms.example.com/custom");
    expect(() => new WebSocketTransport({ url: "ftp://kms.example.com", WebSocket })).toThrow(TypeError);
    await new WebSocketTransport({ url: "https://kms.example.com", WebSocket, fetch: fetchStub }).discover();
    await new WebSocketTransport({ url: "ws://127.0.0.1:9/kms/ws", WebSocket, fetch: fetchStub }).discover();
    expect(seen).toEqual(["https://kms.example.com/.well-known/kms", "http://127.0.0.1:9/.well-known/kms"]);
  });

  it("connects lazily, offers keyward.kms.v1, pipelines, matches replies by id and ignores unknown ids", async () => {
    const fake = await fakeKms((ws, frame) => {
      // Out of order, with a stray reply first: the transport must pick by id.
      ws.send(JSON.stringify({ id: "no-such-request", kmsMessage: "stray" }));
      ws.send(JSON.stringify({ id: null, kmsMessage: "stray" }));
      ws.send("not json");
      setTimeout(() => ws.send(JSON.stringify({ id: frame.id, kmsMessage: `re:${frame.kmsMessage}` })), frame.kmsMessage === "a" ? 50 : 0);
    });
    try {
      const t = new WebSocketTransport({ url: fake.url, WebSocket });
      transports.push(t);
      expect(fake.protocols).toEqual([]); // nothing until the first request
      const [a, b, c] = await Promise.all([t.send("a"), t.send("b"), t.send("c")]);
      expect([a, b, c]).toEqual(["re:a", "re:b", "re:c"]);
      expect(fake.protocols).toEqual(["keyward.kms.v1"]); // one socket for all three
      t.close();
    } finally {
      await fake.close();
    }
  });

  it("a server that never answers: ERR_TRANSPORT_TIMEOUT; a late reply is then ignored", async () => {
    const frames: { ws: WebSocket; id: string }[] = [];
    const fake = await fakeKms((ws, frame) => frames.push({ ws, id: frame.id }));
    try {
      const t = new WebSocketTransport({ url: fake.url, WebSocket, requestTimeoutMs: 200 });
      transports.push(t);
      const started = Date.now();
      const e = await transportError(t.send("hello"));
      expect(e.code).toBe("ERR_TRANSPORT_TIMEOUT");
      expect(Date.now() - started).toBeGreaterThanOrEqual(190);
      // The reply that comes too late answers nothing; the next request is unaffected.
      frames[0]!.ws.send(JSON.stringify({ id: frames[0]!.id, kmsMessage: "late" }));
      const next = t.send("again");
      await new Promise((r) => setTimeout(r, 50));
      frames[1]!.ws.send(JSON.stringify({ id: frames[1]!.id, kmsMessage: "on time" }));
      expect(await next).toBe("on time");
      t.close();
    } finally {
      await fake.close();
    }
  });

  it("an upgrade the KMS refuses: ERR_TRANSPORT, and a later request tries again", async () => {
    const other = await startTestKms({ env: { KEYWARD_CORS_ORIGINS: "https://app.example.com" } });
    try {
      // A browser page of another origin: the KMS refuses the upgrade (403).
      class EvilOriginWebSocket extends WebSocket {
        constructor(url: string, protocols?: string | string[]) {
          super(url, protocols, { origin: "https://evil.example" });
        }
      }
      const t = new WebSocketTransport({ url: other.url, WebSocket: EvilOriginWebSocket });
      const e = await transportError(t.send("x"));
      expect(e.code).toBe("ERR_TRANSPORT");
      expect((await transportError(t.send("x"))).code).toBe("ERR_TRANSPORT");
      t.close();
    } finally {
      await other.close();
    }
  });

  it("a WebSocket constructor that throws (e.g. a browser refusing ws: from https:): ERR_TRANSPORT, and the next request tries again", async () => {
    let attempts = 0;
    const Throwing = class {
      constructor() {
        attempts++;
        throw new Error("insecure WebSocket refused");
      }
    } as unknown as typeof WebSocket;
    const t = new WebSocketTransport({ url: "http://127.0.0.1:9", WebSocket: Throwing });
    expect((await transportError(t.send("x"))).code).toBe("ERR_TRANSPORT");
    expect((await transportError(t.send("x"))).code).toBe("ERR_TRANSPORT");
    expect(attempts).toBe(2);
  });

  it("close(): requests in flight reject with ERR_TRANSPORT_CLOSED", async () => {
    const fake = await fakeKms(() => undefined);
    try {
      const t = new WebSocketTransport({ url: fake.url, WebSocket });
      const pending = t.send("never answered");
      await new Promise((r) => setTimeout(r, 100));
      t.close();
      expect((await transportError(pending)).code).toBe("ERR_TRANSPORT_CLOSED");
    } finally {
      await fake.close();
    }
  });

  it("a connection dropped with requests in flight: they reject with ERR_TRANSPORT_CLOSED; the next ping reconnects on the same channel", async () => {
    const relay = await startTcpRelay(kms.url);
    const core = kms.kms.core;
    const real = core.handle.bind(core);
    try {
      const transport = wsTransport({ url: relay.url });
      transports.push(transport);
      const client = kms.client(ALICE, { transport });
      clients.push(client);
      await client.ping();
      const channel = client.channel!.uri;

      // Hold the next requests in the core, cut the connection under them.
      let inCore = 0;
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      core.handle = async (m: string) => {
        inCore++;
        await gate;
        return real(m);
      };
      const inFlight = Array.from({ length: 5 }, () => client.ping());
      const deadline = Date.now() + 10_000;
      while (inCore < 5 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      expect(inCore).toBe(5);
      relay.dropAll();
      for (const p of inFlight) expect((await transportError(p)).code).toBe("ERR_TRANSPORT_CLOSED");
      core.handle = real;
      release();

      await client.ping();
      expect(client.channel!.uri).toBe(channel); // no re-keying: the channel is not the socket's
    } finally {
      core.handle = real;
      await relay.close();
    }
  });
});
