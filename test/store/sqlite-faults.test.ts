import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, describe, expect, it } from "vitest";
import { DeviceKey, GroupKeys, Groups, KmsRequestError } from "../../src/client/index.js";
import { classifySqliteError, SqliteStore } from "../../src/store/sqlite/sqlite-store.js";
import { StoreUnavailableError } from "../../src/store/store.js";
import { startTestKms } from "../helpers/harness.js";
import { RawChannel } from "../helpers/two-nodes.js";

/**
 * Fault injection on the SQLite store: a data file that cannot be written (or opened) gives 503
 * "store unavailable" and no crash; reads that still work may succeed; the KMS recovers by itself
 * once the file is writable again.
 *
 * How the file is made unwritable, honestly, although the tests run as root (file modes do not
 * stop root, and a mode change does not affect a file SQLite already has open anyway): the
 * immutable attribute (`chattr +i`, Linux, ext4/xfs/btrfs and recent tmpfs, needs
 * CAP_LINUX_IMMUTABLE). The kernel then refuses every write to the file, through descriptors
 * already open too, even for root: SQLite reports SQLITE_IOERR_WRITE, as on a file system that
 * went read-only. Where `chattr` is missing or refused, those tests say so and are skipped.
 */
const dirs: string[] = [];
function freshDir(): string {
  const d = mkdtempSync(join(tmpdir(), "keyward-sqlite-faults-"));
  dirs.push(d);
  return d;
}
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** Whether `chattr +i` works here (and is undone): probed on a scratch file in the temp dir. */
function immutableSupported(): { ok: true } | { ok: false; why: string } {
  const probe = join(freshDir(), "probe");
  writeFileSync(probe, "x");
  const set = spawnSync("chattr", ["+i", probe], { encoding: "utf8" });
  if (set.error) return { ok: false, why: `chattr not available (${set.error.message})` };
  if (set.status !== 0) return { ok: false, why: `chattr +i refused: ${set.stderr.trim()}` };
  spawnSync("chattr", ["-i", probe]);
  return { ok: true };
}
const immutable = immutableSupported();
if (!immutable.ok) console.warn(`the SQLite read-only fault tests are SKIPPED: ${immutable.why}`);

const chattr = (flag: "+i" | "-i", paths: string[]) => execFileSync("chattr", [flag, ...paths]);

describe("classifying better-sqlite3 errors (real errors from SQLite)", () => {
  it("a write to a database opened read-only: SQLITE_READONLY", () => {
    const path = join(freshDir(), "ro.db");
    new Database(path).exec("CREATE TABLE t (x)");
    const ro = new Database(path, { readonly: true });
    let error: unknown;
    try {
      ro.prepare("INSERT INTO t VALUES (1)").run();
    } catch (e) {
      error = e;
    } finally {
      ro.close();
    }
    expect(classifySqliteError(error)?.code).toBe("SQLITE_READONLY");
  });

  it("a data file that cannot be opened (the path is a directory): SQLITE_CANTOPEN", () => {
    let error: unknown;
    try {
      new Database(freshDir()).exec("CREATE TABLE t (x)");
    } catch (e) {
      error = e;
    }
    expect(classifySqliteError(error)?.code).toBe("SQLITE_CANTOPEN");
  });

  it("a constraint violation or a bug is not 'unavailable'", () => {
    const db = new Database(":memory:");
    db.exec("CREATE TABLE t (x PRIMARY KEY)");
    db.prepare("INSERT INTO t VALUES (1)").run();
    let error: unknown;
    try {
      db.prepare("INSERT INTO t VALUES (1)").run();
    } catch (e) {
      error = e;
    }
    expect((error as { code: string }).code).toMatch(/^SQLITE_CONSTRAINT/);
    expect(classifySqliteError(error)).toBeUndefined();
    expect(classifySqliteError(new TypeError("x is not a function"))).toBeUndefined();
  });

  it("a write lock held by another connection past busy_timeout: the store's call rejects with StoreUnavailableError SQLITE_BUSY", async () => {
    const path = join(freshDir(), "busy.db");
    const store = new SqliteStore(path);
    const other = new Database(path);
    other.exec("BEGIN IMMEDIATE");
    try {
      const t0 = Date.now();
      const e = await store.initKeyring("sealed").then(() => undefined, (x: unknown) => x);
      expect(e).toBeInstanceOf(StoreUnavailableError);
      expect((e as StoreUnavailableError).code).toMatch(/^SQLITE_BUSY/);
      expect(Date.now() - t0).toBeLessThan(15_000);
    } finally {
      other.exec("ROLLBACK");
      other.close();
    }
    expect(await store.initKeyring("sealed")).toBe("sealed");
    await store.close();
  }, 30_000);
});

(immutable.ok ? describe : describe.skip)("a KMS whose SQLite data file becomes unwritable (chattr +i)", () => {
  it("answers 503 'store unavailable' in the form §4 prescribes, stores nothing, does not crash, and recovers by itself", async () => {
    const kms = await startTestKms();
    const path = kms.config.store.kind === "sqlite" ? kms.config.store.path : "";
    const files = [path, `${path}-wal`];
    const user = "alice@example.com";
    try {
      const client = kms.client(user);
      const device = await DeviceKey.generate({ kid: "alice-sqlite-faults" });
      expect(await new Groups(client, { user, device }).registerDevice()).toBe("registered");
      const gks = new GroupKeys(client, { user, device });
      const before = await gks.create();
      const channelsBefore = kms.channelCount();

      chattr("+i", files);
      try {
        // A request on a live channel: the channel is read (reads still work), then recording its
        // requestId fails: a common message on the channel, 503, with the requestId (the SDK checks it).
        const ping = await client.ping().then(() => undefined, (e: unknown) => e);
        expect(ping).toBeInstanceOf(KmsRequestError);
        expect(ping).toMatchObject({ status: 503, reason: "store unavailable", form: "jwe" });
        const gk = await gks.create().then(() => undefined, (e: unknown) => e);
        expect(gk).toMatchObject({ status: 503, reason: "store unavailable", form: "jwe" });

        // Key agreement: no channel key known yet, so a JWS error, with the requestId it decrypted.
        const raw = new RawChannel(() => kms.token(user), user);
        const ecdhe = await raw.open(kms.url);
        expect(ecdhe).toMatchObject({ status: 503, reason: "store unavailable" });
        expect(typeof ecdhe.requestId).toBe("string");

        // Nothing was stored, and reads still work: /readyz (store reachable) stays 200.
        expect(kms.channelCount()).toBe(channelsBefore);
        expect((await fetch(`${kms.url}/readyz`)).status).toBe(200);
        const logged = kms.logs().split("\n").filter((l) => l.includes('"store unavailable"') && l.includes('"store":{'));
        expect(logged).toHaveLength(3);
        for (const l of logged) {
          expect(l).toMatch(/SQLITE_IOERR/);
          expect(l).not.toMatch(/bearer|requestId|sealed/i);
        }
      } finally {
        chattr("-i", files);
      }

      // Writable again: the same KMS serves, and what it acknowledged before is there.
      await client.ping();
      expect((await gks.fetch(before.uri)).uri).toBe(before.uri);
      const after = await gks.create();
      expect((await gks.fetch(after.uri)).uri).toBe(after.uri);
      expect(kms.channelCount()).toBe(channelsBefore);
    } finally {
      spawnSync("chattr", ["-i", ...files]);
      await kms.close();
    }
  }, 60_000);
});
