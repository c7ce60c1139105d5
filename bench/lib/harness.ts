/**
 * Orchestration helpers shared by bench runners: pinned child processes stopped by their own PID,
 * `npm run build`, a `keyward dev` server on a fresh data dir, IPC-driven child processes,
 * markdown tables and the machine description.
 */
import { spawnSync, type ChildProcess, type SpawnOptions } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { spawnPinned } from "./pin.js";
import { freePort } from "./proc.js";

export function log(msg: string): void {
  process.stderr.write(`[bench] ${msg}\n`);
}

/** The child processes a bench started; `stopAll` stops each by its own PID (never by name). */
export class Children {
  private readonly list: ChildProcess[] = [];

  constructor(private readonly cwd: string) {}

  /** `node <argv>` pinned to `core`, remembered for cleanup. */
  start(core: number | string, argv: readonly string[], opts: SpawnOptions = {}): ChildProcess {
    const child = spawnPinned(core, process.execPath, argv, { cwd: this.cwd, ...opts });
    this.list.push(child);
    return child;
  }

  async stop(child: ChildProcess): Promise<void> {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((r) => child.once("exit", () => r()));
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(timer);
  }

  async stopAll(): Promise<void> {
    await Promise.all(this.list.map((c) => this.stop(c).catch(() => {})));
  }
}

/** `npm run build`; on failure keeps going with the existing dist/ (with a warning), or throws without one. */
export function build(root: string): void {
  log("npm run build");
  const r = spawnSync("npm", ["run", "build"], { cwd: root, stdio: ["ignore", "pipe", "pipe"], encoding: "utf8" });
  if (r.status === 0) return;
  const out = `${r.stdout}${r.stderr}`.trim().split("\n").slice(-15).join("\n");
  if (!existsSync(join(root, "dist/cli/main.js"))) throw new Error(`npm run build failed and there is no dist/:\n${out}`);
  log(`WARNING: npm run build failed; benchmarking the existing dist/ (may be stale):\n${out}`);
}

