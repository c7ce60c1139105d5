import http from "node:http";
import type { AddressInfo } from "node:net";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { base64url } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createHttpHandler } from "../../src/transport/http/http-binding.js";
import { EventLoopLag } from "../../src/transport/http/event-loop-lag.js";
import { openJws, RawClient, startTestKms, type TestKms } from "../helpers/harness.js";
import { DATA_FILES } from "../../src/server/data-dir.js";

describe("hostile input", () => {
  let kms: TestKms;
  beforeAll(async () => {
    kms = await startTestKms();
  });
  afterAll(() => kms.close());

  it("property: any string is answered with a signed JWS error (400/401/403) and creates nothing", async () => {
    const before = kms.channelCount();
    await fc.assert(
      fc.asyncProperty(fc.string({ maxLength: 300 }), async (s) => {
        const reply = await kms.kms.core.handle(s);
        const { payload } = await openJws(kms.url, reply);
        expect([400, 401, 403]).toContain(payload.status);
      }),
      { numRuns: 200 },
    );
    expect(kms.channelCount()).toBe(before);
  });

  it("property: JWE-shaped messages with random headers never create a channel or crash", async () => {
    const before = kms.channelCount();
    const header = fc.record(
      {
        alg: fc.constantFrom("none", "HS256", "dir", "RSA-OAEP", "ECDH-ES", "ECDH-ES+A256KW", "A256KW", "PBES2-HS256+A128KW", ""),
        enc: fc.constantFrom("A256GCM", "A128GCM", "A128CBC-HS256", "none"),
        kid: fc.constantFrom(kms.kid, "kms://kms.example.com/ecdhe/x", "/ecdhe/1", "kms://other/ecdhe/1", "", "kms://kms.example.com/ping"),
        crit: fc.array(fc.string(), { maxLength: 2 }),
        epk: fc.record({ kty: fc.constant("EC"), crv: fc.constant("P-256"), x: fc.base64String(), y: fc.base64String() }),
      },
      { requiredKeys: ["alg"] },
    );
    await fc.assert(
      fc.asyncProperty(header, fc.array(fc.uint8Array({ maxLength: 64 }), { minLength: 4, maxLength: 4 }), async (h, parts) => {
        const message = [base64url.encode(JSON.stringify(h)), ...parts.map((p) => base64url.encode(p))].join(".");
        const reply = await kms.kms.core.handle(message);
        expect(reply.split(".").length === 3 || reply.split(".").length === 5).toBe(true);
      }),
      { numRuns: 300 },
    );
    expect(kms.channelCount()).toBe(before);
  });

  it("logs never contain tokens, keys or payloads", async () => {
    const client = kms.client("erin@example.com");
    await client.ping();
    await client.request("update", "/nothing").catch(() => {});
    const raw = new RawClient(kms, "erin@example.com");
    await raw.ecdhe();
    const token = await kms.token("erin@example.com");
    await raw.request({ client: { clientId: "x", credential: { bearer: token + "tampered" } } });
    await client.close();
    const logs = kms.logs();
    expect(logs.length).toBeGreaterThan(0); // the debug level logged something
    expect(logs).not.toContain(token.split(".")[2]);
    expect(logs).not.toMatch(/eyJ[A-Za-z0-9_-]{10,}/); // no JOSE/JWT at all
    const masterKey = readFileSync(join(kms.dataDir, DATA_FILES.masterKey), "utf8").trim();
    expect(logs).not.toContain(masterKey);
    expect(logs).not.toContain(base64url.encode(raw.key!));
  });
});

describe("HTTP load shedding (§3)", () => {
  /** The HTTP binding alone on loopback, with a stand-in core; `send` posts a single-form message. */
  async function startBinding(opts: Pick<Parameters<typeof createHttpHandler>[0], "handle" | "maxInFlight" | "overloaded">) {
    const server = http.createServer(
      createHttpHandler({
        wellKnown: () => ({}),
        ready: async () => {},
        metrics: async () => ({ contentType: "text/plain", body: "" }),
        maxMessageBytes: 1024,
        maxBatchMessages: 2,
        ...opts,
      }),
    );
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/kms/messages`;
    const send = () => fetch(url, { method: "POST", headers: { "content-type": "application/jose" }, body: "a.b.c" });
    return { server, url, send };
  }

  it("answers 429 at once when the in-flight limit is reached, and recovers", async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const { server, send } = await startBinding({
      handle: async (m) => {
        await gate;
        return m;
      },
      maxInFlight: 1,
    });
    const first = send();
    await new Promise((r) => setTimeout(r, 50));
    const started = performance.now();
    const shed = await send();
    expect(shed.status).toBe(429);
    expect(shed.headers.get("retry-after")).toBe("1");
    expect(performance.now() - started).toBeLessThan(500);
    release();
    expect((await first).status).toBe(400); // "a.b.c" is not JOSE (its header is not JSON)
    expect((await send()).status).toBe(400);
    server.close();
  });

  it("sheds with 429 while the server is overloaded (event loop lagging), without running the message, and recovers", async () => {
    let overloaded = true;
    let handled = 0;
    const { server, url, send } = await startBinding({
      handle: async (m) => {
        handled++;
        return m;
      },
      maxInFlight: 100,
      overloaded: () => overloaded,
    });
    const shed = await send();
    expect(shed.status).toBe(429);
    expect(shed.headers.get("retry-after")).toBe("1");
    expect(handled).toBe(0);
    // Discovery and health checks are never shed: an operator must see an overloaded KMS.
    expect((await fetch(url.replace("/kms/messages", "/healthz"))).status).toBe(200);
    overloaded = false;
    expect((await send()).status).toBe(400);
    expect(handled).toBe(1);
    server.close();
  });
});

describe("EventLoopLag", () => {
  const block = (ms: number) => {
    const until = performance.now() + ms;
    while (performance.now() < until) {
      // block the loop, as a backlog of synchronous work would
    }
  };
  const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

  it("stays low on an idle loop and through one long pause; rises above 100 ms under sustained lag; recovers", async () => {
    const lag = new EventLoopLag(10).start();
    try {
      await tick(50);
      expect(lag.currentMs()).toBeLessThan(50);
      block(150); // one pause (a GC, one slow call): not overload
      await tick(15);
      expect(lag.currentMs()).toBeLessThan(100);
      for (let i = 0; i < 12; i++) {
        block(150); // every tick late: overload
        await tick(0);
      }
      expect(lag.currentMs()).toBeGreaterThan(100);
      await tick(300);
      expect(lag.currentMs()).toBeLessThan(50);
    } finally {
      lag.stop();
    }
  });
});
