/**
 * Child process of the two-process SQLite test (test/store/sqlite.test.ts):
 *   node --import tsx test/store/record-worker.ts <db path> <channel uri> <count>
 * Opens the store, prints "ready", waits for a line on stdin ("go"), then records requestIds
 * 0..count-1 (JSON-encoded) on the channel and prints one JSON line: the ids it recorded and the
 * count of each outcome.
 */
import { SqliteStore } from "../../src/store/sqlite/sqlite-store.js";
import type { RecordOutcome } from "../../src/store/store.js";

const [dbPath, uri, countText] = process.argv.slice(2);
if (!dbPath || !uri || !countText) {
  console.error("usage: record-worker.ts <db path> <channel uri> <count>");
  process.exit(2);
}
const count = Number(countText);
const store = new SqliteStore(dbPath);
await store.migrate();
process.stdout.write("ready\n");
await new Promise<void>((resolve) => process.stdin.once("data", () => resolve()));

const recorded: string[] = [];
const outcomes: Record<RecordOutcome, number> = { recorded: 0, replay: 0, exhausted: 0, unknown: 0 };
for (let i = 0; i < count; i++) {
  const id = JSON.stringify(i);
  const outcome = await store.recordChannelMessage(uri, id, 1_000_000);
  outcomes[outcome]++;
  if (outcome === "recorded") recorded.push(id);
}
await store.close();
process.stdout.write(JSON.stringify({ recorded, outcomes }) + "\n");
process.stdin.destroy();
