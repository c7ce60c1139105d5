import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeviceKey, Groups } from "../../../src/client/index.js";
import { CorsPolicy, isCorsPath } from "../../../src/transport/http/cors.js";
import { startTestKms, type TestKms } from "../../helpers/harness.js";
import { RawSocket } from "../../helpers/raw-ws.js";

const APP = "https://app.example.com";
const DEV = "http://localhost:3000";
const EVIL = "https://evil.example";
const ALICE = "alice@example.com";

interface Reply {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: string;
}

/** One HTTP request with exactly the headers given (fetch would not let a test set Origin freely). */
function request(url: string, method: string, headers: Record<string, string> = {}, body?: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers: { ...headers, ...(body !== undefined ? { "content-length": String(Buffer.byteLength(body)) } : {}) } }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => (text += d));
      res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body: text }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

const corsHeaders = (r: Reply) => Object.keys(r.headers).filter((h) => h.startsWith("access-control-"));

/** Each CORS endpoint, as a request that gets a reply of some status (2xx or not). */
const ENDPOINTS: { name: string; path: string; method: string; headers?: Record<string, string>; body?: string; status: number }[] = [
  { name: "/kms/messages (a JOSE message)", path: "/kms/messages", method: "POST", headers: { "content-type": "application/jose" }, body: "not jose", status: 400 },
  { name: "/kms/messages (a batch)", path: "/kms/messages", method: "POST", headers: { "content-type": "application/json" }, body: '{"kmsMessages":["x"]}', status: 200 },
  { name: "/kms/messages (415)", path: "/kms/messages", method: "POST", headers: { "content-type": "text/plain" }, body: "x", status: 415 },
  { name: "/kms/messages (405)", path: "/kms/messages", method: "GET", status: 405 },
  { name: "/.well-known/kms", path: "/.well-known/kms", method: "GET", status: 200 },
  { name: "WebFinger", path: `/.well-known/webfinger?resource=acct:${ALICE}`, method: "GET", status: 200 },
  { name: "WebFinger (404)", path: "/.well-known/webfinger?resource=acct:nobody@example.com", method: "GET", status: 404 },
  { name: "/entities/<acct>/jwks", path: `/entities/${encodeURIComponent(ALICE)}/jwks`, method: "GET", status: 200 },
  { name: "/entities/<acct>/jwks (404)", path: "/entities/nobody%40example.com/jwks", method: "GET", status: 404 },
];
const PREFLIGHT_PATHS = ["/kms/messages", "/.well-known/kms", "/.well-known/webfinger", `/entities/${encodeURIComponent(ALICE)}/jwks`];

let listed: TestKms;
let any: TestKms;

beforeAll(async () => {
  [listed, any] = await Promise.all([startTestKms({ env: { KEYWARD_CORS_ORIGINS: `${APP},${DEV}` } }), startTestKms()]);
  // alice has a key on both, so that WebFinger and the JWKS answer 200.
  for (const kms of [listed, any]) {
    const client = kms.client(ALICE);
    await new Groups(client, { user: ALICE, device: await DeviceKey.generate({ kid: "alice-cors" }) }).registerDevice();
    await client.close();
  }
});
afterAll(async () => {
  await Promise.all([listed?.close(), any?.close()]);
});

