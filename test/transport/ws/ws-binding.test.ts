import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { encryptCommonMessage, decryptCommonMessage } from "../../../src/protocol/jose/common-message.js";
import { WsBinding, parseFrame, type WsBindingOptions } from "../../../src/transport/ws/ws-binding.js";
import { CorsPolicy } from "../../../src/transport/http/cors.js";
import { openJws, RawClient, startTestKms, type TestKms } from "../../helpers/harness.js";
import { RawSocket, type ReplyFrame } from "../../helpers/raw-ws.js";
import { kmsClient } from "../../helpers/transports.js";

const APP = "https://app.example.com";
const SUBPROTOCOL = "keyward.kms.v1";

let kms: TestKms;
const sockets: RawSocket[] = [];
const socket = (opts: ConstructorParameters<typeof RawSocket>[1] = {}, url = kms.url) => {
  const s = new RawSocket(url, opts);
  sockets.push(s);
  return s;
};

beforeAll(async () => {
  kms = await startTestKms({ env: { KEYWARD_CORS_ORIGINS: APP } });
});
afterEach(() => {
  for (const s of sockets.splice(0)) s.close();
});
afterAll(async () => {
  await kms?.close();
});

/** The reply is a JWS error signed by the static key with this status; returns its payload. */
async function expectJwsError(reply: ReplyFrame, status: number): Promise<Record<string, unknown>> {
  expect(Object.keys(reply).sort()).toEqual(["id", "kmsMessage"]);
  expect(reply.kmsMessage.split(".")).toHaveLength(3);
  const { payload } = await openJws(kms.url, reply.kmsMessage);
  expect(payload.status).toBe(status);
  expect(payload.reason).toEqual(expect.any(String));
  return payload;
}

/** A real `update /ping` on a channel opened over HTTP, as a compact JWE. */
async function pingMessage(raw: RawClient): Promise<{ message: string; requestId: unknown }> {
  const payload = await raw.payload();
  return { message: await encryptCommonMessage(raw.key!, raw.uri!, payload), requestId: payload.requestId };
}

/** The HTTP status of a refused upgrade (and, when `reason` is given, that its body says so). */
async function refusedStatus(s: RawSocket, reason?: RegExp): Promise<number> {
  const e = (await s.opened.then(() => undefined, (err: unknown) => err)) as { status?: number; body?: string } | undefined;
  expect(e, "the upgrade should have been refused").toBeDefined();
  if (reason) expect((JSON.parse(e!.body!) as { error: string }).error).toMatch(reason);
  return e!.status!;
}

describe("upgrade: path, subprotocol, Origin", () => {
  it("selects keyward.kms.v1 when offered, alone or among others", async () => {
    const alone = socket({ protocols: [SUBPROTOCOL] });
    await alone.opened;
    expect(alone.ws.protocol).toBe(SUBPROTOCOL);
    const among = socket({ protocols: ["chat", SUBPROTOCOL] });
    await among.opened;
    expect(among.ws.protocol).toBe(SUBPROTOCOL);
  });

  it("accepts a client that offers no subprotocol", async () => {
    const none = socket();
    await none.opened;
    expect(none.ws.protocol).toBe("");
  });

  it("refuses (HTTP 400, no upgrade) a client offering only other subprotocols", async () => {
    const other = socket({ protocols: ["keyward.kms.v2", "chat"] });
    expect(await refusedStatus(other, /speaks the subprotocol keyward\.kms\.v1/)).toBe(400);
  });

  it("accepts an allowed Origin and a request without Origin; refuses another Origin with 403", async () => {
    const allowed = socket({ origin: APP });
    await allowed.opened;
    const noOrigin = socket();
    await noOrigin.opened;
    const evil = socket({ origin: "https://evil.example" });
    expect(await refusedStatus(evil, /origin not allowed/)).toBe(403);
    // Not a prefix or case trick either.
    expect(await refusedStatus(socket({ origin: `${APP}.evil.example` }))).toBe(403);
    expect(await refusedStatus(socket({ origin: "null" }))).toBe(403);
  });

  it("answers 404 to an upgrade on any other path, and closes the socket", async () => {
    for (const path of ["/kms/messages", "/kms/ws/extra", "/", "/.well-known/kms"]) {
      const s = socket({ path });
      expect(await refusedStatus(s, /not found/)).toBe(404);
      await s.closed;
    }
  });

  it("counts open connections in /metrics", async () => {
    const a = socket();
    const b = socket();
    await Promise.all([a.opened, b.opened]);
    const metrics = await (await fetch(`${kms.url}/metrics`)).text();
    expect(metrics).toMatch(/^keyward_ws_connections \d+$/m);
    expect(Number(/^keyward_ws_connections (\d+)$/m.exec(metrics)![1])).toBeGreaterThanOrEqual(2);
  });
});

