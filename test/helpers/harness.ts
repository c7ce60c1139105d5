import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { CompactEncrypt, importJWK, compactVerify, type JWK, exportJWK } from "jose";
import { resolveConfig, type KeywardConfig } from "../../src/config/config.js";
import { issueDevToken, startDevIdp } from "../../src/identity/dev-idp.js";
import { DATA_FILES, initDataDir } from "../../src/server/data-dir.js";
import { generateMasterKey } from "../../src/server/barrier/master-key.js";
import { createLogger } from "../../src/server/logger.js";
import { kmsFromConfig } from "../../src/service/start.js";
import type { Kms } from "../../src/service/kms.js";
import { KmsClient } from "../../src/client/index.js";
import { generateEphemeralKeyPair, deriveEphemeralKey, importEcdhPublicKey } from "../../src/protocol/jose/ephemeral-key.js";
import { decryptCommonMessage, encryptCommonMessage } from "../../src/protocol/jose/common-message.js";

export interface TestKms {
  readonly url: string;
  readonly authority: string;
  readonly kid: string;
  readonly caPem: string;
  readonly dataDir: string;
  readonly config: KeywardConfig;
  readonly kms: Kms;
  /** Everything the server logged, as text (JSON lines). */
  readonly logs: () => string;
  /** A dev-IdP access token for `user`. */
  token(user: string, opts?: { lifetimeSeconds?: number; audience?: string }): Promise<string>;
  client(user: string, opts?: Partial<ConstructorParameters<typeof KmsClient>[0]>): KmsClient;
  /** Number of channels in the store (to assert that a refusal created none). */
  channelCount(): number;
  close(): Promise<void>;
}

/**
 * A real KMS on loopback (SQLite in a temp data dir, real HTTP) trusting a real dev identity
 * provider on loopback. Tests stop it themselves with close().
 */
