import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli as runCliAs, startDevChild, type DevChild } from "../helpers/cli.js";

/** `keyward group ...` run as a user runs it, against `keyward dev` started as a child process. */
const TIMEOUT = 60_000;

/** `runCli(args, env)`: the CLI with a clean environment plus `env`. */
const runCli = (args: string[], env: Record<string, string>, timeoutMs = 25_000) => runCliAs(args, { env, timeoutMs });

describe("keyward group", () => {
  let dir: string;
  let home: string;
  let env: Record<string, string>;

  let devChild: DevChild | undefined;

  beforeAll(async () => {
    devChild = await startDevChild("keyward-group-cli-");
    ({ dir, env } = devChild);
    home = env.KEYWARD_HOME!;
  }, TIMEOUT);

  afterAll(async () => {
    await devChild?.stop();
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
