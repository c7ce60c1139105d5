import { afterEach, beforeEach } from "vitest";
import type { Store } from "../../src/store/store.js";

/**
 * The contract suites' fixture: before every test a fresh, empty store from `open`, migrated and
 * handed to `use`; after it, the store is closed and `cleanup` runs.
 *
 * @example
 * let store: Store;
 * onAFreshStoreEachTest(open, cleanup, (s) => (store = s));
 */
export function onAFreshStoreEachTest(open: () => Promise<Store>, cleanup: (() => Promise<void>) | undefined, use: (store: Store) => void): void {
  let store: Store;
  beforeEach(async () => {
    store = await open();
    await store.migrate();
    use(store);
  });
  afterEach(async () => {
    await store.close();
    await cleanup?.();
  });
}
