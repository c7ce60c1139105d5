import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { decodeProtectedHeader } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli as runCliAs, startDevChild, type DevChild } from "../helpers/cli.js";

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

  let devChild: DevChild | undefined;

  beforeAll(async () => {
    devChild = await startDevChild("keyward-crypt-cli-");
    ({ root, dir, env } = devChild);
  }, TIMEOUT);

  afterAll(async () => {
    await devChild?.stop();
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
