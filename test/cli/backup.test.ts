import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeviceKey, Groups, GroupKeys, type KmsClient } from "../../src/client/index.js";
import { parseMasterKey } from "../../src/server/barrier/master-key.js";
import { BACKUP_MAGIC, backupDataDir, restoreDataDir, type BackupManifest } from "../../src/cli/backup.js";
import { runCli } from "../helpers/cli.js";
import { initTestDataDir, spawnServe, stopAllServers, type TestDataDir } from "../helpers/spawn-kms.js";

const ALICE = "alice@example.com";
const BOB = "bob@example.com";
const mode = (p: string) => statSync(p).mode & 0o777;

/** What a load loop had acknowledged, and when. */
interface Acked {
  readonly group: string;
  readonly tail: string;
  readonly gk: string;
  readonly key: Uint8Array;
  readonly at: number;
}

/** The manifest line of an archive file. */
function manifestOf(bytes: Buffer): { manifest: BackupManifest; dataStart: number } {
  const first = bytes.indexOf(0x0a);
  const second = bytes.indexOf(0x0a, first + 1);
  return { manifest: JSON.parse(bytes.subarray(first + 1, second).toString("utf8")) as BackupManifest, dataStart: second + 1 };
}

describe("keyward backup / restore of a KMS under a write load", () => {
  let data: TestDataDir;
  let root: string;
  let archive: string;
  let masterKeyText: string;
  let backupOut: { code: number | null; stdout: string; stderr: string };
  let backupMs: number;
  const acked: Acked[] = [];
  let ackedBeforeBackup: Acked[] = [];
  let writesDuringBackup = 0;
  let device: DeviceKey;
  const clients: KmsClient[] = [];

  beforeAll(async () => {
    data = await initTestDataDir();
    root = mkdtempSync(join(tmpdir(), "keyward-backup-"));
    archive = join(root, "backup.kwb");
    masterKeyText = readFileSync(join(data.dataDir, "master.key"), "utf8").trim();
    const kms = await spawnServe(data, { workers: 1 });
    device = await DeviceKey.generate({ kid: "alice-laptop" });
    const setup = data.client(ALICE, kms.url);
    clients.push(setup);
    await new Groups(setup, { user: ALICE, device }).registerDevice();

    // Two SDK clients writing in a loop: a group, an append, a GK bound to the new tail.
    let stop = false;
    let backupStarted = Infinity;
    let backupEnded = Infinity;
    const loop = async () => {
      const client = data.client(ALICE, kms.url);
      clients.push(client);
      const groups = new Groups(client, { user: ALICE, device });
      const gks = new GroupKeys(client, { user: ALICE, device });
      while (!stop) {
        const { uri } = await groups.create([ALICE]);
        const tail = await groups.add(uri, [BOB]);
        const gk = await gks.create({ block: tail });
        const at = performance.now();
        if (at > backupStarted && at < backupEnded) writesDuringBackup++;
        acked.push({ group: uri, tail, gk: gk.uri, key: gk.key, at });
      }
    };
    const loops = [loop(), loop()];
    try {
      // Some state first, then the backup while the loops keep writing.
      while (acked.length < 6) await new Promise((r) => setTimeout(r, 20));
      backupStarted = performance.now();
      ackedBeforeBackup = [...acked];
      backupOut = await runCli(["backup", "--dir", data.dataDir, "--out", archive], { timeoutMs: 60_000 });
      backupEnded = performance.now();
      backupMs = backupEnded - backupStarted;
      // A few more writes after the backup, which the restore must not need.
      const n = acked.length;
      while (acked.length < n + 2) await new Promise((r) => setTimeout(r, 20));
    } finally {
      stop = true;
      await Promise.allSettled(loops);
    }
    await stopAllServers();
  }, 120_000);

  afterAll(async () => {
    for (const c of clients) await c.close().catch(() => undefined);
    await stopAllServers();
    await data?.close();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  it("writes one archive (mode 0600) while the KMS serves and the clients write", () => {
    expect(backupOut.code, backupOut.stderr).toBe(0);
    expect(backupOut.stderr).toBe("");
    expect(backupOut.stdout).toMatch(/backed up .* to .*backup\.kwb: \d+ bytes/);
    expect(backupOut.stdout).toContain("the master key is NOT in this archive");
    expect(mode(archive)).toBe(0o600);
    const bytes = readFileSync(archive);
    expect(bytes.subarray(0, BACKUP_MAGIC.length).toString()).toBe(BACKUP_MAGIC);
    const { manifest } = manifestOf(bytes);
    expect(manifest.masterKeyIncluded).toBe(false);
    expect(manifest.files.map((f) => f.path).sort()).toEqual(
      ["ca-key.sealed", "ca.pem", "config.json", "dev-idp-key.json", "keyward.db", "kms-cert.pem", "static-key.json"].sort(),
    );
    expect(manifest.store.schemaVersion).toBeGreaterThan(0);
    // No temp files left next to the archive.
    expect(readdirSync(root)).toEqual(["backup.kwb"]);
    console.log(
      `backup: ${bytes.length} bytes (store ${manifest.files.find((f) => f.path === "keyward.db")!.size} bytes, ${ackedBeforeBackup.length} groups acknowledged before, ${writesDuringBackup} acknowledged during) in ${backupMs.toFixed(0)} ms with the CLI process's start; ${/in (\d+) ms/.exec(backupOut.stdout)?.[1]} ms in backupDataDir`,
    );
  });

  it("the archive without --include-master-key holds no form of the master key", () => {
    const bytes = readFileSync(archive);
    const raw = Buffer.from(parseMasterKey(masterKeyText));
    for (const needle of [raw, Buffer.from(masterKeyText), Buffer.from(raw.toString("hex")), Buffer.from(raw.toString("base64"))]) {
      expect(bytes.includes(needle)).toBe(false);
    }
  });

  it("restores into a new dir; the restored KMS (master key supplied apart) has every chain and GK acknowledged before the backup", async () => {
    const dir = join(root, "restored");
    const r = await runCli(["restore", "--in", archive, "--dir", dir]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("every SHA-256 matched");
    expect(r.stdout).toContain("the archive has no master key");
    expect(r.stdout).toMatch(/master\.key.*KEYWARD_MASTER_KEY/);
    expect(mode(dir)).toBe(0o700);
    for (const f of ["config.json", "static-key.json", "ca-key.sealed", "keyward.db", "dev-idp-key.json"]) expect(mode(join(dir, f)), f).toBe(0o600);
    for (const f of ["ca.pem", "kms-cert.pem"]) expect(mode(join(dir, f)), f).toBe(0o644);
    expect(existsSync(join(dir, "master.key"))).toBe(false);
    // No temp dir left next to it.
    expect(readdirSync(root).sort()).toEqual(["backup.kwb", "restored"]);

    // The store's copy is a whole, self-contained SQLite file: no WAL, intact, no dangling reference.
    expect(existsSync(join(dir, "keyward.db-wal"))).toBe(false);
    const db = new Database(join(dir, "keyward.db"), { readonly: true, fileMustExist: true });
    try {
      expect(db.pragma("integrity_check", { simple: true })).toBe("ok");
      expect(db.pragma("foreign_key_check")).toEqual([]);
      expect(db.pragma("journal_mode", { simple: true })).toBe("delete");
      // One snapshot: every GK's block is there, and the GKs are those acknowledged before the
      // backup, plus some written while it ran (at most one in flight per loop beyond those acknowledged).
      expect(db.prepare("SELECT count(*) AS n FROM gks g WHERE g.block_hash IS NOT NULL AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.hash = g.block_hash)").get()).toEqual({ n: 0 });
      const { n } = db.prepare("SELECT count(*) AS n FROM gks").get() as { n: number };
      expect(n).toBeGreaterThanOrEqual(ackedBeforeBackup.length);
      expect(n).toBeLessThanOrEqual(acked.length + 2);
      console.log(`restore: ${n} GKs in the backup (${ackedBeforeBackup.length} acknowledged before it began, ${acked.length} by the end of the load)`);
    } finally {
      db.close();
    }

    // The operator supplies the master key apart.
    writeFileSync(join(dir, "master.key"), masterKeyText + "\n", { mode: 0o600 });
    const restored = await spawnServe({ ...data, dataDir: dir });
    const client = data.client(ALICE, restored.url);
    clients.push(client);
    const groups = new Groups(client, { user: ALICE, device });
    const gks = new GroupKeys(client, { user: ALICE, device });
    expect(ackedBeforeBackup.length).toBeGreaterThanOrEqual(6);
    for (const a of ackedBeforeBackup) {
      const chain = await groups.verify(a.group);
      expect(chain.blocks.map((b) => b.hash)).toContain(a.tail);
      expect(chain.members.members().sort()).toEqual([ALICE, BOB]);
      const gk = await gks.fetch(a.gk);
      expect(Buffer.from(gk.key).equals(Buffer.from(a.key))).toBe(true);
      expect(gk.block).toBe(a.tail);
    }
    // The restored KMS takes writes.
    const { uri } = await groups.create([ALICE]);
    expect((await groups.verify(uri)).blocks).toHaveLength(1);
  }, 60_000);

  it("refuses a tampered archive before writing anything", async () => {
    const bytes = readFileSync(archive);
    const { manifest, dataStart } = manifestOf(bytes);
    // Flip one byte inside static-key.json's bytes.
    let offset = dataStart;
    for (const f of manifest.files) {
      if (f.path === "static-key.json") break;
      offset += f.size;
    }
    const tampered = Buffer.from(bytes);
    tampered[offset + 10] = tampered[offset + 10]! ^ 0x01;
    const file = join(root, "tampered.kwb");
    writeFileSync(file, tampered, { mode: 0o600 });
    const dir = join(root, "from-tampered");
    const r = await runCli(["restore", "--in", file, "--dir", dir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("static-key.json does not match its SHA-256");
    expect(existsSync(dir)).toBe(false);
    expect(readdirSync(root).filter((n) => n.includes("restore-"))).toEqual([]);
  });

  it("refuses hostile archives (path traversal, truncation, trailing bytes, a forged manifest) before writing anything", async () => {
    const bytes = readFileSync(archive);
    const { manifest, dataStart } = manifestOf(bytes);
    const body = bytes.subarray(dataStart);
    const withManifest = (m: unknown, rest: Buffer = body) => Buffer.concat([Buffer.from(`${BACKUP_MAGIC}\n${JSON.stringify(m)}\n`), rest]);
    const cases: [string, Buffer, RegExp][] = [
      ["traversal", withManifest({ ...manifest, files: manifest.files.map((f, i) => (i === 1 ? { ...f, path: "../escaped" } : f)) }), /manifest is not valid/],
      ["absolute", withManifest({ ...manifest, files: manifest.files.map((f, i) => (i === 1 ? { ...f, path: "/tmp/escaped" } : f)) }), /manifest is not valid/],
      ["truncated", bytes.subarray(0, bytes.length - 1), /truncated/],
      ["trailing", Buffer.concat([bytes, Buffer.from("x")]), /longer than its manifest/],
      ["duplicate", withManifest({ ...manifest, files: [...manifest.files, manifest.files[1]] }, Buffer.concat([body, bytes.subarray(dataStart + manifest.files[0]!.size, dataStart + manifest.files[0]!.size + manifest.files[1]!.size)])), /twice/],
      ["not an archive", Buffer.from("hello\n{}\n"), /not a Keyward backup archive/],
      ["extra key", withManifest({ ...manifest, extra: 1 }), /manifest is not valid/],
      ["master key claimed", withManifest({ ...manifest, masterKeyIncluded: true }), /disagrees/],
    ];
    for (const [name, content, reason] of cases) {
      const file = join(root, `hostile-${name.replace(/ /g, "-")}.kwb`);
      writeFileSync(file, content);
      const dir = join(root, `from-${name.replace(/ /g, "-")}`);
      await expect(restoreDataDir({ archive: file, dir, env: {} }), name).rejects.toThrow(reason);
      expect(existsSync(dir), name).toBe(false);
    }
    expect(existsSync(join(root, "escaped"))).toBe(false);
    expect(existsSync("/tmp/escaped")).toBe(false);
  });

  it("refuses a non-empty target dir and leaves it as it was", async () => {
    const dir = join(root, "busy");
    mkdirSync(dir);
    writeFileSync(join(dir, "something"), "keep me");
    const r = await runCli(["restore", "--in", archive, "--dir", dir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("is not an empty directory");
    expect(readdirSync(dir)).toEqual(["something"]);
    expect(readFileSync(join(dir, "something"), "utf8")).toBe("keep me");
  });

  it("refuses a KEYWARD_MASTER_KEY that does not open the restored static key, leaving nothing; accepts the right one", async () => {
    const dir = join(root, "wrong-key");
    const wrong = Buffer.alloc(32, 7).toString("base64url");
    await expect(restoreDataDir({ archive, dir, env: { KEYWARD_MASTER_KEY: wrong } })).rejects.toThrow(/master key does not open/);
    expect(existsSync(dir)).toBe(false);
    expect(readdirSync(root).filter((n) => n.includes("restore-"))).toEqual([]);
    // The right one, from the environment, is checked and accepted.
    const ok = await restoreDataDir({ archive, dir, env: { KEYWARD_MASTER_KEY: masterKeyText } });
    expect(ok.masterKey).toBe("env");
    expect(existsSync(join(dir, "master.key"))).toBe(false);
  });

  it("with --include-master-key: a loud warning, the key in the archive, and a restore that needs nothing else", async () => {
    const out = join(root, "with-key.kwb");
    const r = await runCli(["backup", "--dir", data.dataDir, "--out", out, "--include-master-key"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/WARNING: --include-master-key: this archive will hold the MASTER KEY/);
    expect(r.stdout).toContain("the master key IS in this archive");
    expect(readFileSync(out).includes(Buffer.from(masterKeyText))).toBe(true);
    expect(manifestOf(readFileSync(out)).manifest.masterKeyIncluded).toBe(true);
    const dir = join(root, "restored-with-key");
    const restored = await restoreDataDir({ archive: out, dir, env: {} });
    expect(restored.masterKey).toBe("archive");
    expect(mode(join(dir, "master.key"))).toBe(0o600);
    expect(readFileSync(join(dir, "master.key"), "utf8").trim()).toBe(masterKeyText);
  });

  it("refuses to overwrite an existing file", async () => {
    const r = await runCli(["backup", "--dir", data.dataDir, "--out", archive]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("refusing to overwrite");
    await expect(backupDataDir({ dir: data.dataDir, out: archive, env: {} })).rejects.toThrow(/refusing to overwrite/);
  });

  it("refuses a data dir holding a stray copy of the master key (unless --include-master-key)", async () => {
    const stray = join(data.dataDir, "master.key.bak");
    writeFileSync(stray, masterKeyText + "\n", { mode: 0o600 });
    try {
      const out = join(root, "stray.kwb");
      await expect(backupDataDir({ dir: data.dataDir, out, env: {} })).rejects.toThrow(/master\.key\.bak contains the master key/);
      expect(existsSync(out)).toBe(false);
    } finally {
      rmSync(stray);
    }
  });

  it("an archive written inside the data dir is not archived again, nor its temp files", async () => {
    const inside = join(data.dataDir, "backups");
    mkdirSync(inside, { mode: 0o700 });
    try {
      const first = await backupDataDir({ dir: data.dataDir, out: join(inside, "first.kwb"), env: {} });
      const second = await backupDataDir({ dir: data.dataDir, out: join(inside, "second.kwb"), env: {} });
      expect(first.manifest.files.map((f) => f.path)).not.toContain("backups/first.kwb");
      expect(second.manifest.files.map((f) => f.path).filter((p) => p.startsWith("backups/"))).toEqual([]);
      expect(second.skipped).toEqual(["backups/first.kwb"]);
      expect(readdirSync(inside).sort()).toEqual(["first.kwb", "second.kwb"]);
    } finally {
      rmSync(inside, { recursive: true, force: true });
    }
  });

  it("refuses a PostgreSQL store and points at pg_dump", async () => {
    const out = join(root, "pg.kwb");
    const r = await runCli(["backup", "--dir", data.dataDir, "--out", out], { env: { KEYWARD_STORE_URL: "postgres://127.0.0.1:5432/test" } });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("pg_dump -Fc");
    expect(r.stderr).toContain("docs/operations.md");
    expect(existsSync(out)).toBe(false);
  });
});
