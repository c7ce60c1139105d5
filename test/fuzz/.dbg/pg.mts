import pg from "pg";
const c = new pg.Client({ connectionString: "postgres://postgres@127.0.0.1:5432/test", connectionTimeoutMillis: 2000 });
await c.connect();
await c.query("CREATE TEMP TABLE t (k TEXT PRIMARY KEY, j TEXT)");
for (const k of ["\ud800", "\udfff", "\ufffd", "a\u0000b"]) {
  try { const r = await c.query("INSERT INTO t VALUES ($1, $2) ON CONFLICT DO NOTHING", [k, JSON.stringify(k)]); console.log(JSON.stringify(k), "rows", r.rowCount); }
  catch (e) { console.log(JSON.stringify(k), "error", (e as Error).message); }
}
console.log(JSON.stringify((await c.query("SELECT k, j FROM t")).rows));
await c.end();