describe("frames", () => {
  it("answers a KMS message with exactly {id, kmsMessage}: the reply HTTP would give", async () => {
    const raw = new RawClient(kms);
    expect((await raw.ecdhe()).status).toBe(201);
    const s = socket({ protocols: [SUBPROTOCOL] });
    await s.opened;
    const { message, requestId } = await pingMessage(raw);
    s.send({ id: "ping-1", kmsMessage: message });
    const text = await s.nextText();
    const reply = JSON.parse(text) as ReplyFrame;
    expect(Object.keys(reply)).toEqual(["id", "kmsMessage"]);
    expect(reply.id).toBe("ping-1");
    const { payload } = await decryptCommonMessage(raw.key!, reply.kmsMessage);
    expect(payload).toMatchObject({ status: 200, requestId });
  });

  it("ignores extra members; an id of 64 characters (code points, not UTF-16 units) is valid", async () => {
    const raw = new RawClient(kms);
    await raw.ecdhe();
    const s = socket();
    await s.opened;
    const longId = "\u{1F511}".repeat(64); // 64 characters, 128 UTF-16 units
    s.send({ id: longId, kmsMessage: (await pingMessage(raw)).message, destination: "kms://kms.example.com", extra: [1] });
    const reply = await s.next();
    expect(reply.id).toBe(longId);
    expect((await decryptCommonMessage(raw.key!, reply.kmsMessage)).payload).toMatchObject({ status: 200 });
  });

  const invalid: [string, string, string | null][] = [
    ["not JSON", "{nope", null],
    ["an array", JSON.stringify([{ id: "a", kmsMessage: "x" }]), null],
    ["a string", JSON.stringify("eyJhbGciOi"), null],
    ["a number", "42", null],
    ["null", "null", null],
    ["no id", JSON.stringify({ kmsMessage: "x" }), null],
    ["an empty id", JSON.stringify({ id: "", kmsMessage: "x" }), null],
    ["an id of 65 characters", JSON.stringify({ id: "a".repeat(65), kmsMessage: "x" }), null],
    ["a numeric id", JSON.stringify({ id: 7, kmsMessage: "x" }), null],
    ["a null id", JSON.stringify({ id: null, kmsMessage: "x" }), null],
    ["a valid id, no kmsMessage", JSON.stringify({ id: "f-1" }), "f-1"],
    ["a valid id, a numeric kmsMessage", JSON.stringify({ id: "f-2", kmsMessage: 42 }), "f-2"],
    ["a valid id, an object kmsMessage", JSON.stringify({ id: "f-3", kmsMessage: { protected: "x" } }), "f-3"],
    ["a valid id, a null kmsMessage", JSON.stringify({ id: "f-4", kmsMessage: null }), "f-4"],
  ];

  it.each(invalid)("a frame that is %s gets {id: %j → %j, kmsMessage: JWS 400}; the connection stays open", async (_what, frame, id) => {
    const channels = kms.channelCount();
    const s = socket();
    await s.opened;
    s.send(frame);
    const reply = await s.next();
    expect(reply.id).toBe(id);
    await expectJwsError(reply, 400);
    // Still open: a next frame is answered on the same socket.
    s.send({ id: "after", kmsMessage: "not jose" });
    const after = await s.next();
    expect(after.id).toBe("after");
    await expectJwsError(after, 400);
    expect(s.ws.readyState).toBe(s.ws.OPEN);
    expect(kms.channelCount()).toBe(channels); // nothing stored
  });

  it("a valid frame whose kmsMessage is not JOSE gets the core's JWS 400 with the frame's id", async () => {
    const s = socket();
    await s.opened;
    s.send({ id: "x", kmsMessage: "hello" });
    const reply = await s.next();
    expect(reply.id).toBe("x");
    await expectJwsError(reply, 400);
  });

  it("a frame of exactly the message limit is read; one byte more closes with 1009", async () => {
    const limit = kms.config.maxMessageBytes;
    const s = socket();
    await s.opened;
    s.send("x".repeat(limit)); // not JSON, but within the limit: answered
    await expectJwsError(await s.next(), 400);
    s.send("x".repeat(limit + 1));
    expect((await s.closed).code).toBe(1009);
  });

  it("a binary frame closes with 1003", async () => {
    const s = socket();
    await s.opened;
    s.ws.send(new Uint8Array([1, 2, 3]));
    expect((await s.closed).code).toBe(1003);
  });

  it("parseFrame: the frame rules without a socket", () => {
    expect(parseFrame('{"id":"1","kmsMessage":"a.b.c"}')).toEqual({ id: "1", kmsMessage: "a.b.c" });
    expect(parseFrame('{"id":"1","kmsMessage":"a.b.c","more":true}')).toEqual({ id: "1", kmsMessage: "a.b.c" });
    expect(parseFrame('{"id":"1"}')).toEqual({ id: "1" });
    expect(parseFrame('{"__proto__":{"id":"1","kmsMessage":"x"}}')).toEqual({ id: null });
    expect(parseFrame("")).toEqual({ id: null });
  });
});

