/**
 * Identity end to end with a REAL OpenID provider (oidc-provider): JWT access tokens validated
 * locally against its JWKS, opaque tokens through its introspection endpoint, revocation, key
 * rotation. Every refusal is checked for its status (401, a JWS error on key agreement or a common
 * message on a live channel), a reason naming the problem, and that no channel was created.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeProtectedHeader, type JWK, type JWTPayload } from "jose";
import { RawClient, startTestKms, type TestKms } from "../helpers/harness.js";
import { KMS_OPAQUE_RESOURCE, OTHER_OPAQUE_RESOURCE, OTHER_RESOURCE, startOidcProvider, type TestOidcProvider } from "../helpers/oidc-provider.js";

const now = () => Math.floor(Date.now() / 1000);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A raw client that presents `token` on every message. */
function rawWith(kms: TestKms, token: string, user = "alice@example.com"): RawClient {
  const raw = new RawClient(kms, user);
  raw.credential = async () => ({ clientId: "oidc-e2e", credential: { bearer: token } });
  return raw;
}

/** ECDHE with `token` must be refused: JWS 401 with a reason matching `reason`, and no channel created. */
async function expectRefused(kms: TestKms, token: string, reason: RegExp): Promise<void> {
  const before = kms.channelCount();
  const reply = await rawWith(kms, token).ecdhe(); // ecdhe() verifies the reply as a JWS signed by the static key
  expect(reply.status).toBe(401);
  expect(String(reply.reason)).toMatch(reason);
  expect(String(reply.reason)).not.toContain(token);
  expect(kms.channelCount()).toBe(before);
}

/** ECDHE then a ping on the channel: both succeed; the channel is bound to `user`. */
async function expectWorks(kms: TestKms, token: string, user: string): Promise<void> {
  const before = kms.channelCount();
  const raw = rawWith(kms, token, user);
  const reply = await raw.ecdhe();
  expect(reply).toMatchObject({ status: 201, key: { userId: user } });
  expect(kms.channelCount()).toBe(before + 1);
  const ping = await raw.request();
  expect(ping).toMatchObject({ form: "jwe", payload: { status: 200 } });
}

describe("identity with a real OpenID provider", () => {
  let idp: TestOidcProvider;
  let kms: TestKms;

  beforeAll(async () => {
    idp = await startOidcProvider();
    kms = await startTestKms({ env: idp.kmsEnv({ KEYWARD_OAUTH_LEEWAY: "0" }) });
  });
  afterAll(async () => {
    await kms?.close();
    await idp?.close();
  });

  it("a JWT access token from a real authorization code grant: ECDHE, then a ping on the channel", async () => {
    const token = await idp.loginWithCode("alice@example.com");
    expect(decodeProtectedHeader(token)).toMatchObject({ typ: "at+jwt", alg: "ES256", kid: idp.keys[0]!.kid });
    await expectWorks(kms, token, "alice@example.com");
  });

  it("an opaque access token from a real authorization code grant, through introspection: ECDHE, then a ping", async () => {
    const token = await idp.loginWithCode("bob@example.com", KMS_OPAQUE_RESOURCE);
    expect(token.split(".")).toHaveLength(1);
    await expectWorks(kms, token, "bob@example.com");
  });

  it("tokens minted through the provider's own model work in both formats", async () => {
    await expectWorks(kms, await idp.mint("carol@example.com"), "carol@example.com");
    await expectWorks(kms, await idp.mint("carol@example.com", { resource: KMS_OPAQUE_RESOURCE }), "carol@example.com");
  });

  const cases: [string, (idp: TestOidcProvider) => Promise<string>, RegExp][] = [
    ["expired JWT", (p) => p.sign(p.claims("eve@example.com", { iat: now() - 700, exp: now() - 60 })), /expired/],
    ["not yet valid JWT (nbf in the future)", (p) => p.sign(p.claims("eve@example.com", { nbf: now() + 600 })), /'nbf'/],
    ["JWT issued in the future (iat)", (p) => p.sign(p.claims("eve@example.com", { iat: now() + 600 })), /'iat'/],
    ["JWT for another resource server (the provider's own token, aud files)", (p) => p.mint("eve@example.com", { resource: OTHER_RESOURCE }), /'aud'/],
    ["opaque token for another resource server", (p) => p.mint("eve@example.com", { resource: OTHER_OPAQUE_RESOURCE }), /'aud'.*another service/],
    ["JWT with another issuer, signed by the provider's key", (p) => p.sign(p.claims("eve@example.com", { iss: "https://evil.example" })), /'iss'/],
    ["JWT without exp", (p) => p.sign(p.claims("eve@example.com", { exp: undefined } as JWTPayload)), /'exp'/],
    ["JWT typ is not at+jwt (an ID token style JWT)", (p) => p.sign(p.claims("eve@example.com"), { typ: "JWT" }), /'typ'/],
    ["JWT without the entity claim (the provider's own token for an account with no email)", (p) => p.mint("no-email-account"), /'email'/],
    ["opaque token without the entity claim", (p) => p.mint("no-email-account", { resource: KMS_OPAQUE_RESOURCE }), /'email'/],
    ["HS256 signed with the provider's public key bytes as secret", async (p) => {
      const { d: _d, ...pub } = p.keys[0]!;
      const { SignJWT } = await import("jose");
      return new SignJWT(p.claims("eve@example.com")).setProtectedHeader({ alg: "HS256", typ: "at+jwt", kid: pub.kid! }).sign(new TextEncoder().encode(JSON.stringify(pub)));
    }, /algorithm/],
    ["alg none", async (p) => {
      const enc = (o: unknown) => Buffer.from(JSON.stringify(o)).toString("base64url");
      // An empty signature: not JWT-shaped for the dispatcher, so it reaches the introspector, which refuses it without a call.
      return `${enc({ alg: "none", typ: "at+jwt" })}.${enc(p.claims("eve@example.com"))}.`;
    }, /not a valid JWT|algorithm/],
    ["an opaque string the provider never issued", async () => "never-issued-opaque-token-value", /not active/],
  ];
  it.each(cases)("refused on ECDHE: %s → JWS 401, no channel", async (_name, make, reason) => {
    await expectRefused(kms, await make(idp), reason);
  });

  it("a revoked opaque token: revoked at the provider's revocation endpoint, refused on first use", async () => {
    const token = await idp.mint("frank@example.com", { resource: KMS_OPAQUE_RESOURCE });
    await idp.revoke(token);
    await expectRefused(kms, token, /not active/);
  });

  it("a token that expires while its channel lives → 401 common message on that channel (JWT and opaque)", async () => {
    const jwt = await idp.mint("dave@example.com", { expiresIn: 2 });
    const opaque = await idp.mint("dave@example.com", { resource: KMS_OPAQUE_RESOURCE, expiresIn: 2 });
    const clients = [rawWith(kms, jwt, "dave@example.com"), rawWith(kms, opaque, "dave@example.com")];
    for (const raw of clients) {
      expect((await raw.ecdhe()).status).toBe(201);
      expect((await raw.request()).payload.status).toBe(200);
    }
    await sleep(2_100);
    for (const raw of clients) {
      const reply = await raw.request();
      expect(reply).toMatchObject({ form: "jwe", payload: { status: 401 } });
      expect(String(reply.payload.reason)).toMatch(/expired/);
    }
  });

  it("a token from another provider (wrong issuer, a key this issuer does not publish) → 401 after one JWKS refetch", async () => {
    const other = await startOidcProvider();
    try {
      const token = await other.loginWithCode("mallory@example.com");
      await expectRefused(kms, token, /signed by a key the identity provider does not publish/);
    } finally {
      await other.close();
    }
  });
});

