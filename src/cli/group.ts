import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { join, resolve } from "node:path";
import type { Command } from "commander";
import { loadConfig } from "../config/config.js";
import { issueDevToken } from "../identity/dev-idp.js";
import { DATA_FILES } from "../server/data-dir.js";
import { DeviceKey, Groups, KmsClient, historyOf, type HistoryEntry } from "../client/index.js";
import { normalizeEntity } from "../protocol/entity.js";
import { checkTransportFlags, openTransport, transportOptions, type CliTransport, type TransportFlags } from "./transport.js";

/** How a CLI command finds its KMS: flags, else a `keyward dev` data dir; and what it reaches it over. */
export interface ConnectionFlags extends TransportFlags {
  readonly user: string;
  /** A `keyward dev` data dir: gives the URL, the trust root and dev tokens when flags do not. */
  readonly dir: string;
  readonly url?: string;
  /** A trust root PEM file. */
  readonly ca?: string;
  /** An access token (else KEYWARD_TOKEN, else a dev token from `dir`). */
  readonly token?: string;
}

/** What a KmsClient needs to reach and trust the KMS as the user. */
export interface KmsConnection {
  /** The KMS's HTTP origin; undefined only over `--transport xmpp` (which discovers over XMPP). */
  readonly url: string | undefined;
  readonly trustRoots: string[];
  readonly token: string;
}

/**
 * Resolves the KMS URL, trust root and token for a CLI command: `--url`, `--ca`, `--token` (or
 * KEYWARD_TOKEN) when given, otherwise from a `keyward dev` data dir (its listen address, its
 * CA, a token from its development identity provider). Shared by `ping` and `group`. Over
 * `--transport xmpp` no URL is needed: discovery and messages go to the KMS component.
 *
 * @example
 * const { url, trustRoots, token } = await resolveConnection({ user: "alice@example.com", dir: ".keyward-dev" });
 */
export async function resolveConnection(o: ConnectionFlags, env: NodeJS.ProcessEnv = process.env): Promise<KmsConnection> {
  const dir = resolve(o.dir);
  const config = existsSync(join(dir, DATA_FILES.config)) ? loadConfig(dir, env) : undefined;
  const url = o.url ?? (config ? `http://${config.listenHost}:${config.listenPort}` : undefined);
  const ca = o.ca ?? (config ? join(dir, DATA_FILES.caCert) : undefined);
  const needsUrl = (o.transport ?? "http") !== "xmpp";
  if ((needsUrl && !url) || !ca) throw new Error(`give ${needsUrl ? "--url and --ca" : "--ca"} (or run it next to a \`keyward dev\` data dir)`);
  let token = o.token ?? env.KEYWARD_TOKEN;
  if (!token && config?.devIdp) {
    token = await issueDevToken({ dataDir: dir, issuer: config.oauthIssuer, audience: config.oauthAudience, user: o.user });
  }
  if (!token) throw new Error("give --token or KEYWARD_TOKEN");
  return { url, trustRoots: [readFileSync(ca, "utf8")], token };
}

/** `$KEYWARD_HOME`, default `~/.keyward`: where the CLI keeps its device keys. */
export function keywardHome(env: NodeJS.ProcessEnv = process.env): string {
  return resolve(env.KEYWARD_HOME || join(homedir(), ".keyward"));
}

/**
 * The CLI user's device key, `$KEYWARD_HOME/devices/<user>.json` (a private JWK, mode 0600):
 * read if it exists, else generated (EC P-256) and written. `created` tells which.
 *
 * @example
 * const { device, path } = await loadOrCreateDevice("alice@example.com");
 */
export async function loadOrCreateDevice(user: string, env: NodeJS.ProcessEnv = process.env): Promise<{ device: DeviceKey; path: string; created: boolean }> {
  const entity = normalizeEntity(user);
  if (entity === undefined) throw new Error(`--user '${user}' is not an entity (user@domain)`);
  const dir = join(keywardHome(env), "devices");
  const path = join(dir, `${entity}.json`);
  if (!existsSync(path)) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const device = await DeviceKey.generate({ kid: `cli-${globalThis.crypto.randomUUID()}` });
    try {
      writeFileSync(path, JSON.stringify(device, null, 2) + "\n", { mode: 0o600, flag: "wx" });
      chmodSync(path, 0o600); // whatever the umask
      return { device, path, created: true };
    } catch (e) {
      // Another keyward process created it first: use theirs.
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
  }
  if ((statSync(path).mode & 0o077) !== 0) {
    console.error(`keyward: warning: ${path} holds a private key and is readable by others (chmod 600 it)`);
  }
  let jwk: unknown;
  try {
    jwk = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    throw new Error(`${path} is not a device key file: ${(e as Error).message}`);
  }
  return { device: await DeviceKey.fromJwk(jwk as never), path, created: false };
}

/**
 * A KmsClient for the CLI user over the transport the flags name (HTTP by default), and a
 * `close()` that closes the channel and then the transport (socket, XMPP login). The flags are
 * checked before anything is sent. Used by `ping`, `group`, `encrypt` and `decrypt`.
 *
 * @example
 * const { kms, close } = await openKmsClient({ user: "alice@example.com", dir: ".keyward-dev", transport: "ws" });
 * try { await kms.ping(); } finally { await close(); }
 */
