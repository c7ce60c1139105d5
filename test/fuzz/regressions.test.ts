import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decryptCommonMessage, encryptCommonMessage } from "../../src/protocol/jose/common-message.js";
import { openJws, post, RawClient, startTestKms, type TestKms } from "../helpers/harness.js";
import { createGroup, makeDeviceKey, Party } from "../helpers/gk-fixtures.js";
import { rawHttp } from "../helpers/fuzz-http.js";
import { closeSnapshotClients, sealText, snapshotDiff, startTestKmsOn, storeSnapshot } from "../helpers/fuzz-support.js";
import { postgresForSuite } from "../helpers/postgres.js";

/**
 * The minimal counterexamples the fuzzers in this folder found, each as a plain test, so that
 * they stay fixed whatever seed the properties run with.
 */
describe("fuzz regressions", () => {
  let kms: TestKms;
  let port: number;
  beforeAll(async () => {
    kms = await startTestKms();
    port = Number(new URL(kms.url).port);
  });
  afterAll(async () => {
    await kms?.close();
  });

  const get = async (target: string) => {
    const ex = await rawHttp(port, Buffer.from(`GET ${target} HTTP/1.1\r\nHost: kms.example.com\r\n\r\n`, "latin1"));
    expect(ex.responses.length).toBeGreaterThan(0);
    return ex.responses[0]!;
  };

  // http-bytes.test.ts "random requests", shrunk to `GET //`: the discovery routes parsed the
  // request target with `new URL(target, base)`, which throws for an empty authority, and the
  // binding turned the exception into a 500.
  it.each(["//", "//:99999", "//["])("GET %s → 404, not 500; the server keeps answering", async (target) => {
    const res = await get(target);
    expect(res.status).toBe(404);
    expect((await get("/healthz")).status).toBe(200);
  });
});

/**
 * operations.test.ts "text a store cannot hold", shrunk: on PostgreSQL, a NUL in a uri, a kid, an
 * entity, a clientId or an antecedent made the store's query fail (500), and two kids or entities
 * differing only in lone surrogates were one row (both become U+FFFD). Such text is now refused
 * where it enters (400 naming the field), or names nothing (404 / 401). Run on both stores.
 */
const postgres = await postgresForSuite("the PostgreSQL run of the fuzz regressions");

for (const storeKind of ["sqlite", "postgres"] as const) {
  (storeKind === "sqlite" || postgres ? describe : describe.skip)(`fuzz regressions: text a store cannot hold (${storeKind})`, () => {
    let kms: TestKms;
    let alice: Party;
    let chainUri: string;
    let dropSchema: (() => Promise<void>) | undefined;
    beforeAll(async () => {
      ({ kms, dropSchema } = await startTestKmsOn(storeKind));
      alice = await Party.open(kms, "alice@example.com", ["ec"]);
      chainUri = (await createGroup(alice, ["alice@example.com"])).uri;
    }, 60_000);
    afterAll(async () => {
      await kms?.close();
      await closeSnapshotClients();
      await dropSchema?.();
    });

    async function refused(fields: Record<string, unknown>, status: number, reason: RegExp): Promise<void> {
      const before = await storeSnapshot(kms);
      const reply = await alice.call(fields);
      expect({ status: reply.status, reason: reply.reason }).toMatchObject({ status });
      expect(String(reply.reason)).toMatch(reason);
      expect(snapshotDiff(before, await storeSnapshot(kms))).toEqual([]);
    }
    const jwk = async (kid: string) => ({ ...(await makeDeviceKey("ec", "x")).publicJwk, kid });

    it.each(["a\u0000b", "\ud800", "\udfff", "k\u001f"])("register a key with kid %j → 400 naming jwk.kid", async (kid) => {
      await refused({ method: "create", uri: "/entities/keys", jwk: await jwk(kid) }, 400, /jwk\.kid/);
    });
    it.each(["/gks/a\u0000b", "/blocks/a\u0000b", "/entities/a\u0000b@example.com/keys", "/gks/\ud800"])("a uri %j → 400 naming uri", async (uri) => {
      await refused({ method: "retrieve", uri, entity: "alice@example.com" }, 400, /'uri'/);
    });
    it("revoke a kid spelled with %00 → 404", async () => {
      await refused({ method: "delete", uri: "/entities/alice@example.com/keys/a%00b" }, 404, /no key/);
    });
    it("an entity spelled with %00 in a uri → 404", async () => {
      await refused({ method: "retrieve", uri: "/entities/a%00b@example.com/keys" }, 404, /not an entity/);
    });
    it("chain get with an antecedent holding NUL → 404", async () => {
      await refused({ method: "retrieve", uri: chainUri, antecedent: "a\u0000b" }, 404, /antecedent/);
    });
    it.each(["b\u0000c@example.com", "b\ud800@example.com"])("genesis adding %j → 400", async (entity) => {
      await refused({ method: "create", uri: "/blocks", blockPayload: { operations: [{ entity, optype: "add" }] } }, 400, /entity/);
    });
    it("a clientId holding NUL → 400 naming clientId, on a channel and at key agreement (no channel created)", async () => {
      const before = await storeSnapshot(kms);
      const credential = (await alice.raw.credential()).credential;
      const onChannel = await alice.raw.request({ client: { clientId: "a\u0000b", credential } });
      expect(onChannel.payload).toMatchObject({ status: 400 });
      expect(String(onChannel.payload.reason)).toMatch(/clientId/);
      const raw = new RawClient(kms, "alice@example.com");
      const { kty, crv, x, y } = (await makeDeviceKey("ec", "e")).publicJwk;
      const res = await post(kms.url, await raw.ecdheMessage({ client: { clientId: "a\u0000b", credential }, method: "create", uri: "/ecdhe", requestId: "r", jwk: { kty, crv, x, y } }));
      const { payload } = await openJws(kms.url, res.body);
      expect(payload).toMatchObject({ status: 400 });
      expect(String(payload.reason)).toMatch(/clientId/);
      expect(snapshotDiff(before, await storeSnapshot(kms))).toEqual([]);
    });
    // operations.test.ts, requestId = the JSON text -0: the reply echoes 0. That is the same JSON
    // value (§4 compares requestIds as JSON values), so a later 0 is a replay of it.
    it("requestId -0 is echoed as 0, and 0 after it is a replay (409)", async () => {
      const credential = await alice.raw.credential();
      const send = async (idText: string) => {
        const text = `{"client":${JSON.stringify(credential)},"method":"update","uri":"/ping","requestId":${idText}}`;
        const res = await post(kms.url, await sealText(alice.raw.key!, alice.raw.uri!, text));
        return (await decryptCommonMessage(alice.raw.key!, res.body)).payload as Record<string, unknown>;
      };
      const first = await send("-0");
      expect(first.status).toBe(200);
      expect(JSON.stringify(first.requestId)).toBe("0");
      expect(await send("0")).toMatchObject({ status: 409, requestId: 0 });
    });
    it("a message whose kid holds NUL names no key → JWS 401", async () => {
      const message = await encryptCommonMessage(alice.raw.key!, `kms://kms.example.com/ecdhe/a\u0000b`, { requestId: "x" });
      const res = await post(kms.url, message);
      expect(res.body.split(".")).toHaveLength(3);
      expect((await openJws(kms.url, res.body)).payload.status).toBe(401);
    });
  });
}
