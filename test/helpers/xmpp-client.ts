import { client, xml, type Client } from "@xmpp/client";
import type { Element } from "@xmpp/xml";
import { KmsClient, XmppTransport, xmppJsConnection } from "../../src/client/index.js";
import type { TestKms } from "./harness.js";
import type { ProsodyServer } from "./prosody.js";

export { xml };

/** The KMS component's JID the tests use. */
export const KMS_COMPONENT = "kms.localhost";

/**
 * Connects a registered Prosody user with xmpp.js (`@xmpp/client`) and resolves once it is online.
 * xmpp.js's own reconnect is off (a dropped test connection stays dropped). Stop it with `stop()`.
 *
 * @example
 * const alice = await connectXmppUser(prosody, "alice");
 */
export async function connectXmppUser(prosody: ProsodyServer, user: string, resource = "test"): Promise<Client> {
  const password = prosody.users[user];
  if (password === undefined) throw new Error(`${user} is not registered on this Prosody`);
  const xmpp = client({
    service: prosody.c2sService,
    domain: prosody.domain,
    resource,
    // PLAIN on loopback (xmpp.js only picks it by itself over TLS): its SCRAM-SHA-1 runs 10,000
    // PBKDF2 rounds in JavaScript, seconds per login on a loaded machine. The Prosody of
    // test/helpers/prosody.ts offers PLAIN only, on 127.0.0.1 only.
    credentials: (authenticate: (creds: { username: string; password: string }, mechanism: string) => Promise<void>) =>
      authenticate({ username: user, password }, "PLAIN"),
  });
  xmpp.reconnect.stop();
  xmpp.on("error", () => {}); // failures surface through start() and the transport's errors
  await xmpp.start();
  return xmpp;
}

/**
 * The KMS environment that makes a TestKms connect to `prosody` as the component
 * {@link KMS_COMPONENT} (pass it as `startTestKms({ env })`).
 *
 * @example
 * const kms = await startTestKms({ env: kmsXmppEnv(prosody) });
 */
export function kmsXmppEnv(prosody: ProsodyServer, domain = KMS_COMPONENT): Record<string, string> {
  const secret = prosody.components[domain];
  if (secret === undefined) throw new Error(`${domain} is not a component of this Prosody`);
  return { KEYWARD_XMPP_SERVICE: prosody.componentService, KEYWARD_XMPP_DOMAIN: domain, KEYWARD_XMPP_SECRET: secret };
}

/** Polls `GET /readyz` until it answers `status` (200 or 503); rejects after `timeoutMs`. */
export async function waitForReadyz(url: string, status: 200 | 503, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = 0;
  for (;;) {
    last = (await fetch(`${url}/readyz`)).status;
    if (last === status) return;
    if (Date.now() > deadline) throw new Error(`/readyz stayed ${last}, expected ${status} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * A KmsClient for `user@example.com` of a TestKms that talks to it over XMPP only: its own xmpp.js
 * connection to `prosody` as `xmppUser`, and {@link XmppTransport} to the KMS component. For
 * running the e2e suites over XMPP. `close()` stops the XMPP connection.
 *
 * @example
 * const { kms: alice, close } = await kmsClientOverXmpp(testKms, prosody, "alice");
 * await alice.ping();
 */
export async function kmsClientOverXmpp(
  kms: TestKms,
  prosody: ProsodyServer,
  xmppUser: string,
  opts: { user?: string; timeoutMs?: number; resource?: string; /** The KMS's component JID; default {@link KMS_COMPONENT}. */ component?: string } = {},
): Promise<{ kms: KmsClient; xmpp: Client; transport: XmppTransport; close: () => Promise<void> }> {
  const xmpp = await connectXmppUser(prosody, xmppUser, opts.resource ?? "kms");
  const user = opts.user ?? `${xmppUser}@example.com`;
  const transport = new XmppTransport({ connection: xmppJsConnection(xmpp, xml), to: opts.component ?? KMS_COMPONENT, ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}) });
  return {
    // `url: undefined`: nothing may reach the KMS over HTTP behind the test's back.
    kms: kms.client(user, { transport, url: undefined }),
    xmpp,
    transport,
    close: async () => {
      await xmpp.stop().catch(() => {});
    },
  };
}

/** Sends one raw IQ and resolves with the reply stanza (a StanzaError rejects, with `condition`). */
export async function rawIq(xmpp: Client, type: "get" | "set", payload: Element, to = KMS_COMPONENT, timeoutMs = 10_000): Promise<Element> {
  return xmpp.iqCaller.request(xml("iq", { type, to }, payload), timeoutMs);
}
