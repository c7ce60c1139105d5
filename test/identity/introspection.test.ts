import { describe, expect, it } from "vitest";
import { KmsError } from "../../src/protocol/errors.js";
import { TokenIntrospector, type TokenIntrospectionOptions } from "../../src/identity/introspection.js";

const ISSUER = "https://idp.example.com";
const AUDIENCE = "kms://kms.example.com";
const TOKEN = "opaque-Secret-Token-Value-0123456789";

interface Call {
  url: string;
  headers: Record<string, string>;
  body: URLSearchParams;
}

/** A fake introspection endpoint and clock: `answer` decides the response of each call. */
function setup(answer: (token: string) => unknown | Response | Promise<unknown>, o: Partial<TokenIntrospectionOptions> = {}) {
  const state = { t: 1_700_000_000_000, calls: [] as Call[] };
  const fakeFetch = (async (url: string | URL | Request, init?: RequestInit) => {
    const body = new URLSearchParams(String(init?.body));
    state.calls.push({ url: String(url), headers: init?.headers as Record<string, string>, body });
    const a = await answer(body.get("token")!);
    if (a instanceof Response) return a;
    return new Response(JSON.stringify(a), { status: 200, headers: { "content-type": "application/json" } });
  }) as typeof fetch;
  const v = new TokenIntrospector({
    url: "https://idp.example.com/token/introspection",
    clientId: "keyward",
    clientSecret: "s3cret:with/odd chars",
    issuer: ISSUER,
    audience: AUDIENCE,
    entityClaim: "email",
    leewaySeconds: 0,
    fetch: fakeFetch,
    now: () => state.t,
    ...o,
  });
  const nowS = () => Math.floor(state.t / 1000);
  const active = (extra: Record<string, unknown> = {}) => ({
    active: true,
    iss: ISSUER,
    aud: AUDIENCE,
    sub: "user-1",
    email: "Alice@Example.COM",
    client_id: "app",
    token_type: "Bearer",
    iat: nowS() - 10,
    exp: nowS() + 600,
    ...extra,
  });
  return { v, state, active, nowS };
}

async function refusal(p: Promise<unknown>): Promise<KmsError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(KmsError);
    const k = e as KmsError;
    expect(k.status).toBe(401);
    expect(k.reason).not.toContain(TOKEN);
    expect(k.message).not.toContain(TOKEN);
    return k;
  }
  throw new Error("expected a refusal");
}

describe("TokenIntrospector: the request", () => {
  it("POSTs token and token_type_hint as a form, with client_secret_basic (form-encoded id and secret)", async () => {
    const { v, state, active } = setup(() => active());
    const id = await v.validate(TOKEN);
    expect(id.entity).toBe("Alice@example.com");
    expect(id.kind).toBe("bearer");
    expect(state.calls).toHaveLength(1);
    const call = state.calls[0]!;
    expect(call.url).toBe("https://idp.example.com/token/introspection");
    expect(call.headers["content-type"]).toBe("application/x-www-form-urlencoded");
    expect(call.body.get("token")).toBe(TOKEN);
    expect(call.body.get("token_type_hint")).toBe("access_token");
    const basic = Buffer.from(call.headers.authorization!.replace(/^Basic /, ""), "base64").toString();
    expect(basic).toBe("keyward:s3cret%3Awith%2Fodd+chars");
  });

  it("accepts an aud array containing the KMS audience, and expiresAt is the token's exp", async () => {
    const { v, active, nowS } = setup(() => active({ aud: ["https://files.example.com", AUDIENCE] }));
    const id = await v.validate(TOKEN);
    expect(id.expiresAt!.getTime()).toBe((nowS() + 600) * 1000);
  });

  it("the entity comes from the configured claim", async () => {
    const { v, active } = setup(() => active({ upn: "bob@corp.example" }), { entityClaim: "upn" });
    expect((await v.validate(TOKEN)).entity).toBe("bob@corp.example");
  });
});

