import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encryptCommonMessage } from "../../src/protocol/jose/common-message.js";
import { ECHO_MAX_CHARS, echo } from "../../src/protocol/echo.js";
import { isCanonicalBase64url } from "../../src/protocol/jose/canonical-base64url.js";
import { RawClient, post, type TestKms, startTestKms } from "../helpers/harness.js";
import {
  add,
  append,
  channel,
  chainSnapshot,
  createChain,
  expectStatus,
  newDevice,
  registerDevice,
  signBlock,
  storedKeyRows,
  type Device,
} from "../helpers/gmbc-fixtures.js";
import { blockHash } from "../../src/primitives/block-hash.js";
import { DeviceKey, GroupKeys, Groups, type KmsClient } from "../../src/client/index.js";

/**
 * Findings 1, 6, 7, 11 and 12 of the security review (issue #10; docs/security.md): limits of
 * PROTOCOL.md §10 that bound what one request can cost, and echoes that bound what one request
 * can write into replies and logs.
 */
describe("hardening: profile v2 §10 limits", () => {
  let kms: TestKms;
  beforeAll(async () => {
    kms = await startTestKms();
  });
  afterAll(async () => {
    await kms.close();
  });

  const db = () => new Database(kms.config.store.kind === "sqlite" ? kms.config.store.path : "", { readonly: true });
  const count = (sql: string, ...args: unknown[]) => {
    const d = db();
    try {
      return (d.prepare(sql).pluck().get(...args) as number) ?? 0;
    } finally {
      d.close();
    }
  };

  describe("finding 1: a key flood cannot freeze the server", () => {
    it("at most 16 unrevoked keys per entity: the 17th → 409 saying so, nothing stored; a revocation frees a place", async () => {
      const raw = await channel(kms, "flood@example.com");
      const devices = await Promise.all(Array.from({ length: 17 }, (_, i) => newDevice("flood@example.com", `k${i}`)));
      for (const d of devices.slice(0, 16)) await registerDevice(raw, d);
      const refused = expectStatus(await raw.request({ method: "create", uri: "/entities/keys", jwk: devices[16]!.publicJwk }), 409, /16 unrevoked keys.*revoke one/);
      expect(refused.requestId).toBeDefined();
      expect(storedKeyRows(kms).filter((k) => k.entity === "flood@example.com").map((k) => k.kid)).not.toContain("k16");
      expect(count("SELECT count(*) FROM entity_keys WHERE entity = ? AND revoked_at IS NULL", "flood@example.com")).toBe(16);

      expectStatus(await raw.request({ method: "delete", uri: "/entities/flood@example.com/keys/k0" }), 204);
      await registerDevice(raw, devices[16]!);
      expect(count("SELECT count(*) FROM entity_keys WHERE entity = ? AND revoked_at IS NULL", "flood@example.com")).toBe(16);
    });

    it("concurrent registrations never pass the limit", async () => {
      const raw = await channel(kms, "race@example.com");
      const devices = await Promise.all(Array.from({ length: 24 }, (_, i) => newDevice("race@example.com", `r${i}`)));
      const replies = await Promise.all(devices.map((d) => raw.request({ method: "create", uri: "/entities/keys", jwk: d.publicJwk })));
      const statuses = replies.map((r) => r.payload.status);
      expect(statuses.filter((s) => s === 201)).toHaveLength(16);
      expect(statuses.filter((s) => s === 409)).toHaveLength(8);
      expect(count("SELECT count(*) FROM entity_keys WHERE entity = ?", "race@example.com")).toBe(16);
    });

    describe("at most 200 signature verifications per append", () => {
      let alice: RawClient;
      let keys: Device[];
      beforeAll(async () => {
        alice = await channel(kms, "alice@example.com");
        keys = await Promise.all(Array.from({ length: 16 }, (_, i) => newDevice("alice@example.com", `alice-${i}`)));
        for (const d of keys) await registerDevice(alice, d);
      });

      /** n linked blocks, each adding one new member, signed by the last of alice's 16 keys. */
      async function blocksFrom(tail: string, n: number, kid: "with" | "without", prefix: string): Promise<string[]> {
        const out: string[] = [];
        let antecedent = tail;
        for (let i = 0; i < n; i++) {
          const jws = await signBlock(keys[15]!, { antecedent, operations: [add(`${prefix}${i}@example.com`)] }, kid === "without" ? { kid: null } : {});
          out.push(jws);
          antecedent = await blockHash(jws);
        }
        return out;
      }

      it("13 blocks without kid from an entity with 16 keys (208 checks) → 400 asking for kid, before any check; nothing stored", async () => {
        const chain = await createChain(alice, ["alice@example.com"]);
        const before = chainSnapshot(kms, chain.uri);
        const blocks = await blocksFrom(chain.hash, 13, "without", "m");
        const reply = expectStatus(await append(alice, chain.uri, blocks), 400, /208 signature verifications.*200.*'kid'/);
        expect(reply.reason).toMatch(/kid/);
        expect(chainSnapshot(kms, chain.uri)).toEqual(before);
      });

      it("12 blocks without kid (192 checks) are within the bound and land", async () => {
        const chain = await createChain(alice, ["alice@example.com"]);
        const blocks = await blocksFrom(chain.hash, 12, "without", "n");
        expectStatus(await append(alice, chain.uri, blocks), 200);
        expect(chainSnapshot(kms, chain.uri).blocks).toHaveLength(13);
      });

      it("100 blocks with kid cost 100 checks and land", async () => {
        const chain = await createChain(alice, ["alice@example.com"]);
        const blocks = await blocksFrom(chain.hash, 100, "with", "p");
        expectStatus(await append(alice, chain.uri, blocks), 200);
        expect(chainSnapshot(kms, chain.uri).blocks).toHaveLength(101);
      });
    });
  });

  describe("finding 6: requestId and clientId are bounded (256 characters, or a safe integer)", () => {
    let raw: RawClient;
    beforeAll(async () => {
      raw = await channel(kms, "ids@example.com");
    });
    const replayRecords = () => count("SELECT count(*) FROM channel_requests WHERE channel_uri = ?", raw.uri);

    it.each([
      ["a string of 257 characters", "x".repeat(257)],
      ["257 emoji", "😀".repeat(257)],
      ["a number beyond 2^53", 2 ** 53],
      ["a fraction", 1.5],
      ["a negative beyond -2^53", -(2 ** 53)],
    ])("requestId %s → 400 naming requestId, not echoed, no replay record", async (_label, requestId) => {
      const before = replayRecords();
      const reply = await raw.request({ requestId });
      expectStatus(reply, 400, /'requestId'.*256 characters or a safe integer/);
      expect(reply.payload).not.toHaveProperty("requestId");
      expect(replayRecords()).toBe(before);
    });

    it.each([
      ["a string of 256 characters", "y".repeat(256)],
      ["256 emoji (512 UTF-16 units)", "😃".repeat(256)],
      ["the largest safe integer", Number.MAX_SAFE_INTEGER],
      ["a negative integer", -42],
    ])("requestId %s is accepted and echoed", async (_label, requestId) => {
      expect((await raw.request({ requestId })).payload).toEqual({ status: 200, requestId });
    });

    it("clientId of 257 characters → 400 naming client.clientId; 256 is accepted", async () => {
      const token = await kms.token("ids@example.com");
      const send = (clientId: string) =>
        raw.request({ client: { clientId, credential: { bearer: token } } });
      expectStatus(await send("c".repeat(257)), 400, /'client\.clientId'.*256/);
      expectStatus(await send("c".repeat(256)), 200);
    });

    it("on key agreement: a requestId of 257 characters → JWS 400, no channel created", async () => {
      const before = kms.channelCount();
      const other = new RawClient(kms, "ids@example.com");
      const reply = await other.ecdhe({ requestId: "z".repeat(257) });
      expect(reply).toMatchObject({ status: 400 });
      expect(String(reply.reason)).toMatch(/requestId/);
      expect(reply).not.toHaveProperty("requestId");
      expect(kms.channelCount()).toBe(before);
    });
  });

  describe("finding 7: every reply encrypted under a channel's key counts toward its limit", () => {
    const LIMIT = 2 ** 24;
    const setCount = (uri: string, n: number) => {
      const d = new Database(kms.config.store.kind === "sqlite" ? kms.config.store.path : "");
      d.prepare("UPDATE channels SET message_count = ? WHERE uri = ?").run(n, uri);
      d.close();
    };
    const messageCount = (uri: string) => count("SELECT message_count FROM channels WHERE uri = ?", uri);

    /** A common message whose header names the channel but breaks §4 (refused before decrypting). */
    async function badHeaderMessage(raw: RawClient): Promise<string> {
      const good = await encryptCommonMessage(raw.key!, raw.uri!, await raw.payload());
      const header = Buffer.from(JSON.stringify({ alg: "dir", enc: "A128GCM", kid: raw.uri })).toString("base64url");
      return [header, ...good.split(".").slice(1)].join(".");
    }

    it("header refusals count: at the limit the channel is exhausted (JWS 403) instead of answering more", async () => {
      const raw = await channel(kms, "count@example.com");
      setCount(raw.uri!, LIMIT - 2);
      const first = await raw.send(await badHeaderMessage(raw));
      expect(first).toMatchObject({ form: "jwe", payload: { status: 400 } });
      expect(messageCount(raw.uri!)).toBe(LIMIT - 1);
      expect(await raw.send(await badHeaderMessage(raw))).toMatchObject({ form: "jwe", payload: { status: 400 } });
      expect(messageCount(raw.uri!)).toBe(LIMIT);
      expect(await raw.send(await badHeaderMessage(raw))).toMatchObject({ form: "jws", payload: { status: 403, reason: "ephemeral key exhausted" } });
      expect(await raw.request()).toMatchObject({ form: "jws", payload: { status: 403, reason: "ephemeral key exhausted" } });
    });

    it("replays, field errors and credential refusals count too", async () => {
      const raw = await channel(kms, "count@example.com");
      const base = messageCount(raw.uri!);
      const message = await encryptCommonMessage(raw.key!, raw.uri!, await raw.payload({ requestId: "once" }));
      expect((await raw.send(message)).payload).toMatchObject({ status: 200 });
      expect((await raw.send(message)).payload).toMatchObject({ status: 409 });
      expect((await raw.request({ method: 7 })).payload).toMatchObject({ status: 400 });
      expect((await raw.request({ client: { clientId: "x", credential: { bearer: "not-a-token" } } })).payload).toMatchObject({ status: 401 });
      expect(messageCount(raw.uri!)).toBe(base + 4);
    });

    it("a message that does not decrypt is answered with a JWS (no encryption under the key) and does not count", async () => {
      const raw = await channel(kms, "count@example.com");
      const base = messageCount(raw.uri!);
      const good = await encryptCommonMessage(raw.key!, raw.uri!, await raw.payload());
      const parts = good.split(".");
      parts[4] = parts[4]!.startsWith("A") ? "B" + parts[4]!.slice(1) : "A" + parts[4]!.slice(1);
      expect(await raw.send(parts.join("."))).toMatchObject({ form: "jws", payload: { status: 401 } });
      expect(messageCount(raw.uri!)).toBe(base);
    });
  });

  describe("finding 11: non-canonical base64url in a block → 400", () => {
    it("canonical base64url: the unused bits of the last character must be zero", () => {
      expect(isCanonicalBase64url("AA")).toBe(true);
      expect(isCanonicalBase64url("AB")).toBe(false);
      expect(isCanonicalBase64url("AAA")).toBe(true);
      expect(isCanonicalBase64url("AAB")).toBe(false);
      expect(isCanonicalBase64url("AAAA")).toBe(true);
      expect(isCanonicalBase64url("A")).toBe(false);
      expect(isCanonicalBase64url("AA=")).toBe(false);
      expect(isCanonicalBase64url("")).toBe(true);
      for (let n = 0; n < 40; n++) {
        const bytes = crypto.getRandomValues(new Uint8Array(n));
        expect(isCanonicalBase64url(Buffer.from(bytes).toString("base64url"))).toBe(true);
      }
    });

    it("a relay re-spelling a signed block's signature (same bytes, another hash) is refused; nothing stored", async () => {
      const alice = await channel(kms, "canon@example.com");
      const device = await newDevice("canon@example.com", "canon-1");
      await registerDevice(alice, device);
      const chain = await createChain(alice, ["canon@example.com"]);
      const jws = await signBlock(device, { antecedent: chain.hash, operations: [add("bob@example.com")] });
      const [h, p, s] = jws.split(".") as [string, string, string];
      // ES256: 64 bytes → 86 characters, the last one carrying 4 unused bits.
      expect(s.length % 4).toBe(2);
      const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
      const respelled = s.slice(0, -1) + alphabet[alphabet.indexOf(s.at(-1)!) ^ 1];
      expect(Buffer.from(respelled, "base64url").equals(Buffer.from(s, "base64url"))).toBe(true);
      const before = chainSnapshot(kms, chain.uri);
      const reply = expectStatus(await append(alice, chain.uri, [`${h}.${p}.${respelled}`]), 400, /signature is not canonical base64url/);
      expect(reply.reason).toMatch(/^blocks\[0\]/);
      expect(chainSnapshot(kms, chain.uri)).toEqual(before);
      // The block as signed lands.
      expectStatus(await append(alice, chain.uri, [jws]), 200);
    });
  });

  it("finding 11, SDK side: a GK whose JWS is re-spelled is refused (ERR_GK_NOT_CANONICAL) before its signature is checked", async () => {
    const client = kms.client("gkcanon@example.com");
    const device = await DeviceKey.generate({ type: "ec" });
    await new Groups(client, { user: "gkcanon@example.com", device }).registerDevice();
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const respell = (jws: string) => {
      const [h, p, sig] = jws.split(".") as [string, string, string];
      return `${h}.${p}.${sig.slice(0, -1)}${alphabet[alphabet.indexOf(sig.at(-1)!) ^ 1]}`;
    };
    // A relay that re-spells the gk of every reply (the SDK's view of a tampering intermediary).
    const relayed = new Proxy(client, {
      get(target, prop) {
        if (prop === "request") {
          return async (...args: Parameters<KmsClient["request"]>) => {
            const reply = await target.request(...args);
            return typeof reply.gk === "string" ? { ...reply, gk: respell(reply.gk) } : reply;
          };
        }
        const value = Reflect.get(target, prop, target) as unknown;
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
    const gks = new GroupKeys(relayed, { user: "gkcanon@example.com", device });
    await expect(gks.create()).rejects.toMatchObject({ name: "KmsProtocolError", code: "ERR_GK_NOT_CANONICAL" });
    await expect(new GroupKeys(client, { user: "gkcanon@example.com", device }).create()).resolves.toMatchObject({ uri: expect.stringMatching(/^kms:/) });
    await client.close();
  });

  describe("finding 12: echoed values are at most 64 characters, in replies and in logs", () => {
    it("echo() keeps 64 code points, never splits a surrogate pair, and shows control characters as '?'", () => {
      expect(echo("x".repeat(100))).toBe("x".repeat(64) + "…");
      expect(echo("x".repeat(64))).toBe("x".repeat(64));
      expect(echo("😀".repeat(70))).toBe("😀".repeat(64) + "…");
      expect(echo("a\nb\u0000c\u009b")).toBe("a?b?c?");
      expect(echo("\ud800x")).toBe("?x");
      expect(echo(42)).toBe("42");
      expect(ECHO_MAX_CHARS).toBe(64);
    });

    it.each([
      ["a uri naming nothing", (s: string) => ({ uri: `/${s}` }), 404],
      ["an unknown method", (s: string) => ({ method: s }), 400],
      ["a foreign authority", (s: string) => ({ uri: `kms://${s}.example/gks/1` }), 404],
      ["an unknown chain", (s: string) => ({ method: "retrieve", uri: `/blocks/${s}` }), 404],
      ["an unknown entity's key", (s: string) => ({ method: "delete", uri: `/entities/ids@example.com/keys/${s}` }), 404],
      ["a genesis operation entity", (s: string) => ({ method: "create", uri: "/blocks", blockPayload: { operations: [{ optype: "add", entity: s }] } }), 400],
      ["an operation label (metrics and logs)", (s: string) => ({ method: "retrieve", uri: `/${s}/x` }), 404],
    ])("%s: a 100,000-character value is echoed as at most 64 characters", async (_label, fields, status) => {
      const raw = await channel(kms, "ids@example.com");
      const marker = "Q".repeat(100_000);
      const reply = expectStatus(await raw.request(fields(marker)), status);
      const reason = String(reply.reason);
      expect(reason.length).toBeLessThan(300);
      expect(reason).not.toContain("Q".repeat(ECHO_MAX_CHARS + 1));
      expect(kms.logs()).not.toContain("Q".repeat(ECHO_MAX_CHARS + 1));
      expect(await kms.kms.registry.metrics()).not.toContain("QQ");
    });

    it("on key agreement too (JWS errors)", async () => {
      const raw = new RawClient(kms, "ids@example.com");
      const reply = await raw.ecdhe({ uri: `kms://${"R".repeat(50_000)}.example/ecdhe` });
      expect(reply).toMatchObject({ status: 404 });
      expect(String(reply.reason)).not.toContain("R".repeat(ECHO_MAX_CHARS + 1));
      expect(kms.logs()).not.toContain("R".repeat(ECHO_MAX_CHARS + 1));
    });

    it("a block's header alg", async () => {
      const raw = await channel(kms, "ids@example.com");
      const chain = await createChain(raw, ["ids@example.com"]);
      const header = Buffer.from(JSON.stringify({ alg: `HS${"9".repeat(5000)}` })).toString("base64url");
      const payload = Buffer.from(JSON.stringify({ antecedent: chain.hash, creator: "ids@example.com", created: new Date().toISOString(), operations: [add("x@example.com")] })).toString("base64url");
      const reply = expectStatus(await append(raw, chain.uri, [`${header}.${payload}.AAAA`]), 400, /HMAC/);
      expect(String(reply.reason)).not.toContain("9".repeat(ECHO_MAX_CHARS + 1));
    });
  });

  it("a single-form body that is not JOSE is still answered with HTTP 400 and a short JWS reason", async () => {
    const { status, body } = await post(kms.url, "S".repeat(10_000));
    expect(status).toBe(400);
    expect(body).not.toContain("S".repeat(ECHO_MAX_CHARS + 1));
  });
});
