import fc from "fast-check";
import { CompactSign, exportJWK, generateKeyPair } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildAppendedPayload } from "../../src/primitives/gmbc/sign-block.js";
import { generateEphemeralKeyPair } from "../../src/protocol/jose/ephemeral-key.js";
import { post, RawClient, type TestKms } from "../helpers/harness.js";
import { add, createGroup, Party, type Chain } from "../helpers/gk-fixtures.js";
import { postgresForSuite } from "../helpers/postgres.js";
import {
  closeSnapshotClients,
  DELETE,
  expectWellFormedStatus,
  fuzzParams,
  fuzzTimeout,
  jsonText,
  RawJson,
  replacement,
  ReplyOpener,
  sealText,
  snapshotDiff,
  storeSnapshot,
  withField,
  type OpenedReply,
  startTestKmsOn,
} from "../helpers/fuzz-support.js";

/**
 * Every operation's fields, fuzzed (§4-§9): on a real channel, requests whose fields are replaced
 * one at a time by random JSON values of every type and hand-picked hostile ones. Whatever the
 * value: no internal error, a reply of the right form (a common message on the channel, or a JWS
 * for key agreement), a reason on every refusal, the requestId echoed, and nothing stored by a
 * refusal (the replay records and the channel's message counter are bookkeeping, decision 4).
 */

const ALICE = "alice@example.com";
const BOB = "bob@example.com";
const METHOD_VALUES = ["create", "retrieve", "update", "delete", "post", "get", "CREATE", "patch", "__proto__", "constructor"];

type Payload = Record<string, unknown>;
interface Prepared {
  /** Who sends it (its channel). */
  readonly raw: RawClient;
  readonly payload: Payload;
  /** Runs after the request, whatever its outcome (e.g. revokes a key registered for the run). */
  readonly cleanup?: () => Promise<void>;
}
interface Operation {
  readonly name: string;
  /** Fields fuzzed besides the common ones (method, uri, requestId, client...). */
  readonly fields: readonly string[][];
  /** Required fields of a JSON type: a value of another type (or none) is a 400 naming the field. */
  readonly required?: Readonly<Record<string, "string" | "object" | "array">>;
  /** Values worth trying for one field, besides random ones. */
  readonly candidates?: Readonly<Record<string, readonly unknown[]>>;
  readonly staticKey?: boolean;
  prepare(): Promise<Prepared>;
}

const COMMON_FIELDS: readonly string[][] = [
  ["method"],
  ["uri"],
  ["requestId"],
  ["client"],
  ["client", "clientId"],
  ["client", "credential"],
  ["client", "credential", "bearer"],
  ["client", "credential", "jwk"],
  ["client", "credential", "userId"],
  ["client", "__proto__"],
  ["__proto__"],
  ["constructor"],
];
const COMMON_REQUIRED: Readonly<Record<string, "string" | "object" | "array">> = { method: "string", uri: "string", "client.clientId": "string" };

function jsonType(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  if (v instanceof RawJson) return JSON.parse(v.text) === null ? "null" : typeof JSON.parse(v.text);
  return typeof v;
}

/** A requestId the KMS must accept and echo (§4, §10): a string of at most 256 characters or a safe integer. */
function validRequestId(v: unknown): boolean {
  if (v instanceof RawJson) return validRequestId(JSON.parse(v.text));
  return (typeof v === "string" && v.length <= 256) || Number.isSafeInteger(v);
}
/** A requestId no reading of the profile accepts (not a string, not a finite number). */
function invalidRequestId(v: unknown): boolean {
  if (v instanceof RawJson) return invalidRequestId(JSON.parse(v.text));
  return v === DELETE || !(typeof v === "string" || (typeof v === "number" && Number.isFinite(v)));
}

/**
 * The suite runs on SQLite and, when a server is reachable, on PostgreSQL (KEYWARD_TEST_POSTGRES_URL,
 * default postgres://postgres@127.0.0.1:5432/test): the stores differ in what text they can hold
 * (PostgreSQL refuses NUL and turns lone surrogates into U+FFFD). Without a server the PostgreSQL
 * run is skipped, loudly; in CI (CI set) it fails instead.
 */
const postgres = await postgresForSuite("the PostgreSQL run of the operations fuzzer");