describe("TokenIntrospector: refusals (401, stable codes, never the token)", () => {
  const nowS = () => Math.floor(1_700_000_000_000 / 1000);
  it.each<[string, Record<string, unknown>, string, RegExp]>([
    ["inactive (revoked/unknown)", { active: false }, "ERR_TOKEN_INACTIVE", /not active/],
    ["active is not literally true", { active: "true" }, "ERR_TOKEN_INACTIVE", /not active/],
    ["another issuer", { iss: "https://evil.example" }, "ERR_TOKEN_INVALID", /'iss'/],
    ["no aud", { aud: undefined }, "ERR_TOKEN_INVALID", /'aud' is missing/],
    ["a token for another service", { aud: "https://files.example.com" }, "ERR_TOKEN_INVALID", /'aud'.*another service/],
    ["aud array without the KMS", { aud: ["https://files.example.com"] }, "ERR_TOKEN_INVALID", /'aud'/],
    ["no exp", { exp: undefined }, "ERR_TOKEN_INVALID", /'exp' is missing/],
    ["expired", { exp: nowS() - 1 }, "ERR_TOKEN_EXPIRED", /expired/],
    ["not yet valid (nbf)", { nbf: nowS() + 60 }, "ERR_TOKEN_INVALID", /'nbf'/],
    ["issued in the future (iat)", { iat: nowS() + 60 }, "ERR_TOKEN_INVALID", /'iat'/],
    ["a refresh token (token_type)", { token_type: "refresh_token" }, "ERR_TOKEN_INVALID", /refresh token/],
    ["a refresh token (Keycloak typ)", { typ: "Refresh" }, "ERR_TOKEN_INVALID", /refresh token/],
    ["no entity claim (no fallback to sub or username)", { email: undefined, username: "alice@example.com" }, "ERR_TOKEN_NO_ENTITY", /'email'/],
    ["entity claim not user@domain", { email: "alice" }, "ERR_TOKEN_NO_ENTITY", /'email'/],
  ])("%s", async (_name, fields, code, reason) => {
    const { v, active } = setup(() => active(fields));
    const e = await refusal(v.validate(TOKEN));
    expect(e.code).toBe(code);
    expect(e.reason).toMatch(reason);
  });

  it("leeway applies to exp and nbf", async () => {
    const { v, active, nowS } = setup(() => active({ exp: nowS() - 20, nbf: nowS() + 20 }), { leewaySeconds: 30 });
    expect((await v.validate(TOKEN)).entity).toBe("Alice@example.com");
  });

  it.each<[string, () => unknown, RegExp]>([
    ["HTTP 503", () => new Response("down", { status: 503 }), /HTTP 503/],
    ["HTTP 401 (bad client credentials)", () => new Response('{"error":"invalid_client"}', { status: 401 }), /HTTP 401/],
    ["a body that is not JSON", () => new Response("<html>", { status: 200 }), /not JSON/],
    ["a JSON body that is not an object", () => [1, 2], /not a JSON object/],
    ["unreachable", () => Promise.reject(new TypeError("fetch failed")), /unreachable/],
  ])("fails closed: %s → ERR_IDP_UNAVAILABLE, not cached", async (_name, answer, reason) => {
    const { v, state } = setup(answer);
    const e = await refusal(v.validate(TOKEN));
    expect(e.code).toBe("ERR_IDP_UNAVAILABLE");
    expect(e.reason).toMatch(reason);
    await refusal(v.validate(TOKEN));
    expect(state.calls).toHaveLength(2);
  });

  it("a malformed or unsigned JWS (alg none) is refused without asking the endpoint", async () => {
    const { v, state, active } = setup(() => active());
    const enc = (o: unknown) => Buffer.from(JSON.stringify(o)).toString("base64url");
    const e = await refusal(v.validate(`${enc({ alg: "none", typ: "at+jwt" })}.${enc({ email: "a@b.example" })}.`));
    expect(e.code).toBe("ERR_TOKEN_INVALID");
    expect(e.reason).toMatch(/not a valid JWT/);
    expect(state.calls).toHaveLength(0);
    await v.validate("ya29.opaque-with-dots.still-opaque");
    expect(state.calls).toHaveLength(1);
  });

  it("times out (fail closed) when the endpoint does not answer", async () => {
    const hang = (async (_url: string, init: RequestInit) =>
      new Promise((_resolve, reject) => init.signal!.addEventListener("abort", () => reject(init.signal!.reason)))) as unknown as typeof fetch;
    const v = new TokenIntrospector({ url: "https://idp.test/i", clientId: "c", clientSecret: "s", issuer: ISSUER, audience: AUDIENCE, entityClaim: "email", leewaySeconds: 0, fetch: hang, timeoutMs: 50 });
    const e = await refusal(v.validate(TOKEN));
    expect(e.code).toBe("ERR_IDP_UNAVAILABLE");
    expect(e.reason).toMatch(/in time/);
  });
});

