import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import pg from "pg";
import { afterEach, describe, expect, it } from "vitest";
import { membershipEffects, PostgresStore } from "../../src/store/postgres/postgres-store.js";
import { postgresMigrations } from "../../src/store/postgres/migrations.js";
import { sqliteMigrations } from "../../src/store/sqlite/migrations.js";
import { adminQuery, freshSchema, postgresForSuite, TEST_POSTGRES_URL } from "../helpers/postgres.js";
import { makeChannel, storeContract } from "./contract.js";
import { groupStoreContract, makeBlock } from "./contract-groups.js";
import { auditStoreContract, makeAuditEvent } from "./contract-audit.js";
import { verifyAuditChain } from "../../src/store/audit.js";

/**
 * The PostgreSQL store against a real server (KEYWARD_TEST_POSTGRES_URL, default
 * postgres://postgres@127.0.0.1:5432/test), each test in a fresh schema dropped afterwards.
 * Without a server the suite is skipped, loudly; in CI (CI set) it fails instead.
 */
const available = await postgresForSuite("the PostgreSQL store suite");

const suite = available ? describe : describe.skip;

/** Schemas created by the current test, dropped by {@link dropSchemas}. */
const schemas: (() => Promise<void>)[] = [];
function newSchema(): string {
  const { schema, dropSchema } = freshSchema();
  schemas.push(dropSchema);
  return schema;
}
async function dropSchemas(): Promise<void> {
  for (const drop of schemas.splice(0)) await drop();
}
const openFresh = async () => new PostgresStore(TEST_POSTGRES_URL, { schema: newSchema() });

