import { randomUUID } from "node:crypto";
import { existsSync, readFileSync, writeFileSync, chmodSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { exportJWK, generateKeyPair, importJWK, SignJWT, type JWK } from "jose";
import { normalizeEntity } from "../protocol/entity.js";

/**
 * The DEVELOPMENT identity provider of `keyward dev`: issues RFC 9068 JWT access tokens for ANY
 * `user@domain`, with no login. It exists so that a laptop runs a complete KMS with one command.
 * It listens on loopback only and says so loudly; the KMS trusts it through the same OAuth settings
 * (issuer, JWKS URI, audience) as any real provider, so nothing in the KMS is special-cased for it.
 *
 * Endpoints: GET /.well-known/openid-configuration, GET /jwks, POST /token {"user": "alice@example.com"}.
 */
export const DEV_IDP_KEY_FILE = "dev-idp-key.json";
const LOOPBACK = new Set(["127.0.0.1", "::1", "localhost"]);

export interface DevIdpOptions {
  readonly dataDir: string;
  readonly host: string;
  readonly port: number;
  /** The audience of issued tokens: the KMS URI. */
  readonly audience: string;
  readonly tokenLifetimeSeconds?: number;
}

/** The issuer URL of a dev IdP listening on host:port. */
export function devIdpIssuer(host: string, port: number): string {
  return `http://${host.includes(":") ? `[${host}]` : host}:${port}`;
}

/** Loads (or creates, mode 0600) the dev IdP's ES256 signing key. */
async function signingKey(dataDir: string): Promise<{ privateKey: CryptoKey; publicJwk: JWK }> {
  const path = join(dataDir, DEV_IDP_KEY_FILE);
  if (!existsSync(path)) {
    const { privateKey } = await generateKeyPair("ES256", { extractable: true });
    const jwk = await exportJWK(privateKey);
    writeFileSync(path, JSON.stringify({ ...jwk, kid: randomUUID(), alg: "ES256" }), { mode: 0o600 });
    chmodSync(path, 0o600);
  }
  const jwk = JSON.parse(readFileSync(path, "utf8")) as JWK;
  const { d: _d, ...publicJwk } = jwk;
  return { privateKey: (await importJWK(jwk, "ES256")) as CryptoKey, publicJwk: { ...publicJwk, use: "sig" } };
}

/**
 * Signs an RFC 9068 access token for `user` with the dev IdP's key (what `keyward token USER` prints).
 *
 * @example
 * const token = await issueDevToken({ dataDir, issuer, audience: "kms://localhost", user: "alice@example.com" });
 */
export async function issueDevToken(opts: { dataDir: string; issuer: string; audience: string; user: string; lifetimeSeconds?: number }): Promise<string> {
  const entity = normalizeEntity(opts.user);
  if (!entity) throw new Error(`'${opts.user}' is not user@domain`);
  const { privateKey, publicJwk } = await signingKey(opts.dataDir);
  return new SignJWT({ email: entity, client_id: "keyward-dev", scope: "kms" })
    .setProtectedHeader({ alg: "ES256", typ: "at+jwt", kid: publicJwk.kid! })
    .setIssuer(opts.issuer)
    .setAudience(opts.audience)
    .setSubject(entity)
    .setIssuedAt()
    .setJti(randomUUID())
    .setExpirationTime(`${opts.lifetimeSeconds ?? 3600}s`)
    .sign(privateKey);
}

/**
 * Starts the dev IdP. Refuses any non-loopback address: it would hand out tokens to the network.
 *
 * @example
 * const idp = await startDevIdp({ dataDir, host: "127.0.0.1", port: 8485, audience: "kms://localhost" });
 */
export async function startDevIdp(opts: DevIdpOptions): Promise<{ issuer: string; jwksUri: string; close(): Promise<void> }> {
  if (!LOOPBACK.has(opts.host)) throw new Error(`the development identity provider only listens on loopback, not ${opts.host}`);
  const { publicJwk } = await signingKey(opts.dataDir);
  let issuer = devIdpIssuer(opts.host, opts.port);
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    const json = (status: number, body: unknown) => {
      res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store" });
      res.end(JSON.stringify(body));
    };
    if (req.method === "GET" && path === "/.well-known/openid-configuration") {
      return json(200, { issuer, jwks_uri: `${issuer}/jwks`, token_endpoint: `${issuer}/token`, "x-keyward-development-only": true });
    }
    if (req.method === "GET" && path === "/jwks") return json(200, { keys: [publicJwk] });
    if (req.method === "POST" && path === "/token") {
      let body = "";
      req.setEncoding("utf8");
      req.on("data", (c: string) => {
        body += c;
        if (body.length > 4096) req.destroy();
      });
      req.on("end", () => {
        let user: unknown;
        try {
          user = (JSON.parse(body) as { user?: unknown }).user;
        } catch {
          return json(400, { error: "invalid_request", error_description: 'body must be {"user": "alice@example.com"}' });
        }
        if (typeof user !== "string" || !normalizeEntity(user)) {
          return json(400, { error: "invalid_request", error_description: "'user' must be user@domain" });
        }
        const lifetime = opts.tokenLifetimeSeconds ?? 3600;
        issueDevToken({ dataDir: opts.dataDir, issuer, audience: opts.audience, user, lifetimeSeconds: lifetime }).then(
          (access_token) => json(200, { access_token, token_type: "Bearer", expires_in: lifetime }),
          () => json(500, { error: "server_error" }),
        );
      });
      return;
    }
    json(404, { error: "not found" });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  issuer = devIdpIssuer(opts.host, port);
  return {
    issuer,
    jwksUri: `${issuer}/jwks`,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}
