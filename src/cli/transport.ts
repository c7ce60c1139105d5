import { isIP } from "node:net";
import { client as xmppClient, xml, type Client as XmppClient } from "@xmpp/client";
import { Option, type Command } from "commander";
import { WebSocket } from "ws";
import { HttpTransport, WebSocketTransport, XmppTransport, xmppJsConnection, type KmsTransport } from "../client/index.js";

/** The transports a CLI user command can reach the KMS over (§3). */
export const CLI_TRANSPORTS = ["http", "ws", "xmpp"] as const;
export type CliTransportKind = (typeof CLI_TRANSPORTS)[number];

/** The transport flags of every user command (`--transport` and the XMPP account). */
export interface TransportFlags {
  /** Default "http" (env KEYWARD_TRANSPORT). */
  readonly transport?: CliTransportKind;
  /** `xmpp://host:port` (STARTTLS when offered) or `xmpps://host:port` (direct TLS): the XMPP server's c2s port. */
  readonly xmppService?: string;
  /** The XMPP account, `user@domain` (env KEYWARD_XMPP_JID). */
  readonly xmppJid?: string;
  /** Its password (env KEYWARD_XMPP_PASSWORD). Never printed. */
  readonly xmppPassword?: string;
  /** The KMS component's JID, e.g. `kms.example.com` (env KEYWARD_KMS_JID). */
  readonly kmsJid?: string;
  /** Allow SASL PLAIN on a connection without TLS to a host that is not loopback. */
  readonly xmppInsecure?: boolean;
}

/** What a command reaches the KMS over, and how to let go of it. */
export interface CliTransport {
  readonly kind: CliTransportKind;
  readonly transport: KmsTransport;
  /** Closes the WebSocket, or stops the XMPP client (nothing for HTTP). Never throws. */
  close(): Promise<void>;
}

/** The XMPP settings of a command, checked. */
export interface XmppSettings {
  readonly service: string;
  readonly jid: string;
  readonly username: string;
  readonly domain: string;
  readonly password: string;
  readonly kmsJid: string;
  readonly insecure: boolean;
}

/** How long the CLI waits for the XMPP login, and for the goodbye. */
const XMPP_START_TIMEOUT_MS = 20_000;
const XMPP_STOP_TIMEOUT_MS = 5_000;

/**
 * Adds `--transport http|ws|xmpp` and the XMPP account flags to a user command.
 *
 * @example
 * transportOptions(program.command("ping")).action(async (o: TransportFlags) => { ... });
 */
export function transportOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option("--transport <kind>", "how to reach the KMS").choices(CLI_TRANSPORTS).default("http").env("KEYWARD_TRANSPORT"))
    .option("--xmpp-service <uri>", "xmpp: the XMPP server's client port, xmpp://host:port (STARTTLS) or xmpps://host:port (default: xmpp://<JID domain>:5222)")
    .addOption(new Option("--xmpp-jid <jid>", "xmpp: your XMPP account, user@domain").env("KEYWARD_XMPP_JID"))
    .addOption(new Option("--xmpp-password <password>", "xmpp: its password (prefer the env variable: arguments are visible to other local users)").env("KEYWARD_XMPP_PASSWORD"))
    .addOption(new Option("--kms-jid <jid>", "xmpp: the KMS component's JID, e.g. kms.example.com").env("KEYWARD_KMS_JID"))
    .option("--xmpp-insecure", "xmpp: allow the password in the clear (SASL PLAIN without TLS) to a host that is not loopback");
}