describe("TokenIntrospector: cache", () => {
  it("remembers an active result for 60 s at most, then asks again", async () => {
    const { v, state, active } = setup(() => active());
    await v.validate(TOKEN);
    state.t += 59_000;
    await v.validate(TOKEN);
    expect(state.calls).toHaveLength(1);
    state.t += 1_000;
    await v.validate(TOKEN);
    expect(state.calls).toHaveLength(2);
  });

  it("a shorter configured cache time is honoured; 0 disables the cache (revocation seen at once)", async () => {
    let revoked = false;
    const { v, state, active } = setup(() => (revoked ? { active: false } : active()), { cacheSeconds: 0 });
    await v.validate(TOKEN);
    await v.validate(TOKEN);
    expect(state.calls).toHaveLength(2);
    revoked = true;
    expect((await refusal(v.validate(TOKEN))).code).toBe("ERR_TOKEN_INACTIVE");
    const short = setup(() => active(), { cacheSeconds: 5 });
    await short.v.validate(TOKEN);
    short.state.t += 5_000;
    await short.v.validate(TOKEN);
    expect(short.state.calls).toHaveLength(2);
  });

  it("never beyond the token's exp: once exp passes the token is refused as expired", async () => {
    const { v, state, active, nowS } = setup(() => active({ exp: nowS() + 10 }));
    await v.validate(TOKEN);
    state.t += 5_000;
    await v.validate(TOKEN);
    expect(state.calls).toHaveLength(1);
    state.t += 5_000;
    const e = await refusal(v.validate(TOKEN));
    expect(e.code).toBe("ERR_TOKEN_EXPIRED");
  });

  it("refusals are not cached", async () => {
    const { v, state } = setup(() => ({ active: false }));
    await refusal(v.validate(TOKEN));
    await refusal(v.validate(TOKEN));
    expect(state.calls).toHaveLength(2);
  });

  it("is bounded: the oldest entry is evicted", async () => {
    const { v, state, active } = setup(() => active(), { cacheSize: 2 });
    await v.validate("token-a");
    await v.validate("token-b");
    await v.validate("token-c");
    expect(v.cachedResults).toBe(2);
    await v.validate("token-c");
    await v.validate("token-b");
    expect(state.calls).toHaveLength(3);
    await v.validate("token-a");
    expect(state.calls).toHaveLength(4);
  });

  it("concurrent validations of one token share one introspection call", async () => {
    const { v, state, active } = setup(async () => {
      await new Promise((r) => setTimeout(r, 20));
      return active();
    });
    const ids = await Promise.all(Array.from({ length: 10 }, () => v.validate(TOKEN)));
    expect(ids.every((id) => id.entity === "Alice@example.com")).toBe(true);
    expect(state.calls).toHaveLength(1);
  });
});
