import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLI_MAIN, cleanEnv, freePort, REPO_ROOT, runCli as runCliAs } from "../helpers/cli.js";

/** `keyward group ...` run as a user runs it, against `keyward dev` started as a child process. */
const TIMEOUT = 60_000;

/** `runCli(args, env)`: the CLI with a clean environment plus `env`. */
const runCli = (args: string[], env: Record<string, string>, timeoutMs = 25_000) => runCliAs(args, { env, timeoutMs });

describe("keyward group", () => {
  let root: string;
  let dir: string;
  let home: string;
  let env: Record<string, string>;
  let dev: ChildProcess | undefined;

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), "keyward-group-cli-"));
    dir = join(root, "dev");
    home = join(root, "home");
    const kmsPort = await freePort();
    const idpPort = await freePort();
    const issuer = `http://127.0.0.1:${idpPort}`;
    env = {
      KEYWARD_LISTEN: `127.0.0.1:${kmsPort}`,
      KEYWARD_DEV_IDP_LISTEN: `127.0.0.1:${idpPort}`,
      KEYWARD_OAUTH_ISSUER: issuer,
      KEYWARD_OAUTH_JWKS_URI: `${issuer}/jwks`,
      KEYWARD_HOME: home,
    };
    const child = spawn(process.execPath, ["--import", "tsx", CLI_MAIN, "dev", "--dir", dir], {
      cwd: REPO_ROOT,
      env: cleanEnv(env),
      stdio: ["ignore", "pipe", "pipe"],
    });
    dev = child;
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    await new Promise<void>((ready, reject) => {
      const timer = setTimeout(() => reject(new Error(`dev did not start in time.\nstdout: ${stdout}\nstderr: ${stderr}`)), 25_000);
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
  }, TIMEOUT);

  afterAll(async () => {
    if (dev && dev.exitCode === null && dev.signalCode === null && dev.pid !== undefined) {
      const exited = new Promise((r) => dev!.once("exit", r));
      process.kill(dev.pid, "SIGKILL");
      await exited;
    }
    if (root) rmSync(root, { recursive: true, force: true });
  });

  const group = (args: string[]) => runCli(["group", ...args, "--dir", dir], env);

  it("create, add, remove, show: members and a verified three-block timeline; device file 0600", async () => {
    const created = await group(["create", "--user", "alice@example.com", "--add", "alice@example.com", "--add", "bob@example.com"]);
    expect(created.code, created.stderr).toBe(0);
    const uri = created.stdout.trim();
    expect(uri).toMatch(/^kms:\/\/localhost\/blocks\/\S+$/);
    expect(created.stdout).toBe(`${uri}\n`);

    const device = join(home, "devices", "alice@example.com.json");
    expect(existsSync(device)).toBe(true);
    expect(statSync(device).mode & 0o777).toBe(0o600);
    const jwk = JSON.parse(readFileSync(device, "utf8")) as Record<string, unknown>;
    expect(jwk).toMatchObject({ kty: "EC", crv: "P-256", d: expect.any(String), kid: expect.any(String) });

    const added = await group(["add", uri, "carol@example.com", "--user", "alice@example.com"]);
    expect(added.code, added.stderr).toBe(0);
    expect(added.stdout).toContain("carol@example.com");

    const removed = await group(["remove", uri, "bob@example.com", "--user", "alice@example.com"]);
    expect(removed.code, removed.stderr).toBe(0);

    // The same device key was used (and registered once) throughout.
    expect(JSON.parse(readFileSync(device, "utf8"))).toEqual(jwk);

    const shown = await group(["show", uri, "--user", "alice@example.com"]);
    expect(shown.code, shown.stderr).toBe(0);
    const out = shown.stdout;
    expect(out).toContain("chain verified (3 blocks)");
    const lines = out.split("\n");
    const membersAt = lines.findIndex((l) => l.startsWith("members"));
    expect(lines.slice(membersAt, membersAt + 3)).toEqual(["members (2):", "  alice@example.com", "  carol@example.com"]);
    expect(out).not.toMatch(/^ {2}bob@example\.com$/m);
    const timeline = lines.filter((l) => /^#\d+ /.test(l));
    expect(timeline).toHaveLength(3);
    const stamp = "\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\dZ";
    expect(timeline[0]).toMatch(new RegExp(`^#0  ${stamp}  kms://localhost  created the group: \\+ alice@example\\.com, \\+ bob@example\\.com$`));
    expect(timeline[1]).toMatch(new RegExp(`^#1  ${stamp}  alice@example\\.com  \\+ carol@example\\.com$`));
    expect(timeline[2]).toMatch(new RegExp(`^#2  ${stamp}  alice@example\\.com  - bob@example\\.com$`));
    expect(out.indexOf("chain verified")).toBeLessThan(out.indexOf("members ("));
    expect(out.indexOf("members (")).toBeLessThan(out.indexOf("#0 "));
  }, TIMEOUT);

  it("a refused change exits non-zero with a readable message", async () => {
    const created = await group(["create", "--user", "alice@example.com", "--add", "alice@example.com"]);
    expect(created.code, created.stderr).toBe(0);
    const uri = created.stdout.trim();
    const again = await group(["add", uri, "alice@example.com", "--user", "alice@example.com"]);
    expect(again.code).not.toBe(0);
    expect(again.stderr).toMatch(/already a member/);
    // bob is not a member: the KMS refuses him (403).
    const bob = await group(["show", uri, "--user", "bob@example.com"]);
    expect(bob.code).not.toBe(0);
    expect(bob.stderr).toMatch(/403/);
    expect(statSync(join(home, "devices", "bob@example.com.json")).mode & 0o777).toBe(0o600);
  }, TIMEOUT);

  it("ping still works with the shared connection lookup", async () => {
    const ping = await runCli(["ping", "--user", "alice@example.com", "--dir", dir], env);
    expect(ping.code, ping.stderr).toBe(0);
    expect(ping.stdout).toContain("ping ok");
  }, TIMEOUT);
});
