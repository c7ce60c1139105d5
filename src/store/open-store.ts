import type { StoreLocation } from "../config/config.js";
import { PostgresStore } from "./postgres/postgres-store.js";
import { SqliteStore } from "./sqlite/sqlite-store.js";
import type { Store } from "./store.js";

/** Opens the store a configuration names (`KEYWARD_STORE_URL`); callers run `migrate()` before use. */
export async function openStore(location: StoreLocation): Promise<Store> {
  if (location.kind === "sqlite") return new SqliteStore(location.path);
  return new PostgresStore(location.url);
}
