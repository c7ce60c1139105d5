import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateEphemeralKeyPair } from "../../../src/protocol/jose/ephemeral-key.js";
import { exportJWK } from "jose";
import { RawClient, startTestKms, type TestKms } from "../../helpers/harness.js";

const MIB = 1024 * 1024;

/** POSTs `body` as application/json, with Content-Length or chunked (64 KiB chunks); resolves with the reply. */
function postBatch(url: string, body: string, framing: "content-length" | "chunked"): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const bytes = Buffer.from(body, "utf8");
    const req = http.request(`${url}/kms/messages`, {
      method: "POST",
      agent: false,
      headers: { "content-type": "application/json", ...(framing === "content-length" ? { "content-length": bytes.length } : {}) },
    });
    req.on("response", (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (text += c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
    // The server may answer and close before the whole body is written: that is the point.
    req.on("error", reject);
    if (framing === "chunked") {
      for (let i = 0; i < bytes.length; i += 64 * 1024) req.write(bytes.subarray(i, i + 64 * 1024));
      req.end();
    } else {
      req.end(bytes);
    }
  });
}

describe("HTTP body limit: the batch form is under the 1 MiB message limit too (§10)", () => {
  let kms: TestKms;
  let raw: RawClient;
  beforeAll(async () => {
    kms = await startTestKms();
    raw = new RawClient(kms, "bella@example.com");
  });
  afterAll(() => kms.close());

  /** Three ECDHE requests (each would open a channel) in a batch envelope padded with JSON whitespace to exactly `size` bytes. */
  async function paddedBatch(size: number): Promise<string> {
    const items: string[] = [];
    for (let i = 0; i < 3; i++) {
      const pair = await generateEphemeralKeyPair();
      const { kty, crv, x, y } = await exportJWK(pair.publicKey);
      items.push(await raw.ecdheMessage({ client: await raw.credential(), method: "create", uri: "/ecdhe", requestId: crypto.randomUUID(), jwk: { kty, crv, x, y } }));
    }
    const head = `{"destination":"kms://${kms.authority}","kmsMessages":[`;
    const tail = `${items.map((m) => JSON.stringify(m)).join(",")}]}`;
    const padding = size - Buffer.byteLength(head) - Buffer.byteLength(tail);
    expect(padding).toBeGreaterThan(0);
    const body = head + " ".repeat(padding) + tail;
    expect(Buffer.byteLength(body)).toBe(size);
    return body;
  }

  it("a batch body of exactly 1 MiB is served (its three ECDHE items open three channels)", async () => {
    const before = kms.channelCount();
    const reply = await postBatch(kms.url, await paddedBatch(MIB), "content-length");
    expect(reply.status).toBe(200);
    expect((JSON.parse(reply.body) as { kmsMessages: string[] }).kmsMessages).toHaveLength(3);
    expect(kms.channelCount()).toBe(before + 3);
  });

  for (const framing of ["content-length", "chunked"] as const) {
    it(`a batch body of 1 MiB + 1 byte (${framing}) is HTTP 413 and nothing is processed`, async () => {
      const before = kms.channelCount();
      const reply = await postBatch(kms.url, await paddedBatch(MIB + 1), framing);
      expect(reply.status).toBe(413);
      expect(JSON.parse(reply.body)).toEqual({ error: `body over ${MIB} bytes` });
      expect(kms.channelCount()).toBe(before);
      // The KMS still serves afterwards.
      expect((await fetch(`${kms.url}/healthz`)).status).toBe(200);
    });
  }

  it("a single-form body of 1 MiB + 1 byte, chunked, is HTTP 413 too", async () => {
    const reply = await new Promise<number>((resolve, reject) => {
      const req = http.request(`${kms.url}/kms/messages`, { method: "POST", agent: false, headers: { "content-type": "application/jose" } });
      req.on("response", (res) => (res.resume(), resolve(res.statusCode ?? 0)));
      req.on("error", reject);
      const chunk = Buffer.alloc(64 * 1024, "a");
      for (let i = 0; i < 16; i++) req.write(chunk);
      req.end("a");
    });
    expect(reply).toBe(413);
  });
});
