/**
 * `keyward serve` as a real child process (`node --import tsx src/cli/main.ts serve --dir DIR`) on
 * a data dir initialised here, trusting a dev identity provider that runs in the test process.
 * For tests that kill servers (SIGKILL) and restart them, and for multi-worker tests.
 *
 * Every process is tracked by PID and stopped by `stopAllServers()` (call it in afterAll/finally).
 */
import { CLI_MAIN, cleanEnv, freePort, REPO_ROOT } from "./cli.js";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { issueDevToken, startDevIdp } from "../../src/identity/dev-idp.js";
import { DATA_FILES, initDataDir } from "../../src/server/data-dir.js";
import { generateMasterKey } from "../../src/server/barrier/master-key.js";
import { KmsClient, type KmsClientOptions, type KmsTransport } from "../../src/client/index.js";
import { JOSE_CONTENT_TYPE, MESSAGES_PATH, WELL_KNOWN_KMS_PATH } from "../../src/protocol/constants.js";

const MAIN = CLI_MAIN;
export const AUTHORITY = "kms.example.com";

export { cleanEnv, freePort } from "./cli.js";

/** An initialised data dir with a dev IdP (in this process) the server trusts through KEYWARD_OAUTH_*. */
export interface TestDataDir {
  readonly dataDir: string;
  readonly caPem: string;
  /** The environment `serve` needs (OAuth settings, an explicit master key, a quiet log). */
  readonly env: Record<string, string>;
  token(user: string): Promise<string>;
  /** A KmsClient for `user` on `url`, one fresh TCP connection per request unless `transport` is given. */
  client(user: string, url: string, opts?: Partial<KmsClientOptions>): KmsClient;
  /** Stops the IdP and removes the data dir. */
  close(): Promise<void>;
}

export async function initTestDataDir(opts: { logLevel?: string } = {}): Promise<TestDataDir> {
  const root = mkdtempSync(join(tmpdir(), "keyward-spawn-"));
  const dataDir = join(root, "data");
  // An explicit master key: a KEYWARD_MASTER_KEY in the developer's shell must not leak into tests.
  const masterKey = generateMasterKey();
  await initDataDir({ dir: dataDir, authority: AUTHORITY, domain: "example.com", keyType: "ec", masterKey });
  writeFileSync(join(dataDir, DATA_FILES.masterKey), masterKey + "\n", { mode: 0o600 });
  const idp = await startDevIdp({ dataDir, host: "127.0.0.1", port: 0, audience: `kms://${AUTHORITY}` });
  const caPem = readFileSync(join(dataDir, DATA_FILES.caCert), "utf8");
  const token = (user: string) => issueDevToken({ dataDir, issuer: idp.issuer, audience: `kms://${AUTHORITY}`, user });
  return {
    dataDir,
    caPem,
    env: { KEYWARD_OAUTH_ISSUER: idp.issuer, KEYWARD_OAUTH_JWKS_URI: idp.jwksUri, KEYWARD_LOG_LEVEL: opts.logLevel ?? "warn" },
    token,
    client: (user, url, o = {}) => new KmsClient({ transport: new FreshConnectionTransport(url), user, token: () => token(user), trustRoots: [caPem], ...o }),
    close: async () => {
      await idp.close();
      rmSync(root, { recursive: true, force: true });
    },
  };
}

/** One `keyward serve` process (the primary, with `--workers N > 1`). */
export interface ServeProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly url: string;
  /** Worker PIDs from the `keyward: worker <pid> listening` lines, in order (restarted ones included). */
  workerPids(): number[];
  stdout(): string;
  stderr(): string;
  /** Waits until stdout+stderr match `re` (checked on every chunk), or fails after `timeoutMs`. */
  waitFor(re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  isRunning(): boolean;
}

const running = new Set<ServeProcess>();

/**
 * Spawns `keyward serve --dir DIR [--workers N]` on 127.0.0.1:<port> and waits for its
 * `listening on` line. Throws (after stopping it) if it exits or does not listen within 25 s.
 */
export async function spawnServe(
  data: TestDataDir,
  opts: { workers?: number; port?: number; env?: Record<string, string> } = {},
): Promise<ServeProcess> {
  if (opts.port !== undefined) return spawnServeOn(data, opts.port, opts);
  // A port found free may be taken by another process before the server binds it: try another.
  for (let attempt = 1; ; attempt++) {
    try {
      return await spawnServeOn(data, await freePort(), opts);
    } catch (e) {
      if (attempt >= 3 || !/EADDRINUSE/.test(String(e))) throw e;
    }
  }
}

