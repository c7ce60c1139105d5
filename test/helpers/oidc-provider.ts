/**
 * A REAL OpenID provider for identity tests: panva's oidc-provider (v9) on 127.0.0.1:<free port>,
 * with signing keys generated here (so tests can also hand-craft tokens with the provider's own key),
 * the KMS as a resource server (resource indicators), JWT (RFC 9068, ES256) or opaque access tokens,
 * introspection and revocation, and an `email` claim in access tokens and introspection responses.
 *
 * Resource indicators:
 *   - KMS_RESOURCE (`kms://kms.example.com`): JWT access tokens, aud = the KMS audience.
 *   - KMS_OPAQUE_RESOURCE: opaque access tokens (introspection), aud = the KMS audience.
 *   - OTHER_RESOURCE / OTHER_OPAQUE_RESOURCE: another service (aud https://files.example.com).
 * Clients: `app` (confidential, authorization code + PKCE, redirect REDIRECT_URI) and `keyward`
 * (the KMS itself: confidential, no grants; used for introspection).
 *
 * Key rotation: the HTTP server stays up on its port and hands requests to the current provider
 * instance; rotateKeys() builds a new provider with [new, ...kept] keys and switches to it atomically
 * (grants and opaque tokens live in oidc-provider's process-wide memory adapter and survive).
 *
 * @example
 * const idp = await startOidcProvider();
 * const token = await idp.loginWithCode("alice@example.com", KMS_RESOURCE); // real grant
 * await idp.rotateKeys({ keepOld: true });
 * await idp.close();
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { base64url, exportJWK, generateKeyPair, importJWK, SignJWT, type JWK, type JWTPayload } from "jose";
import type { default as ProviderClass, Configuration, ResourceServer } from "oidc-provider";

export const KMS_AUDIENCE = "kms://kms.example.com";
export const KMS_RESOURCE = KMS_AUDIENCE;
export const KMS_OPAQUE_RESOURCE = "kms://kms.example.com/opaque";
export const OTHER_AUDIENCE = "https://files.example.com";
export const OTHER_RESOURCE = OTHER_AUDIENCE;
export const OTHER_OPAQUE_RESOURCE = "https://files.example.com/opaque";
export const REDIRECT_URI = "http://127.0.0.1:1/callback";
export const APP_CLIENT = { id: "app", secret: "app-secret-0123456789" } as const;
export const KMS_CLIENT = { id: "keyward", secret: "keyward-introspection-secret" } as const;

const RESOURCE_SERVERS: Record<string, ResourceServer> = {
  [KMS_RESOURCE]: { scope: "kms", audience: KMS_AUDIENCE, accessTokenFormat: "jwt", accessTokenTTL: 600, jwt: { sign: { alg: "ES256" } } },
  [KMS_OPAQUE_RESOURCE]: { scope: "kms", audience: KMS_AUDIENCE, accessTokenFormat: "opaque", accessTokenTTL: 600 },
  [OTHER_RESOURCE]: { scope: "kms", audience: OTHER_AUDIENCE, accessTokenFormat: "jwt", accessTokenTTL: 600, jwt: { sign: { alg: "ES256" } } },
  [OTHER_OPAQUE_RESOURCE]: { scope: "kms", audience: OTHER_AUDIENCE, accessTokenFormat: "opaque", accessTokenTTL: 600 },
};

export interface TestOidcProvider {
  readonly issuer: string;
  readonly jwksUri: string;
  readonly introspectionUrl: string;
  readonly revocationUrl: string;
  /** The current provider instance (changes on rotateKeys). */
  readonly provider: ProviderClass;
  /** The private signing keys, the one in use first. */
  readonly keys: readonly JWK[];
  /** KMS env for startTestKms: issuer, JWKS, introspection and the KMS's client credentials. */
  kmsEnv(extra?: Record<string, string>): Record<string, string>;
  /** A user token through a real authorization code flow (devInteractions login + consent, PKCE). */
  loginWithCode(user: string, resource?: string): Promise<string>;
  /** A user token minted through the provider's own AccessToken model (real format, signing, storage). */
  mint(user: string, opts?: { resource?: string; expiresIn?: number }): Promise<string>;
  /** Hand-crafts a JWT signed with a provider key (default: the key in use), any claims and header. */
  sign(claims: JWTPayload, header?: Record<string, unknown>, key?: JWK): Promise<string>;
  /** Good RFC 9068 claims for `user` (iss, aud = KMS, email, iat, exp +10 min). */
  claims(user: string, extra?: JWTPayload): JWTPayload;
  /** Revokes a token at the revocation endpoint (as the client it was issued to). */
  revoke(token: string): Promise<void>;
  /** New signing key; `keepOld` (default) publishes [new, previous] (graceful), otherwise [new] only. Returns the keys no longer published. */
  rotateKeys(opts?: { keepOld?: boolean }): Promise<JWK[]>;
  close(): Promise<void>;
}

let quietDepth = 0;
let restoreConsole: (() => void) | undefined;

