import { randomBytes, randomUUID } from "node:crypto";
import { describe, expect, it } from "vitest";
import { AUDIT_GENESIS_HASH, verifyAuditChain, type AuditEvent, type AuditRecord } from "../../src/store/audit.js";
import type { GkRecord, Store } from "../../src/store/store.js";
import { makeChannel } from "./contract.js";
import { makeBlock } from "./contract-groups.js";
import { onAFreshStoreEachTest } from "./fresh-store.js";

/** An audit event; a unique object URI, so that tests can find their records. */
export function makeAuditEvent(overrides: Partial<AuditEvent> = {}): AuditEvent {
  return {
    time: new Date(1_700_000_000_123),
    operation: "gk.get",
    actor: "alice@example.com",
    object: `kms://kms.example.com/gks/${randomUUID()}`,
    status: 200,
    recipients: ["device-1"],
    decision: "policy 1: member at the bound block",
    ...overrides,
  };
}

/**
 * A record that the store cannot write: canonical JSON has no NaN, so the write fails inside the
 * store's transaction, after the state change it goes with has been made (the injected failure).
 */
const UNWRITABLE: AuditEvent = makeAuditEvent({ status: Number.NaN });

function gkRecord(overrides: Partial<GkRecord> = {}): GkRecord {
  return { uri: `kms://kms.example.com/gks/${randomUUID()}`, requester: "alice@example.com", created: new Date(1_700_000_000_000), sealedKey: `kw1.${randomUUID()}`, ...overrides };
}

/**
 * The audit contract of every {@link Store} (§13): a change and its record commit together or not
 * at all, the chain stays linear under concurrent writers, it verifies, and an altered or removed
 * record breaks it at that record. Same shape as `storeContract`.
 */