async function spawnServeOn(data: TestDataDir, port: number, opts: { workers?: number; env?: Record<string, string> }): Promise<ServeProcess> {
  const args = ["--import", "tsx", MAIN, "serve", "--dir", data.dataDir, ...(opts.workers !== undefined ? ["--workers", String(opts.workers)] : [])];
  const child = spawn(process.execPath, args, {
    cwd: REPO_ROOT,
    env: cleanEnv({ ...data.env, KEYWARD_LISTEN: `127.0.0.1:${port}`, ...opts.env }),
    stdio: ["ignore", "pipe", "pipe"],
  });
  if (child.pid === undefined) throw new Error("spawn failed");
  let out = "";
  let err = "";
  const waiters = new Set<() => void>();
  const poke = () => waiters.forEach((w) => w());
  child.stdout!.setEncoding("utf8").on("data", (d: string) => ((out += d), poke()));
  child.stderr!.setEncoding("utf8").on("data", (d: string) => ((err += d), poke()));
  let exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    child.once("exit", (code, signal) => {
      exitInfo = { code, signal };
      poke();
      r(exitInfo);
    }),
  );
  const url = `http://127.0.0.1:${port}`;
  const proc: ServeProcess = {
    child,
    pid: child.pid,
    url,
    workerPids: () => [...out.matchAll(/keyward: worker (\d+) listening/g)].map((m) => Number(m[1])),
    stdout: () => out,
    stderr: () => err,
    exited,
    isRunning: () => exitInfo === undefined,
    waitFor: (re, timeoutMs = 25_000) =>
      new Promise((resolveWait, reject) => {
        const check = () => {
          const m = (out + "\n" + err).match(re);
          if (m) {
            done();
            resolveWait(m);
          } else if (exitInfo) {
            done();
            reject(new Error(`serve exited (${JSON.stringify(exitInfo)}) before ${re}\nstdout: ${out}\nstderr: ${err}`));
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`timed out waiting for ${re}\nstdout: ${out}\nstderr: ${err}`));
        }, timeoutMs);
        const done = () => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        check();
      }),
  };
  running.add(proc);
  void exited.then(() => running.delete(proc));
  try {
    await proc.waitFor(new RegExp(`listening on ${url.replace(/[.]/g, "\\.")}`));
  } catch (e) {
    await killServe(proc);
    throw e;
  }
  return proc;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** SIGKILLs the process and every worker it reported, by PID, and waits for the primary to exit. */
export async function killServe(proc: ServeProcess): Promise<void> {
  if (proc.isRunning()) {
    try {
      process.kill(proc.pid, "SIGKILL");
    } catch {
      // already gone
    }
    await proc.exited;
  }
  // Workers exit by themselves when the primary's IPC channel closes; make sure of it.
  for (const pid of proc.workerPids()) {
    if (pid !== proc.pid && alive(pid)) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // raced with its own exit
      }
    }
  }
}

/** Stops every server process still running (afterAll / finally). */
export async function stopAllServers(): Promise<void> {
  await Promise.all([...running].map((p) => killServe(p)));
}

/** Waits until `pid` no longer exists (or throws after `timeoutMs`). */
export async function waitForPidGone(pid: number, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (alive(pid)) {
    if (Date.now() > until) throw new Error(`process ${pid} still exists after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * The SDK's HTTP binding over node:http with no keep-alive (`agent: false`, `Connection: close`):
 * every request is a new TCP connection, so the cluster primary hands each one to a worker anew.
 */
export class FreshConnectionTransport implements KmsTransport {
  /** Requests sent, and those that failed at the HTTP level (connection refused/reset, timeout). */
  readonly stats = { sent: 0, failed: 0 };
  constructor(
    private readonly origin: string,
    private readonly timeoutMs = 10_000,
  ) {}

  async send(message: string): Promise<string> {
    const { status, body } = await this.request("POST", MESSAGES_PATH, message);
    if (status !== 200 && status !== 400) throw new Error(`KMS transport answered HTTP ${status}: ${body.slice(0, 200)}`);
    return body;
  }

  async discover(): Promise<unknown> {
    const { status, body } = await this.request("GET", WELL_KNOWN_KMS_PATH);
    if (status !== 200) throw new Error(`${WELL_KNOWN_KMS_PATH} answered HTTP ${status}`);
    return JSON.parse(body);
  }

  private request(method: string, path: string, body?: string): Promise<{ status: number; body: string }> {
    this.stats.sent++;
    return new Promise((resolveReq, reject) => {
      const fail = (e: Error) => {
        this.stats.failed++;
        reject(e);
      };
      const req = http.request(
        `${this.origin}${path}`,
        {
          method,
          agent: false,
          headers: { connection: "close", ...(body !== undefined ? { "content-type": JOSE_CONTENT_TYPE, "content-length": Buffer.byteLength(body) } : {}) },
          timeout: this.timeoutMs,
        },
        (res) => {
          let text = "";
          res.setEncoding("utf8");
          res.on("data", (c: string) => (text += c));
          res.on("end", () => resolveReq({ status: res.statusCode ?? 0, body: text }));
          res.on("error", fail);
        },
      );
      req.on("timeout", () => req.destroy(new Error(`no answer within ${this.timeoutMs} ms`)));
      req.on("error", fail);
      req.end(body);
    });
  }
}
