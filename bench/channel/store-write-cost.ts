/**
 * Diagnostic (not part of `npm run bench:channel`): what the per-ping store work costs, on the
 * same schema and pragmas as src/store/sqlite, in a temp dir on the real disk. Compares one
 * IMMEDIATE transaction per recorded requestId (what recordChannelMessage does per ping) with 32
 * records per transaction (group commit). Run pinned like the server:
 *
 *   taskset -c 0 node --import tsx bench/channel/store-write-cost.ts [dir, default /tmp]
 */
import Database from "better-sqlite3";
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { sqliteMigrations } from "../../src/store/sqlite/migrations.js";

const dir = mkdtempSync(join(process.argv[2] ?? "/tmp", "keyward-store-cost-"));
const db = new Database(join(dir, "keyward.db"));
db.pragma("journal_mode = WAL");
db.pragma("synchronous = NORMAL");
db.pragma("foreign_keys = ON");
for (const m of sqliteMigrations) db.exec(m.sql);
const uri = `kms://localhost/ecdhe/${crypto.randomUUID()}`;
db.prepare(
  "INSERT INTO channels (uri, entity, client_id, credential_kind, client_key_thumbprint, sealed_key, created_at, expires_at, message_count) VALUES (?, 'alice@example.com', 'c', 'bearer', 't', 's', 0, 9e12, 0)",
).run(uri);
const get = db.prepare("SELECT * FROM channels WHERE uri = ?");
const count = db.prepare("UPDATE channels SET message_count = message_count + 1 WHERE uri = ? AND message_count < ?");
const insert = db.prepare("INSERT INTO channel_requests (channel_uri, request_id) VALUES (?, ?) ON CONFLICT DO NOTHING");
const one = db.transaction((rid: string) => {
  count.run(uri, 2 ** 24);
  insert.run(uri, rid);
});
const many = db.transaction((rids: string[]) => {
  for (const r of rids) {
    count.run(uri, 2 ** 24);
    insert.run(uri, r);
  }
});

let n = 0;
function measure(name: string, f: () => void, perCall: number): void {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  let ops = 0;
  while (performance.now() - t0 < 3000) {
    f();
    ops += perCall;
  }
  const wall = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(c0);
  console.log(
    `${name.padEnd(40)} ${(ops / wall).toFixed(0).padStart(7)} /s  ${((wall * 1e6) / ops).toFixed(1).padStart(6)} µs wall  ${((cpu.user + cpu.system) / ops).toFixed(1).padStart(6)} µs CPU`,
  );
}
measure("getChannel (SELECT by uri)", () => get.get(uri), 1);
measure("1 record per IMMEDIATE transaction", () => one.immediate(`"r${n++}"`), 1);
measure("32 records per IMMEDIATE transaction", () => many.immediate(Array.from({ length: 32 }, () => `"r${n++}"`)), 32);
db.close();
rmSync(dir, { recursive: true, force: true });
