import { createHash, randomBytes } from "node:crypto";
import {
  chmodSync,
  closeSync,
  existsSync,
  fstatSync,
  fsyncSync,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  rmdirSync,
  rmSync,
  writeSync,
} from "node:fs";
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import Database from "better-sqlite3";
import type { Command } from "commander";
import { z } from "zod";
import { resolveConfig, type KeywardConfig } from "../config/config.js";
import { parseMasterKey } from "../server/barrier/master-key.js";
import { DATA_FILES, loadStaticKey } from "../server/data-dir.js";

/**
 * The backup archive (docs/operations.md, "Backup and restore"): a one-line magic, a one-line JSON
 * manifest, then the bytes of every file the manifest lists, in its order, with nothing after.
 * Node alone writes and reads it (no archive package), and the manifest's SHA-256 per file is
 * checked before a restore writes anything.
 */
export const BACKUP_MAGIC = "KEYWARD-BACKUP/1";
/** A manifest larger than this is refused before it is parsed (hostile or corrupt archive). */
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
/** Archive paths: relative, `/`-separated, plain names (no `.`/`..`, no absolute path, no backslash). */
const ARCHIVE_PATH = /^(?!\.{1,2}(?:\/|$))[A-Za-z0-9_][A-Za-z0-9._-]*(?:\/(?!\.{1,2}(?:\/|$))[A-Za-z0-9_][A-Za-z0-9._-]*)*$/;
const CHUNK = 1024 * 1024;

const manifestSchema = z
  .object({
    format: z.literal("keyward-backup"),
    version: z.literal(1),
    created: z.string(),
    authority: z.string(),
    masterKeyIncluded: z.boolean(),
    store: z.object({ kind: z.literal("sqlite"), file: z.string().regex(ARCHIVE_PATH), schemaVersion: z.number().int().nonnegative() }).strict(),
    files: z
      .array(
        z
          .object({
            path: z.string().max(255).regex(ARCHIVE_PATH),
            size: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
            sha256: z.string().regex(/^[0-9a-f]{64}$/),
          })
          .strict(),
      )
      .max(10_000),
  })
  .strict();

/** The manifest line of an archive. */
export type BackupManifest = z.infer<typeof manifestSchema>;

export interface BackupOptions {
  readonly dir: string;
  readonly out: string;
  /** Put the master key into the archive too (then the archive alone opens every secret). */
  readonly includeMasterKey?: boolean;
  readonly env?: Record<string, string | undefined>;
}

export interface BackupResult {
  readonly out: string;
  readonly bytes: number;
  readonly manifest: BackupManifest;
  /** Files of the data dir not archived (not regular files, or names outside ARCHIVE_PATH), relative paths. */
  readonly skipped: string[];
  readonly milliseconds: number;
}

/**
 * `keyward backup`: a consistent snapshot of a data dir while its KMS serves. The SQLite store is
 * copied with SQLite's online backup API (better-sqlite3 `db.backup()`: one read snapshot, writers
 * keep going), the other files of the data dir are read as they are; everything goes into one
 * archive (mode 0600, never overwriting a file). `master.key` is left out unless
 * `includeMasterKey`. A PostgreSQL store is refused: pg_dump is the tool for it.
 *
 * @example
 * const r = await backupDataDir({ dir: "/var/lib/keyward", out: "/backups/keyward-2026-12-04.kwb" });
 * console.log(`${r.bytes} bytes, ${r.manifest.files.length} files`);
 */
