import { describe, expect, it } from "vitest";
import { errors as joseErrors, exportJWK, generateKeyPair, jwtVerify, SignJWT, type JWK } from "jose";
import { JwksCache, JwksUnavailableError } from "../../src/identity/jwks-cache.js";

async function signingKey(kid: string) {
  const { privateKey, publicKey } = await generateKeyPair("ES256", { extractable: true });
  const jwk: JWK = { ...(await exportJWK(publicKey)), kid, alg: "ES256", use: "sig" };
  const sign = () => new SignJWT({ email: "alice@example.com" }).setProtectedHeader({ alg: "ES256", kid }).setExpirationTime("1h").sign(privateKey);
  return { jwk, sign };
}

/** A fake IdP (its published keys can be changed, it can fail) and a fake clock whose sleep advances it. */
function fakeWorld() {
  const world = {
    t: 1_000_000,
    keys: [] as JWK[],
    fail: false as boolean,
    fetches: [] as number[],
    sleeps: [] as number[],
    fetchJwks: async () => {
      world.fetches.push(world.t);
      await Promise.resolve();
      if (world.fail) throw new Error("connection refused");
      return { keys: [...world.keys] };
    },
    now: () => world.t,
    sleep: async (ms: number) => {
      world.sleeps.push(ms);
      world.t += ms;
      await Promise.resolve();
    },
  };
  return world;
}

function cacheFor(world: ReturnType<typeof fakeWorld>, o: { minRefetchIntervalMs?: number; maxAgeMs?: number } = {}) {
  return new JwksCache({ url: "https://idp.test/jwks", fetchJwks: world.fetchJwks, now: world.now, sleep: world.sleep, ...o });
}

