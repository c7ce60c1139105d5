import type { StoreLocation } from "../config/config.js";
import { SqliteStore } from "./sqlite/sqlite-store.js";
import type { Store } from "./store.js";

/** Opens the store a configuration names (`KEYWARD_STORE_URL`). */
export async function openStore(location: StoreLocation): Promise<Store> {
  if (location.kind === "sqlite") return new SqliteStore(location.path);
  throw new Error("the PostgreSQL store is not available in this version yet (KEYWARD_STORE_URL=postgres://...)");
}