export async function startTestKms(opts: { keyType?: "ec" | "rsa"; env?: Record<string, string>; now?: () => Date } = {}): Promise<TestKms> {
  const dataDir = mkdtempSync(join(tmpdir(), "keyward-test-"));
  rmSync(dataDir, { recursive: true });
  const authority = "kms.example.com";
  // An explicit master key: a KEYWARD_MASTER_KEY in the developer's shell must not leak into tests.
  const masterKey = generateMasterKey();
  await initDataDir({ dir: dataDir, authority, domain: "example.com", keyType: opts.keyType ?? "ec", masterKey });
  writeFileSync(join(dataDir, DATA_FILES.masterKey), masterKey + "\n", { mode: 0o600 });
  const idp = await startDevIdp({ dataDir, host: "127.0.0.1", port: 0, audience: `kms://${authority}` });
  const config = resolveConfig(dataDir, {
    ...JSON.parse(readFileSync(join(dataDir, DATA_FILES.config), "utf8")),
    listen: "127.0.0.1:0",
    oauthIssuer: idp.issuer,
    oauthJwksUri: idp.jwksUri,
    logLevel: "debug",
  }, {
    // This KMS shares its event loop with the test code (key generation, property runs), whose
    // synchronous stretches are not server overload: no lag shedding unless a test asks for it.
    // Shedding itself is tested in hostile.test.ts; spawned KMS processes keep the default.
    KEYWARD_MAX_EVENT_LOOP_LAG: "0",
    ...opts.env,
  });
  let logText = "";
  const sink = new Writable({
    write(chunk, _enc, cb) {
      logText += chunk.toString();
      cb();
    },
  });
  const kms = await kmsFromConfig(config, { logger: createLogger("debug", sink) });
  const { url } = await kms.listen("127.0.0.1", 0);
  const caPem = readFileSync(join(dataDir, DATA_FILES.caCert), "utf8");
  const Database = (await import("better-sqlite3")).default;
  const token = (user: string, o: { lifetimeSeconds?: number; audience?: string } = {}) =>
    issueDevToken({ dataDir, issuer: idp.issuer, audience: o.audience ?? config.oauthAudience, user, ...(o.lifetimeSeconds !== undefined ? { lifetimeSeconds: o.lifetimeSeconds } : {}) });
  return {
    url,
    authority,
    kid: `kms://${authority}`,
    caPem,
    dataDir,
    config,
    kms,
    logs: () => logText,
    token,
    client: (user, o = {}) => new KmsClient({ url, user, token: () => token(user), trustRoots: [caPem], ...o }),
    channelCount: () => {
      const db = new Database(config.store.kind === "sqlite" ? config.store.path : "", { readonly: true });
      try {
        return (db.prepare("SELECT count(*) AS n FROM channels").get() as { n: number }).n;
      } finally {
        db.close();
      }
    },
    close: async () => {
      await kms.close();
      await idp.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** POSTs one message in the single form; returns the HTTP status and body. */
export async function post(url: string, body: string, contentType = "application/jose"): Promise<{ status: number; body: string; type: string | null }> {
  const res = await fetch(`${url}/kms/messages`, { method: "POST", headers: { "content-type": contentType }, body });
  return { status: res.status, body: await res.text(), type: res.headers.get("content-type") };
}

/** The KMS's public static JWK, as published. */
export async function staticJwk(url: string): Promise<JWK> {
  return ((await (await fetch(`${url}/.well-known/kms`)).json()) as { jwk: JWK }).jwk;
}

/** Verifies a JWS error/reply with the static key and returns its header and payload. */
export async function openJws(url: string, jws: string): Promise<{ header: Record<string, unknown>; payload: Record<string, unknown> }> {
  const jwk = await staticJwk(url);
  const { x5c: _x, ...bare } = jwk;
  const alg = jwk.kty === "EC" ? "ES256" : "RS256";
  const { payload, protectedHeader } = await compactVerify(jws, await importJWK(bare, alg));
  return { header: protectedHeader as Record<string, unknown>, payload: JSON.parse(new TextDecoder().decode(payload)) };
}

/**
 * A hand-driven client for hostile tests: builds key-agreement and common messages with any
 * header or payload the test wants.
 */
export class RawClient {
  key?: Uint8Array;
  uri?: string;
  constructor(readonly kms: TestKms, readonly user = "alice@example.com") {}

  async credential(token?: string) {
    return { clientId: "raw-test", credential: { bearer: token ?? (await this.kms.token(this.user)) } };
  }

  /** A key-agreement JWE to the static key with a chosen payload and header overrides. */
  async ecdheMessage(payload: unknown, header: Record<string, unknown> = {}, alg?: string): Promise<string> {
    const jwk = await staticJwk(this.kms.url);
    const { x5c: _x, ...bare } = jwk;
    const a = alg ?? (jwk.kty === "EC" ? "ECDH-ES+A256KW" : "RSA-OAEP");
    return new CompactEncrypt(new TextEncoder().encode(typeof payload === "string" ? payload : JSON.stringify(payload)))
      .setProtectedHeader({ alg: a, enc: "A256GCM", kid: this.kms.kid, ...header })
      .encrypt(await importJWK(bare, a));
  }

  /** Runs ECDHE; on success keeps the channel key. Returns the verified reply payload. */
  async ecdhe(overrides: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    const pair = await generateEphemeralKeyPair();
    const { kty, crv, x, y } = await exportJWK(pair.publicKey);
    const payload = { client: await this.credential(), method: "create", uri: "/ecdhe", requestId: crypto.randomUUID(), jwk: { kty, crv, x, y }, ...overrides };
    const { body } = await post(this.kms.url, await this.ecdheMessage(payload));
    const { payload: reply } = await openJws(this.kms.url, body);
    if (reply.status === 201) {
      const key = reply.key as { uri: string; jwk: JWK };
      this.uri = key.uri;
      this.key = await deriveEphemeralKey(pair.privateKey, await importEcdhPublicKey(key.jwk));
    }
    return reply;
  }

  /** A request payload on the channel with defaults, fields overridable. */
  async payload(fields: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    return { client: await this.credential(), method: "update", uri: "/ping", requestId: crypto.randomUUID(), ...fields };
  }

  /** Sends a common message; returns the decrypted reply (form "jwe") or the verified JWS (form "jws"). */
  async send(message: string): Promise<{ form: "jwe" | "jws"; payload: Record<string, unknown>; httpStatus: number }> {
    const { status, body } = await post(this.kms.url, message);
    if (body.split(".").length === 3) return { form: "jws", payload: (await openJws(this.kms.url, body)).payload, httpStatus: status };
    return { form: "jwe", payload: (await decryptCommonMessage(this.key!, body)).payload as Record<string, unknown>, httpStatus: status };
  }

  async request(fields: Record<string, unknown> = {}) {
    return this.send(await encryptCommonMessage(this.key!, this.uri!, await this.payload(fields)));
  }
}
