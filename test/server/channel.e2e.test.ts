import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KmsRequestError } from "../../src/client/index.js";
import { post, RawClient, type TestKms } from "../helpers/harness.js";
import { describeOverTransports, transportServers, type TransportClients } from "../helpers/transports.js";

/** One KMS per static key type, shared by the HTTP tests and the SDK over each transport; one Prosody for the file. */
const servers = transportServers();
afterAll(() => servers.close());

for (const keyType of ["ec", "rsa"] as const) {
  describe(`secure channel end to end (${keyType.toUpperCase()} static key)`, () => {
    let kms: TestKms;
    beforeAll(async () => {
      kms = await servers.kms({ keyType });
    });

    it("publishes the static key at /.well-known/kms with kid = KMS URI, x5c, no alg/use", async () => {
      const res = await fetch(`${kms.url}/.well-known/kms`);
      expect(res.headers.get("content-type")).toMatch(/^application\/json/);
      const doc = (await res.json()) as { uri: string; jwk: Record<string, unknown>; protocol: string };
      expect(doc.uri).toBe("kms://kms.example.com");
      expect(doc.protocol).toBe("draft-abiggs-saag-key-management-service-03");
      expect(doc.jwk.kid).toBe("kms://kms.example.com");
      expect(doc.jwk.kty).toBe(keyType === "ec" ? "EC" : "RSA");
      expect(Array.isArray(doc.jwk.x5c)).toBe(true);
      expect(doc.jwk).not.toHaveProperty("alg");
      expect(doc.jwk).not.toHaveProperty("use");
      expect(doc.jwk).not.toHaveProperty("d");
    });

    it("the ECDHE reply carries the key under `key` and `ephemeral-key`, with expirationDate", async () => {
      const raw = new RawClient(kms);
      const reply = await raw.ecdhe();
      expect(reply.status).toBe(201);
      expect(reply.key).toEqual(reply["ephemeral-key"]);
      const key = reply.key as Record<string, unknown>;
      expect(key).toMatchObject({ userId: "alice@example.com", clientId: "raw-test" });
      expect(key.createDate).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
      expect(key.expirationDate).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
      expect(Date.parse(key.expirationDate as string) - Date.parse(key.createDate as string)).toBe(3600_000);
      expect(key.jwk).toMatchObject({ kty: "EC", crv: "P-256" });
      expect(key.jwk).not.toHaveProperty("d");
    });

    it("ping echoes requestId verbatim (string and number) with status 200", async () => {
      const raw = new RawClient(kms);
      await raw.ecdhe();
      expect((await raw.request({ requestId: 7 })).payload).toEqual({ status: 200, requestId: 7 });
      expect((await raw.request({ requestId: "7" })).payload).toEqual({ status: 200, requestId: "7" });
    });

    it("accepts post/get aliases and absolute or relative URIs", async () => {
      const raw = new RawClient(kms);
      await raw.ecdhe();
      expect((await raw.request({ uri: "kms://kms.example.com/ping" })).payload.status).toBe(200);
      // `get` = retrieve, which /ping does not support: the alias is understood (405, not 400).
      expect((await raw.request({ method: "get" })).payload.status).toBe(405);
      expect((await raw.request({ method: "post" })).payload.status).toBe(405);
    });

    it("batch form: replies in order, one per message", async () => {
      const a = new RawClient(kms);
      await a.ecdhe();
      const { encryptCommonMessage, decryptCommonMessage } = await import("../../src/protocol/jose/common-message.js");
      const m1 = await encryptCommonMessage(a.key!, a.uri!, await a.payload({ requestId: "one" }));
      const m2 = await encryptCommonMessage(a.key!, a.uri!, await a.payload({ requestId: "two" }));
      const res = await post(kms.url, JSON.stringify({ destination: "kms://kms.example.com", kmsMessages: [m1, "not jose", m2] }), "application/json");
      expect(res.status).toBe(200);
      const { kmsMessages } = JSON.parse(res.body) as { kmsMessages: string[] };
      expect(kmsMessages).toHaveLength(3);
      expect((await decryptCommonMessage(a.key!, kmsMessages[0]!)).payload).toEqual({ status: 200, requestId: "one" });
      expect(kmsMessages[1]!.split(".")).toHaveLength(3);
      expect((await decryptCommonMessage(a.key!, kmsMessages[2]!)).payload).toEqual({ status: 200, requestId: "two" });
    });

    it("serves /healthz, /readyz and /metrics", async () => {
      expect((await fetch(`${kms.url}/healthz`)).status).toBe(200);
      expect((await fetch(`${kms.url}/readyz`)).status).toBe(200);
      const metrics = await (await fetch(`${kms.url}/metrics`)).text();
      expect(metrics).toContain("keyward_kms_requests_total");
    });

    /** The SDK's part, over each transport, on this KMS (which is also on the file's Prosody when it runs). */
    describeOverTransports("the SDK", (kind) => {
      let clients: TransportClients;
      beforeAll(() => {
        clients = servers.clients(kms, kind);
      });
      afterAll(() => clients?.close());

      it("the SDK validates the KMS, opens a channel, pings and deletes it", async () => {
        const client = await clients.client("alice@example.com");
        await client.ping();
        const channel = client.channel!;
        expect(channel.uri).toMatch(/^kms:\/\/kms\.example\.com\/ecdhe\/[0-9a-f-]{36}$/);
        expect(channel.userId).toBe("alice@example.com");
        expect(channel.expiresAt.getTime() - Date.now()).toBeGreaterThan(3500_000);
        const before = kms.channelCount();
        await client.close();
        expect(kms.channelCount()).toBe(before - 1);
      });

      it("a deleted channel is unknown (JWS 401); the SDK re-keys transparently", async () => {
        const client = await clients.client("bob@example.com");
        await client.ping();
        const first = client.channel!.uri;
        // Delete it behind the SDK's back (as another node or an operator would).
        await kms.kms.core.services.store.deleteChannel(first);
        await client.ping();
        expect(client.channel!.uri).not.toBe(first);
        await client.close();
      });

      it("a user whose domain the certificate does not name is refused by the SDK", async () => {
        const client = await clients.client("mallory@example.org");
        await expect(client.ping()).rejects.toMatchObject({ code: "ERR_KMS_CERT_NAME" });
      });

      it("a KMS refusal reaches SDK users as KmsRequestError with status and reason", async () => {
        const client = await clients.client("carol@example.com");
        const err = await client.request("update", "/nothing-here").catch((e) => e);
        expect(err).toBeInstanceOf(KmsRequestError);
        expect(err).toMatchObject({ status: 404, form: "jwe" });
        await client.close();
      });
    });
  });
}