/** `xmpp://host[:port]` / `xmpps://host[:port]` → its parts, else undefined. */
function parseService(value: string): { secure: boolean; host: string; port: number } | undefined {
  const m = /^(xmpps?):\/\/(\[[^\]]+\]|[^:/?#[\]@\s]+)(?::(\d{1,5}))?\/?$/.exec(value);
  if (!m) return undefined;
  const port = m[3] === undefined ? (m[1] === "xmpps" ? 5223 : 5222) : Number(m[3]);
  if (port < 1 || port > 65535) return undefined;
  return { secure: m[1] === "xmpps", host: m[2]!.replace(/^\[|\]$/g, ""), port };
}

/**
 * Whether `host` is this machine (`localhost`, 127.0.0.0/8, `::1`): there, a password in the
 * clear is seen by no one who could not read the XMPP server's own files.
 *
 * @example
 * isLoopbackHost("127.0.0.1"); // true
 */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[|\]$/g, "");
  if (h === "localhost" || h.endsWith(".localhost")) return true;
  if (isIP(h) === 4) return h.startsWith("127.");
  return h === "::1" || h === "0:0:0:0:0:0:0:1";
}

/**
 * Checks the transport flags before anything is sent anywhere: for `xmpp`, the account (JID and
 * password), the KMS component's JID and the service must all be there and well formed.
 * Returns the XMPP settings (undefined for http and ws). The error never contains the password.
 *
 * @example
 * const xmpp = checkTransportFlags({ transport: "xmpp", xmppJid: "alice@example.com", xmppPassword: pw, kmsJid: "kms.example.com" });
 */
