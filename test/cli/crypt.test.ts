import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { decodeProtectedHeader } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLI_MAIN, cleanEnv, freePort, REPO_ROOT, runCli as runCliAs } from "../helpers/cli.js";

/** `keyward encrypt` / `keyward decrypt` run as a user runs them, against `keyward dev` started as a child process. */
const TIMEOUT = 60_000;

/** `runCli(args, env)`: the CLI with a clean environment plus `env`. */
const runCli = async (args: string[], env: Record<string, string>, timeoutMs = 25_000) => {
  const r = await runCliAs(args, { env, timeoutMs });
  return { ...r, stdout: r.stdoutBytes };
};

describe("keyward encrypt / decrypt", () => {
  let root: string;
  let dir: string;
  let env: Record<string, string>;
  let dev: ChildProcess | undefined;

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), "keyward-crypt-cli-"));
    dir = join(root, "dev");
    const kmsPort = await freePort();
    const idpPort = await freePort();
    const issuer = `http://127.0.0.1:${idpPort}`;
    env = {
      KEYWARD_LISTEN: `127.0.0.1:${kmsPort}`,
      KEYWARD_DEV_IDP_LISTEN: `127.0.0.1:${idpPort}`,
      KEYWARD_OAUTH_ISSUER: issuer,
      KEYWARD_OAUTH_JWKS_URI: `${issuer}/jwks`,
      KEYWARD_HOME: join(root, "home"),
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

  const cli = (args: string[]) => runCli([...args, "--dir", dir], env);

  it(
    "alice encrypts a binary file for {alice, bob}; bob decrypts the identical bytes; carol is refused 403",
    async () => {
      const created = await cli(["group", "create", "--user", "alice@example.com", "--add", "alice@example.com", "--add", "bob@example.com"]);
      expect(created.code, created.stderr).toBe(0);
      const group = created.stdout.toString("utf8").trim();
      expect(group).toMatch(/^kms:\/\/localhost\/blocks\/\S+$/);

      // Every byte value, NULs and invalid UTF-8 included.
      const original = Buffer.concat([Buffer.from([0, 0xff, 0xfe, 0x0a, 0x0d, 0x80]), randomBytes(64 * 1024)]);
      const plainPath = join(root, "secret.bin");
      writeFileSync(plainPath, original);

      const encrypted = await cli(["encrypt", "--user", "alice@example.com", "--group", group, plainPath]);
      expect(encrypted.code, encrypted.stderr).toBe(0);
      const jwe = encrypted.stdout.toString("utf8");
      expect(jwe).toMatch(/^[\w-]+\.\.[\w-]+\.[\w-]+\.[\w-]+\n$/);
      const header = decodeProtectedHeader(jwe.trim());
      expect(header).toMatchObject({ alg: "dir", enc: "A256GCM" });
      expect(header.kid).toMatch(/^kms:\/\/localhost\/gks\/\S+$/);
      expect(encrypted.stdout.includes(original.subarray(6, 70))).toBe(false);
      const jwePath = join(root, "secret.bin.jwe");
      writeFileSync(jwePath, encrypted.stdout);

      const decrypted = await cli(["decrypt", "--user", "bob@example.com", jwePath]);
      expect(decrypted.code, decrypted.stderr).toBe(0);
      expect(decrypted.stdout.equals(original)).toBe(true);

      // alice decrypts her own file too.
      const own = await cli(["decrypt", "--user", "alice@example.com", jwePath]);
      expect(own.code, own.stderr).toBe(0);
      expect(own.stdout.equals(original)).toBe(true);

      // carol is not a member: a non-zero exit, nothing on stdout, a readable 403.
      const refused = await cli(["decrypt", "--user", "carol@example.com", jwePath]);
      expect(refused.code).not.toBe(0);
      expect(refused.stdout.length).toBe(0);
      expect(refused.stderr).toMatch(/^keyward: carol@example\.com may not fetch group key kms:\/\/localhost\/gks\/\S+: 403 /);
      expect(refused.stderr).toContain("policy 1");
      expect(refused.stderr).not.toMatch(/\n\s+at /); // no stack trace

      // Nor can she encrypt for a group she is not in.
      const notMember = await cli(["encrypt", "--user", "carol@example.com", "--group", group, plainPath]);
      expect(notMember.code).not.toBe(0);
      expect(notMember.stdout.length).toBe(0);
      expect(notMember.stderr).toMatch(/^keyward: carol@example\.com may not encrypt for kms:\/\/localhost\/blocks\/\S+: 403 /);
    },
    TIMEOUT,
  );

  it("refuses a file that is not a JWE and a missing file, with readable messages", async () => {
    const junk = join(root, "junk.jwe");
    writeFileSync(junk, "this is not encrypted\n");
    const bad = await cli(["decrypt", "--user", "bob@example.com", junk]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/^keyward: .*junk\.jwe is not an encrypted file/);

    const missing = await cli(["encrypt", "--user", "alice@example.com", "--group", "kms://localhost/blocks/x", join(root, "nope.bin")]);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toMatch(/^keyward: cannot read .*nope\.bin: ENOENT/);
  });
});