describe("JwksCache", () => {
  it("fetches once on first use and serves later tokens from the cache", async () => {
    const w = fakeWorld();
    const k1 = await signingKey("k1");
    w.keys = [k1.jwk];
    const cache = cacheFor(w);
    for (let i = 0; i < 5; i++) await jwtVerify(await k1.sign(), cache.getKey);
    expect(w.fetches).toHaveLength(1);
  });

  it("an unknown kid right after a fetch waits for the rest of the minimum interval, then refetches once", async () => {
    const w = fakeWorld();
    const [k1, k2] = [await signingKey("k1"), await signingKey("k2")];
    w.keys = [k1.jwk];
    const cache = cacheFor(w);
    await jwtVerify(await k1.sign(), cache.getKey);
    w.t += 1_000;
    w.keys = [k2.jwk, k1.jwk]; // the provider rotates
    await jwtVerify(await k2.sign(), cache.getKey);
    expect(w.sleeps).toEqual([4_000]);
    expect(w.fetches).toEqual([1_000_000, 1_005_000]);
  });

  it("an unknown kid long after the last fetch refetches at once", async () => {
    const w = fakeWorld();
    const [k1, k2] = [await signingKey("k1"), await signingKey("k2")];
    w.keys = [k1.jwk];
    const cache = cacheFor(w);
    await jwtVerify(await k1.sign(), cache.getKey);
    w.t += 60_000;
    w.keys = [k2.jwk];
    await jwtVerify(await k2.sign(), cache.getKey);
    expect(w.sleeps).toEqual([]);
    expect(w.fetches).toHaveLength(2);
  });

  it("concurrent requests with an unknown kid share ONE fetch", async () => {
    const w = fakeWorld();
    const [k1, k2] = [await signingKey("k1"), await signingKey("k2")];
    w.keys = [k1.jwk];
    const cache = cacheFor(w);
    await jwtVerify(await k1.sign(), cache.getKey);
    w.keys = [k2.jwk, k1.jwk];
    const tokens = await Promise.all(Array.from({ length: 20 }, () => k2.sign()));
    const results = await Promise.all(tokens.map((t) => jwtVerify(t, cache.getKey)));
    expect(results).toHaveLength(20);
    expect(w.fetches).toHaveLength(2);
  });

  it("a kid still unknown after the refetch is refused (JWKSNoMatchingKey), and attacker kids do not cause a fetch storm", async () => {
    const w = fakeWorld();
    const [k1, foreign] = [await signingKey("k1"), await signingKey("nobody-publishes-this")];
    w.keys = [k1.jwk];
    const cache = cacheFor(w);
    await jwtVerify(await k1.sign(), cache.getKey);
    const tokens = await Promise.all(Array.from({ length: 10 }, () => foreign.sign()));
    const outcomes = await Promise.allSettled(tokens.map((t) => jwtVerify(t, cache.getKey)));
    for (const o of outcomes) expect(o.status === "rejected" && o.reason instanceof joseErrors.JWKSNoMatchingKey).toBe(true);
    expect(w.fetches).toHaveLength(2);
  });

  it("does not refetch for an unknown kid when the set was fetched after the token arrived (first use)", async () => {
    const w = fakeWorld();
    const [k1, old] = [await signingKey("k1"), await signingKey("rotated-out")];
    w.keys = [k1.jwk];
    const cache = cacheFor(w);
    await expect(jwtVerify(await old.sign(), cache.getKey)).rejects.toBeInstanceOf(joseErrors.JWKSNoMatchingKey);
    expect(w.fetches).toHaveLength(1);
    expect(w.sleeps).toEqual([]);
  });

  it("a key removed by the provider is forgotten at the next refresh (rotated-out key refused)", async () => {
    const w = fakeWorld();
    const [k1, k2, k3] = [await signingKey("k1"), await signingKey("k2"), await signingKey("k3")];
    w.keys = [k2.jwk, k1.jwk];
    const cache = cacheFor(w);
    await jwtVerify(await k1.sign(), cache.getKey);
    w.t += 10_000;
    w.keys = [k3.jwk, k2.jwk]; // k1 rotated out
    await jwtVerify(await k3.sign(), cache.getKey); // unknown kid → refetch
    await expect(jwtVerify(await k1.sign(), cache.getKey)).rejects.toBeInstanceOf(joseErrors.JWKSNoMatchingKey);
  });

  it("refreshes periodically after maxAge, keeping the old set when that refresh fails", async () => {
    const w = fakeWorld();
    const k1 = await signingKey("k1");
    w.keys = [k1.jwk];
    const cache = cacheFor(w, { maxAgeMs: 600_000 });
    await jwtVerify(await k1.sign(), cache.getKey);
    w.t += 600_000;
    w.fail = true;
    await jwtVerify(await k1.sign(), cache.getKey); // refresh failed: old set still used
    expect(w.fetches).toHaveLength(2);
    await jwtVerify(await k1.sign(), cache.getKey); // no retry within the minimum interval
    expect(w.fetches).toHaveLength(2);
    w.t += 5_000;
    w.fail = false;
    await jwtVerify(await k1.sign(), cache.getKey);
    expect(w.fetches).toHaveLength(3);
  });

  it("fails closed when the set cannot be fetched (first use, or refetch for an unknown kid)", async () => {
    const w = fakeWorld();
    const [k1, k2] = [await signingKey("k1"), await signingKey("k2")];
    w.fail = true;
    const cache = cacheFor(w);
    await expect(jwtVerify(await k1.sign(), cache.getKey)).rejects.toBeInstanceOf(JwksUnavailableError);
    w.fail = false;
    w.keys = [k1.jwk];
    w.t += 5_000;
    await jwtVerify(await k1.sign(), cache.getKey);
    w.t += 5_000;
    w.fail = true;
    await expect(jwtVerify(await k2.sign(), cache.getKey)).rejects.toBeInstanceOf(JwksUnavailableError);
  });

  it("refuses a response that is not a key set", async () => {
    const k1 = await signingKey("k1");
    const cache = new JwksCache({ url: "https://idp.test/jwks", fetchJwks: async () => ({ nope: true }) });
    await expect(jwtVerify(await k1.sign(), cache.getKey)).rejects.toBeInstanceOf(JwksUnavailableError);
  });
});
