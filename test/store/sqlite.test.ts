import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { SqliteStore } from "../../src/store/sqlite/sqlite-store.js";
import type { RecordOutcome } from "../../src/store/store.js";
import { makeChannel, storeContract } from "./contract.js";
import { groupStoreContract } from "./contract-groups.js";
import { auditStoreContract, makeAuditEvent } from "./contract-audit.js";
import { verifyAuditChain } from "../../src/store/audit.js";
import Database from "better-sqlite3";

const REPO_ROOT = resolve(import.meta.dirname, "../..");
const WORKER = join(REPO_ROOT, "test/store/record-worker.ts");

const dirs: string[] = [];
function freshDbPath(): string {
  const dir = mkdtempSync(join(tmpdir(), "keyward-sqlite-"));
  dirs.push(dir);
  return join(dir, "keyward.db");
}
async function removeDirs(): Promise<void> {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
}

// A fresh file per test (open() is called in the contract's beforeEach) ...
storeContract("sqlite (file)", async () => new SqliteStore(freshDbPath()), removeDirs);
// ... and the in-memory database.
storeContract("sqlite (:memory:)", async () => new SqliteStore(":memory:"));
groupStoreContract("sqlite (file)", async () => new SqliteStore(freshDbPath()), removeDirs);
auditStoreContract("sqlite (file)", async () => new SqliteStore(freshDbPath()), removeDirs);

describe("SqliteStore: one file, several connections", () => {
  afterEach(removeDirs);

  it("data survives close and reopen; migrate on reopen keeps it", async () => {
    const path = freshDbPath();
    const a = new SqliteStore(path);
    const c = makeChannel({ credentialKind: "certificate", credentialThumbprint: "tp" });
    await a.createChannel(c);
    await a.initKeyring("kw1.k");
    await a.recordChannelMessage(c.uri, '"r"', 10);
    await a.close();
    const b = new SqliteStore(path);
    await b.migrate();
    expect(await b.getChannel(c.uri)).toEqual({ ...c, messageCount: 1 });
    expect(await b.getKeyring()).toBe("kw1.k");
    expect(await b.recordChannelMessage(c.uri, '"r"', 10)).toBe("replay");
    await b.close();
  });

  it("audit: two connections appending at once keep one linear, verifying chain (§13)", async () => {
    const path = freshDbPath();
    const a = new SqliteStore(path);
    const b = new SqliteStore(path);
    await Promise.all([a, b].flatMap((s, i) => Array.from({ length: 30 }, (_, j) => s.appendAudit(makeAuditEvent({ decision: `conn ${i} #${j}` })))));
    const records = await b.auditRecords({ limit: 1000 });
    expect(records.map((r) => r.seq)).toEqual(Array.from({ length: 60 }, (_, i) => i + 1));
    expect(verifyAuditChain(records)).toMatchObject({ ok: true, count: 60 });
    await a.close();
    await b.close();
  });

  it("audit: a record altered in the data file breaks verification at that record", async () => {
    const path = freshDbPath();
    const a = new SqliteStore(path);
    for (let i = 0; i < 4; i++) await a.appendAudit(makeAuditEvent({ status: 200 }));
    await a.close();
    const raw = new Database(path);
    const body = raw.prepare("SELECT body FROM audit_log WHERE seq = 3").pluck().get() as string;
    raw.prepare("UPDATE audit_log SET body = ? WHERE seq = 3").run(body.replace('"status":200', '"status":403'));
    raw.close();
    const b = new SqliteStore(path);
    expect(verifyAuditChain(await b.auditRecords({ limit: 100 }))).toMatchObject({ ok: false, seq: 3, count: 2 });
    await b.close();
  });

  it("two connections: keyring first writer wins, thumbprints and replays are shared", async () => {
    const path = freshDbPath();
    const a = new SqliteStore(path);
    const b = new SqliteStore(path);
    expect(await a.initKeyring("kw1.a")).toBe("kw1.a");
    expect(await b.initKeyring("kw1.b")).toBe("kw1.a");
    const c = makeChannel();
    expect(await a.createChannel(c)).toBe(true);
    expect(await b.createChannel(makeChannel({ clientKeyThumbprint: c.clientKeyThumbprint }))).toBe(false);
    expect(await a.recordChannelMessage(c.uri, "1", 10)).toBe("recorded");
    expect(await b.recordChannelMessage(c.uri, "1", 10)).toBe("replay");
    expect(await b.deleteChannel(c.uri)).toBe(true);
    expect(await a.recordChannelMessage(c.uri, "2", 10)).toBe("unknown");
    await a.close();
    await b.close();
  });
});

