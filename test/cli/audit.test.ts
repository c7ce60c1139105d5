import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config/config.js";
import type { AuditRecord } from "../../src/store/audit.js";
import { SqliteStore } from "../../src/store/sqlite/sqlite-store.js";
import { runCli } from "../helpers/cli.js";

const TIMEOUT = 60_000;

/** `keyward audit verify` and `keyward audit show` on a data directory's SQLite store (docs/audit.md). */
describe("keyward audit", () => {
  let root: string;
  let dir: string;
  let dbPath: string;
  const gk = "kms://kms.example.com/gks/g1";

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), "keyward-audit-cli-"));
    dir = join(root, "data");
    // A configuration is all the audit commands read (no keys: they never open the barrier).
    mkdirSync(dir);
    writeFileSync(join(dir, "config.json"), JSON.stringify({ authority: "kms.example.com", oauthIssuer: "https://idp.example.com", oauthJwksUri: "https://idp.example.com/jwks" }));
    const location = loadConfig(dir, {}).store;
    if (location.kind !== "sqlite") throw new Error("expected the SQLite store");
    dbPath = location.path;
    const store = new SqliteStore(dbPath);
    const t = (s: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, s));
    await store.appendAudit({ time: t(1), operation: "gk.create", actor: "alice@example.com", object: gk, status: 201, recipients: ["a1"], decision: "requester (unbound)" });
    await store.appendAudit({ time: t(2), operation: "gk.get", actor: "kms://kms.b.example", entity: "bob@b.example", object: gk, status: 200, recipients: ["kms://kms.b.example"], decision: "policy 1: entitled" });
    await store.appendAudit({ time: t(3), operation: "retrieve gks", actor: "mallory@example.com", object: gk, status: 403, code: "ERR_POLICY" });
    await store.appendAudit({ time: t(4), operation: "gmbc.genesis", actor: "alice@example.com", object: "kms://kms.example.com/blocks/c1", status: 201 });
    await store.close();
  }, TIMEOUT);

  afterAll(() => rmSync(root, { recursive: true, force: true }));

  const show = async (...args: string[]) => {
    const r = await runCli(["audit", "show", "--dir", dir, "--json", ...args]);
    expect(r.code, r.stderr).toBe(0);
    return r.stdout.trim().split("\n").filter(Boolean).map((l) => JSON.parse(l) as AuditRecord);
  };

  it("show: every record as JSON lines, filtered by --entity (actor or acted-for user), --object, --since", async () => {
    expect((await show()).map((r) => r.seq)).toEqual([1, 2, 3, 4]);
    expect((await show("--entity", "bob@b.example")).map((r) => r.seq)).toEqual([2]);
    expect((await show("--entity", "alice@example.com", "--object", gk)).map((r) => r.seq)).toEqual([1]);
    expect((await show("--since", "2026-01-01T00:00:03Z")).map((r) => r.seq)).toEqual([3, 4]);
  }, TIMEOUT);

  it("show without --json: one line per record", async () => {
    const r = await runCli(["audit", "show", "--dir", dir, "--object", gk]);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trim().split("\n");
    expect(lines).toHaveLength(3);
    expect(lines[1]).toContain("kms://kms.b.example for bob@b.example");
    expect(lines[2]).toMatch(/^3 {2}2026-01-01T00:00:03\.000Z {2}retrieve gks {2}403 {2}mallory@example\.com .*ERR_POLICY/);
  }, TIMEOUT);

  it("verify: exit 0 with the count; an altered record → exit 1 naming it; a removed last record → exit 1", async () => {
    const ok = await runCli(["audit", "verify", "--dir", dir]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/^keyward: audit log verified: 4 records \(head 4 [0-9a-f]{64}\)\n$/);

    const db = new Database(dbPath);
    const body = db.prepare("SELECT body FROM audit_log WHERE seq = 2").pluck().get() as string;
    db.prepare("UPDATE audit_log SET body = ? WHERE seq = 2").run(body.replace("bob@b.example", "eve@b.example"));
    db.close();
    const broken = await runCli(["audit", "verify", "--dir", dir]);
    expect(broken.code).toBe(1);
    expect(broken.stderr).toMatch(/audit log broken at record 2: its hash does not match its contents/);

    const db2 = new Database(dbPath);
    db2.prepare("UPDATE audit_log SET body = ? WHERE seq = 2").run(body);
    db2.prepare("DELETE FROM audit_log WHERE seq = 4").run();
    db2.close();
    const truncated = await runCli(["audit", "verify", "--dir", dir]);
    expect(truncated.code).toBe(1);
    expect(truncated.stderr).toMatch(/audit log broken at record 4: the log's head is record 4 but the records end at 3/);
  }, TIMEOUT);
});
