import { startTestKms } from "../../helpers/harness.ts";
import { Party, createGroup } from "../../helpers/gk-fixtures.ts";
import { exportJWK, generateKeyPair } from "jose";
import Database from "better-sqlite3";
const kms = await startTestKms();
const alice = await Party.open(kms, "alice@example.com", []);
const { publicKey } = await generateKeyPair("ES256", { extractable: true });
const { kty, crv, x, y } = await exportJWK(publicKey);
for (const kid of ["\ud800", "\udfff", "a\u0000b"]) {
  const r = await alice.call({ method: "create", uri: "/entities/keys", jwk: { kty, crv, x, y, kid } });
  console.log("register", JSON.stringify(kid), r.status, r.reason ?? "", JSON.stringify((r.key as any)?.jwk?.kid));
}
const list = await alice.call({ method: "retrieve", uri: "/entities/alice@example.com/keys" });
console.log("list kids", JSON.stringify((list.keys as any[]).map((k) => k.kid)));
const g = await alice.call({ method: "create", uri: "/blocks", blockPayload: { operations: [{ entity: "alice@example.com", optype: "add" }, { entity: "b\ud800@example.com", optype: "add" }] } });
console.log("genesis", g.status, g.reason ?? "");
const db = new Database((kms.config.store as any).path, { readonly: true });
console.log(JSON.stringify(db.prepare("select entity from memberships").all()));
console.log(JSON.stringify(db.prepare("select kid from entity_keys").all()));
await kms.close();
