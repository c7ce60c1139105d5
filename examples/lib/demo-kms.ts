import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { resolveConfig } from "../../src/config/config.js";
import { issueDevToken, startDevIdp } from "../../src/identity/dev-idp.js";
import { DATA_FILES, initDataDir } from "../../src/server/data-dir.js";
import { createLogger } from "../../src/server/logger.js";
import { kmsFromConfig } from "../../src/service/start.js";

/** A Keyward KMS running in this process for an example, trusting a development identity provider. */
export interface DemoKms {
  /** Its HTTP origin. */
  readonly url: string;
  /** `kms://kms.example.com`. */
  readonly uri: string;
  readonly policy: 1 | 2 | 3;
  /** The trust root of the KMS certificate (the demo CA). */
  readonly caPem: string;
  /** A fresh dev-IdP access token for `user`. */
  token(user: string): Promise<string>;
  /** Stops the KMS and the IdP and deletes the data dir. */
  close(): Promise<void>;
}

/**
 * Starts a KMS like `keyward dev`, for the examples: a new temporary data dir (deleted on close),
 * the dev IdP on a loopback port, `resolveConfig` with the example's settings, `kmsFromConfig`,
 * listening on loopback. Users are `*@example.com`; the KMS is `kms://kms.example.com`. Only the
 * example's settings apply: `KEYWARD_*` variables of the shell do not leak in.
 *
 * @example
 * const kms = await startDemoKms({ policy: 1 });
 * const xmppKms = await startDemoKms({ env: { KEYWARD_XMPP_SERVICE: "xmpp://127.0.0.1:5347", ... } });
 */
export async function startDemoKms(opts: { policy?: 1 | 2 | 3; env?: Record<string, string>; prefix?: string } = {}): Promise<DemoKms> {
  const dataDir = mkdtempSync(join(tmpdir(), opts.prefix ?? "keyward-example-"));
  rmSync(dataDir, { recursive: true });
  const authority = "kms.example.com";
  // A master key of our own (not written, not from the environment): this data dir is thrown away.
  const masterKey = Buffer.from(globalThis.crypto.getRandomValues(new Uint8Array(32))).toString("base64url");
  try {
    await initDataDir({ dir: dataDir, authority, domain: "example.com", keyType: "ec", masterKey });
    const idp = await startDevIdp({ dataDir, host: "127.0.0.1", port: 0, audience: `kms://${authority}` });
    try {
      const config = resolveConfig(
        dataDir,
        {
          ...(JSON.parse(readFileSync(join(dataDir, DATA_FILES.config), "utf8")) as Record<string, unknown>),
          listen: "127.0.0.1:0",
          oauthIssuer: idp.issuer,
          oauthJwksUri: idp.jwksUri,
          ...(opts.policy !== undefined ? { policy: opts.policy } : {}),
          logLevel: "silent",
        },
        { KEYWARD_MASTER_KEY: masterKey, ...opts.env },
      );
      const kms = await kmsFromConfig(config, { logger: createLogger("silent") });
      const { url } = await kms.listen("127.0.0.1", 0);
      return {
        url,
        uri: `kms://${authority}`,
        policy: config.policy,
        caPem: readFileSync(join(dataDir, DATA_FILES.caCert), "utf8"),
        token: (user) => issueDevToken({ dataDir, issuer: idp.issuer, audience: config.oauthAudience, user }),
        close: async () => {
          await kms.close();
          await idp.close();
          rmSync(dataDir, { recursive: true, force: true });
        },
      };
    } catch (e) {
      await idp.close();
      throw e;
    }
  } catch (e) {
    rmSync(dataDir, { recursive: true, force: true });
    throw e;
  }
}