describe("backpressure: at most 50 frames in the core per connection", () => {
  it("1,000 frames sent at once on one socket: each gets exactly one reply, never more than 50 in the core", async () => {
    const core = kms.kms.core;
    const real = core.handle.bind(core);
    let inCore = 0;
    let maxInCore = 0;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    core.handle = async (m: string) => {
      inCore++;
      maxInCore = Math.max(maxInCore, inCore);
      try {
        await gate;
        return await real(m);
      } finally {
        inCore--;
      }
    };
    try {
      const s = socket();
      await s.opened;
      for (let i = 0; i < 1000; i++) s.send({ id: `f${i}`, kmsMessage: `not jose ${i}` });
      // The core holds every frame: the binding must stop at 50 and wait.
      const deadline = Date.now() + 10_000;
      while (inCore < 50 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      await new Promise((r) => setTimeout(r, 300));
      expect(inCore).toBe(50);
      expect(s.buffered).toBe(0);
      release();
      const ids = new Map<string, number>();
      for (let i = 0; i < 1000; i++) {
        const reply = await s.next();
        ids.set(reply.id!, (ids.get(reply.id!) ?? 0) + 1);
      }
      expect(ids.size).toBe(1000);
      expect([...ids.values()].every((n) => n === 1)).toBe(true);
      for (let i = 0; i < 1000; i++) expect(ids.has(`f${i}`)).toBe(true);
      await new Promise((r) => setTimeout(r, 100));
      expect(s.buffered).toBe(0); // no extra reply
      expect(maxInCore).toBe(50);
    } finally {
      core.handle = real;
      release();
    }
  }, 60_000);

  it("1,000 concurrent pings through the SDK on one WebSocket all succeed, at most 50 in the core at once", async () => {
    const core = kms.kms.core;
    const real = core.handle.bind(core);
    let inCore = 0;
    let maxInCore = 0;
    core.handle = async (m: string) => {
      inCore++;
      maxInCore = Math.max(maxInCore, inCore);
      try {
        return await real(m);
      } finally {
        inCore--;
      }
    };
    const token = await kms.token("alice@example.com");
    const client = kmsClient(kms, "alice@example.com", "ws", { token });
    try {
      await client.ping();
      const channel = client.channel!.uri;
      const results = await Promise.allSettled(Array.from({ length: 1000 }, () => client.ping()));
      expect(results.filter((r) => r.status === "rejected")).toEqual([]);
      expect(client.channel!.uri).toBe(channel);
      expect(maxInCore).toBeLessThanOrEqual(50);
      expect(maxInCore).toBeGreaterThan(1); // pipelined, not one at a time
    } finally {
      core.handle = real;
      await client.close();
    }
  }, 120_000);
});

/** A WsBinding on its own loopback HTTP server, with the real core of the shared KMS unless `handle` is given. */
async function bindingServer(opts: Partial<WsBindingOptions>): Promise<{ url: string; binding: WsBinding; close(): Promise<void> }> {
  const binding = new WsBinding({ handle: (m) => kms.kms.core.handle(m), maxMessageBytes: 1 << 20, cors: new CorsPolicy("*"), ...opts });
  const server = http.createServer((_req, res) => res.writeHead(404).end());
  server.on("upgrade", (req, sock, head) => binding.handleUpgrade(req, sock, head));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    binding,
    close: async () => {
      await binding.close();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

describe("liveness, load shedding, shutdown", () => {
  it("pings every interval; terminates a connection that does not answer, keeps one that does", async () => {
    const srv = await bindingServer({ pingIntervalMs: 100, pongTimeoutMs: 300 });
    try {
      const silent = socket({ autoPong: false }, srv.url);
      const alive = socket({}, srv.url);
      await Promise.all([silent.opened, alive.opened]);
      const { code } = await silent.closed;
      expect(code).toBe(1006); // terminated: no closing handshake with a peer that does not answer
      expect(silent.pings).toBeGreaterThanOrEqual(1);
      await new Promise((r) => setTimeout(r, 600));
      expect(alive.ws.readyState).toBe(alive.ws.OPEN);
      expect(alive.pings).toBeGreaterThanOrEqual(4);
      expect(srv.binding.connectionCount).toBe(1);
    } finally {
      await srv.close();
    }
  });

  it("while overloaded: refuses new upgrades with 429 (Retry-After), holds frames of open connections and answers them after", async () => {
    let overloaded = false;
    const srv = await bindingServer({ overloaded: () => overloaded, overloadRetryMs: 20 });
    try {
      const open = socket({}, srv.url);
      await open.opened;
      overloaded = true;
      const late = socket({}, srv.url);
      expect(await refusedStatus(late, /overloaded/)).toBe(429);
      expect(late.refusal!.headers["retry-after"]).toBe("1");
      for (let i = 0; i < 5; i++) open.send({ id: `o${i}`, kmsMessage: "x" });
      await new Promise((r) => setTimeout(r, 300));
      expect(open.buffered).toBe(0); // none started while overloaded
      overloaded = false;
      const ids = [];
      for (let i = 0; i < 5; i++) ids.push((await open.next()).id);
      expect(ids.sort()).toEqual(["o0", "o1", "o2", "o3", "o4"]);
    } finally {
      await srv.close();
    }
  });

  it("a client that stops reading its replies stops its own requests: a slot frees only when its reply is written out", async () => {
    let calls = 0;
    const big = "x".repeat(128 * 1024);
    const srv = await bindingServer({
      handle: async () => {
        calls++;
        return big;
      },
    });
    try {
      const s = socket({}, srv.url);
      await s.opened;
      const clientSocket = (s.ws as unknown as { _socket: import("node:net").Socket })._socket;
      clientSocket.pause(); // reads nothing from now on
      for (let i = 0; i < 300; i++) s.send({ id: `r${i}`, kmsMessage: "x" });
      await new Promise((r) => setTimeout(r, 1_000));
      // What the kernel buffers take (a few MB), plus 50 held unwritten; not all 300 (38 MB) in memory.
      expect(calls).toBeLessThan(300);
      clientSocket.resume();
      for (let i = 0; i < 300; i++) expect((await s.next(30_000)).kmsMessage.length).toBe(big.length);
      expect(calls).toBe(300);
    } finally {
      await srv.close();
    }
  }, 60_000);

  it("close(): frames already read finish and are answered, then 1001; new upgrades get 503", async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const srv = await bindingServer({
      handle: async (m) => {
        await gate;
        return kms.kms.core.handle(m);
      },
    });
    const s = socket({}, srv.url);
    await s.opened;
    s.send({ id: "in-flight", kmsMessage: "x" });
    await new Promise((r) => setTimeout(r, 100));
    const closing = srv.close();
    await new Promise((r) => setTimeout(r, 50));
    const refused = socket({}, srv.url);
    const refusedOutcome = refused.opened.then(
      () => "open",
      (e: { status?: number }) => e.status ?? "error",
    );
    release();
    expect((await s.next()).id).toBe("in-flight");
    expect((await s.closed).code).toBe(1001);
    await closing;
    // Refused with 503 while closing, or not reached once the listener has closed.
    expect([503, "error"]).toContain(await refusedOutcome);
  });

  it("Kms.close() closes open WebSockets (1001) instead of hanging on them", async () => {
    const other = await startTestKms();
    const s = socket({}, other.url);
    await s.opened;
    await other.close();
    // 1001 is the closing handshake; a hung shutdown would end in terminate() (1006) after the grace.
    expect((await s.closed).code).toBe(1001);
  });
});
