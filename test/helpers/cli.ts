import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { createServer } from "node:net";
import { join, resolve } from "node:path";

/** The repository root and the CLI's entry point, run as a user runs it: `node --import tsx src/cli/main.ts`. */
export const REPO_ROOT = resolve(import.meta.dirname, "../..");
export const CLI_MAIN = join(REPO_ROOT, "src/cli/main.ts");

/** The test runner's environment without any KEYWARD_* variable (they would change the CLI's behaviour). */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("KEYWARD_")) env[k] = v;
  return { ...env, ...extra };
}

/** A port that was free a moment ago (listen on 0, read it, close). */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      if (address === null || typeof address === "string") return reject(new Error("no port"));
      server.close(() => resolvePort(address.port));
    });
  });
}

export interface CliResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  /** stdout as raw bytes (decrypt writes binary). */
  readonly stdoutBytes: Buffer;
  readonly stderr: string;
}

/** Runs the CLI to completion, with a clean environment plus `env`; killed by PID after `timeoutMs`. */
export function runCli(args: string[], opts: { env?: Record<string, string>; cwd?: string; timeoutMs?: number } = {}): Promise<CliResult> {
  return new Promise((resolveRun, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", CLI_MAIN, ...args], {
      cwd: opts.cwd ?? REPO_ROOT,
      env: cleanEnv(opts.env),
      stdio: ["ignore", "pipe", "pipe"],
    });
    const out: Buffer[] = [];
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      if (child.pid !== undefined) process.kill(child.pid, "SIGKILL");
    }, opts.timeoutMs ?? 25_000);
    child.once("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      const stdoutBytes = Buffer.concat(out);
      resolveRun({ code, signal, stdout: stdoutBytes.toString("utf8"), stdoutBytes, stderr });
    });
  });
}

/** A `keyward dev` child on free ports, its data dir and KEYWARD_HOME in a fresh temp dir. */
export interface DevChild {
  readonly root: string;
  readonly dir: string;
  /** The env every CLI call against this KMS needs (ports, issuer, KEYWARD_HOME). */
  readonly env: Record<string, string>;
  /** Kills the child by its PID and removes the temp dir. */
  stop(): Promise<void>;
}

/**
 * Starts `keyward dev` as a user would and waits for its banner (or fails with its output).
 * `kmsEnv` goes to the KMS process only (e.g. its KEYWARD_XMPP_* settings), not into `env`.
 */
export async function startDevChild(prefix: string, timeoutMs = 25_000, kmsEnv: Record<string, string> = {}): Promise<DevChild> {
  const root = mkdtempSync(join(tmpdir(), prefix));
  const dir = join(root, "dev");
  const kmsPort = await freePort();
  const idpPort = await freePort();
  const issuer = `http://127.0.0.1:${idpPort}`;
  const env = {
    KEYWARD_LISTEN: `127.0.0.1:${kmsPort}`,
    KEYWARD_DEV_IDP_LISTEN: `127.0.0.1:${idpPort}`,
    KEYWARD_OAUTH_ISSUER: issuer,
    KEYWARD_OAUTH_JWKS_URI: `${issuer}/jwks`,
    KEYWARD_HOME: join(root, "home"),
  };
  const child = spawn(process.execPath, ["--import", "tsx", CLI_MAIN, "dev", "--dir", dir], { cwd: REPO_ROOT, env: cleanEnv({ ...kmsEnv, ...env }), stdio: ["ignore", "pipe", "pipe"] });
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      const exited = new Promise((r) => child.once("exit", r));
      process.kill(child.pid, "SIGKILL");
      await exited;
    }
    rmSync(root, { recursive: true, force: true });
  };
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  try {
    await new Promise<void>((ready, reject) => {
      const timer = setTimeout(() => reject(new Error(`dev did not start in time.\nstdout: ${stdout}\nstderr: ${stderr}`)), timeoutMs);
      const check = () => {
        if (stdout.includes(`on http://127.0.0.1:${kmsPort}`) && stdout.includes("Never use it in production")) {
          clearTimeout(timer);
          child.stdout.off("data", check);
          ready();
        }
      };
      child.stdout.on("data", check);
      child.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`dev exited (${code}) before listening.\nstdout: ${stdout}\nstderr: ${stderr}`));
      });
      check();
    });
  } catch (e) {
    await stop();
    throw e;
  }
  return { root, dir, env, stop };
}
