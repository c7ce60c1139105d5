import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { resolveConfig } from "../../src/config/config.js";
import { issueDevToken, startDevIdp } from "../../src/identity/dev-idp.js";
import { DATA_FILES, initDataDir } from "../../src/server/data-dir.js";
import { createLogger } from "../../src/server/logger.js";
import { kmsFromConfig } from "../../src/service/start.js";
import { KmsClient } from "../../src/client/index.js";

/** A Keyward KMS running in this process, trusting a development identity provider. */
export interface DemoKms {
  readonly url: string;
  readonly uri: string;
  readonly policy: 1 | 2 | 3;
  /** A client for `user` (a fresh dev-IdP token each time one is needed). */
  client(user: string): KmsClient;
  close(): Promise<void>;
}

/**
 * Starts a KMS from a new temporary data dir (deleted on close): `initDataDir`, the dev IdP on a
 * loopback port, `resolveConfig` with the chosen policy, `kmsFromConfig`, listening on loopback.
 * Users are `*@example.com`; the KMS is `kms://kms.example.com`.
 */
export async function startDemoKms(opts: { policy: 1 | 2 | 3 }): Promise<DemoKms> {
  const dataDir = mkdtempSync(join(tmpdir(), "keyward-file-sharing-"));
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
          policy: opts.policy,
          logLevel: "silent",
        },
        // Only what this demo sets: KEYWARD_* variables of the shell do not leak in.
        { KEYWARD_MASTER_KEY: masterKey },
      );
      const kms = await kmsFromConfig(config, { logger: createLogger("silent") });
      const { url } = await kms.listen("127.0.0.1", 0);
      const caPem = readFileSync(join(dataDir, DATA_FILES.caCert), "utf8");
      const token = (user: string) => issueDevToken({ dataDir, issuer: idp.issuer, audience: config.oauthAudience, user });
      return {
        url,
        uri: `kms://${authority}`,
        policy: config.policy,
        client: (user) => new KmsClient({ url, user, token: () => token(user), trustRoots: [caPem] }),
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
