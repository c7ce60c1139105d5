import { startTestKms } from "../../helpers/harness.ts";
import { Party } from "../../helpers/gk-fixtures.ts";
import { freshSchema, TEST_POSTGRES_URL } from "../../helpers/postgres.ts";
import { exportJWK, generateKeyPair } from "jose";
const { schema, dropSchema } = freshSchema();
const u = new URL(TEST_POSTGRES_URL); u.searchParams.set("schema", schema);
const kms = await startTestKms({ env: { KEYWARD_STORE_URL: u.toString() } });
console.log(kms.config.store.kind);
const alice = await Party.open(kms, "alice@example.com", []);
const { publicKey } = await generateKeyPair("ES256", { extractable: true });
const { kty, crv, x, y } = await exportJWK(publicKey);
for (const kid of ["a\u0000b", "\ud800", "\udfff"]) {
  const r = await alice.raw.request({ method: "create", uri: "/entities/keys", jwk: { kty, crv, x, y, kid } });
  console.log("register", JSON.stringify(kid), r.form, r.payload.status, r.payload.reason ?? "");
}
for (const uri of ["/gks/a\u0000b", "/blocks/a\u0000b", "/entities/a\u0000b@example.com/keys"]) {
  const r = await alice.raw.request({ method: "retrieve", uri, entity: "alice@example.com" });
  console.log(uri.replace("\u0000", "<NUL>"), r.form, r.payload.status, r.payload.reason ?? "");
}
const g = await alice.raw.request({ method: "create", uri: "/blocks", blockPayload: { operations: [{ entity: "b\u0000c@example.com", optype: "add" }] } });
console.log("genesis NUL", g.payload.status, g.payload.reason);
await kms.close(); await dropSchema();
