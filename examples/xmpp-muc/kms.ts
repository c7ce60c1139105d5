import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { resolveConfig } from "../../src/config/config.js";
import { issueDevToken, startDevIdp } from "../../src/identity/dev-idp.js";
import { DATA_FILES, initDataDir } from "../../src/server/data-dir.js";
import { createLogger } from "../../src/server/logger.js";
import { kmsFromConfig } from "../../src/service/start.js";

/** A Keyward KMS running in this process, connected to an XMPP server as an external component. */
export interface XmppDemoKms {
  readonly uri: string;
  /** Its HTTP origin: used only for `/readyz` (whether the XMPP link is up); no client talks HTTP. */
  readonly url: string;
  readonly component: string;
  /** The trust root of the KMS certificate (the demo CA). */
  readonly caPem: string;
  /** A fresh dev-IdP access token for `user`. */
  token(user: string): Promise<string>;
  close(): Promise<void>;
}

/**
 * Starts a KMS like `keyward dev` (a temporary SQLite data dir, the development IdP on loopback)
 * with the XMPP binding configured (`KEYWARD_XMPP_SERVICE`, `_DOMAIN`, `_SECRET`), and resolves
 * once its component link to the XMPP server is up (`/readyz` 200). Users are `*@example.com`.
 */
export async function startXmppDemoKms(opts: { service: string; component: string; secret: string; timeoutMs?: number }): Promise<XmppDemoKms> {
  const dataDir = mkdtempSync(join(tmpdir(), "keyward-xmpp-muc-"));
  rmSync(dataDir, { recursive: true });
  const authority = "kms.example.com";
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
          logLevel: "silent",
        },
        // Only what this demo sets: KEYWARD_* variables of the shell do not leak in.
        { KEYWARD_MASTER_KEY: masterKey, KEYWARD_XMPP_SERVICE: opts.service, KEYWARD_XMPP_DOMAIN: opts.component, KEYWARD_XMPP_SECRET: opts.secret },
      );
      const kms = await kmsFromConfig(config, { logger: createLogger("silent") });
      const { url } = await kms.listen("127.0.0.1", 0);
      const close = async () => {
        await kms.close();
        await idp.close();
        rmSync(dataDir, { recursive: true, force: true });
      };
      const deadline = Date.now() + (opts.timeoutMs ?? 20_000);
      while ((await fetch(`${url}/readyz`)).status !== 200) {
        if (Date.now() > deadline) {
          await kms.close(); // the IdP and the data dir go in the catch blocks below
          throw new Error(`the KMS's XMPP component link to ${opts.service} did not come up`);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      return {
        uri: `kms://${authority}`,
        url,
        component: opts.component,
        caPem: readFileSync(join(dataDir, DATA_FILES.caCert), "utf8"),
        token: (user) => issueDevToken({ dataDir, issuer: idp.issuer, audience: config.oauthAudience, user }),
        close,
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
