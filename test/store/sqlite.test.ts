import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { SqliteStore } from "../../src/store/sqlite/sqlite-store.js";
import { makeChannel, storeContract } from "./contract.js";

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

  function startWorker(dbPath: string, uri: string, count: number) {
    const child = spawn(process.execPath, ["--import", "tsx", WORKER, dbPath, uri, String(count)], {
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
      child,
      ready,
      go: () => child.stdin!.write("go\n"),
      result: async () => {
        const code = await exit;
        expect(code, `worker stderr: ${stderr}`).toBe(0);
        const line = stdout.split("\n").filter((l) => l.startsWith("{")).at(-1)!;
        return JSON.parse(line) as { recorded: string[]; outcomes: Record<string, number> };
      },
    };
  }

  it("two processes recording the same requestIds: each is recorded exactly once overall", async () => {
    const dbPath = freshDbPath();
    const setup = new SqliteStore(dbPath);
    await setup.migrate();
    const channel = makeChannel();
    expect(await setup.createChannel(channel)).toBe(true);

    const count = 2000;
    const workers = [startWorker(dbPath, channel.uri, count), startWorker(dbPath, channel.uri, count)];
    await Promise.all(workers.map((w) => w.ready));
    for (const w of workers) w.go();
    const results = await Promise.all(workers.map((w) => w.result()));

    console.log("DIST", results.map((r) => r.outcomes));
    const all = results.flatMap((r) => r.recorded);
    expect(all).toHaveLength(count); // sum of "recorded" == distinct ids
    expect(new Set(all).size).toBe(count); // no id recorded twice
    expect(new Set(all)).toEqual(new Set(Array.from({ length: count }, (_, i) => JSON.stringify(i))));
    const replays = results.reduce((n, r) => n + (r.outcomes.replay ?? 0), 0);
    expect(replays).toBe(count);
    for (const r of results) {
      expect(r.outcomes.exhausted).toBe(0);
      expect(r.outcomes.unknown).toBe(0);
    }
    expect((await setup.getChannel(channel.uri))!.messageCount).toBe(count);
    await setup.close();
  }, 60_000);
});