describe("SqliteStore: several processes on one file", () => {
  const children: ChildProcess[] = [];

  afterEach(async () => {
    for (const child of children.splice(0)) {
      if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
        const exited = new Promise((r) => child.once("exit", r));
        process.kill(child.pid, "SIGKILL");
        await exited;
      }
    }
    await removeDirs();
  });

  function startWorker(dbPath: string, uri: string, count: number, seed: number) {
    const child = spawn(process.execPath, ["--import", "tsx", WORKER, dbPath, uri, String(count), String(seed)], {
      cwd: REPO_ROOT,
      stdio: ["pipe", "pipe", "pipe"],
    });
    children.push(child);
    let stdout = "";
    let stderr = "";
    child.stdout!.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    const ready = new Promise<void>((resolveReady, reject) => {
      const check = () => {
        if (stdout.includes("ready\n")) {
          child.stdout!.off("data", check);
          resolveReady();
        }
      };
      child.stdout!.on("data", check);
      child.once("exit", (code) => reject(new Error(`worker exited (${code}) before ready: ${stderr}`)));
    });
    const exit = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
    return {
      ready,
      go: (at: number) => child.stdin!.write(`go ${at}\n`),
      result: async () => {
        const code = await exit;
        expect(code, `worker stderr: ${stderr}`).toBe(0);
        const line = stdout.split("\n").filter((l) => l.startsWith("{")).at(-1)!;
        return JSON.parse(line) as { recorded: string[]; outcomes: Record<RecordOutcome, number> };
      },
    };
  }

  /** Two workers record ids 0..count-1 on a fresh channel; returns how many each recorded. */
  async function race(dbPath: string, count: number, attempt: number): Promise<number[]> {
    const setup = new SqliteStore(dbPath);
    const channel = makeChannel();
    expect(await setup.createChannel(channel)).toBe(true);

    const workers = [startWorker(dbPath, channel.uri, count, 2 * attempt + 1), startWorker(dbPath, channel.uri, count, 2 * attempt + 2)];
    await Promise.all(workers.map((w) => w.ready));
    const at = Date.now() + 200;
    for (const w of workers) w.go(at);
    const results = await Promise.all(workers.map((w) => w.result()));

    const all = results.flatMap((r) => r.recorded);
    expect(all).toHaveLength(count); // sum of "recorded" == distinct ids
    expect(new Set(all)).toEqual(new Set(Array.from({ length: count }, (_, i) => JSON.stringify(i)))); // each id once
    expect(results.reduce((n, r) => n + r.outcomes.replay, 0)).toBe(count);
    for (const r of results) {
      expect(r.outcomes.exhausted).toBe(0);
      expect(r.outcomes.unknown).toBe(0);
    }
    expect((await setup.getChannel(channel.uri))!.messageCount).toBe(count);
    await setup.close();
    return results.map((r) => r.outcomes.recorded);
  }

  it("two processes recording the same requestIds: each is recorded exactly once overall", async () => {
    const dbPath = freshDbPath();
    const init = new SqliteStore(dbPath);
    await init.migrate();
    await init.close();
    // The workers really raced when both recorded some ids; retry a couple of times if the
    // scheduler happened to run them one after the other (every attempt checks correctness).
    let interleaved = false;
    for (let attempt = 0; attempt < 3 && !interleaved; attempt++) {
      const perWorker = await race(dbPath, 2000, attempt);
      interleaved = perWorker.every((n) => n > 0);
    }
    expect(interleaved, "the two workers never ran concurrently").toBe(true);
  }, 90_000);
});