/** oidc-provider prints NOTICE/WARNING lines (unsupported runtime on Node 20, dev-only features): keep test output clean. */
function quietOidcProviderNotices(): () => void {
  if (quietDepth++ === 0) {
    const { warn, info } = console;
    const filter =
      (orig: (...a: unknown[]) => void) =>
      (...a: unknown[]) => {
        if (typeof a[0] === "string" && a[0].includes("oidc-provider ")) return;
        orig(...a);
      };
    console.warn = filter(warn);
    console.info = filter(info);
    restoreConsole = () => {
      console.warn = warn;
      console.info = info;
    };
  }
  return () => {
    if (--quietDepth === 0) restoreConsole?.();
  };
}

async function newSigningKey(): Promise<JWK> {
  const { privateKey } = await generateKeyPair("ES256", { extractable: true });
  return { ...(await exportJWK(privateKey)), kid: randomUUID(), alg: "ES256", use: "sig" };
}

function configuration(keys: JWK[]): Configuration {
  return {
    clients: [
      {
        client_id: APP_CLIENT.id,
        client_secret: APP_CLIENT.secret,
        redirect_uris: [REDIRECT_URI],
        grant_types: ["authorization_code"],
        response_types: ["code"],
        token_endpoint_auth_method: "client_secret_basic",
      },
      { client_id: KMS_CLIENT.id, client_secret: KMS_CLIENT.secret, redirect_uris: [], grant_types: [], response_types: [], token_endpoint_auth_method: "client_secret_basic" },
    ],
    jwks: { keys: keys as never },
    // Our keys are P-256: ID tokens (and the default for JWT access tokens) use ES256.
    clientDefaults: { id_token_signed_response_alg: "ES256" },
    scopes: ["openid", "email", "kms"],
    claims: { openid: ["sub"], email: ["email"] },
    // Accounts: any login is an account; its id is the login, and a login with an '@' has that email.
    findAccount: async (_ctx, id) => ({ accountId: id, claims: async () => ({ sub: id, ...(id.includes("@") ? { email: id } : {}) }) }),
    extraTokenClaims: async (_ctx, token) => {
      const id = (token as { accountId?: string }).accountId;
      return id !== undefined && id.includes("@") ? { email: id } : undefined;
    },
    features: {
      devInteractions: { enabled: true },
      introspection: { enabled: true, allowedPolicy: async (_ctx, client) => client.clientId === KMS_CLIENT.id },
      revocation: { enabled: true, allowedPolicy: async (_ctx, client, token) => client.clientId === token.clientId },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf ?? KMS_RESOURCE,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, indicator) => {
          const info = RESOURCE_SERVERS[indicator];
          if (info === undefined) throw new Error(`unknown resource ${indicator}`);
          return info;
        },
      },
    },
    pkce: { required: () => true },
    ttl: { AccessToken: 600, AuthorizationCode: 60, Grant: 3600, Interaction: 600, Session: 3600 },
    cookies: { keys: ["test-cookie-key-0123456789"] },
  };
}