export async function waitFor(check: () => Promise<boolean>, what: string, timeoutMs = 30_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (await check().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

export interface KeywardDev {
  readonly child: ChildProcess;
  readonly url: string;
  readonly port: number;
  /** The data dir (`keyward dev --dir`). */
  readonly dir: string;
  /** The temp dir holding `dir` (and the profile dir); removed by `cleanup`. */
  readonly tmpDir: string;
  /** The KEYWARD_* overrides the server runs with (for loadConfig). */
  readonly env: Record<string, string>;
  readonly profDir?: string;
  /** Server stdout + stderr so far. */
  output(): string;
  cleanup(): void;
}

/** `keyward dev` (bin/keyward.js, i.e. dist/) on a fresh data dir with free ports, pinned to `core`. */
export async function startKeywardDev(
  children: Children,
  core: number,
  opts: { cpuProf?: boolean; env?: Record<string, string>; tmpPrefix?: string } = {},
): Promise<KeywardDev> {
  const { tmpDir, dir } = prepareDataDir(opts.tmpPrefix ?? "keyward-bench-");
  return startKeywardDevAt(children, core, { dir, tmpDir, readyTimeoutMs: 30_000, ...(opts.cpuProf ? { cpuProf: true } : {}), ...(opts.env ? { env: opts.env } : {}) });
}

/** A fresh temp dir holding a copy of `from` as `<tmp>/data` (nothing copied when `from` is undefined). */
export function prepareDataDir(tmpPrefix: string, from?: string): { tmpDir: string; dir: string } {
  const tmpDir = mkdtempSync(join(os.tmpdir(), tmpPrefix));
  const dir = join(tmpDir, "data");
  if (from) cpSync(from, dir, { recursive: true });
  return { tmpDir, dir };
}

/**
 * `node bin/keyward.js dev --dir <dir>` (or `opts.command`) pinned to `core` (a core number, or a
 * taskset list such as "0,1"), on free ports; `dir` may exist (it is
 * used as is) or not (keyward dev initialises it). `cleanup()` removes `tmpDir`. With `cpuProf`,
 * each start writes its profile to its own sub-dir of `<tmpDir>/prof`.
 */
export async function startKeywardDevAt(
  children: Children,
  core: number | string,
  opts: {
    dir: string;
    tmpDir: string;
    cpuProf?: boolean;
    env?: Record<string, string>;
    label?: string;
    /** What to run instead of `bin/keyward.js dev --dir <dir>` (node arguments), e.g. `keyward serve`. */
    command?: readonly string[];
    /** How long to wait for /healthz (default 60 s). */
    readyTimeoutMs?: number;
  },
): Promise<KeywardDev> {
  const { dir, tmpDir } = opts;
  const port = await freePort();
  const idpPort = await freePort();
  const issuer = `http://127.0.0.1:${idpPort}`;
  const env: Record<string, string> = {
    KEYWARD_LISTEN: `127.0.0.1:${port}`,
    KEYWARD_DEV_IDP_LISTEN: `127.0.0.1:${idpPort}`,
    KEYWARD_OAUTH_ISSUER: issuer,
    KEYWARD_OAUTH_JWKS_URI: `${issuer}/jwks`,
    KEYWARD_LOG_LEVEL: "warn",
    ...opts.env,
  };
  const profDir = opts.cpuProf ? join(tmpDir, "prof", opts.label ?? String(Date.now())) : undefined;
  if (profDir) mkdirSync(profDir, { recursive: true });
  const nodeArgs = profDir ? ["--cpu-prof", `--cpu-prof-dir=${profDir}`] : [];
  const child = children.start(core, [...nodeArgs, ...(opts.command ?? ["bin/keyward.js", "dev", "--dir", dir])], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout!.on("data", (c: Buffer) => (output += c.toString()));
  child.stderr!.on("data", (c: Buffer) => (output += c.toString()));
  const url = `http://127.0.0.1:${port}`;
  const died = new Promise<never>((_, reject) => child.once("exit", (code) => reject(new Error(`keyward dev exited (${code}):\n${output}`))));
  await Promise.race([died, waitFor(async () => (await fetch(`${url}/healthz`)).ok, "keyward /healthz", opts.readyTimeoutMs ?? 60_000)]);
  died.catch(() => {});
  return {
    child, url, port, dir, tmpDir, env,
    ...(profDir ? { profDir } : {}),
    output: () => output,
    cleanup: () => rmSync(tmpDir, { recursive: true, force: true }),
  };
}

/** A child process driven by request/response messages over IPC (`{id, req}` → `{id, ok, result|error}`). */
export interface IpcChild<Req> {
  readonly child: ChildProcess;
  call<T>(req: Req): Promise<T>;
}

export function startIpcChild<Req>(children: Children, core: number | string, argv: readonly string[], env?: Record<string, string>): IpcChild<Req> {
  const child = children.start(core, argv, { stdio: ["ignore", "inherit", "inherit", "ipc"], ...(env ? { env: { ...process.env, ...env } } : {}) });
  let next = 0;
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  child.on("message", (m: { id: number; ok: boolean; result?: unknown; error?: string }) => {
    const p = pending.get(m.id);
    pending.delete(m.id);
    if (m.ok) p?.resolve(m.result);
    else p?.reject(new Error(`child: ${m.error}`));
  });
  child.once("exit", (code) => {
    for (const p of pending.values()) p.reject(new Error(`child exited (${code})`));
    pending.clear();
  });
  return {
    child,
    call: <T>(req: Req) =>
      new Promise<T>((resolve, reject) => {
        const id = next++;
        pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
        child.send({ id, req });
      }),
  };
}

/** The child side of `startIpcChild`: answers each request with `handle`. */
export function serveIpc<Req>(handle: (req: Req) => Promise<unknown>): void {
  process.on("message", (m: { id: number; req: Req }) => {
    handle(m.req).then(
      (result) => process.send!({ id: m.id, ok: true, result }),
      (e: unknown) => process.send!({ id: m.id, ok: false, error: e instanceof Error ? e.stack ?? e.message : String(e) }),
    );
  });
  process.on("disconnect", () => process.exit(0));
}

/**
 * Starts a reference server (`node <argv>`, pinned to `core`) that prints `listening <port>` once
 * ready (e.g. `channel/bare-http.ts`); resolves with the child and the port.
 *
 * @example
 * const bare = await startListeningChild(children, 0, ["--import", "tsx", "bench/channel/bare-http.ts"]);
 */
export async function startListeningChild(children: Children, core: number, argv: readonly string[], env?: Record<string, string>): Promise<{ child: ChildProcess; port: number }> {
  const child = children.start(core, argv, { stdio: ["ignore", "pipe", "inherit"], ...(env ? { env: { ...process.env, ...env } } : {}) });
  const port = await new Promise<number>((resolve, reject) => {
    let out = "";
    child.stdout!.on("data", (c: Buffer) => {
      out += c.toString();
      const m = /listening (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once("exit", (code) => reject(new Error(`${argv[argv.length - 1]} exited (${code}) before listening: ${out.slice(-1000)}`)));
  });
  return { child, port };
}

/** Runs `node <argv>` pinned to `core` to completion and parses the last stdout line as JSON. */
export async function runJsonChild<T>(children: Children, core: number, argv: readonly string[], env?: Record<string, string>): Promise<T> {
  const child = children.start(core, argv, { stdio: ["ignore", "pipe", "inherit"], ...(env ? { env: { ...process.env, ...env } } : {}) });
  let out = "";
  child.stdout!.on("data", (c: Buffer) => (out += c.toString()));
  const code = await new Promise<number | null>((r) => child.once("exit", (c) => r(c)));
  if (code !== 0) throw new Error(`${argv.join(" ")} exited (${code}): ${out.slice(-2000)}`);
  return JSON.parse(out.trim().split("\n").pop()!) as T;
}

export const fmt = (n: number, d = 0): string =>
  Number.isFinite(n) ? n.toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d }) : "–";
export const pct = (n: number): string => (Number.isFinite(n) ? `${(100 * n).toFixed(0)}%` : "–");

/** A markdown table; the first row is the header, the first column left-aligned, the others right. */
export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  const line = (r: string[]) => `| ${r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(" | ")} |`;
  return [
    line(rows[0]!),
    `|${widths.map((w, i) => (i === 0 ? ":" : "") + "-".repeat(w + 1) + (i === 0 ? "" : ":")).join("|")}|`,
    ...rows.slice(1).map(line),
  ].join("\n");
}

/** CPU model, cores, RAM, Node version and OS, in one line. */
export function machineLine(): string {
  const cpus = os.cpus();
  return `${cpus[0]?.model ?? "unknown CPU"}, ${cpus.length} cores, ${fmt(os.totalmem() / 2 ** 30, 1)} GiB RAM, Node ${process.version}, ${os.platform()} ${os.release()}`;
}

/** Short commit hash, and whether src/ has uncommitted changes. */
export function gitState(root: string): { commit: string; srcDirty: boolean } {
  const commit = spawnSync("git", ["rev-parse", "--short", "HEAD"], { cwd: root, encoding: "utf8" }).stdout.trim();
  const srcDirty = spawnSync("git", ["status", "--porcelain", "--", "src"], { cwd: root, encoding: "utf8" }).stdout.trim() !== "";
  return { commit: commit || "?", srcDirty };
}