export function checkTransportFlags(flags: TransportFlags): XmppSettings | undefined {
  const kind = flags.transport ?? "http";
  if (!(CLI_TRANSPORTS as readonly string[]).includes(kind)) throw new Error(`--transport must be one of ${CLI_TRANSPORTS.join(", ")} (got ${JSON.stringify(kind)})`);
  if (kind !== "xmpp") return undefined;
  const missing = [
    flags.xmppJid ? undefined : "--xmpp-jid (or KEYWARD_XMPP_JID)",
    flags.xmppPassword ? undefined : "--xmpp-password (or KEYWARD_XMPP_PASSWORD)",
    flags.kmsJid ? undefined : "--kms-jid (or KEYWARD_KMS_JID)",
  ].filter((m) => m !== undefined);
  if (missing.length > 0) throw new Error(`--transport xmpp needs an XMPP account and the KMS component: give ${missing.join(", ")}`);
  // localpart@domainpart[/resource] (RFC 7622), as far as telling a typo from an account goes.
  const m = /^([^@/\s"&'<>:]+)@([^@/\s]+)(?:\/.*)?$/.exec(flags.xmppJid!);
  if (!m) throw new Error(`--xmpp-jid ${JSON.stringify(flags.xmppJid)} is not an XMPP account (user@domain)`);
  const account = { local: m[1]!, domain: m[2]!.toLowerCase() };
  if (!/^[^\s@/]+$/.test(flags.kmsJid!)) throw new Error(`--kms-jid ${JSON.stringify(flags.kmsJid)} is not a component JID (e.g. kms.example.com)`);
  const service = flags.xmppService ?? `xmpp://${account.domain}:5222`;
  if (!parseService(service)) throw new Error(`--xmpp-service ${JSON.stringify(service)} is not xmpp://host:port or xmpps://host:port (the XMPP server's client port)`);
  return {
    service,
    jid: `${account.local}@${account.domain}`,
    username: account.local,
    domain: account.domain,
    password: flags.xmppPassword!,
    kmsJid: flags.kmsJid!,
    insecure: flags.xmppInsecure === true,
  };
}

/**
 * The SASL choice of the CLI's XMPP login, as xmpp.js would make it plus one exception. Over TLS,
 * the server's first mechanism. Without TLS, a mechanism that does not send the password
 * (SCRAM-SHA-1) when the server offers one; PLAIN only to a loopback host or with
 * `--xmpp-insecure`, else undefined (the login is refused). ANONYMOUS never: we have an account.
 *
 * @example
 * chooseMechanism(["PLAIN"], { secure: false, host: "127.0.0.1", insecure: false }); // "PLAIN"
 */
export function chooseMechanism(offered: readonly string[], o: { secure: boolean; host: string; insecure: boolean }): string | undefined {
  const usable = offered.filter((m) => m !== "ANONYMOUS");
  if (o.secure) return usable[0];
  const hidden = usable.find((m) => m !== "PLAIN");
  if (hidden) return hidden;
  if (usable.includes("PLAIN") && (o.insecure || isLoopbackHost(o.host))) return "PLAIN";
  return undefined;
}

function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(message)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Logs in to the XMPP server as the CLI user; resolves once online. */
async function connectXmpp(s: XmppSettings): Promise<XmppClient> {
  const { host } = parseService(s.service)!;
  const xmpp = xmppClient({
    service: s.service,
    domain: s.domain,
    // A resource of its own: the user's other clients stay connected.
    resource: `keyward-cli-${globalThis.crypto.randomUUID().slice(0, 8)}`,
    credentials: async (
      authenticate: (creds: { username: string; password: string }, mechanism: string) => Promise<void>,
      mechanisms: string[],
      _fast: unknown,
      entity: { isSecure(): boolean },
    ) => {
      const mechanism = chooseMechanism(mechanisms, { secure: entity.isSecure(), host, insecure: s.insecure });
      if (mechanism === undefined) {
        throw new Error(
          `${s.service} offers no TLS and only ${mechanisms.join(", ") || "no SASL mechanism"}: refusing to send the XMPP password in the clear to ${host} (enable TLS on the server, or pass --xmpp-insecure)`,
        );
      }
      await authenticate({ username: s.username, password: s.password }, mechanism);
    },
  });
  xmpp.reconnect.stop(); // one command, one login: a drop fails the command
  let failure: unknown;
  xmpp.on("error", (e: unknown) => (failure ??= e)); // surfaced through start()
  try {
    await withTimeout(xmpp.start(), XMPP_START_TIMEOUT_MS, `no XMPP login to ${s.service} within ${XMPP_START_TIMEOUT_MS / 1000} s`);
  } catch (e) {
    await withTimeout(xmpp.stop(), XMPP_STOP_TIMEOUT_MS, "stop").catch(() => undefined);
    const cause = e instanceof Error ? e : failure instanceof Error ? failure : new Error(String(e));
    const condition = (cause as { condition?: unknown }).condition;
    // SASL failures carry a condition (not-authorized); their text is the server's, never our password.
    const reason = typeof condition === "string" ? `${condition}${cause.message && cause.message !== condition ? `: ${cause.message}` : ""}` : cause.message || String(e);
    throw new Error(`XMPP login as ${s.jid} to ${s.service} failed: ${reason}`, { cause });
  }
  return xmpp;
}

/**
 * Builds the KMS transport a user command asked for: HTTP to `url` (the default), the WebSocket
 * binding on `url`'s origin (`ws`'s WebSocket), or XMPP: logs in with `@xmpp/client` as
 * `--xmpp-jid` and sends IQs to `--kms-jid` (discovery included: no HTTP then). `close()` after
 * `KmsClient.close()` closes the socket or logs out.
 *
 * @example
 * const t = await openTransport({ transport: "ws" }, "http://127.0.0.1:8080");
 * const kms = new KmsClient({ transport: t.transport, user, token, trustRoots });
 * try { await kms.ping(); } finally { await kms.close(); await t.close(); }
 */
export async function openTransport(flags: TransportFlags, url: string | undefined): Promise<CliTransport> {
  const xmpp = checkTransportFlags(flags);
  const kind = flags.transport ?? "http";
  if (xmpp) {
    const connection = await connectXmpp(xmpp);
    return {
      kind,
      transport: new XmppTransport({ connection: xmppJsConnection(connection, xml), to: xmpp.kmsJid }),
      close: () => withTimeout(connection.stop(), XMPP_STOP_TIMEOUT_MS, "stop").then(() => undefined, () => undefined),
    };
  }
  if (url === undefined) throw new Error("give --url (or run it next to a `keyward dev` data dir)");
  if (kind === "ws") {
    const transport = new WebSocketTransport({ url, WebSocket });
    return { kind, transport, close: async () => transport.close() };
  }
  return { kind, transport: new HttpTransport(url), close: async () => undefined };
}