for (const storeKind of ["sqlite", "postgres"] as const) {
  const suite = storeKind === "sqlite" || postgres ? describe : describe.skip;
  // The §10 limit properties do not depend on the store: they run once, on SQLite.
  const limitProperty = storeKind === "sqlite" ? it : it.skip;
  // The field fuzz mostly exercises the core and the handlers, which the SQLite run covers; the
  // PostgreSQL run is there for what the store itself does with odd values, at a third of the runs.
  const runs = (n: number) => (storeKind === "postgres" ? Math.max(5, Math.ceil(n / 3)) : n);
suite(`fuzz: every operation's fields (§4-§9), ${storeKind} store: no 500, the right form, a reason, nothing stored by a refusal`, () => {
  let kms: TestKms;
  let opener: ReplyOpener;
  let alice: Party;
  let bob: Party;
  let chain: Chain;
  let boundGk: string;
  let bobCredential: unknown;
  let dropSchema: (() => Promise<void>) | undefined;
  /** Every channel key the test holds (replies are opened with them). */
  const keys = new Map<string, Uint8Array>();
  const credentials = new Map<RawClient, unknown>();

  beforeAll(async () => {
    ({ kms, dropSchema } = await startTestKmsOn(storeKind));
    opener = await ReplyOpener.for(kms);
    alice = await Party.open(kms, ALICE, ["ec"]);
    bob = await Party.open(kms, BOB, ["ec"]);
    for (const p of [alice, bob]) keys.set(p.raw.uri!, p.raw.key!);
    chain = await createGroup(alice, [ALICE, BOB]);
    const gk = await alice.createGk(chain.tail);
    expect(gk.status).toBe(201);
    boundGk = JSON.parse(Buffer.from((gk.gk as string).split(".")[1]!, "base64url").toString()).uri as string;
    bobCredential = (await bob.raw.credential()).credential;
  }, 60_000);
  afterAll(async () => {
    await kms?.close();
    await closeSnapshotClients();
    await dropSchema?.();
  });

  /** One credential per channel (a token per request would cost a signature check each). */
  async function credentialOf(raw: RawClient): Promise<unknown> {
    if (!credentials.has(raw)) credentials.set(raw, await raw.credential());
    return credentials.get(raw);
  }

  async function freshChannel(user = ALICE): Promise<RawClient> {
    const raw = new RawClient(kms, user);
    expect((await raw.ecdhe()).status).toBe(201);
    keys.set(raw.uri!, raw.key!);
    return raw;
  }

  async function freshEcJwk(kid: string): Promise<Record<string, unknown>> {
    const { publicKey } = await generateKeyPair("ES256", { extractable: true });
    const { kty, crv, x, y } = await exportJWK(publicKey);
    return { kty, crv, x, y, kid };
  }

  async function signedBlock(fields: Payload): Promise<string> {
    const signer = alice.signer;
    return new CompactSign(new TextEncoder().encode(jsonText(fields))).setProtectedHeader({ alg: "ES256", kid: signer.kid }).sign(signer.signingKey!);
  }

  const operations: Operation[] = [
    {
      name: "ping (update /ping)",
      fields: [],
      async prepare() {
        return { raw: alice.raw, payload: { method: "update", uri: "/ping" } };
      },
    },
    {
      name: "ECDHE create (to the static key)",
      staticKey: true,
      fields: [["jwk"], ["jwk", "kty"], ["jwk", "crv"], ["jwk", "x"], ["jwk", "y"], ["jwk", "d"]],
      required: { jwk: "object" },
      async prepare() {
        const pair = await generateEphemeralKeyPair();
        const { kty, crv, x, y } = await exportJWK(pair.publicKey);
        return { raw: alice.raw, payload: { method: "create", uri: "/ecdhe", jwk: { kty, crv, x, y } } };
      },
    },
    {
      name: "delete channel (delete <ephemeral uri>)",
      fields: [],
      async prepare() {
        const raw = await freshChannel();
        return { raw, payload: { method: "delete", uri: raw.uri } };
      },
    },
    {
      name: "entity key register (create /entities/keys)",
      fields: [["jwk"], ["jwk", "kid"], ["jwk", "kty"], ["jwk", "crv"], ["jwk", "x"], ["jwk", "y"], ["jwk", "alg"], ["jwk", "use"], ["jwk", "d"], ["jwk", "n"]],
      required: { jwk: "object", "jwk.kid": "string" },
      candidates: { "jwk.kid": ["alice-ec-1", "a".repeat(256), "a".repeat(257)] },
      async prepare() {
        const kid = `fuzz-${crypto.randomUUID()}`;
        return {
          raw: alice.raw,
          payload: { method: "create", uri: "/entities/keys", jwk: await freshEcJwk(kid) },
          // Whatever kid got registered, revoke every fuzz key again: the per-entity limit must not fill up.
          cleanup: () => revokeFuzzKeys(),
        };
      },
    },
    {
      name: "entity key list (retrieve /entities/<acct>/keys)",
      fields: [["includeRevoked"]],
      candidates: { uri: [`/entities/${BOB}/keys`, "/entities/acct:ALICE@EXAMPLE.COM/keys", "/entities/%zz/keys", "/entities/@/keys"] },
      async prepare() {
        return { raw: alice.raw, payload: { method: "retrieve", uri: `/entities/${ALICE}/keys` } };
      },
    },
    {
      name: "entity key revoke (delete /entities/<acct>/keys/<kid>)",
      fields: [],
      candidates: { uri: [`/entities/${BOB}/keys/bob-ec-1`, `/entities/${ALICE}/keys/nope`, `/entities/${ALICE}/keys/%E0%A4%A`] },
      async prepare() {
        const kid = `fuzz-${crypto.randomUUID()}`;
        expect((await alice.call({ method: "create", uri: "/entities/keys", jwk: await freshEcJwk(kid) })).status).toBe(201);
        return { raw: alice.raw, payload: { method: "delete", uri: `/entities/${ALICE}/keys/${kid}` }, cleanup: () => revokeFuzzKeys() };
      },
    },
    {
      name: "genesis (create /blocks)",
      fields: [
        ["blockPayload"],
        ["blockPayload", "operations"],
        ["blockPayload", "operations", "0"],
        ["blockPayload", "operations", "0", "entity"],
        ["blockPayload", "operations", "0", "optype"],
        ["blockPayload", "operations", "1"],
        ["blockPayload", "creator"],
        ["blockPayload", "created"],
        ["blockPayload", "uri"],
      ],
      required: { blockPayload: "object", "blockPayload.operations": "array" },
      candidates: { "blockPayload.operations.0.entity": ["kms://kms.example.com", BOB, "acct:BOB@EXAMPLE.COM"], "blockPayload.operations.0.optype": ["remove", "ADD"] },
      async prepare() {
        return { raw: alice.raw, payload: { method: "create", uri: "/blocks", blockPayload: { operations: [add(ALICE), add(BOB)] } } };
      },
    },
    {
      name: "append (create <chain uri>), the request's and the signed block's fields",
      fields: [["blocks"], ["blocks", "0"], ["blocks", "1"], ["block:antecedent"], ["block:creator"], ["block:created"], ["block:operations"], ["block:operations.0"], ["block:operations.0.entity"], ["block:operations.0.optype"], ["block:nonce"]],
      required: { blocks: "array" },
      candidates: {
        "block:creator": [BOB, "kms://kms.example.com", "carol@example.com"],
        "block:operations.0.entity": [ALICE, "kms://kms.example.com", "acct:Carol@EXAMPLE.com"],
        "block:operations.0.optype": ["remove", "ADD"],
        "block:created": ["2999-01-01T00:00:00Z", "2015-11-02T19:02:15Z", "2015-11-02T19:02:15+25:00"],
      },
      async prepare() {
        const fresh = await createGroup(alice, [ALICE, BOB]);
        const payload = buildAppendedPayload({ antecedent: fresh.tail, creator: ALICE, operations: [add("carol@example.com")] });
        return { raw: alice.raw, payload: { method: "create", uri: fresh.uri, blocks: [], __block: payload } };
      },
    },
    {
      name: "chain get (retrieve <chain uri>)",
      fields: [["antecedent"]],
      candidates: { antecedent: ["0".repeat(64)] },
      async prepare() {
        return { raw: alice.raw, payload: { method: "retrieve", uri: chain.uri } };
      },
    },
    {
      name: "GK create (create /gks)",
      fields: [["block"]],
      candidates: { block: ["0".repeat(64), "F".repeat(64)] },
      async prepare() {
        return { raw: alice.raw, payload: { method: "create", uri: "/gks", block: chain.tail } };
      },
    },
    {
      name: "GK bind (update <gk uri>)",
      fields: [["block"]],
      required: { block: "string" },
      async prepare() {
        const gk = await alice.createGk();
        expect(gk.status).toBe(201);
        const uri = JSON.parse(Buffer.from((gk.gk as string).split(".")[1]!, "base64url").toString()).uri as string;
        return { raw: alice.raw, payload: { method: "update", uri, block: chain.tail } };
      },
    },
    {
      name: "GK get (retrieve <gk uri>)",
      fields: [["entity"]],
      required: { entity: "string" },
      candidates: { entity: [BOB, "acct:ALICE@EXAMPLE.COM", "alice@example.com "] },
      async prepare() {
        return { raw: alice.raw, payload: { method: "retrieve", uri: boundGk, entity: ALICE } };
      },
    },
  ];

  /** Revokes every key of alice whose kid starts with "fuzz-" (the ones this test registered). */
  async function revokeFuzzKeys(): Promise<void> {
    const list = await alice.call({ method: "retrieve", uri: `/entities/${ALICE}/keys` });
    for (const jwk of (list.keys as { kid: string }[]) ?? []) {
      if (typeof jwk.kid === "string" && jwk.kid.startsWith("fuzz-")) {
        await alice.call({ method: "delete", uri: `/entities/${ALICE}/keys/${encodeURIComponent(jwk.kid)}` });
      }
    }
  }

  /** Builds, sends and opens one request; returns what it sent and the opened reply. */
  async function send(op: Operation, prepared: Prepared, path: string[] | undefined, value: unknown): Promise<{ sent: Payload; reply: OpenedReply }> {
    const { raw } = prepared;
    let payload: Payload = { client: await credentialOf(raw), requestId: crypto.randomUUID(), ...prepared.payload };
    if (payload.__block !== undefined) {
      // Append: fuzz the signed block's own fields (signed by a member's registered key), or the request's.
      let block = payload.__block as Payload;
      if (path?.[0]?.startsWith("block:")) block = withField(block, path[0].slice(6).split("."), value);
      const { __block: _b, ...rest } = payload;
      payload = { ...rest, blocks: [await signedBlock(block)] };
    }
    if (path && !path[0]!.startsWith("block:")) payload = withField(payload, path, value);
    const text = jsonText(payload);
    const message = op.staticKey ? await raw.ecdheMessage(text) : await sealText(raw.key!, raw.uri!, text);
    const res = await post(kms.url, message);
    expect(res.status, "HTTP 200 for every KMS reply (§3)").toBe(200);
    return { sent: payload, reply: await opener.open(res.body, keys) };
  }

  async function checkRefusalOrSuccess(op: Operation, path: string[] | undefined, value: unknown, sent: Payload, reply: OpenedReply, before: string): Promise<number> {
    const where = `${op.name}, ${path?.join(".") ?? "(none)"} = ${String(jsonText(value === DELETE ? "<deleted>" : value ?? null)).slice(0, 100)}`;
    const status = expectWellFormedStatus(reply.payload, where);
    expect(reply.form, `form of the reply (${where})`).toBe(op.staticKey ? "jws" : "jwe");
    const after = (await storeSnapshot(kms));
    if (status >= 400) {
      expect(snapshotDiff(before, after), `a refusal stores nothing (${where}): ${String(reply.payload.reason)}`).toEqual([]);
    } else if (op.staticKey) {
      // A 201 key agreement stores exactly one channel, nothing else.
      const [a, b] = [JSON.parse(before), JSON.parse(after)] as Record<string, unknown[]>[];
      expect(snapshotDiff(before, after)).toEqual(["channels"]);
      expect(b!.channels!.length).toBe(a!.channels!.length + 1);
      const key = reply.payload.key as { uri: string };
      expect(key.uri).toMatch(/^kms:\/\/kms\.example\.com\/ecdhe\//);
    }
    // §4: every reply to a request the KMS could decrypt echoes its requestId when it is usable.
    const id = sent.requestId;
    // Compared as JSON values (§4): -0 is sent as the text "-0" and comes back as 0, the same JSON number.
    if (validRequestId(id)) expect(JSON.stringify(reply.payload.requestId), `requestId echoed (${where})`).toBe(JSON.stringify(JSON.parse(jsonText(id))));
    if (invalidRequestId(id) && status !== 401 && status !== 403) {
      expect(status, `an unusable requestId is a 400 (${where})`).toBe(400);
      expect(reply.payload).not.toHaveProperty("requestId");
    }
    // Missing or mistyped required fields: 400 with a reason naming the field (§4).
    const key = path?.join(".").replace(/^block:/, "");
    const required = { ...COMMON_REQUIRED, ...op.required };
    const wanted = key !== undefined && Object.hasOwn(required, key) ? required[key] : undefined;
    const credentialFine = !path || !["client", "client.credential", "client.credential.bearer", "__proto__", "client.__proto__"].includes(path.join("."));
    const missing = value === DELETE;
    const mistyped = !missing && jsonType(value) !== wanted;
    if (wanted && credentialFine && (missing || mistyped)) {
      expect(status, `a missing or mistyped '${key}' is a 400 (${where})`).toBe(400);
      expect(String(reply.payload.reason), `the reason names '${key}'`).toContain(key!.split(".").pop()!);
    }
    return status;
  }

  for (const op of operations) {
    it(`${op.name}: fields replaced one at a time`, async () => {
      const paths = [...COMMON_FIELDS, ...op.fields];
      const fieldValue = (path: string[]) => {
        const key = path.join(".");
        const extra: unknown[] = op.candidates && Object.hasOwn(op.candidates, key) ? [...op.candidates[key]!] : [];
        if (key === "method") extra.push(...METHOD_VALUES);
        if (key === "uri") extra.push("/ping", "/gks", "/blocks", "/ecdhe", "/entities/keys", chain.uri, boundGk, "kms://other.example.com/gks/x", "kms://KMS.EXAMPLE.COM/ping", "/ping?x#y", "//ping", "/ping/");
        if (key === "client.credential") extra.push(bobCredential, { bearer: "not-a-token" }, { jwk: { kty: "EC" } });
        if (key === "client.credential.bearer") extra.push((bobCredential as { bearer: string }).bearer);
        if (key === "requestId") extra.push(7, "7", -0, 2 ** 53 - 1);
        return extra.length ? fc.oneof(replacement, fc.constantFrom(...extra)) : replacement;
      };
      const cases = fc.oneof(...paths.map((p) => fc.tuple(fc.constant(p), fieldValue(p))));
      await fc.assert(
        fc.asyncProperty(cases, async ([path, value]) => {
          const prepared = await op.prepare();
          try {
            const before = (await storeSnapshot(kms));
            const { sent, reply } = await send(op, prepared, path, value);
            await checkRefusalOrSuccess(op, path, value, sent, reply, before);
          } finally {
            await prepared.cleanup?.();
          }
        }),
        fuzzParams(runs(20)),
      );
    }, fuzzTimeout(runs(20), 600));
  }

  // Text a store may not hold: PostgreSQL refuses NUL in text (the query fails) and turns lone
  // surrogates into U+FFFD. Every string field, and every object a uri names, gets such text.
  const awkward = fc
    .array(fc.oneof(fc.constantFrom("\u0000", "\ud800", "\udfff", "\ufffd", "\u0001", "\u001f", "\u007f", "\ud83d\ude00", "%00", "%ED%A0%80"), fc.string({ maxLength: 3 })), { minLength: 1, maxLength: 4 })
    .map((p) => p.join(""));
  const awkwardUri = awkward.chain((t) =>
    fc.constantFrom(`/gks/${t}`, `/blocks/${t}`, `/entities/${t}@example.com/keys`, `/entities/${ALICE}/keys/${t}`, `/entities/${ALICE}/keys/${t.replace(/\u0000/g, "%00")}`, `kms://kms.example.com/ecdhe/${t}`, `/${t}`, `kms://${t}/ping`),
  );

  it("text a store cannot hold (NUL, lone surrogates, controls) in any string field or uri: no 500, a refusal stores nothing", async () => {
    const cases = fc.oneof(
      ...operations.map((op) =>
        fc.tuple(
          fc.constant(op),
          fc.oneof(
            fc.tuple(fc.constantFrom(...[...COMMON_FIELDS, ...op.fields].filter((p) => p[0] !== "uri")), awkward),
            fc.tuple(fc.constant(["uri"] as string[]), awkwardUri),
          ),
        ),
      ),
    );
    await fc.assert(
      fc.asyncProperty(cases, async ([op, [path, value]]) => {
        const prepared = await op.prepare();
        try {
          const before = await storeSnapshot(kms);
          const { sent, reply } = await send(op, prepared, path, value);
          await checkRefusalOrSuccess(op, path, value, sent, reply, before);
        } finally {
          await prepared.cleanup?.();
        }
      }),
      fuzzParams(storeKind === "postgres" ? 40 : 20),
    );
  }, fuzzTimeout(40, 600));

  // ─── §10 limits and the review's findings 6, 11 and 12, as properties ─────────────────────

  /** Sends `fields` on alice's channel (a fresh requestId unless given) and opens the reply. */
  async function sendOn(raw: RawClient, fields: Payload): Promise<OpenedReply> {
    const payload = { client: await credentialOf(raw), requestId: crypto.randomUUID(), ...fields };
    const res = await post(kms.url, await sealText(raw.key!, raw.uri!, jsonText(payload)));
    return opener.open(res.body, keys);
  }

  /** Requests that would store something if their other fields were accepted. */
  const storingRequests = (): Payload[] => [
    { method: "update", uri: "/ping" },
    { method: "create", uri: "/gks" },
    { method: "create", uri: "/blocks", blockPayload: { operations: [add(ALICE)] } },
  ];

  limitProperty("§10 requestId: a string of at most 256 characters: a longer one → 400 naming requestId, not echoed, nothing stored", async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 257, max: 5_000 }), fc.nat(2), async (length, which) => {
        const before = (await storeSnapshot(kms));
        const requestId = "r".repeat(length - 36) + crypto.randomUUID();
        const reply = await sendOn(alice.raw, { ...storingRequests()[which]!, requestId });
        expect(reply.form).toBe("jwe");
        expect(reply.payload.status).toBe(400);
        expect(String(reply.payload.reason)).toContain("requestId");
        expect(reply.payload).not.toHaveProperty("requestId");
        expect(snapshotDiff(before, (await storeSnapshot(kms)))).toEqual([]);
      }),
      fuzzParams(5),
    );
  }, fuzzTimeout(5, 400));

  limitProperty("§10 clientId: at most 256 characters: a longer one → 400 naming clientId, nothing stored (key agreement included)", async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 257, max: 5_000 }), fc.nat(3), async (length, which) => {
        const before = (await storeSnapshot(kms));
        const credential = ((await credentialOf(alice.raw)) as { credential: unknown }).credential;
        const client = { clientId: "c".repeat(length), credential };
        let reply: OpenedReply;
        if (which === 3) {
          const pair = await generateEphemeralKeyPair();
          const { kty, crv, x, y } = await exportJWK(pair.publicKey);
          const text = jsonText({ client, method: "create", uri: "/ecdhe", requestId: "ka", jwk: { kty, crv, x, y } });
          reply = await opener.open((await post(kms.url, await alice.raw.ecdheMessage(text))).body, keys);
          expect(reply.form).toBe("jws");
        } else {
          reply = await sendOn(alice.raw, { ...storingRequests()[which]!, client });
          expect(reply.form).toBe("jwe");
        }
        expect(reply.payload.status).toBe(400);
        expect(String(reply.payload.reason)).toContain("clientId");
        expect(snapshotDiff(before, (await storeSnapshot(kms)))).toEqual([]);
      }),
      fuzzParams(5),
    );
  }, fuzzTimeout(5, 400));

  limitProperty("§10 requestId: a safe integer when a number: 1.5, 2^53, 1e21 → 400, not echoed, nothing stored", async () => {
    const unsafe = fc.oneof(
      fc.double({ noNaN: true, noDefaultInfinity: true }).filter((d) => !Number.isSafeInteger(d)),
      fc.constantFrom(2 ** 53, -(2 ** 53), 2 ** 60, 1e21, 0.5, new RawJson("9007199254740993")),
    );
    await fc.assert(
      fc.asyncProperty(unsafe, fc.nat(2), async (requestId, which) => {
        const before = (await storeSnapshot(kms));
        const reply = await sendOn(alice.raw, { ...storingRequests()[which]!, requestId });
        expect(reply.payload.status).toBe(400);
        expect(String(reply.payload.reason)).toContain("requestId");
        expect(reply.payload).not.toHaveProperty("requestId");
        expect(snapshotDiff(before, (await storeSnapshot(kms)))).toEqual([]);
      }),
      fuzzParams(5),
    );
  }, fuzzTimeout(5, 400));

  limitProperty("finding 12, reasons: no reason carries more than 64 characters of a field's value", async () => {
    const LONG = "Q".repeat(1_000);
    const cases = fc.constantFrom<Payload>(
      { method: "delete", uri: `/entities/${ALICE}/keys/${LONG}` },
      { method: "retrieve", uri: `/entities/${LONG}/keys` },
      { method: "update", uri: `/${LONG}` },
      { method: "retrieve", uri: `/gks/${LONG}`, entity: ALICE },
      { method: "update", uri: `/gks/${LONG}`, block: chain.tail },
      { method: "retrieve", uri: `/blocks/${LONG}` },
      { method: "create", uri: `/blocks/${LONG}`, blocks: ["x"] },
      { method: LONG, uri: "/ping" },
      { method: "create", uri: "/entities/keys", jwk: { kty: LONG, kid: "k" } },
      { method: "create", uri: "/entities/keys", jwk: { kty: "EC", crv: "P-256", kid: LONG } },
      { method: "create", uri: "/blocks", blockPayload: { operations: [{ entity: LONG, optype: "add" }] } },
      { method: "create", uri: "/blocks", blockPayload: { operations: [{ entity: ALICE, optype: LONG }] } },
      { method: "create", uri: "/gks", block: LONG },
      { method: "retrieve", uri: boundGk, entity: LONG },
      { method: "retrieve", uri: chain.uri, antecedent: LONG },
      { method: "delete", uri: `kms://kms.example.com/ecdhe/${LONG}` },
      { method: "update", uri: `kms://${LONG}/ping` },
    );
    await fc.assert(
      fc.asyncProperty(cases, async (fields) => {
        const reply = await sendOn(alice.raw, fields);
        expect(reply.payload.status as number).toBeGreaterThanOrEqual(400);
        expect(String(reply.payload.reason)).not.toContain("Q".repeat(65));
      }),
      // The first example is the echo the review found (finding 12): always tried.
      fuzzParams<[Payload]>(17, { examples: [[{ method: "delete", uri: `/entities/${ALICE}/keys/${LONG}` }]] }),
    );
  }, fuzzTimeout(20, 400));

  limitProperty("§10 canonical base64url in blocks: a block whose base64url is not canonical → 400, nothing stored", async () => {
    /** Re-spells a base64url part with non-zero unused bits in its last character (same bytes, other text). */
    const respell = (part: string, bits: number): string | undefined => {
      const slack = part.length % 4 === 2 ? 4 : part.length % 4 === 3 ? 2 : 0;
      if (slack === 0) return undefined;
      const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
      const last = alphabet.indexOf(part[part.length - 1]!);
      const extra = (bits % ((1 << slack) - 1)) + 1; // 1 .. 2^slack - 1: never the canonical spelling
      return part.slice(0, -1) + alphabet[last | extra];
    };
    await fc.assert(
      fc.asyncProperty(fc.nat(), async (bits) => {
        const fresh = await createGroup(alice, [ALICE, BOB]);
        const jws = await signedBlock({ ...buildAppendedPayload({ antecedent: fresh.tail, creator: ALICE, operations: [add("carol@example.com")] }) });
        const parts = jws.split(".");
        // The signature is what a relay can re-spell without the signer: 64 bytes, 86 characters, 4 unused bits.
        parts[2] = respell(parts[2]!, bits)!;
        expect(parts[2]).not.toBe(jws.split(".")[2]);
        expect(Buffer.from(parts[2]!, "base64url").equals(Buffer.from(jws.split(".")[2]!, "base64url"))).toBe(true);
        const before = (await storeSnapshot(kms));
        const reply = await sendOn(alice.raw, { method: "create", uri: fresh.uri, blocks: [parts.join(".")] });
        expect(reply.payload.status).toBe(400);
        expect(snapshotDiff(before, (await storeSnapshot(kms)))).toEqual([]);
      }),
      fuzzParams(3),
    );
  }, fuzzTimeout(3, 500));

  it("the unfuzzed requests succeed (so that every refusal above is the fuzzed field's doing)", async () => {
    const expected: Record<string, number> = {};
    for (const op of operations) {
      const prepared = await op.prepare();
      try {
        const before = (await storeSnapshot(kms));
        const { sent, reply } = await send(op, prepared, undefined, undefined);
        expected[op.name] = await checkRefusalOrSuccess(op, undefined, undefined, sent, reply, before);
      } finally {
        await prepared.cleanup?.();
      }
    }
    expect(Object.values(expected).every((s) => s >= 200 && s < 300), JSON.stringify(expected)).toBe(true);
  }, 60_000);
});
}