export function auditStoreContract(name: string, open: () => Promise<Store>, cleanup?: () => Promise<void>): void {
  describe(`Store contract (audit): ${name}`, () => {
    let store: Store;
    onAFreshStoreEachTest(open, cleanup, (s) => (store = s));

    const all = () => store.auditRecords({ limit: 10_000 });

    async function newChain(audit?: AuditEvent) {
      const uri = `kms://kms.example.com/blocks/${randomUUID()}`;
      const genesis = makeBlock(0);
      await store.createChain({ uri, requester: "alice@example.com", created: new Date(1_700_000_000_999) }, genesis, ["alice@example.com"], audit);
      return { uri, genesis };
    }

    it("an empty log: head 0 and 64 zeros, no records", async () => {
      expect(await store.auditHead()).toEqual({ seq: 0, hash: AUDIT_GENESIS_HASH });
      expect(await all()).toEqual([]);
    });

    it("appendAudit stores the record as given, numbered from 1, chained from 64 zeros", async () => {
      const e = makeAuditEvent({ entity: "carol@other.example", actor: "kms://kms.other.example" });
      const r = await store.appendAudit(e);
      expect(r).toMatchObject({ seq: 1, prev: AUDIT_GENESIS_HASH, operation: "gk.get", actor: e.actor, entity: e.entity, object: e.object, status: 200, recipients: ["device-1"], decision: e.decision, time: "2023-11-14T22:13:20.123Z" });
      expect(r.hash).toMatch(/^[0-9a-f]{64}$/);
      expect(await all()).toEqual([r]);
      expect(await store.auditHead()).toEqual({ seq: 1, hash: r.hash });
    });

    it("a record with non-ASCII text, quotes, backslashes and control characters stores and verifies", async () => {
      const r = await store.appendAudit(makeAuditEvent({ actor: "zoë@exämple.com", decision: 'quote " backslash \\ newline \n tab \t \u0001 emoji 🔑 seq":0,' }));
      const [stored] = await all();
      expect(stored).toEqual(r);
      expect(stored!.decision).toContain("🔑");
      expect(verifyAuditChain(await all())).toMatchObject({ ok: true, count: 1 });
    });

    it("every state change writes its record with it; a change that does not happen writes none", async () => {
      const ev = (operation: string) => makeAuditEvent({ operation, recipients: undefined, decision: undefined });
      const c = makeChannel();
      expect(await store.createChannel(c, ev("ecdhe.create"))).toBe(true);
      expect(await store.createChannel(makeChannel({ clientKeyThumbprint: c.clientKeyThumbprint }), ev("x"))).toBe(false);
      expect(await store.deleteChannel(c.uri, ev("ecdhe.delete"))).toBe(true);
      expect(await store.deleteChannel(c.uri, ev("x"))).toBe(false);
      const key = { entity: "alice@example.com", kid: "k1", jwk: { kty: "EC", kid: "k1" }, created: new Date(1_700_000_000_000) };
      expect(await store.registerEntityKey(key, 10, ev("entity-key.register"))).toBe("registered");
      expect(await store.registerEntityKey(key, 10, ev("x"))).toBe("duplicate");
      expect(await store.registerEntityKey({ ...key, kid: "k2" }, 1, ev("x"))).toBe("limit");
      expect(await store.revokeEntityKey("alice@example.com", "k1", new Date(), ev("entity-key.revoke"))).toBe(true);
      expect(await store.revokeEntityKey("alice@example.com", "k1", new Date(), ev("x"))).toBe(false);
      const { uri, genesis } = await newChain(ev("gmbc.genesis"));
      const b1 = makeBlock(1);
      expect(await store.appendBlocks(uri, genesis.hash, [b1], [], ev("gmbc.append"))).toBe("appended");
      expect(await store.appendBlocks(uri, genesis.hash, [makeBlock(1)], [], ev("x"))).toBe("conflict");
      expect(await store.appendBlocks(`${uri}-none`, genesis.hash, [makeBlock(1)], [], ev("x"))).toBe("unknown");
      const gk = gkRecord();
      await store.createGk(gk, ev("gk.create"));
      expect(await store.bindGk(gk.uri, { hash: b1.hash, chainUri: uri, position: 1 }, ev("gk.bind"))).toBe(true);
      expect(await store.bindGk(gk.uri, { hash: b1.hash, chainUri: uri, position: 1 }, ev("x"))).toBe(false);
      const records = await all();
      expect(records.map((r) => r.operation)).toEqual([
        "ecdhe.create", "ecdhe.delete", "entity-key.register", "entity-key.revoke", "gmbc.genesis", "gmbc.append", "gk.create", "gk.bind",
      ]);
      expect(verifyAuditChain(records)).toMatchObject({ ok: true, count: 8 });
    });

    it("a failing change leaves no record", async () => {
      const { uri, genesis } = await newChain();
      // The same chain uri again: a primary key violation inside the transaction.
      await expect(
        store.createChain({ uri, requester: "alice@example.com", created: new Date() }, makeBlock(0), ["alice@example.com"], makeAuditEvent({ operation: "gmbc.genesis" })),
      ).rejects.toThrow();
      // A block hash already stored (UNIQUE), after the tail check passed.
      await expect(store.appendBlocks(uri, genesis.hash, [{ ...makeBlock(1), hash: genesis.hash }], [], makeAuditEvent({ operation: "gmbc.append" }))).rejects.toThrow();
      const gk = gkRecord();
      await store.createGk(gk);
      await expect(store.createGk(gkRecord({ uri: gk.uri }), makeAuditEvent({ operation: "gk.create" }))).rejects.toThrow();
      expect(await all()).toEqual([]);
      expect(await store.auditHead()).toEqual({ seq: 0, hash: AUDIT_GENESIS_HASH });
    });

    it("a failing record write leaves no change (injected: a record that cannot be encoded)", async () => {
      const c = makeChannel();
      await expect(store.createChannel(c, UNWRITABLE)).rejects.toThrow();
      expect(await store.getChannel(c.uri)).toBeUndefined();

      const live = makeChannel();
      await store.createChannel(live);
      await expect(store.deleteChannel(live.uri, UNWRITABLE)).rejects.toThrow();
      expect(await store.getChannel(live.uri)).toBeDefined();

      const key = { entity: "alice@example.com", kid: "k1", jwk: { kty: "EC", kid: "k1" }, created: new Date(1_700_000_000_000) };
      await expect(store.registerEntityKey(key, 10, UNWRITABLE)).rejects.toThrow();
      expect(await store.listEntityKeys("alice@example.com", { includeRevoked: true })).toEqual([]);
      await store.registerEntityKey(key, 10);
      await expect(store.revokeEntityKey("alice@example.com", "k1", new Date(), UNWRITABLE)).rejects.toThrow();
      expect((await store.listEntityKeys("alice@example.com"))).toHaveLength(1);

      const uri = `kms://kms.example.com/blocks/${randomUUID()}`;
      await expect(store.createChain({ uri, requester: "alice@example.com", created: new Date() }, makeBlock(0), ["alice@example.com"], UNWRITABLE)).rejects.toThrow();
      expect(await store.getChain(uri)).toBeUndefined();

      const chain = await newChain();
      const b1 = makeBlock(1);
      await expect(store.appendBlocks(chain.uri, chain.genesis.hash, [b1], [{ entity: "bob@example.com", optype: "add", position: 1 }], UNWRITABLE)).rejects.toThrow();
      expect(await store.getChain(chain.uri)).toMatchObject({ length: 1, tailHash: chain.genesis.hash });
      expect(await store.findBlock(b1.hash)).toBeUndefined();
      expect(await store.isMemberAt(chain.uri, "bob@example.com", 1)).toBe(false);

      const gk = gkRecord();
      await expect(store.createGk(gk, UNWRITABLE)).rejects.toThrow();
      expect(await store.getGk(gk.uri)).toBeUndefined();
      const unbound = gkRecord();
      await store.createGk(unbound);
      await expect(store.bindGk(unbound.uri, { hash: chain.genesis.hash, chainUri: chain.uri, position: 0 }, UNWRITABLE)).rejects.toThrow();
      expect((await store.getGk(unbound.uri))?.block).toBeUndefined();

      await expect(store.appendAudit(UNWRITABLE)).rejects.toThrow();
      expect(await all()).toEqual([]);
      expect(await store.auditHead()).toEqual({ seq: 0, hash: AUDIT_GENESIS_HASH });
      // The log still works afterwards.
      await store.appendAudit(makeAuditEvent());
      expect(verifyAuditChain(await all())).toMatchObject({ ok: true, count: 1 });
    });

    it("concurrent writers of every kind keep one linear chain (no seq used twice, none skipped)", async () => {
      const { uri, genesis } = await newChain();
      const writes: Promise<unknown>[] = [];
      for (let i = 0; i < 40; i++) writes.push(store.appendAudit(makeAuditEvent({ decision: `d${i}` })));
      for (let i = 0; i < 15; i++) writes.push(store.createGk(gkRecord(), makeAuditEvent({ operation: "gk.create" })));
      for (let i = 0; i < 15; i++) writes.push(store.createChannel(makeChannel(), makeAuditEvent({ operation: "ecdhe.create" })));
      for (let i = 0; i < 10; i++) {
        writes.push(store.registerEntityKey({ entity: `u${i}@example.com`, kid: "k", jwk: { kty: "EC", kid: "k" }, created: new Date() }, 10, makeAuditEvent({ operation: "entity-key.register" })));
      }
      // Ten appends racing on one tail: exactly one appends, and only it is recorded.
      const appends = Array.from({ length: 10 }, () => store.appendBlocks(uri, genesis.hash, [makeBlock(1)], [], makeAuditEvent({ operation: "gmbc.append" })));
      const outcomes = await Promise.all(appends);
      await Promise.all(writes);
      expect(outcomes.filter((o) => o === "appended")).toHaveLength(1);
      const records = await all();
      expect(records.map((r) => r.seq)).toEqual(Array.from({ length: 81 }, (_, i) => i + 1));
      expect(records.filter((r) => r.operation === "gmbc.append")).toHaveLength(1);
      const v = verifyAuditChain(records);
      expect(v).toMatchObject({ ok: true, count: 81 });
      expect(v.ok && v.head).toEqual(await store.auditHead());
    });

    it("reads page by seq (after, limit)", async () => {
      for (let i = 0; i < 5; i++) await store.appendAudit(makeAuditEvent());
      const first = await store.auditRecords({ limit: 2 });
      expect(first.map((r) => r.seq)).toEqual([1, 2]);
      const rest = await store.auditRecords({ after: 2, limit: 100 });
      expect(rest.map((r) => r.seq)).toEqual([3, 4, 5]);
      // A page verifies from the record before it.
      expect(verifyAuditChain(rest, { seq: 2, hash: first[1]!.hash })).toMatchObject({ ok: true, count: 3 });
    });

    it("the chain verifies; an altered, removed or reordered record breaks it at that record", async () => {
      for (let i = 0; i < 6; i++) await store.appendAudit(makeAuditEvent({ decision: `d${i}`, ...(i === 2 ? { entity: "carol@other.example" } : {}) }));
      const records = await all();
      expect(verifyAuditChain(records)).toMatchObject({ ok: true, count: 6 });
      const tampered = (i: number, change: (r: AuditRecord) => AuditRecord) => records.map((r, j) => (j === i ? change(r) : r));
      expect(verifyAuditChain(tampered(3, (r) => ({ ...r, status: 403 })))).toMatchObject({ ok: false, seq: 4, count: 3 });
      expect(verifyAuditChain(tampered(2, (r) => ({ ...r, object: "kms://kms.example.com/gks/other" })))).toMatchObject({ ok: false, seq: 3 });
      expect(verifyAuditChain(tampered(2, ({ entity: _e, ...r }) => r))).toMatchObject({ ok: false, seq: 3 });
      expect(verifyAuditChain(tampered(0, (r) => ({ ...r, recipients: ["device-1", "mallory-device"] })))).toMatchObject({ ok: false, seq: 1 });
      // Altered and re-hashed: the next record's prev no longer matches.
      const rehashed = tampered(1, (r) => ({ ...r, hash: randomBytes(32).toString("hex") }));
      expect(verifyAuditChain(rehashed)).toMatchObject({ ok: false, seq: 2 });
      expect(verifyAuditChain(records.filter((_, j) => j !== 4))).toMatchObject({ ok: false, seq: 6, count: 4 });
      expect(verifyAuditChain([records[0]!, records[2]!, records[1]!])).toMatchObject({ ok: false, seq: 3 });
    });
  });
}