describe("identity provider key rotation", () => {
  let idp: TestOidcProvider;
  let kms: TestKms;
  let retired: JWK[] = [];

  beforeAll(async () => {
    idp = await startOidcProvider();
    kms = await startTestKms({ env: idp.kmsEnv() });
  });
  afterAll(async () => {
    await kms?.close();
    await idp?.close();
  });

  it("rotating the provider's keys during a run fails no request", async () => {
    const outcomes: { kid: string; ecdhe: unknown; ping: unknown }[] = [];
    let stop = false;
    const worker = async (n: number) => {
      while (!stop) {
        const user = `user${n}@example.com`;
        const token = await idp.mint(user);
        const raw = rawWith(kms, token, user);
        const reply = await raw.ecdhe();
        const ping = reply.status === 201 ? (await raw.request()).payload.status : undefined;
        outcomes.push({ kid: String(decodeProtectedHeader(token).kid), ecdhe: reply.status === 201 ? 201 : reply, ping });
      }
    };
    const workers = [1, 2, 3].map(worker);
    const progress = async (atLeast: number) => {
      const target = outcomes.length + atLeast;
      for (let i = 0; i < 200 && outcomes.length < target; i++) await sleep(50);
    };
    try {
      await progress(5);
      await idp.rotateKeys({ keepOld: true }); // [k2, k1]
      await progress(6);
      retired = await idp.rotateKeys({ keepOld: true }); // [k3, k2]: k1 retired
      await progress(6);
    } finally {
      stop = true;
      await Promise.all(workers);
    }
    const kids = new Set(outcomes.map((o) => o.kid));
    expect(kids.size).toBe(3);
    expect(outcomes.filter((o) => o.ecdhe !== 201 || o.ping !== 200)).toEqual([]);
  });

  it("a token signed by the rotated-out key is refused after one refetch: 'signed by a key the identity provider does not publish'", async () => {
    expect(retired).toHaveLength(1);
    await expectRefused(kms, await idp.sign(idp.claims("alice@example.com"), {}, retired[0]), /signed by a key the identity provider does not publish/);
    await expectWorks(kms, await idp.mint("alice@example.com"), "alice@example.com");
  });
});

describe("a KMS that first meets the provider after a key rotation, with no introspection endpoint", () => {
  let idp: TestOidcProvider;
  let kms: TestKms;
  let retired: JWK[] = [];

  beforeAll(async () => {
    idp = await startOidcProvider();
    retired = await idp.rotateKeys({ keepOld: false }); // [new] only
    kms = await startTestKms({ env: { KEYWARD_OAUTH_ISSUER: idp.issuer, KEYWARD_OAUTH_JWKS_URI: idp.jwksUri } });
  });
  afterAll(async () => {
    await kms?.close();
    await idp?.close();
  });

  it("a token signed by a key the provider no longer publishes → 401 at once (the set was fetched after the token arrived)", async () => {
    const started = Date.now();
    await expectRefused(kms, await idp.sign(idp.claims("alice@example.com"), {}, retired[0]), /signed by a key the identity provider does not publish/);
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it("an opaque token → 401 saying that opaque tokens cannot be checked; JWTs of the same provider still work", async () => {
    await expectRefused(kms, await idp.mint("alice@example.com", { resource: KMS_OPAQUE_RESOURCE }), /no introspection endpoint/);
    await expectWorks(kms, await idp.mint("alice@example.com"), "alice@example.com");
  });
});
