import { spawn } from "node:child_process";
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