export async function backupDataDir(opts: BackupOptions): Promise<BackupResult> {
  const started = performance.now();
  const dir = resolve(opts.dir);
  const out = resolve(opts.out);
  const env = opts.env ?? process.env;
  const config = dataDirConfig(dir, env);
  if (config.store.kind === "postgres") {
    throw new Error(
      "the store is PostgreSQL (storeUrl / KEYWARD_STORE_URL): keyward backup copies SQLite stores only. Back up the schema with `pg_dump -Fc` and copy the data dir's files (master key kept apart); see docs/operations.md",
    );
  }
  const storePath = config.store.path;
  if (storePath === ":memory:") throw new Error("the store is in memory (sqlite::memory:): there is nothing to back up");
  if (!existsSync(storePath)) throw new Error(`no store at ${storePath} (has keyward serve run on this data dir?)`);
  if (existsSync(out)) throw new Error(`refusing to overwrite ${out}: choose a new file name (nothing was written)`);
  if (!existsSync(dirname(out))) throw new Error(`the directory of ${out} does not exist`);

  const insideDir = (p: string) => {
    const r = relative(dir, p);
    return r !== "" && !r.startsWith("..") && !isAbsolute(r) ? r.split(sep).join("/") : undefined;
  };
  const storeName = insideDir(storePath) ?? "keyward.db";
  const excluded = new Set([storeName, `${storeName}-wal`, `${storeName}-shm`, `${storeName}-journal`, DATA_FILES.masterKey]);
  const masterKeyName = insideDir(config.masterKeyFile);
  if (masterKeyName) excluded.add(masterKeyName);
  const outName = insideDir(out);

  // The master key as it can be read now (env or file): to include it, or to make sure no other
  // file carries a copy of it into an archive that is meant to be without it.
  const masterKeyText = config.masterKeyFromEnv ?? (existsSync(config.masterKeyFile) ? readFileSync(config.masterKeyFile, "utf8") : undefined);
  if (opts.includeMasterKey && masterKeyText === undefined) {
    throw new Error(`--include-master-key: no master key to include (neither KEYWARD_MASTER_KEY nor ${config.masterKeyFile})`);
  }

  const work = mkdtempSync(join(dirname(out), `.${basename(out)}.tmp-`));
  chmodSync(work, 0o700);
  // The output may be inside the data dir: neither it nor its temp dir goes into the archive.
  const workName = insideDir(work);
  try {
    // 1. The store: SQLite's online backup, into a private temp file next to the output.
    const dbCopy = join(work, "store.db");
    const source = new Database(storePath, { readonly: true, fileMustExist: true });
    try {
      // After the first step, copy everything left in one step: a write by another connection
      // between steps restarts the backup, which under a steady write load could go on forever.
      await source.backup(dbCopy, { progress: () => 1 << 30 });
    } finally {
      source.close();
    }
    chmodSync(dbCopy, 0o600);
    const copy = new Database(dbCopy, { fileMustExist: true });
    let schemaVersion: number;
    try {
      const check = copy.pragma("quick_check", { simple: true });
      if (check !== "ok") throw new Error(`the store's copy fails SQLite's quick_check: ${String(check)}`);
      // A self-contained file: no WAL to carry along.
      copy.pragma("journal_mode = DELETE");
      const table = copy.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").get();
      schemaVersion = table ? ((copy.prepare("SELECT max(version) AS v FROM schema_migrations").get() as { v: number | null }).v ?? 0) : 0;
    } finally {
      copy.close();
    }

    // 2. The data dir's other files, as they are (sealed secrets and public files).
    const sources: { path: string; from: string }[] = [{ path: storeName, from: dbCopy }];
    const skipped: string[] = [];
    for (const rel of walk(dir)) {
      if (excluded.has(rel) || rel === outName || (workName !== undefined && rel.startsWith(`${workName}/`))) continue;
      const full = join(dir, ...rel.split("/"));
      if (!lstatSync(full).isFile() || !ARCHIVE_PATH.test(rel) || isArchive(full)) {
        skipped.push(rel);
        continue;
      }
      sources.push({ path: rel, from: full });
    }
    if (opts.includeMasterKey) {
      const mk = join(work, "master.key");
      writePrivate(mk, Buffer.from(masterKeyText!.trim() + "\n"));
      sources.push({ path: DATA_FILES.masterKey, from: mk });
    } else if (masterKeyText !== undefined) {
      refuseMasterKeyCopies(masterKeyText, sources.slice(1));
    }

    const files = sources.map((s) => ({ path: s.path, ...hashFile(s.from) }));
    const manifest: BackupManifest = {
      format: "keyward-backup",
      version: 1,
      created: new Date().toISOString(),
      authority: config.authority,
      masterKeyIncluded: opts.includeMasterKey === true,
      store: { kind: "sqlite", file: storeName, schemaVersion },
      files,
    };

    // 3. The archive: a private temp file, fsynced, then linked to its name (link fails if the
    // name exists: never an overwrite, even when another backup races this one).
    const tmpOut = join(work, "archive");
    const fd = openSync(tmpOut, "wx", 0o600);
    let bytes = 0;
    try {
      bytes += writeAll(fd, Buffer.from(`${BACKUP_MAGIC}\n${JSON.stringify(manifest)}\n`));
      for (const s of sources) bytes += copyInto(fd, s.from);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    try {
      linkSync(tmpOut, out);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "EEXIST") throw new Error(`refusing to overwrite ${out}: it appeared during the backup (nothing was written)`, { cause: e });
      throw e;
    }
    return { out, bytes, manifest, skipped, milliseconds: performance.now() - started };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

export interface RestoreOptions {
  readonly archive: string;
  /** The new data dir: absent or empty. */
  readonly dir: string;
  readonly env?: Record<string, string | undefined>;
}

export interface RestoreResult {
  readonly dir: string;
  readonly manifest: BackupManifest;
  /** Where the master key comes from after the restore; undefined: nowhere yet (the operator supplies it). */
  readonly masterKey: "archive" | "env" | undefined;
  /** The restored config names a store elsewhere than the restored file (storeUrl / KEYWARD_STORE_URL). */
  readonly storeElsewhere?: string;
}

/**
 * `keyward restore`: checks an archive of {@link backupDataDir} completely (format, paths, sizes,
 * SHA-256 of every file) before writing anything, then writes it into a new data dir (absent or
 * empty; a non-empty one is refused) through a temp dir renamed into place. Secret files get mode
 * 0600 as `init` writes them, certificates 0644. When a master key is at hand (in the archive or
 * KEYWARD_MASTER_KEY) it must open the restored static key, else nothing is left behind.
 *
 * @example
 * const r = await restoreDataDir({ archive: "/backups/keyward-2026-12-04.kwb", dir: "/var/lib/keyward-new" });
 * if (!r.masterKey) console.log("put the master key in master.key or KEYWARD_MASTER_KEY");
 */
export async function restoreDataDir(opts: RestoreOptions): Promise<RestoreResult> {
  const dir = resolve(opts.dir);
  const env = opts.env ?? process.env;
  if (existsSync(dir) && (!lstatSync(dir).isDirectory() || readdirSync(dir).length > 0)) {
    throw new Error(`refusing to restore into ${dir}: it exists and is not an empty directory (restore into a new one; nothing was written)`);
  }
  const fd = openSync(resolve(opts.archive), "r");
  try {
    const { manifest, dataStart } = readManifest(fd);
    // The whole archive is checked before anything is written.
    const total = fstatSync(fd).size;
    const expected = manifest.files.reduce((n, f) => n + f.size, dataStart);
    if (total !== expected) {
      throw new Error(`the archive is ${total < expected ? "truncated" : "longer than its manifest says"} (${total} bytes, the manifest accounts for ${expected}); nothing was written`);
    }
    const seen = new Set<string>();
    for (const f of manifest.files) {
      const key = f.path.toLowerCase();
      if (seen.has(key)) throw new Error(`the archive lists ${f.path} twice; nothing was written`);
      seen.add(key);
    }
    for (const f of manifest.files) {
      for (const other of seen) if (other.startsWith(`${f.path.toLowerCase()}/`)) throw new Error(`the archive has ${f.path} both as a file and as a directory; nothing was written`);
    }
    if (!seen.has(manifest.store.file.toLowerCase()) || !seen.has(DATA_FILES.config) || !seen.has(DATA_FILES.staticKey)) {
      throw new Error(`the archive lacks ${manifest.store.file}, ${DATA_FILES.config} or ${DATA_FILES.staticKey}: it is not a data dir backup; nothing was written`);
    }
    if (seen.has(DATA_FILES.masterKey) !== manifest.masterKeyIncluded) throw new Error("the archive's manifest disagrees with itself about the master key; nothing was written");
    let offset = dataStart;
    for (const f of manifest.files) {
      const hash = createHash("sha256");
      forEachChunk(fd, offset, f.size, (b) => hash.update(b));
      if (hash.digest("hex") !== f.sha256) throw new Error(`the archive is corrupt or was altered: ${f.path} does not match its SHA-256 in the manifest; nothing was written`);
      offset += f.size;
    }

    // Write into a private temp dir next to the target, then rename it into place.
    const parent = dirname(dir);
    mkdirSync(parent, { recursive: true });
    const work = mkdtempSync(join(parent, `.${basename(dir)}.restore-`));
    try {
      chmodSync(work, 0o700);
      offset = dataStart;
      for (const f of manifest.files) {
        const target = join(work, ...f.path.split("/"));
        mkdirSync(dirname(target), { recursive: true, mode: 0o700 });
        const out = openSync(target, "wx", modeFor(f.path));
        try {
          forEachChunk(fd, offset, f.size, (b) => writeAll(out, b));
          fsyncSync(out);
        } finally {
          closeSync(out);
        }
        chmodSync(target, modeFor(f.path));
        offset += f.size;
      }
      const config = dataDirConfig(work, env);
      // As serve will choose: KEYWARD_MASTER_KEY wins over the file.
      const masterKey = config.masterKeyFromEnv !== undefined ? "env" : manifest.masterKeyIncluded ? "archive" : undefined;
      if (masterKey !== undefined) {
        // The key at hand must open the restored static key: a wrong one is found now, not at serve.
        const key = parseMasterKey(masterKey === "env" ? config.masterKeyFromEnv! : readFileSync(join(work, DATA_FILES.masterKey), "utf8"));
        await loadStaticKey(config, key);
      }
      if (existsSync(dir)) rmdirSync(dir); // empty, checked above
      renameSync(work, dir);
      chmodSync(dir, 0o700);
      const restoredStore = join(dir, ...manifest.store.file.split("/"));
      const configured = dataDirConfig(dir, env).store;
      const storeElsewhere = configured.kind === "sqlite" && configured.path === restoredStore ? undefined : configured.kind === "sqlite" ? configured.path : "PostgreSQL";
      return { dir, manifest, masterKey, ...(storeElsewhere !== undefined && { storeElsewhere }) };
    } catch (e) {
      rmSync(work, { recursive: true, force: true });
      throw e;
    }
  } finally {
    closeSync(fd);
  }
}

/** Reads and checks the magic and manifest lines; `dataStart` is the offset of the first file's bytes. */
export function readManifest(fd: number): { manifest: BackupManifest; dataStart: number } {
  const head = Buffer.alloc(Math.min(MAX_MANIFEST_BYTES + BACKUP_MAGIC.length + 2, fstatSync(fd).size));
  const n = readSync(fd, head, 0, head.length, 0);
  const first = head.indexOf(0x0a);
  if (first < 0 || head.subarray(0, first).toString("latin1") !== BACKUP_MAGIC) throw new Error(`not a Keyward backup archive (no ${BACKUP_MAGIC} line); nothing was written`);
  const second = head.indexOf(0x0a, first + 1);
  if (second < 0 || second >= n) throw new Error("the archive's manifest is missing, truncated or too large; nothing was written");
  let parsed: unknown;
  try {
    parsed = JSON.parse(head.subarray(first + 1, second).toString("utf8"));
  } catch {
    throw new Error("the archive's manifest is not JSON; nothing was written");
  }
  const r = manifestSchema.safeParse(parsed);
  if (!r.success) throw new Error(`the archive's manifest is not valid (${r.error.issues[0]?.path.join(".")}: ${r.error.issues[0]?.message}); nothing was written`);
  return { manifest: r.data, dataStart: second + 1 };
}

/** The mode a restored file gets, by name, as `init` writes them (the archive's word is not taken). */
function modeFor(path: string): number {
  return path.endsWith(".pem") ? 0o644 : 0o600;
}

/** The config of a data dir for offline commands: no identity provider needed (placeholders, as in init). */
function dataDirConfig(dir: string, env: Record<string, string | undefined>): KeywardConfig {
  const file = join(dir, DATA_FILES.config);
  if (!existsSync(file)) throw new Error(`${dir} is not a Keyward data dir (no ${DATA_FILES.config})`);
  const values = JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
  return resolveConfig(dir, { oauthIssuer: "https://placeholder.invalid", oauthJwksUri: "https://placeholder.invalid/jwks", ...values }, env);
}

/** Relative `/`-separated paths of everything under `dir` (directories descended, not listed). */
function walk(dir: string, prefix = ""): string[] {
  const found: string[] = [];
  for (const entry of readdirSync(join(dir, prefix), { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory()) found.push(...walk(dir, rel));
    else found.push(rel);
  }
  return found;
}

/** Whether a file is a backup archive itself (one kept in the data dir is not archived again). */
function isArchive(path: string): boolean {
  const fd = openSync(path, "r");
  try {
    const head = Buffer.alloc(BACKUP_MAGIC.length + 1);
    return readSync(fd, head, 0, head.length, 0) === head.length && head.toString("latin1") === `${BACKUP_MAGIC}\n`;
  } finally {
    closeSync(fd);
  }
}

/** Refuses when a file to archive holds the master key (raw, hex, base64, base64url): a stray copy of it. */
function refuseMasterKeyCopies(masterKeyText: string, files: readonly { path: string; from: string }[]): void {
  let raw: Buffer;
  try {
    raw = Buffer.from(parseMasterKey(masterKeyText));
  } catch {
    return; // not a valid key: serve would refuse it anyway, and there is nothing to look for
  }
  const needles = [raw, ...["hex", "base64url", "base64"].map((enc) => Buffer.from(raw.toString(enc as BufferEncoding).replace(/=+$/, ""))), Buffer.from(raw.toString("hex").toUpperCase())];
  for (const f of files) {
    const bytes = readFileSync(f.from);
    if (needles.some((n) => bytes.includes(n))) {
      throw new Error(`${f.path} contains the master key: move it out of the data dir, or give --include-master-key on purpose (nothing was written)`);
    }
  }
}

function hashFile(path: string): { size: number; sha256: string } {
  const fd = openSync(path, "r");
  try {
    const size = fstatSync(fd).size;
    const hash = createHash("sha256");
    forEachChunk(fd, 0, size, (b) => hash.update(b));
    return { size, sha256: hash.digest("hex") };
  } finally {
    closeSync(fd);
  }
}

/** Copies a file to the end of `fd`; returns the bytes written (the size hashed before: files do not change meanwhile). */
function copyInto(fd: number, path: string): number {
  const src = openSync(path, "r");
  try {
    let written = 0;
    forEachChunk(src, 0, fstatSync(src).size, (b) => (written += writeAll(fd, b)));
    return written;
  } finally {
    closeSync(src);
  }
}

function forEachChunk(fd: number, start: number, length: number, each: (b: Buffer) => void): void {
  const buf = Buffer.alloc(Math.min(CHUNK, Math.max(length, 1)));
  let done = 0;
  while (done < length) {
    const n = readSync(fd, buf, 0, Math.min(buf.length, length - done), start + done);
    if (n === 0) throw new Error("unexpected end of file");
    each(buf.subarray(0, n));
    done += n;
  }
}

function writeAll(fd: number, b: Buffer): number {
  let off = 0;
  while (off < b.length) off += writeSync(fd, b, off, b.length - off);
  return b.length;
}

function writePrivate(path: string, content: Buffer): void {
  const fd = openSync(path, "wx", 0o600);
  try {
    writeAll(fd, content);
  } finally {
    closeSync(fd);
  }
}

/** `keyward backup` and `keyward restore`. */
export function registerBackupCommands(program: Command): void {
  program
    .command("backup")
    .description("a consistent snapshot of a data dir (SQLite store and files) into one archive, while the KMS serves")
    .requiredOption("--dir <dir>", "the data directory")
    .requiredOption("--out <file>", "the archive to write (mode 0600; an existing file is never overwritten)")
    .option("--include-master-key", "also put the master key into the archive (then the archive alone opens every secret)")
    .action(async (o: { dir: string; out: string; includeMasterKey?: boolean }) => {
      if (o.includeMasterKey) {
        console.error(
          "keyward: WARNING: --include-master-key: this archive will hold the MASTER KEY. With it, anyone who reads the archive can open every group key and secret in the store. Keep it offline, encrypted, and apart from ordinary backups.",
        );
      }
      const r = await backupDataDir({ dir: o.dir, out: o.out, includeMasterKey: o.includeMasterKey === true });
      console.log(`keyward: backed up ${resolve(o.dir)} (${r.manifest.files.length} files, store schema version ${r.manifest.store.schemaVersion}) to ${r.out}: ${r.bytes} bytes in ${r.milliseconds.toFixed(0)} ms`);
      console.log(
        r.manifest.masterKeyIncluded
          ? "  the master key IS in this archive: protect it like the master key itself"
          : "  the master key is NOT in this archive: keep master.key (or KEYWARD_MASTER_KEY) backed up apart; without it the archive opens nothing",
      );
      for (const s of r.skipped) console.log(`  skipped ${s} (not a regular file, a name the archive does not take such as a dot file, or an older backup archive)`);
    });

  program
    .command("restore")
    .description("restore a backup archive into a new (absent or empty) data directory, after checking it")
    .requiredOption("--in <file>", "the archive written by keyward backup")
    .requiredOption("--dir <dir>", "the new data directory (absent or empty)")
    .action(async (o: { in: string; dir: string }) => {
      const r = await restoreDataDir({ archive: o.in, dir: o.dir });
      console.log(`keyward: restored ${r.manifest.files.length} files of kms://${r.manifest.authority} (backup of ${r.manifest.created}) into ${r.dir}; every SHA-256 matched`);
      if (r.masterKey === undefined) {
        console.log(`  the archive has no master key: put it in ${join(r.dir, DATA_FILES.masterKey)} (mode 0600) or set KEYWARD_MASTER_KEY before keyward serve --dir ${o.dir}`);
      } else {
        console.log(`  the master key (${r.masterKey === "archive" ? "from the archive" : "KEYWARD_MASTER_KEY"}) opens the restored static key`);
      }
      if (r.storeElsewhere !== undefined) {
        console.log(`  note: the configuration (storeUrl / KEYWARD_STORE_URL) names the store ${r.storeElsewhere}, not the restored ${r.manifest.store.file}: point it at ${join(r.dir, r.manifest.store.file)}`);
      }
    });
}
