import { generateKeyPairSync } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { exportJWK, generateKeyPair, type JWK } from "jose";
import { REL_ENTITY_KEYS } from "../../src/protocol/constants.js";
import type { RawClient, TestKms } from "../helpers/harness.js";
import { startTestKms } from "../helpers/harness.js";
import { channel, expectStatus, newDevice, storedKeyRows } from "../helpers/gmbc-fixtures.js";

const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;
const PRIVATE_MEMBERS = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

async function ecJwk(kid?: string): Promise<JWK> {
  const { publicKey } = await generateKeyPair("ES256", { extractable: true });
  return { ...(await exportJWK(publicKey)), ...(kid !== undefined ? { kid } : {}) };
}

describe("entity keys (PROTOCOL.md §7)", () => {
  let kms: TestKms;
  let alice: RawClient;
  let bob: RawClient;
  let carol: RawClient;
  let orgBob: RawClient;

  beforeAll(async () => {
    kms = await startTestKms();
    [alice, bob, carol, orgBob] = await Promise.all([
      channel(kms, "alice@example.com"),
      channel(kms, "bob@example.com"),
      channel(kms, "carol@example.com"),
      channel(kms, "bob@example.org"),
    ]);
  });
  afterAll(async () => {
    await kms.close();
  });

  const list = async (raw: RawClient, entity: string, extra: Record<string, unknown> = {}) =>
    expectStatus(await raw.request({ method: "retrieve", uri: `/entities/${entity}/keys`, ...extra }), 200).keys as Record<string, unknown>[];
  const register = (raw: RawClient, jwk: unknown) => raw.request({ method: "create", uri: "/entities/keys", jwk });

  describe("create /entities/keys", () => {
    it("registers an EC P-256 key: 201 {key: {entity, jwk, created}}, public members only", async () => {
      const { publicKey, privateKey } = await generateKeyPair("ES256", { extractable: true });
      const pub = { ...(await exportJWK(publicKey)), kid: "alice-phone", alg: "ES256", use: "sig" };
      const priv = await exportJWK(privateKey);
      const reply = expectStatus(await register(alice, pub), 201);
      const key = reply.key as { entity: string; jwk: JWK; created: string };
      expect(key.entity).toBe("alice@example.com");
      expect(key.created).toMatch(RFC3339);
      expect(Math.abs(Date.parse(key.created) - Date.now())).toBeLessThan(60_000);
      expect(key.jwk).toMatchObject({ kty: "EC", crv: "P-256", x: pub.x, y: pub.y, kid: "alice-phone" });
      for (const m of PRIVATE_MEMBERS) expect(key.jwk).not.toHaveProperty(m);
      expect(priv.d).toBeDefined();
      const keys = await list(bob, "alice@example.com");
      expect(keys).toHaveLength(1);
      expect(keys[0]).toMatchObject({ kty: "EC", crv: "P-256", x: pub.x, y: pub.y, kid: "alice-phone" });
    });

    it("registers an RSA-2048 key", async () => {
      const device = await newDevice("alice@example.com", "alice-laptop", "PS256");
      const reply = expectStatus(await register(alice, device.publicJwk), 201);
      const key = reply.key as { entity: string; jwk: JWK };
      expect(key.entity).toBe("alice@example.com");
      expect(key.jwk).toMatchObject({ kty: "RSA", n: device.publicJwk.n, e: device.publicJwk.e, kid: "alice-laptop" });
      for (const m of PRIVATE_MEMBERS) expect(key.jwk).not.toHaveProperty(m);
    });

    it("keeps several devices per entity, oldest first", async () => {
      const k1 = await ecJwk("bob-1");
      const k2 = await ecJwk("bob-2");
      const k3 = (await newDevice("bob@example.com", "bob-3", "PS256")).publicJwk;
      for (const k of [k1, k2, k3]) expectStatus(await register(bob, k), 201);
      const keys = await list(alice, "bob@example.com");
      expect(keys.map((k) => k.kid)).toEqual(["bob-1", "bob-2", "bob-3"]);
      expect(keys[2]).toMatchObject({ kty: "RSA", n: k3.n });
    });

    it("a duplicate kid → 409, and the first key stays", async () => {
      const first = await ecJwk("carol-dup");
      expectStatus(await register(carol, first), 201);
      const before = storedKeyRows(kms);
      expectStatus(await register(carol, await ecJwk("carol-dup")), 409, /carol-dup|kid/);
      expect(storedKeyRows(kms)).toEqual(before);
      const keys = await list(carol, "carol@example.com");
      expect(keys.filter((k) => k.kid === "carol-dup")).toHaveLength(1);
      expect(keys.find((k) => k.kid === "carol-dup")).toMatchObject({ x: first.x, y: first.y });
    });

    it("kids are per entity: another entity may use the same kid", async () => {
      expectStatus(await register(bob, await ecJwk("carol-dup")), 201);
    });

    it("the stored JWK never has a private member", () => {
      const rows = storedKeyRows(kms);
      expect(rows.length).toBeGreaterThan(0);
      for (const row of rows) {
        const jwk = JSON.parse(row.jwk) as Record<string, unknown>;
        for (const m of PRIVATE_MEMBERS) expect(jwk).not.toHaveProperty(m);
      }
    });

    describe("refusals: 400 with a reason naming the problem, nothing stored", () => {
      const cases: [string, () => Promise<unknown>, RegExp][] = [
        [
          "RSA-1024",
          async () => {
            const { publicKey } = generateKeyPairSync("rsa", { modulusLength: 1024 });
            return { ...(publicKey.export({ format: "jwk" }) as JWK), kid: "rsa-1024" };
          },
          /2048|bits/,
        ],
        [
          "a private key (with d)",
          async () => {
            const { privateKey } = await generateKeyPair("ES256", { extractable: true });
            return { ...(await exportJWK(privateKey)), kid: "private" };
          },
          /private/,
        ],
        [
          "a private RSA key (d, p, q, ...)",
          async () => {
            const { privateKey } = await generateKeyPair("PS256", { extractable: true, modulusLength: 2048 });
            return { ...(await exportJWK(privateKey)), kid: "private-rsa" };
          },
          /private/,
        ],
        ["no kid", () => ecJwk(), /kid/],
        ["an empty kid", () => ecJwk(""), /kid/],
        ["kty oct", async () => ({ kty: "oct", k: "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA", kid: "sym" }), /private|secret|kty|oct|symmetric/i],
        [
          "kty OKP (Ed25519, not implemented)",
          async () => {
            const { publicKey } = await generateKeyPair("Ed25519", { extractable: true });
            return { ...(await exportJWK(publicKey)), kid: "okp" };
          },
          /kty|OKP|RSA or EC/,
        ],
        [
          "an EC point off the curve",
          async () => {
            const jwk = await ecJwk("off-curve");
            return { ...jwk, y: jwk.x };
          },
          /point|curve/,
        ],
        [
          "P-384",
          async () => {
            const { publicKey } = await generateKeyPair("ES384", { extractable: true });
            return { ...(await exportJWK(publicKey)), kid: "p384" };
          },
          /P-256|crv/,
        ],
        ["alg HS256 on an EC key", async () => ({ ...(await ecJwk("hs")), alg: "HS256" }), /alg/],
        ["alg ES256 on an RSA key", async () => ({ ...(await newDevice("x@example.com", "rsa-es", "PS256")).publicJwk, alg: "ES256" }), /alg/],
        ["not an object", async () => "a string", /jwk/],
        ["missing", async () => undefined, /jwk/],
      ];
      it.each(cases)("%s → 400", async (_name, make, reason) => {
        const jwk = await make();
        const beforeRows = storedKeyRows(kms);
        const before = await list(alice, "alice@example.com", { includeRevoked: true });
        expectStatus(await register(alice, jwk), 400, reason);
        expect(await list(alice, "alice@example.com", { includeRevoked: true })).toEqual(before);
        expect(storedKeyRows(kms)).toEqual(beforeRows);
      });
    });
  });

  describe("retrieve /entities/<acct>/keys", () => {
    it("any authenticated caller may list; an unknown entity gives 200 {keys: []}", async () => {
      expect(await list(carol, "nobody@example.com")).toEqual([]);
      expect(await list(carol, "nobody@example.org")).toEqual([]);
      expect((await list(carol, "alice@example.com")).length).toBeGreaterThan(0);
    });

    it("accepts an acct: prefix, domain in any case, and the absolute uri form", async () => {
      const plain = await list(carol, "alice@example.com");
      expect(await list(carol, "acct:alice@example.com")).toEqual(plain);
      expect(await list(carol, "alice@EXAMPLE.Com")).toEqual(plain);
      expect(await list(carol, "acct:alice@Example.COM")).toEqual(plain);
      const abs = expectStatus(await carol.request({ method: "retrieve", uri: "kms://kms.example.com/entities/alice@example.com/keys" }), 200);
      expect(abs.keys).toEqual(plain);
      // `get` is the draft's spelling of retrieve (§4).
      expect(expectStatus(await carol.request({ method: "get", uri: "/entities/alice@example.com/keys" }), 200).keys).toEqual(plain);
    });

    it("local parts are case-sensitive", async () => {
      expect(await list(carol, "Alice@example.com")).toEqual([]);
    });
  });

  describe("delete /entities/<acct>/keys/<kid>", () => {
    it("→ 204; the key is then not listed, but includeRevoked lists it with a revoked date", async () => {
      const jwk = await ecJwk("carol-old");
      expectStatus(await register(carol, jwk), 201);
      expect((await list(alice, "carol@example.com")).map((k) => k.kid)).toContain("carol-old");
      const reply = expectStatus(await carol.request({ method: "delete", uri: "/entities/carol@example.com/keys/carol-old" }), 204);
      expect(Object.keys(reply).sort()).toEqual(["requestId", "status"]);
      expect((await list(alice, "carol@example.com")).map((k) => k.kid)).not.toContain("carol-old");
      const all = await list(alice, "carol@example.com", { includeRevoked: true });
      const revoked = all.find((k) => k.kid === "carol-old");
      expect(revoked).toMatchObject({ x: jwk.x, y: jwk.y });
      expect(String(revoked?.revoked)).toMatch(RFC3339);
      expect(all.find((k) => k.kid === "carol-dup")).not.toHaveProperty("revoked");
      // A revoked key is not deleted again.
      expectStatus(await carol.request({ method: "delete", uri: "/entities/carol@example.com/keys/carol-old" }), 404);
    });

    it("with an acct: prefix and another domain case in the uri", async () => {
      expectStatus(await register(carol, await ecJwk("carol-tmp")), 201);
      expectStatus(await carol.request({ method: "delete", uri: "/entities/acct:carol@EXAMPLE.com/keys/carol-tmp" }), 204);
      expect((await list(alice, "carol@example.com")).map((k) => k.kid)).not.toContain("carol-tmp");
    });

    it("by another entity → 403, and the key stays", async () => {
      const before = storedKeyRows(kms);
      expectStatus(await bob.request({ method: "delete", uri: "/entities/alice@example.com/keys/alice-phone" }), 403);
      expect(storedKeyRows(kms)).toEqual(before);
      expect((await list(alice, "alice@example.com")).map((k) => k.kid)).toContain("alice-phone");
    });

    it("an unknown kid → 404", async () => {
      const before = storedKeyRows(kms);
      expectStatus(await alice.request({ method: "delete", uri: "/entities/alice@example.com/keys/no-such-kid" }), 404, /no-such-kid|key/);
      expect(storedKeyRows(kms)).toEqual(before);
    });
  });

  describe("HTTP discovery, unauthenticated (WebFinger and JWKS)", () => {
    beforeAll(async () => {
      expectStatus(await register(orgBob, await ecJwk("org-bob")), 201);
    });

    const webfinger = (resource: string) => fetch(`${kms.url}/.well-known/webfinger?resource=${encodeURIComponent(resource)}`);

    it("WebFinger for an entity with keys: JRD with the entity-keys link, whose href gives the key set", async () => {
      const res = await webfinger("acct:alice@example.com");
      expect(res.status).toBe(200);
      expect(res.headers.get("content-type")).toMatch(/^application\/jrd\+json\b/);
      const jrd = (await res.json()) as { subject?: string; links: { rel: string; type: string; href: string }[] };
      expect(REL_ENTITY_KEYS).toBe("urn:x-keyward:rel:entity-keys");
      const link = jrd.links.find((l) => l.rel === "urn:x-keyward:rel:entity-keys");
      expect(link).toBeDefined();
      expect(link!.type).toBe("application/jwk-set+json");
      const href = new URL(link!.href); // absolute, or this throws
      expect(href.origin).toBe(new URL(kms.url).origin);
      const jwks = await fetch(href);
      expect(jwks.status).toBe(200);
      const body = (await jwks.json()) as { keys: Record<string, unknown>[] };
      const listed = await list(carol, "alice@example.com");
      expect(body.keys).toEqual(listed);
      for (const k of body.keys) for (const m of PRIVATE_MEMBERS) expect(k).not.toHaveProperty(m);
    });

    it("WebFinger accepts the domain in any case", async () => {
      expect((await webfinger("acct:alice@EXAMPLE.com")).status).toBe(200);
    });

    it("404 for an entity without keys, or whose keys are all revoked", async () => {
      expect((await webfinger("acct:nobody@example.com")).status).toBe(404);
      const dave = await channel(kms, "dave@example.com");
      expectStatus(await register(dave, await ecJwk("dave-1")), 201);
      expect((await webfinger("acct:dave@example.com")).status).toBe(200);
      expectStatus(await dave.request({ method: "delete", uri: "/entities/dave@example.com/keys/dave-1" }), 204);
      expect((await webfinger("acct:dave@example.com")).status).toBe(404);
      expect((await fetch(`${kms.url}/entities/dave@example.com/jwks`)).status).toBe(404);
    });

    it("404 for another domain, even for an entity with keys here", async () => {
      expect((await list(alice, "bob@example.org")).map((k) => k.kid)).toEqual(["org-bob"]);
      expect((await webfinger("acct:bob@example.org")).status).toBe(404);
      expect((await fetch(`${kms.url}/entities/bob@example.org/jwks`)).status).toBe(404);
    });

    it("GET /entities/<acct>/jwks: the active keys; 404 for an entity without keys", async () => {
      const res = await fetch(`${kms.url}/entities/${encodeURIComponent("bob@example.com")}/jwks`);
      expect(res.status).toBe(200);
      const body = (await res.json()) as { keys: { kid: string }[] };
      expect(body.keys.map((k) => k.kid)).toEqual((await list(alice, "bob@example.com")).map((k) => k.kid));
      expect((await fetch(`${kms.url}/entities/nobody@example.com/jwks`)).status).toBe(404);
      const revoked = (await (await fetch(`${kms.url}/entities/carol@example.com/jwks`)).json()) as { keys: { kid: string }[] };
      expect(revoked.keys.map((k) => k.kid)).not.toContain("carol-old");
    });
  });
});
