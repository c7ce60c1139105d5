import { existsSync } from "node:fs";
import { resolve } from "node:path";
import Database from "better-sqlite3";
import type { Command } from "commander";
import { loadConfig, type StoreLocation } from "../config/config.js";
import { PostgresStore } from "../store/postgres/postgres-store.js";
import { sqliteMigrations } from "../store/sqlite/migrations.js";
import { SqliteStore } from "../store/sqlite/sqlite-store.js";

export interface MigrateResult {
  /** The store, for display (a PostgreSQL password masked). */
  readonly store: string;
  /** Schema version before and after (0: no schema yet). */
  readonly before: number;
  readonly after: number;
}

/**
 * Applies the pending schema migrations of the store a data directory's configuration names
 * (`storeUrl` / KEYWARD_STORE_URL), as `keyward serve` would at start, and reports the versions.
 * Safe while other nodes run or start: migrations are versioned and applied under a lock.
 *
 * @example
 * const { after } = await migrateDataDir("/var/lib/keyward"); // 3
 */
export async function migrateDataDir(dataDir: string, env: Record<string, string | undefined> = process.env): Promise<MigrateResult> {
  const config = loadConfig(resolve(dataDir), env);
  return migrateStore(config.store);
}

/** {@link migrateDataDir} for a store location. */
export async function migrateStore(location: StoreLocation): Promise<MigrateResult> {
  if (location.kind === "postgres") {
    const store = new PostgresStore(location.url);
    const where = `${maskPassword(location.url)} (schema ${store.schema})`;
    try {
      const { before, after } = await store.migrateTo();
      return { store: where, before, after };
    } catch (e) {
      throw new Error(`PostgreSQL store ${where}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    } finally {
      await store.close();
    }
  }
  const before = sqliteSchemaVersion(location.path);
  // The SQLite store migrates when it opens (one IMMEDIATE transaction); migrate() again is a no-op.
  const store = new SqliteStore(location.path);
  try {
    await store.migrate();
  } finally {
    await store.close();
  }
  const after = location.path === ":memory:" ? latestSqliteVersion() : sqliteSchemaVersion(location.path);
  return { store: location.path, before, after };
}

/** The highest migration recorded in a SQLite file (0 when it, or its schema_migrations, is missing). */
function sqliteSchemaVersion(path: string): number {
  if (path === ":memory:" || !existsSync(path)) return 0;
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    const table = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").get();
    if (!table) return 0;
    return (db.prepare("SELECT max(version) AS v FROM schema_migrations").get() as { v: number | null }).v ?? 0;
  } finally {
    db.close();
  }
}

function latestSqliteVersion(): number {
  return Math.max(...sqliteMigrations.map((m) => m.version));
}

function maskPassword(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "postgres://…";
  }
}

/** `keyward migrate --dir DIR`. */
export function registerMigrateCommand(program: Command): void {
  program
    .command("migrate")
    .description("apply pending schema migrations to the store of a data directory (also done by serve at start)")
    .requiredOption("--dir <dir>", "the data directory")
    .action(async (o: { dir: string }) => {
      const { store, before, after } = await migrateDataDir(o.dir);
      const change = before === after ? "already up to date" : `migrated from version ${before}`;
      console.log(`keyward: store ${store} at schema version ${after} (${change})`);
    });
}
