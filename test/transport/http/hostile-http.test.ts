import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { createHttpHandler, type HttpBindingOptions } from "../../../src/transport/http/http-binding.js";
import { createHttpServer, defaultHttpServerLimits, type HttpServerLimits } from "../../../src/transport/http/http-server.js";
import { openRaw, type RawSocket } from "./raw-socket.js";

/** A JWS-shaped compact string: the stand-in core echoes it, and the binding answers 200. */
const COMPACT = "eyJhbGciOiJFUzI1NiJ9.e30.c2ln";
const MAX_MESSAGE_BYTES = 64 * 1024;

const servers: http.Server[] = [];
const sockets: RawSocket[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(
    servers.splice(0).map(
      (s) =>
        new Promise<void>((r) => {
          s.close(() => r());
          s.closeAllConnections();
        }),
    ),
  );
});

/** The HTTP binding on the KMS's server construction, with a stand-in core that counts what reaches it. */
async function startBinding(options: Partial<HttpBindingOptions> = {}, limits: Partial<HttpServerLimits> = {}) {
  const handled: string[] = [];
  const server = createHttpServer(
    createHttpHandler({
      handle: async (m) => {
        handled.push(m);
        return m;
      },
      wellKnown: () => ({ uri: "kms://kms.example.com" }),
      ready: async () => {},
      metrics: async () => ({ contentType: "text/plain", body: "" }),
      maxMessageBytes: MAX_MESSAGE_BYTES,
      maxBatchMessages: 2,
      maxInFlight: 100,
      ...options,
    }),
    { ...defaultHttpServerLimits(options.bodyReadTimeoutMs ?? 10_000), ...limits },
  );
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as AddressInfo).port;
  const raw = async () => {
    const s = await openRaw(port);
    sockets.push(s);
    return s;
  };
  return { server, port, url: `http://127.0.0.1:${port}`, handled, raw };
}

const post = (body: string, headers: string[] = [], type = "application/jose") =>
  ["POST /kms/messages HTTP/1.1", "Host: 127.0.0.1", `Content-Type: ${type}`, ...headers, "", body].join("\r\n");

