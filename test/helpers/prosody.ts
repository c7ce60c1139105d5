import { spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants, mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { freePort } from "./cli.js";

/**
 * A real Prosody (Debian `prosody` 0.12) for tests and the XMPP example, on loopback only.
 *
 * Prosody runs as whatever user starts it (root here), so it is only ever started with a config of
 * our own in a fresh temporary directory: foreground (`daemonize = false`), data, pid and log in
 * that directory, c2s and component listeners on 127.0.0.1 at free ports, no s2s, no HTTP. The
 * system config (`/etc/prosody`) is never read: it would listen on every interface.
 */

/** The XMPP domain of the users (`alice@localhost`). */
export const XMPP_DOMAIN = "localhost";
/** The MUC service's domain. */
export const MUC_DOMAIN = "conference.localhost";

export interface ProsodyOptions {
  /** Users to register on {@link XMPP_DOMAIN}: local part → password. Default alice, bob and carol. */
  readonly users?: Readonly<Record<string, string>>;
  /** External components (XEP-0114): domain → secret. Default `kms.localhost` with a random secret. */
  readonly components?: Readonly<Record<string, string>>;
  /** Prosody's `c2s_stanza_size_limit` in bytes (Prosody's default: 256 KiB). */
  readonly c2sStanzaSizeLimit?: number;
}

export interface ProsodyServer {
  readonly c2sPort: number;
  readonly componentPort: number;
  /** `xmpp://127.0.0.1:<c2sPort>`, for `@xmpp/client`'s `service`. */
  readonly c2sService: string;
  /** `xmpp://127.0.0.1:<componentPort>`, for `KEYWARD_XMPP_SERVICE`. */
  readonly componentService: string;
  readonly domain: string;
  readonly mucDomain: string;
  /** Registered users: local part → password. */
  readonly users: Readonly<Record<string, string>>;
  /** Components: domain → secret. */
  readonly components: Readonly<Record<string, string>>;
  /** The temporary directory (config, data, log). */
  readonly dir: string;
  /** Prosody's log so far (for failure messages). */
  log(): string;
  /** The PID of the running Prosody process (undefined while suspended), e.g. to pin it to a core. */
  pid(): number | undefined;
  /** Stops the Prosody process but keeps its directory and ports, so that {@link resume} can start it again. */
  suspend(): Promise<void>;
  /** Starts Prosody again after {@link suspend}, on the same ports; resolves once they accept connections. */
  resume(): Promise<void>;
  /** Stops Prosody and deletes its directory. */
  stop(): Promise<void>;
}

/** The path of `name` on PATH when it is an executable file there, else undefined. */
function onPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (dir === "") continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/**
 * Whether `prosody` and `prosodyctl` are installed (on PATH).
 *
 * @example
 * if (!prosodyInstalled()) console.log("apt-get install prosody");
 */
export function prosodyInstalled(): boolean {
  return onPath("prosody") !== undefined && onPath("prosodyctl") !== undefined;
}

/** True when the environment says this is CI (`CI` set to anything but "", "0" or "false"). */
export function inCi(): boolean {
  const ci = process.env.CI;
  return ci !== undefined && ci !== "" && ci !== "0" && ci !== "false";
}

/**
 * For test suites: whether to run the Prosody suites. Without Prosody they are skipped with a clear
 * message, except in CI, where a missing Prosody is a failure (it throws).
 *
 * @example
 * const run = prosodyForTests("the XMPP binding");
 * describe.skipIf(!run)("xmpp", () => { ... });
 */
export function prosodyForTests(what: string): boolean {
  if (prosodyInstalled()) return true;
  const message = `prosody is not installed (apt-get install prosody): ${what} needs a real XMPP server`;
  if (inCi()) throw new Error(`${message}, and it must run in CI (CI=${process.env.CI})`);
  console.warn(`SKIPPED: ${message}`);
  return false;
}


/** Resolves once 127.0.0.1:port accepts a TCP connection; rejects after `timeoutMs`. */
async function waitForPort(port: number, timeoutMs: number, alive: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect({ host: "127.0.0.1", port });
      socket.once("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (ok) return;
    if (!alive()) throw new Error(`prosody exited before port ${port} accepted connections`);
    if (Date.now() > deadline) throw new Error(`prosody: port ${port} did not accept connections within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A Lua string literal. */
function lua(s: string): string {
  return JSON.stringify(s); // JSON string escapes are valid Lua escapes for the text we write
}

function configText(o: { dir: string; c2sPort: number; componentPort: number; components: Record<string, string>; c2sStanzaSizeLimit?: number }): string {
  const components = Object.entries(o.components)
    .map(([domain, secret]) => `Component ${lua(domain)}\n  component_secret = ${lua(secret)}\n`)
    .join("\n");
  return `-- Written by test/helpers/prosody.ts for one test run; never the system config.
daemonize = false
-- Prosody runs as the invoking user (root in this sandbox); without this prosodyctl would switch to 'prosody'.
run_as_root = true
pidfile = ${lua(join(o.dir, "prosody.pid"))}
data_path = ${lua(join(o.dir, "data"))}
plugin_paths = {}
certificates = ${lua(join(o.dir, "certs"))}
log = { { levels = { min = "info" }, to = "file", filename = ${lua(join(o.dir, "prosody.log"))} } }

-- Loopback only, free ports, nothing else listening.
interfaces = { "127.0.0.1" }
local_interfaces = { "127.0.0.1" }
c2s_ports = { ${o.c2sPort} }
c2s_interfaces = { "127.0.0.1" }
c2s_direct_tls_ports = {}
legacy_ssl_ports = {}
component_ports = { ${o.componentPort} }
component_interfaces = { "127.0.0.1" }
s2s_ports = {}
http_ports = {}
https_ports = {}

modules_enabled = { "roster", "saslauth", "disco", "ping", "time", "version" }
-- posix: no daemon, no pid file games; s2s and http: no federation, no web server.
modules_disabled = { "s2s", "http", "http_files", "bosh", "websocket", "posix", "tls" }

-- Loopback without TLS, PLAIN only: xmpp.js's SCRAM-SHA-1 runs PBKDF2 (10,000 rounds) in JavaScript,
-- about 2 s per login on a loaded machine, which the tests do not need to measure.
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
disable_sasl_mechanisms = { "SCRAM-SHA-1", "SCRAM-SHA-1-PLUS", "DIGEST-MD5" }
authentication = "internal_hashed"
storage = "internal"
${o.c2sStanzaSizeLimit !== undefined ? `c2s_stanza_size_limit = ${o.c2sStanzaSizeLimit}\n` : ""}
VirtualHost ${lua(XMPP_DOMAIN)}

-- The MUC service, with the room archive (XEP-0313 on the room) next to plain MUC history.
Component ${lua(MUC_DOMAIN)} "muc"
  modules_enabled = { "muc_mam" }
  muc_room_default_persistent = true
  muc_room_default_history_length = 50
  muc_log_all_rooms = true
  muc_log_by_default = true
  restrict_room_creation = false
  -- A room is usable as soon as its first occupant joins (no XEP-0045 configuration round first).
  muc_room_locking = false

${components}`;
}

/**
 * Starts Prosody with a MUC service (`conference.localhost`, room archive by `muc_mam`), the given
 * external components and registered users, on free loopback ports; resolves once both ports
 * accept connections. The caller stops it with `stop()`.
 *
 * @example
 * const prosody = await startProsody({ components: { "kms.localhost": "s3cret" } });
 * // KEYWARD_XMPP_SERVICE = prosody.componentService, KEYWARD_XMPP_DOMAIN = "kms.localhost"
 * await prosody.stop();
 */
export async function startProsody(opts: ProsodyOptions = {}): Promise<ProsodyServer> {
  if (!prosodyInstalled()) throw new Error("prosody is not installed (apt-get install prosody)");
  const users = opts.users ?? { alice: "alice-pw", bob: "bob-pw", carol: "carol-pw" };
  const components = opts.components ?? { "kms.localhost": `secret-${Math.random().toString(36).slice(2)}` };
  const dir = mkdtempSync(join(tmpdir(), "keyward-prosody-"));
  mkdirSync(join(dir, "data"));
  mkdirSync(join(dir, "certs"));
  const [c2sPort, componentPort] = [await freePort(), await freePort()];
  const configFile = join(dir, "prosody.cfg.lua");
  writeFileSync(
    configFile,
    configText({ dir, c2sPort, componentPort, components, ...(opts.c2sStanzaSizeLimit !== undefined ? { c2sStanzaSizeLimit: opts.c2sStanzaSizeLimit } : {}) }),
  );
  const logFile = join(dir, "prosody.log");
  const log = () => {
    try {
      return readFileSync(logFile, "utf8");
    } catch {
      return "";
    }
  };

  let child: ChildProcess | undefined;
  let output = "";
  const run = async (args: string[]): Promise<void> => {
    const p = spawn("prosodyctl", ["--config", configFile, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let text = "";
    p.stdout.on("data", (d: Buffer) => (text += d.toString()));
    p.stderr.on("data", (d: Buffer) => (text += d.toString()));
    const code = await new Promise<number | null>((resolve, reject) => {
      p.once("error", reject);
      p.once("exit", resolve);
    });
    if (code !== 0) throw new Error(`prosodyctl ${args[0]} failed (${code}): ${text.trim()}`);
  };

  const launch = async (): Promise<void> => {
    const p = spawn("prosody", ["--config", configFile], { stdio: ["ignore", "pipe", "pipe"], cwd: dir });
    child = p;
    p.stdout?.on("data", (d: Buffer) => (output += d.toString()));
    p.stderr?.on("data", (d: Buffer) => (output += d.toString()));
    let exited = false;
    p.once("exit", () => (exited = true));
    try {
      await waitForPort(c2sPort, 15_000, () => !exited);
      await waitForPort(componentPort, 15_000, () => !exited);
    } catch (e) {
      await halt();
      throw new Error(`${(e as Error).message}\n--- prosody output ---\n${output}\n--- prosody log ---\n${log()}`);
    }
  };

  /** Stops our own child by its PID: SIGTERM, then SIGKILL after 5 s. */
  const halt = async (): Promise<void> => {
    const p = child;
    child = undefined;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => p.once("exit", () => resolve()));
    p.kill("SIGTERM");
    const timer = setTimeout(() => p.kill("SIGKILL"), 5_000);
    await exited;
    clearTimeout(timer);
  };

  try {
    for (const [user, password] of Object.entries(users)) await run(["register", user, XMPP_DOMAIN, password]);
    await launch();
  } catch (e) {
    await halt();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }

  return {
    c2sPort,
    componentPort,
    c2sService: `xmpp://127.0.0.1:${c2sPort}`,
    componentService: `xmpp://127.0.0.1:${componentPort}`,
    domain: XMPP_DOMAIN,
    mucDomain: MUC_DOMAIN,
    users,
    components,
    dir,
    log,
    pid: () => child?.pid,
    suspend: halt,
    resume: async () => {
      if (child) return;
      await launch();
    },
    stop: async () => {
      await halt();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