suite("PostgresStore", () => {
  storeContract("postgres", openFresh, dropSchemas);
  groupStoreContract("postgres", openFresh, dropSchemas);
  auditStoreContract("postgres", openFresh, dropSchemas);

  describe("several nodes (one pool each) on one database", () => {
    const stores: PostgresStore[] = [];
    afterEach(async () => {
      for (const s of stores.splice(0)) await s.close();
      await dropSchemas();
    });
    function node(schema: string): PostgresStore {
      const s = new PostgresStore(TEST_POSTGRES_URL, { schema, maxConnections: 20 });
      stores.push(s);
      return s;
    }

    it("audit: three nodes appending at once keep one linear, verifying chain (§13)", async () => {
      const schema = newSchema();
      const nodes = Array.from({ length: 3 }, () => node(schema));
      await nodes[0]!.migrate();
      await Promise.all(nodes.flatMap((n, i) => Array.from({ length: 40 }, (_, j) => n.appendAudit(makeAuditEvent({ decision: `node ${i} #${j}` })))));
      const records = await nodes[1]!.auditRecords({ limit: 1000 });
      expect(records.map((r) => r.seq)).toEqual(Array.from({ length: 120 }, (_, i) => i + 1));
      expect(verifyAuditChain(records)).toMatchObject({ ok: true, count: 120 });
    });

    it("migrate from several nodes at once: applied once, all at the latest version", async () => {
      const schema = newSchema();
      const nodes = Array.from({ length: 5 }, () => node(schema));
      const results = await Promise.all(nodes.map((n) => n.migrateTo()));
      const latest = Math.max(...postgresMigrations.map((m) => m.version));
      expect(results.flatMap((r) => r.applied).sort()).toEqual(postgresMigrations.map((m) => m.version).sort());
      for (const r of results) expect(r.after).toBe(latest);
      const rows = await adminQuery<{ version: number }>(`SELECT version FROM "${schema}".schema_migrations ORDER BY version`);
      expect(rows.rows.map((r) => r.version)).toEqual(postgresMigrations.map((m) => m.version));
      for (const n of nodes) expect(await n.schemaVersion()).toBe(latest);
    });

    it("20 parallel appends on one tail from two nodes: exactly one is appended", async () => {
      const schema = newSchema();
      const [a, b] = [node(schema), node(schema)];
      await a.migrate();
      await b.migrate();
      const uri = "kms://kms.example.com/gmbc/race";
      const genesis = makeBlock(0);
      await a.createChain({ uri, requester: "alice@example.com", created: new Date() }, genesis, ["alice@example.com"]);
      const attempts = Array.from({ length: 20 }, (_, i) => ({ block: makeBlock(1), entity: `user${i}@example.com`, store: i % 2 === 0 ? a : b }));
      const outcomes = await Promise.all(
        attempts.map((t) => t.store.appendBlocks(uri, genesis.hash, [t.block], [{ entity: t.entity, optype: "add", position: 1 }])),
      );
      expect(outcomes.filter((o) => o === "appended")).toHaveLength(1);
      expect(outcomes.filter((o) => o === "conflict")).toHaveLength(19);
      const winner = attempts[outcomes.indexOf("appended")]!;
      for (const s of [a, b]) {
        expect(await s.getChain(uri)).toMatchObject({ length: 2, tailHash: winner.block.hash });
        expect((await s.getBlocks(uri)).map((x) => x.hash)).toEqual([genesis.hash, winner.block.hash]);
      }
      const members = await adminQuery<{ entity: string }>(`SELECT entity FROM "${schema}".memberships ORDER BY entity`);
      expect(members.rows.map((r) => r.entity)).toEqual(["alice@example.com", winner.entity]);
    });

    it("replay records and the message limit hold across nodes", async () => {
      const schema = newSchema();
      const [a, b] = [node(schema), node(schema)];
      await a.migrate();
      const c = makeChannel();
      expect(await a.createChannel(c)).toBe(true);
      expect(await b.createChannel(makeChannel({ clientKeyThumbprint: c.clientKeyThumbprint }))).toBe(false);
      // Every id sent to both nodes at once: each is recorded exactly once.
      const ids = Array.from({ length: 100 }, (_, i) => JSON.stringify(i));
      const outcomes = await Promise.all(ids.flatMap((id) => [a.recordChannelMessage(c.uri, id, 1_000_000), b.recordChannelMessage(c.uri, id, 1_000_000)]));
      expect(outcomes.filter((o) => o === "recorded")).toHaveLength(100);
      expect(outcomes.filter((o) => o === "replay")).toHaveLength(100);
      expect((await b.getChannel(c.uri))!.messageCount).toBe(100);
      // Near the limit: never past it, and refused ids leave no record.
      const more = Array.from({ length: 40 }, (_, i) => JSON.stringify(`m${i}`));
      const limited = await Promise.all(more.map((id, i) => (i % 2 ? a : b).recordChannelMessage(c.uri, id, 110)));
      expect(limited.filter((o) => o === "recorded")).toHaveLength(10);
      expect(limited.filter((o) => o === "exhausted")).toHaveLength(30);
      expect((await a.getChannel(c.uri))!.messageCount).toBe(110);
      const records = await adminQuery<{ n: string }>(`SELECT count(*) AS n FROM "${schema}".channel_requests`);
      expect(Number(records.rows[0]!.n)).toBe(110);
    });

    it("deleteChannel racing recordChannelMessage leaves no orphan replay record", async () => {
      const schema = newSchema();
      const [a, b] = [node(schema), node(schema)];
      await a.migrate();
      for (let round = 0; round < 20; round++) {
        const c = makeChannel();
        await a.createChannel(c);
        await Promise.all([
          ...Array.from({ length: 10 }, (_, i) => a.recordChannelMessage(c.uri, String(i), 1_000)),
          b.deleteChannel(c.uri),
          ...Array.from({ length: 10 }, (_, i) => b.recordChannelMessage(c.uri, String(i + 10), 1_000)),
        ]);
      }
      const orphans = await adminQuery<{ n: string }>(
        `SELECT count(*) AS n FROM "${schema}".channel_requests r WHERE NOT EXISTS (SELECT 1 FROM "${schema}".channels c WHERE c.uri = r.channel_uri)`,
      );
      expect(Number(orphans.rows[0]!.n)).toBe(0);
    });
  });

  describe("schema, migrations and configuration", () => {
    const stores: PostgresStore[] = [];
    afterEach(async () => {
      for (const s of stores.splice(0)) await s.close();
      await dropSchemas();
    });

    it("the migrations have the SQLite store's versions and names", () => {
      expect(postgresMigrations.map(({ version, name }) => ({ version, name }))).toEqual(sqliteMigrations.map(({ version, name }) => ({ version, name })));
    });

    it("creates the schema and its tables there (only there); schemaVersion before and after", async () => {
      const schema = newSchema();
      const s = new PostgresStore(TEST_POSTGRES_URL, { schema });
      stores.push(s);
      expect(await s.schemaVersion()).toBe(0);
      expect(await s.migrateTo()).toEqual({ before: 0, after: 5, applied: [1, 2, 3, 4, 5] });
      expect(await s.migrateTo()).toEqual({ before: 5, after: 5, applied: [] });
      expect(await s.schemaVersion()).toBe(5);
      const tables = await adminQuery<{ table_name: string }>(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY table_name",
        [schema],
      );
      expect(tables.rows.map((r) => r.table_name)).toEqual(
        ["audit_head", "audit_log", "blocks", "chains", "channel_requests", "channels", "entity_keys", "gks", "keyring", "memberships", "schema_migrations"],
      );
    });

    it("takes the schema from the URL's schema parameter, and keeps the URL's options", async () => {
      const schema = newSchema();
      const url = new URL(TEST_POSTGRES_URL);
      url.searchParams.set("schema", schema);
      url.searchParams.set("options", "-c statement_timeout=5000");
      const s = new PostgresStore(url.toString());
      stores.push(s);
      expect(s.schema).toBe(schema);
      await s.migrate();
      await s.initKeyring("kw1.k");
      const rows = await adminQuery<{ sealed: string }>(`SELECT sealed FROM "${schema}".keyring`);
      expect(rows.rows).toEqual([{ sealed: "kw1.k" }]);
    });

    it("refuses a schema name that is not a plain identifier", () => {
      for (const schema of ["Public", "a-b", "x; DROP TABLE y", "", "1abc"]) {
        expect(() => new PostgresStore(TEST_POSTGRES_URL, { schema })).toThrow(/schema name/);
      }
    });

    it("the membership index query uses the primary key", async () => {
      const schema = newSchema();
      const s = new PostgresStore(TEST_POSTGRES_URL, { schema });
      stores.push(s);
      await s.migrate();
      const client = new pg.Client({ connectionString: TEST_POSTGRES_URL });
      await client.connect();
      try {
        // The planner would scan an empty table sequentially: forbid that to see which index it can use.
        await client.query("SET enable_seqscan = off");
        for (const sql of [
          "SELECT 1 FROM memberships WHERE chain_uri = 'c' AND entity = 'e' AND start_pos <= 3 AND (end_pos IS NULL OR end_pos > 3) LIMIT 1",
          "SELECT 1 FROM memberships WHERE chain_uri = 'c' AND entity = 'e' LIMIT 1",
        ]) {
          const plan = await client.query<{ "QUERY PLAN": string }>(`EXPLAIN ${sql.replace("FROM memberships", `FROM "${schema}".memberships`)}`);
          const text = plan.rows.map((r) => r["QUERY PLAN"]).join("\n");
          expect(text).toMatch(/Index (Only )?Scan using memberships_pkey/);
          expect(text).toMatch(/Index Cond: \(\(chain_uri = 'c'::text\) AND \(entity = 'e'::text\)/);
        }
      } finally {
        await client.end();
      }
    });
  });
});

describe("membershipEffects (the append's membership changes, computed up front)", () => {
  it("closes stored intervals at the first remove, and opens (and closes) the batch's own", () => {
    expect(
      membershipEffects([
        { entity: "d", optype: "add", position: 1 },
        { entity: "b", optype: "remove", position: 1 },
        { entity: "d", optype: "remove", position: 2 },
        { entity: "b", optype: "add", position: 2 },
        { entity: "d", optype: "add", position: 3 },
        { entity: "b", optype: "remove", position: 4 },
      ]),
    ).toEqual({
      close: [
        { entity: "b", position: 1 },
        { entity: "d", position: 2 },
      ],
      open: [
        { entity: "d", start: 1, end: 2 },
        { entity: "b", start: 2, end: 4 },
        { entity: "d", start: 3, end: null },
      ],
    });
  });
});

describe("keyward migrate --dir", () => {
  const REPO_ROOT = resolve(import.meta.dirname, "../..");
  const dirs: string[] = [];
  afterEach(async () => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
    await dropSchemas();
  });

  function dataDir(): string {
    const dir = mkdtempSync(join(tmpdir(), "keyward-migrate-"));
    dirs.push(dir);
    writeFileSync(join(dir, "config.json"), JSON.stringify({ authority: "kms.example.com", oauthIssuer: "https://idp.example.com", oauthJwksUri: "https://idp.example.com/jwks" }));
    return dir;
  }

  function migrate(dir: string, storeUrl?: string): { code: number | null; stdout: string; stderr: string } {
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("KEYWARD_")) env[k] = v;
    if (storeUrl) env.KEYWARD_STORE_URL = storeUrl;
    const r = spawnSync(process.execPath, ["--import", "tsx", join(REPO_ROOT, "src/cli/main.ts"), "migrate", "--dir", dir], { cwd: REPO_ROOT, env, encoding: "utf8", timeout: 25_000 });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr };
  }

  it("SQLite: creates the schema, then finds it up to date", () => {
    const dir = dataDir();
    const first = migrate(dir);
    expect(first, first.stderr).toMatchObject({ code: 0 });
    expect(first.stdout).toBe(`keyward: store ${join(dir, "keyward.db")} at schema version 5 (migrated from version 0)\n`);
    expect(migrate(dir).stdout).toBe(`keyward: store ${join(dir, "keyward.db")} at schema version 5 (already up to date)\n`);
  });

  suite("PostgreSQL", () => {
    it("migrates the schema of KEYWARD_STORE_URL (password masked), then finds it up to date", () => {
      const dir = dataDir();
      const schema = newSchema();
      const url = new URL(TEST_POSTGRES_URL);
      url.searchParams.set("schema", schema);
      const first = migrate(dir, url.toString());
      expect(first, first.stderr).toMatchObject({ code: 0 });
      expect(first.stdout).toMatch(new RegExp(`^keyward: store postgres://\\S+ \\(schema ${schema}\\) at schema version 5 \\(migrated from version 0\\)\\n$`));
      expect(migrate(dir, url.toString()).stdout).toMatch(/at schema version 5 \(already up to date\)/);
    });

    it("an unreachable server fails with the masked URL", () => {
      const r = migrate(dataDir(), "postgres://keyward:s3cret@127.0.0.1:1/keyward");
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/PostgreSQL store postgres:\/\/keyward:\*\*\*@127\.0\.0\.1:1\/keyward \(schema public\): .*ECONNREFUSED/);
      expect(r.stderr).not.toMatch(/s3cret/);
    });
  });
});
