import { existsSync, readFileSync } from "node:fs";
import { afterAll, describe, expect, it } from "vitest";
import type { KmsClient } from "../../src/client/index.js";
import {
  FreshConnectionTransport,
  initTestDataDir,
  killServe,
  spawnServe,
  stopAllServers,
  waitForPidGone,
  type TestDataDir,
} from "../helpers/spawn-kms.js";

/** user+system CPU time of a process so far, in clock ticks (/proc/<pid>/stat fields 14 and 15); 0 without /proc. */
function cpuTicks(pid: number): number {
  if (!existsSync(`/proc/${pid}/stat`)) return 0;
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[11]) + Number(fields[12]);
}

describe("keyward serve --workers 2 (node:cluster, one SQLite file)", () => {
  let data: TestDataDir | undefined;

  afterAll(async () => {
    await stopAllServers();
    await data?.close();
  });

  it("serves channels across workers, keeps serving when a worker is SIGKILLed, restarts it, and stops on SIGTERM", async () => {
    data = await initTestDataDir();
    const d = data;
    const s = await spawnServe(d, { workers: 2 });
    expect(s.stdout()).toMatch(/keyward: KMS kms:\/\/kms\.example\.com listening on http:\/\/127\.0\.0\.1:\d+ \(2 workers\)/);
    const [w1, w2] = s.workerPids();
    expect(s.workerPids()).toHaveLength(2);
    expect(new Set([w1, w2, s.pid]).size).toBe(3);

    // Five users, each with a channel, pinged in turn over a fresh connection per request: the
    // workers accept connections from the shared socket, so each channel is used on both workers,
    // whichever one opened it.
    const users = ["alice", "bob", "carol", "dave", "erin"].map((u) => `${u}@example.com`);
    const transports = users.map(() => new FreshConnectionTransport(s.url));
    const clients: KmsClient[] = users.map((u, i) => d.client(u, s.url, { transport: transports[i]! }));
    const failed = () => transports.reduce((n, t) => n + t.stats.failed, 0);
    const pingRound = async () => {
      for (const c of clients) await c.ping();
    };
    for (const c of clients) await c.connect();
    const channels = clients.map((c) => c.channel!.uri);

    const before = [cpuTicks(w1!), cpuTicks(w2!)];
    for (let round = 0; round < 20; round++) await pingRound();
    const after = [cpuTicks(w1!), cpuTicks(w2!)];
    // Both workers did work (an idle worker uses ~0 ticks; 50 pings each cost well over one tick).
    if (existsSync("/proc/self/stat")) expect(after[0]! - before[0]!, "worker 1 CPU ticks during 100 pings").toBeGreaterThan(0);
    if (existsSync("/proc/self/stat")) expect(after[1]! - before[1]!, "worker 2 CPU ticks during 100 pings").toBeGreaterThan(0);
    expect(failed()).toBe(0);

    // SIGKILL one worker between requests: the other serves the very next requests (sent at once,
    // before the primary even noticed), on every channel, whichever worker opened it.
    process.kill(w1!, "SIGKILL");
    for (let round = 0; round < 4; round++) await pingRound();
    await waitForPidGone(w1!);
    expect(failed(), "requests that failed after the kill").toBe(0);
    expect(clients.map((c) => c.channel!.uri), "no channel was re-opened").toEqual(channels);

    // The primary logs the death and starts a new worker.
    await s.waitFor(new RegExp(`keyward: worker ${w1} died \\(signal SIGKILL\\); restarting it in \\d+ ms`), 10_000);
    const restarted = await s.waitFor(/keyward: worker (\d+) listening[^]*keyward: worker (\d+) listening[^]*keyward: worker (\d+) listening/, 20_000);
    const w3 = Number(restarted[3]);
    expect([w1, w2]).not.toContain(w3);
    expect(s.workerPids()).toEqual([w1, w2, w3]);
    for (let round = 0; round < 4; round++) await pingRound();
    expect(failed()).toBe(0);

    // SIGTERM: the primary stops both workers and exits 0.
    process.kill(s.pid, "SIGTERM");
    expect(await s.exited).toEqual({ code: 0, signal: null });
    await waitForPidGone(w2!);
    await waitForPidGone(w3);
    expect(s.stdout() + s.stderr()).not.toMatch(/internal error|SQLITE_BUSY|database is locked/);
  }, 40_000);

  it("--workers 2 on a port that is taken fails at start-up with the worker's reason", async () => {
    const d = data ?? (data = await initTestDataDir());
    const first = await spawnServe(d, { workers: 1 });
    try {
      const port = Number(new URL(first.url).port);
      await expect(spawnServe(d, { workers: 2, port })).rejects.toThrow(/serve exited \({"code":1[^]*before listening[^]*EADDRINUSE/);
    } finally {
      await killServe(first);
    }
  }, 40_000);
});
