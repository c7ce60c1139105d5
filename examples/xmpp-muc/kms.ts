import { startDemoKms, type DemoKms } from "../lib/demo-kms.js";

/** The example's KMS (examples/lib/demo-kms.ts), connected to an XMPP server as an external component. */
export interface XmppDemoKms extends DemoKms {
  /** Its component JID. `url` is used only for `/readyz` (whether the XMPP link is up); no client talks HTTP. */
  readonly component: string;
}

/**
 * Starts a KMS like `keyward dev` with the XMPP binding configured (`KEYWARD_XMPP_SERVICE`,
 * `_DOMAIN`, `_SECRET`), and resolves once its component link to the XMPP server is up (`/readyz`
 * 200). Users are `*@example.com`.
 *
 * @example
 * const kms = await startXmppDemoKms({ service: "xmpp://127.0.0.1:5347", component: "kms.localhost", secret });
 */
export async function startXmppDemoKms(opts: { service: string; component: string; secret: string; timeoutMs?: number }): Promise<XmppDemoKms> {
  const kms = await startDemoKms({
    prefix: "keyward-xmpp-muc-",
    env: { KEYWARD_XMPP_SERVICE: opts.service, KEYWARD_XMPP_DOMAIN: opts.component, KEYWARD_XMPP_SECRET: opts.secret },
  });
  const deadline = Date.now() + (opts.timeoutMs ?? 20_000);
  while ((await fetch(`${kms.url}/readyz`)).status !== 200) {
    if (Date.now() > deadline) {
      await kms.close();
      throw new Error(`the KMS's XMPP component link to ${opts.service} did not come up`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { ...kms, component: opts.component };
}
