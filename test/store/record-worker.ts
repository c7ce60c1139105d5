/**
 * Child process of the two-process SQLite test (test/store/sqlite.test.ts):
 *   node --import tsx test/store/record-worker.ts <db path> <channel uri> <count> <seed>
 * Opens the store, prints "ready", waits for a line "go <epoch ms>" on stdin, spins until that
 * instant (so that both workers start together), then records requestIds 0..count-1 (JSON-encoded)
 * in an order shuffled by <seed>, and prints one JSON line: the ids it recorded and the count of
 * each outcome.
 */
import { SqliteStore } from "../../src/store/sqlite/sqlite-store.js";
import type { RecordOutcome } from "../../src/store/store.js";

const [dbPath, uri, countText, seedText] = process.argv.slice(2);
if (!dbPath || !uri || !countText || !seedText) {
  console.error("usage: record-worker.ts <db path> <channel uri> <count> <seed>");
  process.exit(2);
}
const count = Number(countText);

// Fisher-Yates with a small LCG, so that each worker visits the ids in its own order.
let state = Number(seedText) >>> 0 || 1;
const next = () => (state = (Math.imul(state, 1664525) + 1013904223) >>> 0) / 2 ** 32;
const order = Array.from({ length: count }, (_, i) => i);
for (let i = order.length - 1; i > 0; i--) {
  const j = Math.floor(next() * (i + 1));
  [order[i], order[j]] = [order[j]!, order[i]!];
}

const store = new SqliteStore(dbPath);
await store.migrate();
process.stdout.write("ready\n");
const goLine = await new Promise<string>((resolve) => {
  let buf = "";
  process.stdin.setEncoding("utf8").on("data", (d: string) => {
    buf += d;
    if (buf.includes("\n")) resolve(buf);
  });
});
const startAt = Number(goLine.trim().split(" ")[1] ?? 0);
while (Date.now() < startAt) {
  // spin: both workers leave this loop at the same instant
}

const recorded: string[] = [];
const outcomes: Record<RecordOutcome, number> = { recorded: 0, replay: 0, exhausted: 0, unknown: 0 };
for (const i of order) {
  const id = JSON.stringify(i);
  const outcome = await store.recordChannelMessage(uri, id, 1_000_000);
  outcomes[outcome]++;
  if (outcome === "recorded") recorded.push(id);
}
await store.close();
process.stdout.write(JSON.stringify({ recorded, outcomes }) + "\n");
process.stdin.destroy();