/** Starts the provider; everything it starts is stopped by close(). */
export async function startOidcProvider(): Promise<TestOidcProvider> {
  const unquiet = quietOidcProviderNotices();
  const { default: Provider } = await import("oidc-provider");
  let keys: JWK[] = [await newSigningKey()];
  let current: ProviderClass | undefined;
  let handler: ReturnType<ProviderClass["callback"]> | undefined;
  const server = http.createServer((req, res) => {
    if (handler === undefined) {
      res.statusCode = 503;
      res.end();
      return;
    }
    void handler(req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const build = (k: JWK[]) => {
    const p = new Provider(issuer, configuration(k));
    p.on("server_error", () => undefined);
    current = p;
    handler = p.callback();
  };
  build(keys);

  const mint = async (user: string, opts: { resource?: string; expiresIn?: number } = {}) => {
    const p = current!;
    const resource = opts.resource ?? KMS_RESOURCE;
    const client = await p.Client.find(APP_CLIENT.id);
    const token = new p.AccessToken({
      accountId: user,
      client: client!,
      scope: "kms",
      gty: "authorization_code",
      resourceServer: new p.ResourceServer(resource, RESOURCE_SERVERS[resource]!),
      ...(opts.expiresIn !== undefined ? { expiresIn: opts.expiresIn } : {}),
    } as never);
    return token.save();
  };

  const loginWithCode = async (user: string, resource = KMS_RESOURCE) => {
    const jar = new Map<string, string>();
    const cookieHeader = () => [...jar].map(([k, v]) => `${k}=${v}`).join("; ");
    const remember = (res: Response) => {
      for (const c of res.headers.getSetCookie()) {
        const [pair] = c.split(";");
        const eq = pair!.indexOf("=");
        jar.set(pair!.slice(0, eq), pair!.slice(eq + 1));
      }
    };
    const verifier = base64url.encode(randomBytes(32));
    const challenge = base64url.encode(createHash("sha256").update(verifier).digest());
    const auth = new URL(`${issuer}/auth`);
    for (const [k, v] of Object.entries({
      client_id: APP_CLIENT.id,
      response_type: "code",
      redirect_uri: REDIRECT_URI,
      scope: "openid email kms",
      resource,
      state: randomUUID(),
      code_challenge: challenge,
      code_challenge_method: "S256",
    })) {
      auth.searchParams.set(k, v);
    }
    let next: { url: string; init?: RequestInit } = { url: auth.href };
    let code: string | undefined;
    for (let hop = 0; hop < 20 && code === undefined; hop++) {
      const res = await fetch(next.url, { ...next.init, redirect: "manual", headers: { ...(next.init?.headers as object), cookie: cookieHeader() } });
      remember(res);
      const location = res.headers.get("location");
      if (location !== null) {
        await res.body?.cancel();
        const target = new URL(location, issuer);
        if (target.href.startsWith(REDIRECT_URI)) {
          const error = target.searchParams.get("error");
          if (error !== null) throw new Error(`authorization failed: ${error}: ${target.searchParams.get("error_description")}`);
          code = target.searchParams.get("code") ?? undefined;
        } else {
          next = { url: target.href };
        }
        continue;
      }
      // An interaction page: submit the prompt it shows (login, then consent).
      const html = await res.text();
      const prompt = /name="prompt" value="(\w+)"/.exec(html)?.[1];
      if (res.status !== 200 || prompt === undefined) throw new Error(`unexpected page at ${next.url}: HTTP ${res.status}`);
      const form = new URLSearchParams({ prompt, ...(prompt === "login" ? { login: user, password: "any" } : {}) });
      next = { url: next.url, init: { method: "POST", body: form.toString(), headers: { "content-type": "application/x-www-form-urlencoded" } } };
    }
    if (code === undefined) throw new Error("authorization code flow did not finish");
    const res = await fetch(`${issuer}/token`, {
      method: "POST",
      headers: {
        "content-type": "application/x-www-form-urlencoded",
        authorization: `Basic ${Buffer.from(`${APP_CLIENT.id}:${APP_CLIENT.secret}`).toString("base64")}`,
      },
      body: new URLSearchParams({ grant_type: "authorization_code", code, redirect_uri: REDIRECT_URI, code_verifier: verifier, resource }).toString(),
    });
    const body = (await res.json()) as { access_token?: string; error?: string; error_description?: string };
    if (res.status !== 200 || body.access_token === undefined) throw new Error(`token endpoint: HTTP ${res.status} ${body.error}: ${body.error_description}`);
    return body.access_token;
  };

  const sign = async (claims: JWTPayload, header: Record<string, unknown> = {}, key?: JWK) => {
    const jwk = key ?? keys[0]!;
    return new SignJWT(claims).setProtectedHeader({ alg: "ES256", typ: "at+jwt", kid: jwk.kid!, ...header } as never).sign(await importJWK(jwk, "ES256"));
  };

  const idp: TestOidcProvider = {
    issuer,
    jwksUri: `${issuer}/jwks`,
    introspectionUrl: `${issuer}/token/introspection`,
    revocationUrl: `${issuer}/token/revocation`,
    get provider() {
      return current!;
    },
    get keys() {
      return keys;
    },
    kmsEnv: (extra = {}) => ({
      KEYWARD_OAUTH_ISSUER: issuer,
      KEYWARD_OAUTH_JWKS_URI: `${issuer}/jwks`,
      KEYWARD_OAUTH_INTROSPECTION_URL: `${issuer}/token/introspection`,
      KEYWARD_OAUTH_CLIENT_ID: KMS_CLIENT.id,
      KEYWARD_OAUTH_CLIENT_SECRET: KMS_CLIENT.secret,
      ...extra,
    }),
    loginWithCode,
    mint,
    sign,
    claims: (user, extra = {}) => {
      const now = Math.floor(Date.now() / 1000);
      return { iss: issuer, aud: KMS_AUDIENCE, sub: user, email: user, client_id: APP_CLIENT.id, jti: randomUUID(), iat: now, exp: now + 600, ...extra };
    },
    revoke: async (token) => {
      const res = await fetch(`${issuer}/token/revocation`, {
        method: "POST",
        headers: {
          "content-type": "application/x-www-form-urlencoded",
          authorization: `Basic ${Buffer.from(`${APP_CLIENT.id}:${APP_CLIENT.secret}`).toString("base64")}`,
        },
        body: new URLSearchParams({ token, token_type_hint: "access_token" }).toString(),
      });
      await res.body?.cancel();
      if (res.status !== 200) throw new Error(`revocation: HTTP ${res.status}`);
    },
    rotateKeys: async ({ keepOld = true } = {}) => {
      const kept = keepOld ? keys.slice(0, 1) : [];
      const retired = keys.filter((k) => !kept.includes(k));
      keys = [await newSigningKey(), ...kept];
      build(keys);
      return retired;
    },
    close: async () => {
      handler = undefined;
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      unquiet();
    },
  };
  return idp;
}
