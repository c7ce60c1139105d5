import Database from "better-sqlite3";
import { base64url } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { auditRecordFromRow, verifyAuditChain, type AuditRecord } from "../../src/store/audit.js";
import { RawClient, startTestKms, type TestKms } from "../helpers/harness.js";
import { add, appendBlock, checkpoint, createGroup, databaseFiles, gkKeyFor, gkRows, Party, storePath, type Chain } from "../helpers/gk-fixtures.js";

/**
 * §13 through a real KMS: every state change, every GK release and every 401/403 refusal is in
 * the audit log, committed before the reply; a record that cannot be written fails the request
 * and changes nothing; no record holds a token, key material or a payload.
 */
describe("audit log (PROTOCOL.md §13) through a real KMS", () => {
  let kms: TestKms;
  let alice: Party, bob: Party, mallory: Party;
  let g: Chain;
  /** Every bearer token the parties sent, and every GK key they unwrapped: none may be stored. */
  const tokens = new Set<string>();
  const gkKeys = new Set<Uint8Array>();

  function records(): AuditRecord[] {
    const db = new Database(storePath(kms), { readonly: true });
    try {
      const rows = db.prepare("SELECT body, prev_hash, hash FROM audit_log ORDER BY seq").all() as { body: string; prev_hash: string; hash: string }[];
      return rows.map((r) => auditRecordFromRow(r.body, r.prev_hash, r.hash));
    } finally {
      db.close();
    }
  }
  const last = () => records().at(-1)!;
  const count = () => records().length;

  /** While `body` runs, every insert into the audit table fails (a trigger: the injected fault). */
  async function withAuditWritesFailing<T>(body: () => Promise<T>): Promise<T> {
    const db = new Database(storePath(kms));
    db.exec("CREATE TRIGGER audit_refuses BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'audit write refused (test)'); END");
    try {
      return await body();
    } finally {
      db.exec("DROP TRIGGER audit_refuses");
      db.close();
    }
  }

  beforeAll(async () => {
    kms = await startTestKms();
    const issue = kms.token.bind(kms);
    Object.assign(kms, {
      token: async (user: string, o?: { lifetimeSeconds?: number; audience?: string }) => {
        const t = await issue(user, o);
        tokens.add(t);
        return t;
      },
    });
    [alice, bob, mallory] = await Promise.all([
      Party.open(kms, "alice@example.com"),
      Party.open(kms, "bob@example.com"),
      Party.open(kms, "mallory@example.com"),
    ]);
    g = await createGroup(alice, ["alice@example.com", "bob@example.com"]);
  });

  afterAll(async () => {
    await kms?.close();
  });

  it("every state change is recorded: channel, entity key, genesis, append, GK create and bind, revoke, channel delete", async () => {
    const carol = await Party.open(kms, "carol@example.com");
    const channelUri = carol.raw.uri!;
    expect(records().filter((r) => r.object === channelUri)).toEqual([expect.objectContaining({ operation: "ecdhe.create", actor: "carol@example.com", status: 201 })]);
    expect(records().filter((r) => r.actor === "carol@example.com" && r.operation === "entity-key.register")).toEqual([
      expect.objectContaining({ object: `kms://kms.example.com/entities/carol%40example.com/keys/${carol.keys[0]!.kid}`, status: 201 }),
    ]);

    const chain = await createGroup(carol, ["carol@example.com"]);
    expect(last()).toMatchObject({ operation: "gmbc.genesis", actor: "carol@example.com", object: chain.uri, status: 201 });
    await appendBlock(chain, carol, [add("bob@example.com")]);
    expect(last()).toMatchObject({ operation: "gmbc.append", actor: "carol@example.com", object: chain.uri, status: 200 });

    const created = await carol.createGk();
    expect(created.status).toBe(201);
    const gkUri = (await gkKeyFor(carol, created.gk)).payload.uri;
    expect(last()).toMatchObject({ operation: "gk.create", actor: "carol@example.com", object: gkUri, status: 201, recipients: [carol.keys[0]!.kid], decision: "requester (unbound)" });
    const bound = await carol.bindGk(gkUri, chain.tail);
    expect(bound.status, String(bound.reason)).toBe(200);
    expect(last()).toMatchObject({ operation: "gk.bind", object: gkUri, status: 200, recipients: [carol.keys[0]!.kid], decision: `requester, member at block ${chain.tail}` });

    const kid = carol.keys[0]!.kid;
    expect((await carol.call({ method: "delete", uri: `/entities/carol@example.com/keys/${kid}` })).status).toBe(204);
    expect(last()).toMatchObject({ operation: "entity-key.revoke", actor: "carol@example.com", object: `kms://kms.example.com/entities/carol%40example.com/keys/${kid}`, status: 204 });
    expect((await carol.call({ method: "delete", uri: channelUri })).status).toBe(204);
    expect(last()).toMatchObject({ operation: "ecdhe.delete", actor: "carol@example.com", object: channelUri, status: 204 });
    expect(verifyAuditChain(records())).toMatchObject({ ok: true });
  });

  it("every GK get is a release, recorded with its recipient kids and the policy decision (committed before the reply)", async () => {
    const r = await alice.createGk(g.tail);
    expect(r.status).toBe(201);
    const { payload, bytes } = await gkKeyFor(alice, r.gk);
    gkKeys.add(bytes);
    expect(last()).toMatchObject({ operation: "gk.create", object: payload.uri, decision: `requester, member at block ${g.tail}` });
    const got = await bob.getGk(payload.uri);
    expect(got.status).toBe(200);
    gkKeys.add((await gkKeyFor(bob, got.gk)).bytes);
    // The reply is out: its record is already committed (another connection reads it).
    expect(last()).toMatchObject({ operation: "gk.get", actor: "bob@example.com", object: payload.uri, status: 200, recipients: [bob.keys[0]!.kid], decision: "policy 1: entitled" });
    expect(last().entity).toBeUndefined();
  });

  it("403 refusals are recorded with the actor, the object and the code", async () => {
    const r = await alice.createGk(g.tail);
    const uri = (await gkKeyFor(alice, r.gk)).payload.uri;
    const refused = await mallory.getGk(uri);
    expect(refused.status).toBe(403);
    expect(last()).toEqual(expect.objectContaining({ operation: "retrieve gks", actor: "mallory@example.com", object: uri, status: 403, code: "ERR_POLICY" }));
    expect(last().recipients).toBeUndefined();
    expect((await mallory.getGk(uri, "alice@example.com")).status).toBe(403);
    expect(last()).toMatchObject({ actor: "mallory@example.com", object: uri, status: 403, code: "ERR_ENTITY_MISMATCH" });
  });

  it("401 refusals are recorded: a key agreement whose token fails, a message on an unknown channel", async () => {
    const before = count();
    const stranger = new RawClient(kms, "eve@example.com");
    stranger.credential = async () => ({ clientId: "raw-test", credential: { bearer: "not-a-token" } });
    expect((await stranger.ecdhe()).status).toBe(401);
    expect(last()).toMatchObject({ operation: "ecdhe.create", status: 401 });
    expect(last().actor).toBeUndefined();
    // A channel that was deleted: JWS 401 on its key.
    const gone = await Party.open(kms, "dave@example.com", []);
    const uri = gone.raw.uri!;
    expect((await gone.call({ method: "delete", uri })).status).toBe(204);
    expect((await gone.raw.request({})).payload.status).toBe(401);
    expect(last()).toMatchObject({ status: 401, code: "ERR_UNKNOWN_EPHEMERAL_KEY" });
    expect(count()).toBeGreaterThanOrEqual(before + 4);
  });

  it("fails closed: when the record cannot be written, the request fails (500) and changes nothing", async () => {
    const r = await alice.createGk(g.tail);
    const uri = (await gkKeyFor(alice, r.gk)).payload.uri;
    const unboundReply = await alice.createGk();
    const unboundUri = (await gkKeyFor(alice, unboundReply.gk)).payload.uri;
    const before = records();
    const gksBefore = gkRows(kms);
    await withAuditWritesFailing(async () => {
      // A GK get: no record, no release.
      const got = await bob.getGk(uri);
      expect(got).toMatchObject({ status: 500, reason: "internal error" });
      expect(got.gk).toBeUndefined();
      // A GK create: no GK stored.
      const created = await alice.createGk(g.tail);
      expect(created.status).toBe(500);
      expect(created.gk).toBeUndefined();
      // A bind of an unbound GK: still unbound.
      const bind = await alice.bindGk(unboundUri, g.tail);
      expect(bind.status).toBe(500);
      expect(bind.gk).toBeUndefined();
      // An entity key registration: not registered.
      const keys = await alice.call({ method: "retrieve", uri: "/entities/alice@example.com/keys" });
      const reg = await alice.call({ method: "create", uri: "/entities/keys", jwk: { ...bob.keys[0]!.publicJwk, kid: "audit-fail-kid" } });
      expect(reg.status).toBe(500);
      expect(await alice.call({ method: "retrieve", uri: "/entities/alice@example.com/keys" })).toMatchObject({ keys: keys.keys });
      // A genesis: no chain.
      expect((await alice.call({ method: "create", uri: "/blocks", blockPayload: { operations: [add("alice@example.com")] } })).status).toBe(500);
      // A refusal that cannot be recorded is not sent as a refusal either.
      expect((await mallory.getGk(uri)).status).toBe(500);
    });
    expect(gkRows(kms)).toEqual(gksBefore);
    expect(records()).toEqual(before);
    const db = new Database(storePath(kms), { readonly: true });
    try {
      expect(db.prepare("SELECT count(*) FROM entity_keys WHERE kid = 'audit-fail-kid'").pluck().get()).toBe(0);
    } finally {
      db.close();
    }
    // Writable again: the same get now succeeds and is recorded.
    expect((await bob.getGk(uri)).status).toBe(200);
    expect(last()).toMatchObject({ operation: "gk.get", object: uri, status: 200 });
  });

  it("the log verifies, and no record, nor the data file, holds a token, GK key material or a payload", async () => {
    const all = records();
    expect(verifyAuditChain(all)).toMatchObject({ ok: true, count: all.length });
    expect(tokens.size).toBeGreaterThan(0);
    expect(gkKeys.size).toBeGreaterThan(0);
    const text = JSON.stringify(all);
    for (const t of tokens) {
      expect(text).not.toContain(t);
      expect(text).not.toContain(t.split(".")[2]!);
    }
    for (const k of gkKeys) {
      expect(text).not.toContain(base64url.encode(k));
      expect(text).not.toContain(Buffer.from(k).toString("hex"));
    }
    // Nothing but the record members: no request field (blocks, jwk, payloads) is ever copied in.
    const allowed = new Set(["seq", "time", "operation", "actor", "entity", "object", "status", "code", "recipients", "decision", "prev", "hash"]);
    for (const r of all) for (const k of Object.keys(r)) expect(allowed.has(k), k).toBe(true);
    checkpoint(kms);
    for (const { path, bytes } of databaseFiles(kms)) {
      for (const t of tokens) expect(bytes.includes(Buffer.from(t.split(".")[2]!)), `${path} holds a token`).toBe(false);
      for (const k of gkKeys) {
        expect(bytes.includes(Buffer.from(k)), `${path} holds GK bytes`).toBe(false);
        expect(bytes.includes(Buffer.from(base64url.encode(k))), `${path} holds a GK (base64url)`).toBe(false);
      }
    }
  });
});