export async function openKmsClient(o: ConnectionFlags): Promise<{ kms: KmsClient; user: string; transport: CliTransport; close: () => Promise<void> }> {
  const user = normalizeEntity(o.user);
  if (user === undefined) throw new Error(`--user '${o.user}' is not an entity (user@domain)`);
  checkTransportFlags(o);
  const connection = await resolveConnection(o);
  const transport = await openTransport(o, connection.url);
  const kms = new KmsClient({ transport: transport.transport, user, token: connection.token, trustRoots: connection.trustRoots });
  const close = async () => {
    try {
      await kms.close().catch(() => undefined);
    } finally {
      await transport.close();
    }
  };
  return { kms, user, transport, close };
}

/** A Groups client for the CLI user: connection resolved, device key loaded (or created) and registered. */
async function openGroups(o: ConnectionFlags): Promise<{ groups: Groups; kms: KmsClient; user: string; device: DeviceKey; close: () => Promise<void> }> {
  const { kms, user, close } = await openKmsClient(o);
  try {
    const { device } = await loadOrCreateDevice(user);
    const groups = new Groups(kms, { user, device });
    await groups.registerDevice();
    return { groups, kms, user, device, close };
  } catch (e) {
    await close();
    throw e;
  }
}

/** Runs `fn` with a Groups client (and its KMS client, user and device), closing the channel and the transport afterwards. */
export async function withGroups<T>(
  o: ConnectionFlags,
  fn: (groups: Groups, ctx: { kms: KmsClient; user: string; device: DeviceKey }) => Promise<T>,
): Promise<T> {
  const { groups, kms, user, device, close } = await openGroups(o);
  try {
    return await fn(groups, { kms, user, device });
  } finally {
    await close();
  }
}

/** The connection flags every user command takes, the transport's included. */
export function connectionOptions(cmd: Command): Command {
  return transportOptions(
    cmd
      .requiredOption("--user <user>", "who you are, user@domain")
      .option("--dir <dir>", "a `keyward dev` data dir (gives the URL, trust root and a token)", ".keyward-dev")
      .option("--url <url>", "the KMS HTTP origin (ws: the socket is on its /kms/ws)")
      .option("--ca <pem>", "trust root PEM file")
      .option("--token <token>", "access token (default: KEYWARD_TOKEN, or a dev token)"),
  );
}

/** `2026-11-28T21:02:15Z` → `2026-11-28 21:02:15Z` (UTC, for a timeline). */
function timelineDate(created: string): string {
  const t = Date.parse(created.toUpperCase());
  return Number.isNaN(t) ? created : new Date(t).toISOString().replace("T", " ").replace(/\.\d{3}Z$/, "Z");
}

/**
 * One timeline line per block, e.g.
 * `#0  2026-11-28 21:02:15Z  kms://localhost  created the group: + alice@example.com, + bob@example.com`
 * `#1  2026-11-28 21:05:40Z  alice@example.com  + carol@example.com, - bob@example.com`
 */
export function formatTimeline(history: readonly HistoryEntry[]): string[] {
  return history.map((h) => {
    const ops = h.operations.map((op) => `${op.optype === "add" ? "+" : "-"} ${op.entity}`).join(", ");
    return `#${h.index}  ${timelineDate(h.created)}  ${h.creator}  ${h.genesis ? `created the group: ${ops}` : ops}`;
  });
}

const collect = (value: string, previous: string[] | undefined) => [...(previous ?? []), value];

/**
 * Adds `keyward group create|add|remove|show` to the CLI. The user's device key lives in
 * `$KEYWARD_HOME/devices/<user>.json` (mode 0600), created and registered on first use.
 *
 * @example
 * registerGroupCommands(program);
 * // keyward group create --user alice@example.com --add alice@example.com --add bob@example.com
 */
export function registerGroupCommands(program: Command): void {
  const group = program
    .command("group")
    .description("groups as membership block chains: create, add, remove, show (device key in $KEYWARD_HOME/devices)");

  connectionOptions(group.command("create").description("create a group; prints its URI"))
    .option("--add <entity>", "a member (repeat for each)", collect)
    .action(async (o: ConnectionFlags & { add?: string[] }) => {
      const members = o.add ?? [];
      if (members.length === 0) throw new Error("name the members with --add user@domain (include yourself to keep access)");
      const { uri } = await withGroups(o, (groups) => groups.create(members));
      console.log(uri);
    });

  connectionOptions(group.command("add").description("add members to a group"))
    .argument("<group>", "the group URI (kms://.../blocks/...)")
    .argument("<users...>", "the entities to add")
    .action(async (uri: string, users: string[], o: ConnectionFlags) => {
      const tail = await withGroups(o, (groups) => groups.add(uri, users));
      console.log(`added ${users.join(", ")} to ${uri} (block ${tail.slice(0, 12)}…)`);
    });

  connectionOptions(group.command("remove").description("remove members from a group"))
    .argument("<group>", "the group URI (kms://.../blocks/...)")
    .argument("<users...>", "the entities to remove")
    .action(async (uri: string, users: string[], o: ConnectionFlags) => {
      const tail = await withGroups(o, (groups) => groups.remove(uri, users));
      console.log(`removed ${users.join(", ")} from ${uri} (block ${tail.slice(0, 12)}…)`);
    });

  connectionOptions(group.command("show").description("verify a group's chain, then print its members and timeline"))
    .argument("<group>", "the group URI (kms://.../blocks/...)")
    .action(async (uri: string, o: ConnectionFlags) => {
      const lines = await withGroups(o, async (groups) => {
        const { members, blocks } = await groups.verify(uri);
        const list = members.members();
        return [
          `group ${uri}`,
          `chain verified (${blocks.length} block${blocks.length === 1 ? "" : "s"})`,
          `members (${list.length}):`,
          ...list.map((m) => `  ${m}`),
          "timeline:",
          ...formatTimeline(historyOf(blocks)),
        ];
      });
      console.log(lines.join("\n"));
    });
}