describe("HTTP binding against hostile clients", () => {
  it("every reply of the binding carries Cache-Control: no-store", async () => {
    let overloaded = false;
    const { url, port } = await startBinding({ overloaded: () => overloaded });
    const fetchFrom = (path: string, init?: RequestInit) => fetch(`${url}${path}`, init);
    const jose = (body: string, type = "application/jose") => fetchFrom("/kms/messages", { method: "POST", headers: { "content-type": type }, body });
    const replies: [string, Response][] = [
      ["well-known", await fetchFrom("/.well-known/kms")],
      ["healthz", await fetchFrom("/healthz")],
      ["readyz", await fetchFrom("/readyz")],
      ["metrics", await fetchFrom("/metrics")],
      ["404", await fetchFrom("/nothing")],
      ["405", await fetchFrom("/kms/messages")],
      ["415", await jose(COMPACT, "text/plain")],
      ["200 single", await jose(COMPACT)],
      ["400 single", await jose("not jose")],
      ["200 batch", await jose(JSON.stringify({ kmsMessages: [COMPACT] }), "application/json")],
      ["400 batch", await jose("[]", "application/json")],
      ["413 batch count", await jose(JSON.stringify({ kmsMessages: [COMPACT, COMPACT, COMPACT] }), "application/json")],
      ["413 body", await jose("a".repeat(MAX_MESSAGE_BYTES + 1))],
    ];
    overloaded = true;
    replies.push(["429", await jose(COMPACT)]);
    const statuses = replies.map(([name, r]) => `${name}:${r.status}`);
    expect(statuses).toEqual([
      "well-known:200", "healthz:200", "readyz:200", "metrics:200", "404:404", "405:405", "415:415",
      "200 single:200", "400 single:400", "200 batch:200", "400 batch:400", "413 batch count:413", "413 body:413", "429:429",
    ]);
    for (const [name, r] of replies) expect(r.headers.get("cache-control"), name).toBe("no-store");
    expect(port).toBeGreaterThan(0);
  });

  it("a request with both Content-Length and Transfer-Encoding: chunked is refused (400) and never processed", async () => {
    const { raw, handled } = await startBinding();
    const s = await raw();
    await s.write(post(`${COMPACT.length.toString(16)}\r\n${COMPACT}\r\n0\r\n\r\n`, [`Content-Length: ${COMPACT.length}`, "Transfer-Encoding: chunked"]));
    await s.closed;
    expect(s.status()).toBe(400);
    expect(handled).toHaveLength(0);
  });

  it("two different Content-Length headers are refused (400) and never processed", async () => {
    const { raw, handled } = await startBinding();
    const s = await raw();
    await s.write(post(COMPACT, [`Content-Length: ${COMPACT.length}`, "Content-Length: 3"]));
    await s.closed;
    expect(s.status()).toBe(400);
    expect(handled).toHaveLength(0);
  });

  it("a body cut mid-way (the client goes away) is never processed, holds no in-flight slot, and the KMS serves on", async () => {
    const { raw, handled, url } = await startBinding({ maxInFlight: 1 });
    for (let i = 0; i < 5; i++) {
      const s = await raw();
      await s.write(post(COMPACT.slice(0, 10), [`Content-Length: ${COMPACT.length}`]));
      await new Promise((r) => setTimeout(r, 20));
      s.destroy();
      await s.closed;
    }
    await new Promise((r) => setTimeout(r, 50));
    expect(handled).toHaveLength(0);
    const res = await fetch(`${url}/kms/messages`, { method: "POST", headers: { "content-type": "application/jose" }, body: COMPACT });
    expect(res.status).toBe(200);
    expect(handled).toEqual([COMPACT]);
  });

  it("headers over 16 KiB are answered 431 (Node's limit), and the KMS serves on", async () => {
    const { raw, url, handled } = await startBinding();
    const s = await raw();
    await s.write(post(COMPACT, [`Content-Length: ${COMPACT.length}`, `X-Big: ${"a".repeat(17 * 1024)}`]));
    await s.closed;
    expect(s.status()).toBe(431);
    expect(handled).toHaveLength(0);
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
  });

  it("many keep-alive requests on one connection are all answered, and pipelined ones in order", async () => {
    const { url, raw, handled } = await startBinding();
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const sockets = new Set<unknown>();
    try {
      for (let i = 0; i < 300; i++) {
        const status = await new Promise<number>((resolve, reject) => {
          const req = http.request(`${url}/kms/messages`, { method: "POST", agent, headers: { "content-type": "application/jose" } }, (res) => {
            sockets.add(req.socket);
            res.resume();
            res.on("end", () => resolve(res.statusCode ?? 0));
          });
          req.on("error", reject);
          req.end(`${COMPACT}${i}`);
        });
        expect(status).toBe(200);
      }
    } finally {
      agent.destroy();
    }
    expect(sockets.size).toBe(1);
    expect(handled).toHaveLength(300);

    const s = await raw();
    const bodies = Array.from({ length: 20 }, (_, i) => `${COMPACT}p${i}`);
    await s.write(bodies.map((b) => post(b, [`Content-Length: ${b.length}`])).join(""));
    expect(await s.waitFor(new RegExp(`${COMPACT}p19`))).toBe(true);
    const order = [...s.received().matchAll(new RegExp(`${COMPACT.replace(/\./g, "\\.")}p(\\d+)`, "g"))].map((m) => Number(m[1]));
    expect(order).toEqual(bodies.map((_, i) => i));
  });

  it("Expect: 100-continue: a body over the limit is refused (413) before the client is told to send it", async () => {
    const { raw, handled } = await startBinding();
    const big = await raw();
    await big.write(["POST /kms/messages HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/jose", `Content-Length: ${MAX_MESSAGE_BYTES + 1}`, "Expect: 100-continue", "", ""].join("\r\n"));
    expect(await big.waitFor(/\r\n\r\n[^]*\}/)).toBe(true);
    expect(big.status()).toBe(413);
    expect(big.received()).not.toContain("100 Continue");

    const ok = await raw();
    await ok.write(["POST /kms/messages HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/jose", `Content-Length: ${COMPACT.length}`, "Expect: 100-continue", "", ""].join("\r\n"));
    expect(await ok.waitFor(/100 Continue/)).toBe(true);
    await ok.write(COMPACT);
    expect(await ok.waitFor(/HTTP\/1\.1 200/)).toBe(true);
    expect(handled).toEqual([COMPACT]);
  });

  it("a refused client that keeps sending (endless chunked body) gets its 413 intact and is disconnected soon after", async () => {
    const { raw, handled } = await startBinding();
    const s = await raw();
    await s.write(["POST /kms/messages HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/jose", "Transfer-Encoding: chunked", "", ""].join("\r\n"));
    const chunk = `${(16 * 1024).toString(16)}\r\n${"a".repeat(16 * 1024)}\r\n`;
    const started = performance.now();
    const pump = setInterval(() => {
      if (!s.isClosed()) s.socket.write(chunk);
    }, 5);
    try {
      await s.closed;
    } finally {
      clearInterval(pump);
    }
    expect(s.status()).toBe(413);
    expect(s.received()).toContain(`{"error":"body over ${MAX_MESSAGE_BYTES} bytes"}`);
    expect(performance.now() - started).toBeLessThan(6000);
    expect(handled).toHaveLength(0);
  });

  it("a refusal sent before the body was read says Connection: close, so a keep-alive client's next request goes on a new connection", async () => {
    const { url } = await startBinding();
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const request = (method: string, path: string, headers: Record<string, string> = {}, body?: string) =>
      new Promise<{ status: number; connection: string | undefined }>((resolve, reject) => {
        const req = http.request(`${url}${path}`, { method, agent, headers }, (res) => {
          res.resume();
          res.on("end", () => resolve({ status: res.statusCode!, connection: res.headers.connection }));
        });
        req.on("error", reject);
        req.end(body);
      });
    try {
      for (let i = 0; i < 3; i++) {
        expect(await request("POST", "/kms/messages", { "content-type": "text/plain", "content-length": "5" }, "hello")).toEqual({ status: 415, connection: "close" });
        // The agent would reuse the socket unless told it closes: this request must not hang up.
        expect(await request("GET", "/.well-known/kms")).toMatchObject({ status: 200 });
        // A body-less refusal keeps the connection.
        expect(await request("GET", "/kms/messages")).toMatchObject({ status: 405, connection: "keep-alive" });
      }
    } finally {
      agent.destroy();
    }
  });

  it("connections beyond maxConnections are closed at once; those within are served", async () => {
    const { raw, url } = await startBinding({}, { maxConnections: 3 });
    const held = [await raw(), await raw(), await raw()];
    await new Promise((r) => setTimeout(r, 50));
    const extra = await raw();
    await extra.closed;
    expect(extra.received()).toBe("");
    await held[0]!.write("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    expect(await held[0]!.waitFor(/HTTP\/1\.1 200/)).toBe(true);
    for (const s of held) s.destroy();
    await Promise.all(held.map((s) => s.closed));
    await new Promise((r) => setTimeout(r, 50));
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
  });

  it("a client that never reads its reply is disconnected after the idle timeout", async () => {
    // A reply far larger than the loopback socket buffers: the server cannot finish writing it.
    const huge = "x".repeat(64 * 1024 * 1024);
    const { server, raw } = await startBinding({ metrics: async () => ({ contentType: "text/plain", body: huge }) }, { idleTimeoutMs: 500 });
    const s = await raw();
    s.socket.pause(); // never read
    s.socket.removeAllListeners("data");
    await s.write("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    const connections = () => new Promise<number>((r) => server.getConnections((_e, n) => r(n)));
    await new Promise((r) => setTimeout(r, 200));
    expect(await connections()).toBe(1);
    const started = performance.now();
    while ((await connections()) > 0 && performance.now() - started < 5000) await new Promise((r) => setTimeout(r, 50));
    expect(await connections()).toBe(0);
  });
});
