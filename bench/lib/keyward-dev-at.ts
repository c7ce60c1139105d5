/**
 * `keyward dev` on a data dir the bench prepared (e.g. a copy of a cached one holding a large
 * chain), or restarted on the same dir with other settings (e.g. KEYWARD_POLICY). The same process
 * layout, env and readiness check as harness.ts's `startKeywardDev`, which always starts on a
 * fresh dir.
 */
import { cpSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { waitFor, type Children, type KeywardDev } from "./harness.js";
import { freePort } from "./proc.js";

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
  await Promise.race([died, waitFor(async () => (await fetch(`${url}/healthz`)).ok, "keyward /healthz", 60_000)]);
  died.catch(() => {});
  return {
    child, url, port, dir, tmpDir, env,
    ...(profDir ? { profDir } : {}),
    output: () => output,
    cleanup: () => rmSync(tmpDir, { recursive: true, force: true }),
  };
}
