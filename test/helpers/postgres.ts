import { randomBytes } from "node:crypto";
import pg from "pg";

/** The PostgreSQL server the tests use: `KEYWARD_TEST_POSTGRES_URL`, else the local default. */
export const TEST_POSTGRES_URL = process.env.KEYWARD_TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/test";

/** {@link TEST_POSTGRES_URL} with any password masked, for messages. */
export function displayUrl(url: string = TEST_POSTGRES_URL): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "<unparsable URL>";
  }
}

/** Whether the test server answers `SELECT 1` within 2 s. */
export async function postgresAvailable(url: string = TEST_POSTGRES_URL): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2_000, query_timeout: 2_000 });
  client.on("error", () => {});
  try {
    await client.connect();
    await client.query("SELECT 1");
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => {});
  }
}

/** Runs one statement on the test server over a short-lived connection. */
export async function adminQuery<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values: unknown[] = []): Promise<pg.QueryResult<R>> {
  const client = new pg.Client({ connectionString: TEST_POSTGRES_URL, connectionTimeoutMillis: 2_000 });
  client.on("error", () => {});
  await client.connect();
  try {
    return await client.query<R>(text, values);
  } finally {
    await client.end();
  }
}

/**
 * A unique schema name for one test (not created: `PostgresStore.migrate` creates it) and its
 * cleanup, which drops it with everything in it (and is fine when it was never created).
 *
 * @example
 * const { schema, dropSchema } = freshSchema();
 * const store = new PostgresStore(TEST_POSTGRES_URL, { schema });
 * // ... store.close(); await dropSchema();
 */
export function freshSchema(): { schema: string; dropSchema: () => Promise<void> } {
  const schema = `keyward_test_${process.pid}_${randomBytes(6).toString("hex")}`;
  return { schema, dropSchema: async () => void (await adminQuery(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`)) };
}

/**
 * Whether a suite that needs PostgreSQL can run: true when the test server answers. Without one
 * the suite is skipped, loudly (`what` names it in the warning); under CI (`CI` set and not
 * "false"/"0") it must run, so this throws instead.
 *
 * @example
 * const available = await postgresForSuite("the PostgreSQL store suite");
 * const suite = available ? describe : describe.skip;
 */
export async function postgresForSuite(what: string): Promise<boolean> {
  const available = await postgresAvailable();
  const ci = process.env.CI !== undefined && process.env.CI !== "" && process.env.CI !== "false" && process.env.CI !== "0";
  if (!available && ci) {
    throw new Error(`PostgreSQL not reachable at ${displayUrl()}: ${what} must run in CI (CI=${process.env.CI}); start a server or set KEYWARD_TEST_POSTGRES_URL`);
  }
  if (!available) console.warn(`PostgreSQL not reachable at ${displayUrl()}: ${what} is SKIPPED`);
  return available;
}