describe("CORS with a list of origins", () => {
  it.each(PREFLIGHT_PATHS)("answers a preflight for %s with 204 and the CORS headers", async (path) => {
    const r = await request(listed.url + path, "OPTIONS", { origin: APP, "access-control-request-method": "POST", "access-control-request-headers": "content-type" });
    expect(r.status).toBe(204);
    expect(r.body).toBe("");
    expect(r.headers["access-control-allow-origin"]).toBe(APP);
    expect(r.headers["access-control-allow-methods"]).toBe("GET, POST, OPTIONS");
    expect(r.headers["access-control-allow-headers"]).toBe("content-type");
    expect(Number(r.headers["access-control-max-age"])).toBeGreaterThan(0);
    expect(r.headers.vary).toBe("Origin");
  });

  it.each(PREFLIGHT_PATHS)("a preflight from an origin not allowed gets no CORS header (%s)", async (path) => {
    for (const origin of [EVIL, `${APP}.evil.example`, "null", "https://APP.example.com:444"]) {
      const r = await request(listed.url + path, "OPTIONS", { origin, "access-control-request-method": "POST" });
      expect(r.status).toBe(204);
      expect(corsHeaders(r)).toEqual([]);
    }
  });

  it.each(ENDPOINTS)("$name: an allowed origin gets Access-Control-Allow-Origin (its own), whatever the status", async (e) => {
    for (const origin of [APP, DEV]) {
      const r = await request(listed.url + e.path, e.method, { ...e.headers, origin }, e.body);
      expect(r.status).toBe(e.status);
      expect(r.headers["access-control-allow-origin"]).toBe(origin);
      expect(r.headers.vary).toBe("Origin");
    }
  });

  it.each(ENDPOINTS)("$name: an origin not allowed, or none, gets no CORS header", async (e) => {
    for (const headers of [{ origin: EVIL }, {}] as Record<string, string>[]) {
      const r = await request(listed.url + e.path, e.method, { ...e.headers, ...headers }, e.body);
      expect(r.status).toBe(e.status);
      expect(corsHeaders(r)).toEqual([]);
    }
  });

  it("the operator endpoints carry no CORS headers", async () => {
    for (const path of ["/healthz", "/readyz", "/metrics"]) {
      const r = await request(listed.url + path, "GET", { origin: APP });
      expect(r.status).toBe(200);
      expect(corsHeaders(r)).toEqual([]);
    }
  });

  it("the WebSocket upgrade checks Origin against the same list", async () => {
    const sockets = [new RawSocket(listed.url, { origin: APP }), new RawSocket(listed.url, { origin: DEV }), new RawSocket(listed.url), new RawSocket(listed.url, { origin: EVIL })];
    try {
      await Promise.all(sockets.slice(0, 3).map((s) => s.opened));
      await expect(sockets[3]!.opened).rejects.toMatchObject({ status: 403 });
    } finally {
      for (const s of sockets) s.close();
    }
  });
});

describe("CORS with * (the default)", () => {
  it("a preflight from any origin gets 204 with Access-Control-Allow-Origin: *", async () => {
    for (const path of PREFLIGHT_PATHS) {
      const r = await request(any.url + path, "OPTIONS", { origin: EVIL, "access-control-request-method": "POST" });
      expect(r.status).toBe(204);
      expect(r.headers["access-control-allow-origin"]).toBe("*");
      expect(r.headers["access-control-allow-methods"]).toBe("GET, POST, OPTIONS");
      expect(r.headers["access-control-allow-headers"]).toBe("content-type");
    }
  });

  it.each(ENDPOINTS)("$name: any origin gets Access-Control-Allow-Origin: *", async (e) => {
    const r = await request(any.url + e.path, e.method, { ...e.headers, origin: EVIL }, e.body);
    expect(r.status).toBe(e.status);
    expect(r.headers["access-control-allow-origin"]).toBe("*");
  });

  it("the WebSocket upgrade accepts any Origin", async () => {
    const sockets = [new RawSocket(any.url, { origin: EVIL }), new RawSocket(any.url, { origin: "null" }), new RawSocket(any.url)];
    try {
      await Promise.all(sockets.map((s) => s.opened));
    } finally {
      for (const s of sockets) s.close();
    }
  });
});

describe("CorsPolicy", () => {
  it("matches origins exactly as browsers serialize them; the list is normalized", () => {
    const cors = new CorsPolicy(["HTTPS://App.Example.com:443"]);
    expect(cors.allows(APP)).toBe(true);
    expect(cors.allows(`${APP}/`)).toBe(false);
    expect(cors.allows("http://app.example.com")).toBe(false);
    expect(cors.allows(undefined)).toBe(true); // no Origin: not a cross-origin request
    expect(new CorsPolicy([]).allows(APP)).toBe(false);
    expect(new CorsPolicy([]).replyHeaders(APP)).toEqual({ vary: "Origin" });
    expect(new CorsPolicy("*").replyHeaders(undefined)).toEqual({ "access-control-allow-origin": "*" });
  });

  it("isCorsPath: the four endpoints of §3 and nothing else", () => {
    for (const p of ["/kms/messages", "/.well-known/kms", "/.well-known/webfinger", "/entities/alice%40example.com/jwks"]) expect(isCorsPath(p)).toBe(true);
    for (const p of ["/kms/ws", "/healthz", "/metrics", "/entities/a/b/jwks", "/entities//jwks", "/kms/messages/x"]) expect(isCorsPath(p)).toBe(false);
  });
});
