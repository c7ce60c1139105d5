import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { randomUUID } from "node:crypto";
import { base64url } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestKms, type TestKms } from "../helpers/harness.js";
import {
  add,
  appendBlock,
  checkpoint,
  createGroup,
  databaseFiles,
  gkKeyFor,
  gkRows,
  hex64,
  keyForms,
  openGk,
  Party,
  recipientHeader,
  remove,
  unwrapAll,
  type Chain,
  type GkPayload,
  type Reply,
} from "../helpers/gk-fixtures.js";

const RFC3339_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;
const GK_URI = /^kms:\/\/kms\.example\.com\/gks\/[^/?#]+$/;
/** §2: entity EC keys are wrapped to with ECDH-ES+A256KW, RSA keys with RSA-OAEP or RSA-OAEP-256. */
const WRAP_ALGS = { ec: ["ECDH-ES+A256KW"], rsa: ["RSA-OAEP", "RSA-OAEP-256"] } as const;

describe("GK (PROTOCOL.md §9): create, bind, get", () => {
  let kms: TestKms;
  /** alice: 2 EC keys + 1 RSA key; bob, carol, erin, ivy: one EC key; frank and nokey: no key. */
  let alice: Party, bob: Party, carol: Party, erin: Party, frank: Party, ivy: Party, nokey: Party;
  /** g: {alice, bob, frank, ivy} at its genesis. other: {bob, carol}, alice never a member. */
  let g: Chain, other: Chain;
  /** h: B0 {alice, bob}; B1 bob removes alice; B2 bob adds carol. */
  let h: Chain;
  /** Every GK key (base64url k) this file has unwrapped: none may show up in the logs. */
  const seen = new Set<string>();

  const gkCount = () => gkRows(kms).length;
  const gkRow = (uri: string) => gkRows(kms).find((r) => r.uri === uri);

  /** Unwraps a GK reply for `party` and remembers its k. */
  async function keyOf(party: Party, jws: unknown) {
    const out = await gkKeyFor(party, jws);
    seen.add(out.k);
    return out;
  }

  async function createOk(party: Party, block?: string): Promise<{ jws: string; payload: GkPayload; k: string }> {
    const r = await party.createGk(block);
    expect(r.status, String(r.reason)).toBe(201);
    const { payload, k } = await keyOf(party, r.gk);
    return { jws: r.gk as string, payload, k };
  }

  /** A refusal with its status and reason, and the gks table exactly as before. */
  async function expectRefusedNothingStored(send: () => Promise<Reply>, status: number, reason: RegExp): Promise<void> {
    const before = gkRows(kms);
    const r = await send();
    expect(r.status, String(r.reason)).toBe(status);
    expect(String(r.reason)).toMatch(reason);
    expect(r.gk).toBeUndefined();
    expect(gkRows(kms)).toEqual(before);
  }

  beforeAll(async () => {
    kms = await startTestKms();
    [alice, bob, carol, erin, frank, ivy, nokey] = await Promise.all([
      Party.open(kms, "alice@example.com", ["ec", "ec", "rsa"]),
      Party.open(kms, "bob@example.com"),
      Party.open(kms, "carol@example.com"),
      Party.open(kms, "erin@example.com"),
      Party.open(kms, "frank@example.com", []),
      Party.open(kms, "ivy@example.com"),
      Party.open(kms, "nokey@example.com", []),
    ]);
    [g, other, h] = await Promise.all([
      createGroup(alice, [alice.entity, bob.entity, frank.entity, ivy.entity]),
      createGroup(bob, [bob.entity, carol.entity]),
      createGroup(alice, [alice.entity, bob.entity]),
    ]);
    await appendBlock(h, bob, [remove(alice.entity)]);
    await appendBlock(h, bob, [add(carol.entity)]);
  });
  afterAll(async () => {
    await kms?.close();
  });

  describe("create /gks", () => {
    it("unbound: 201 {gk}, a JWS by the static key over {uri, creator, created, key}, one recipient per key of the requester", async () => {
      const before = gkCount();
      const r = await alice.createGk();
      expect(r.status, String(r.reason)).toBe(201);
      const { header, payload } = await openGk(kms, r.gk);
      expect(header.kid).toBe("kms://kms.example.com");
      expect(header.alg).toBe("ES256");
      expect(Object.keys(payload).sort()).toEqual(["created", "creator", "key", "uri"]);
      expect(payload.uri).toMatch(GK_URI);
      expect(payload.creator).toBe("kms://kms.example.com");
      expect(payload.created).toMatch(RFC3339_UTC);
      expect(Math.abs(Date.parse(payload.created) - Date.now())).toBeLessThan(60_000);

      // The key: a JWE General JSON Serialization, an object (not a compact string).
      expect(typeof payload.key).toBe("object");
      expect(Array.isArray(payload.key.recipients)).toBe(true);
      for (const member of ["ciphertext", "iv", "tag"] as const) expect(typeof payload.key[member]).toBe("string");
      expect(payload.key.recipients).toHaveLength(3);
      const kids = payload.key.recipients.map((_r, i) => recipientHeader(payload.key, i).kid);
      expect([...kids].sort()).toEqual(alice.keys.map((k) => k.kid).sort());
      payload.key.recipients.forEach((_r, i) => {
        const hd = recipientHeader(payload.key, i);
        expect(hd.enc).toBe("A256GCM");
        const kind = alice.keys.find((k) => k.kid === hd.kid)!.kind;
        expect(WRAP_ALGS[kind] as readonly string[]).toContain(hd.alg);
      });

      // Each recipient unwraps with its own private key to the same {kty, alg, kid, k}.
      const unwrapped = await unwrapAll(payload.key, alice);
      expect(unwrapped).toHaveLength(3);
      for (const u of unwrapped) {
        expect(u.plaintext).toEqual({ kty: "oct", alg: "A256GCM", kid: payload.uri, k: unwrapped[0]!.plaintext.k });
        expect(base64url.decode(u.plaintext.k)).toHaveLength(32);
      }
      seen.add(unwrapped[0]!.plaintext.k);

      expect(gkCount()).toBe(before + 1);
      const row = gkRow(payload.uri);
      expect(row).toMatchObject({ requester: "alice@example.com", block_hash: null });
    });

    it("two GKs have different uris and different keys", async () => {
      const [a, b] = await Promise.all([createOk(alice), createOk(alice)]);
      expect(a.payload.uri).not.toBe(b.payload.uri);
      expect(a.k).not.toBe(b.k);
    });

    it("bound: with `block` (a block where the requester is a member) → payload.block = that hash", async () => {
      const before = gkCount();
      const { payload } = await createOk(alice, g.tail);
      expect(Object.keys(payload).sort()).toEqual(["block", "created", "creator", "key", "uri"]);
      expect(payload.block).toBe(g.blocks[0]!.hash);
      expect(payload.key.recipients).toHaveLength(3);
      expect(gkCount()).toBe(before + 1);
      expect(gkRow(payload.uri)).toMatchObject({ requester: "alice@example.com", block_hash: g.blocks[0]!.hash });
    });

    it("'member at block H' counts H's own operations: removed at H → 403, added at H → 201", async () => {
      // h: B0 {alice, bob}; B1 removes alice; B2 adds carol.
      await createOk(alice, h.blocks[0]!.hash);
      await expectRefusedNothingStored(() => alice.createGk(h.blocks[1]!.hash), 403, /member/);
      await expectRefusedNothingStored(() => carol.createGk(h.blocks[1]!.hash), 403, /member/);
      const { payload } = await createOk(carol, h.blocks[2]!.hash);
      expect(payload.block).toBe(h.blocks[2]!.hash);
    });

    it("no registered key → 409 with a reason saying to register one; nothing stored", async () => {
      await expectRefusedNothingStored(() => nokey.createGk(), 409, /regist/i);
    });

    it("block unknown → 404; nothing stored", async () => {
      await expectRefusedNothingStored(() => alice.createGk(hex64()), 404, /block/);
    });

    it("block of a group the requester is not a member of → 403; nothing stored", async () => {
      await expectRefusedNothingStored(() => alice.createGk(other.tail), 403, /member/);
    });

    it.each([
      ["a number", 5],
      ["a short string", "xyz"],
      ["an object", { hash: "0".repeat(64) }],
      ["an array", ["0".repeat(64)]],
      ["63 hex digits", "a".repeat(63)],
    ])("block that is not a hash (%s) → 400 naming 'block'; nothing stored", async (_name, block) => {
      await expectRefusedNothingStored(() => alice.createGk(block), 400, /block/);
    });
  });

  describe("update <gk uri> with block (bind)", () => {
    it("200 {gk}: re-signed with block added; uri, creator, created and the key unchanged", async () => {
      const created = await createOk(alice);
      const r = await alice.bindGk(created.payload.uri, g.tail);
      expect(r.status, String(r.reason)).toBe(200);
      const { header, payload } = await openGk(kms, r.gk);
      expect(header.kid).toBe(kms.kid);
      expect(Object.keys(payload).sort()).toEqual(["block", "created", "creator", "key", "uri"]);
      expect(payload.uri).toBe(created.payload.uri);
      expect(payload.creator).toBe(created.payload.creator);
      expect(payload.created).toBe(created.payload.created);
      expect(payload.block).toBe(g.tail);
      expect((await keyOf(alice, r.gk)).k).toBe(created.k);
      expect(gkRow(created.payload.uri)).toMatchObject({ block_hash: g.tail });
      // …and a later get shows the binding.
      const got = await alice.getGk(created.payload.uri);
      expect(got.status).toBe(200);
      expect((await openGk(kms, got.gk)).payload).toMatchObject({ uri: created.payload.uri, created: created.payload.created, block: g.tail });
    });

    it("refusals leave the gks table unchanged: unknown 404, another entity 403, bound 409, unknown block 404, non-member 403, bad block 400", async () => {
      const unbound = (await createOk(alice)).payload.uri;
      const bound = (await createOk(alice, g.tail)).payload.uri;
      await expectRefusedNothingStored(() => alice.bindGk(`kms://kms.example.com/gks/${randomUUID()}`, g.tail), 404, /./);
      await expectRefusedNothingStored(() => alice.bindGk(`/gks/${randomUUID()}`, g.tail), 404, /./);
      // bob is a member at g.tail, but the GK is alice's.
      await expectRefusedNothingStored(() => bob.bindGk(unbound, g.tail), 403, /./);
      await expectRefusedNothingStored(() => alice.bindGk(bound, h.blocks[0]!.hash), 409, /bound/);
      await expectRefusedNothingStored(() => alice.bindGk(bound, g.tail), 409, /bound/);
      await expectRefusedNothingStored(() => alice.bindGk(unbound, hex64()), 404, /block/);
      await expectRefusedNothingStored(() => alice.bindGk(unbound, other.tail), 403, /member/);
      await expectRefusedNothingStored(() => alice.bindGk(unbound, h.blocks[1]!.hash), 403, /member/);
      await expectRefusedNothingStored(() => alice.bindGk(unbound, 5), 400, /block/);
      await expectRefusedNothingStored(() => alice.bindGk(unbound, "xyz"), 400, /block/);
      await expectRefusedNothingStored(() => alice.call({ method: "update", uri: unbound }), 400, /block/);
      expect(gkRow(unbound)).toMatchObject({ block_hash: null });
    });

    it("5 parallel binds of the same GK to different blocks: exactly one 200, the others 409", async () => {
      const chains = await Promise.all(Array.from({ length: 5 }, () => createGroup(alice, [alice.entity])));
      const hashes = chains.map((c) => c.tail);
      for (let round = 0; round < 3; round++) {
        const { payload } = await createOk(alice);
        const replies = await Promise.all(hashes.map((hash) => alice.bindGk(payload.uri, hash)));
        expect(replies.map((r) => r.status).sort()).toEqual([200, 409, 409, 409, 409]);
        const winner = replies.find((r) => r.status === 200)!;
        const won = (await openGk(kms, winner.gk)).payload.block;
        expect(hashes).toContain(won);
        expect(gkRow(payload.uri)).toMatchObject({ block_hash: won });
        const got = await alice.getGk(payload.uri);
        expect((await openGk(kms, got.gk)).payload.block).toBe(won);
      }
    });
  });

  describe("retrieve <gk uri> with entity (get)", () => {
    let boundGk: { payload: GkPayload; k: string };
    let unboundGk: { payload: GkPayload; k: string };
    beforeAll(async () => {
      boundGk = await createOk(alice, g.tail);
      unboundGk = await createOk(alice);
    });

    it("a member gets the GK re-wrapped to its own keys: same uri, created, block and k", async () => {
      const r = await bob.getGk(boundGk.payload.uri);
      expect(r.status, String(r.reason)).toBe(200);
      const { payload, k } = await keyOf(bob, r.gk);
      expect(k).toBe(boundGk.k);
      expect(payload.key.recipients).toHaveLength(1);
      expect(recipientHeader(payload.key, 0).kid).toBe(bob.keys[0]!.kid);
      expect({ ...payload, key: undefined }).toEqual({ ...boundGk.payload, key: undefined });
      // alice again: her three keys, the same k.
      const again = await alice.getGk(boundGk.payload.uri);
      expect(again.status).toBe(200);
      const mine = await keyOf(alice, again.gk);
      expect(mine.payload.key.recipients).toHaveLength(3);
      expect(mine.k).toBe(boundGk.k);
    });

    it("the uri may be given by path alone; entity may carry acct: and any case of domain", async () => {
      const path = new URL(boundGk.payload.uri.replace(/^kms:/, "https:")).pathname;
      const r = await bob.getGk(path, "acct:bob@Example.COM");
      expect(r.status, String(r.reason)).toBe(200);
      expect((await keyOf(bob, r.gk)).k).toBe(boundGk.k);
    });

    it("entity other than the authenticated one → 403", async () => {
      for (const [party, entity] of [[alice, bob.entity], [bob, alice.entity], [erin, bob.entity]] as const) {
        const r = await party.getGk(boundGk.payload.uri, entity);
        expect(r.status, `${party.entity} asking as ${entity}`).toBe(403);
        expect(r.gk).toBeUndefined();
      }
    });

    it("missing entity → 400 naming the field", async () => {
      const r = await bob.call({ method: "retrieve", uri: boundGk.payload.uri });
      expect(r.status).toBe(400);
      expect(String(r.reason)).toMatch(/entity/);
    });

    it("unknown GK → 404 (absolute, by path, and under another authority)", async () => {
      for (const uri of [`kms://kms.example.com/gks/${randomUUID()}`, `/gks/${randomUUID()}`, boundGk.payload.uri.replace("kms.example.com", "other.example.net")]) {
        const r = await alice.getGk(uri);
        expect(r.status, uri).toBe(404);
      }
    });

    it("unbound: only its requester (others 403, members of alice's groups included)", async () => {
      const mine = await alice.getGk(unboundGk.payload.uri);
      expect(mine.status).toBe(200);
      const { payload, k } = await keyOf(alice, mine.gk);
      expect(k).toBe(unboundGk.k);
      expect(payload.block).toBeUndefined();
      for (const party of [bob, erin, ivy]) {
        const r = await party.getGk(unboundGk.payload.uri);
        expect(r.status, party.entity).toBe(403);
        expect(r.gk).toBeUndefined();
      }
    });

    it("an entitled entity with no registered key → 409; a non-member with no key → 403 (policy first)", async () => {
      const r = await frank.getGk(boundGk.payload.uri);
      expect(r.status, String(r.reason)).toBe(409);
      expect(String(r.reason)).toMatch(/key/);
      const n = await nokey.getGk(boundGk.payload.uri);
      expect(n.status, String(n.reason)).toBe(403);
    });

    it("policy refusal (default policy 1: not a member at the bound block) → 403 with a reason naming the policy", async () => {
      for (const party of [erin, carol]) {
        const r = await party.getGk(boundGk.payload.uri);
        expect(r.status, party.entity).toBe(403);
        expect(String(r.reason)).toMatch(/policy/i);
        expect(String(r.reason)).toMatch(/1/);
        expect(r.gk).toBeUndefined();
      }
    });

    it("a deleted entity key no longer receives wrapped GKs (§7)", async () => {
      const second = await ivy.addKey("ec");
      const two = await ivy.getGk(boundGk.payload.uri);
      expect(two.status).toBe(200);
      expect((await keyOf(ivy, two.gk)).payload.key.recipients).toHaveLength(2);
      const del = await ivy.call({ method: "delete", uri: `/entities/${ivy.entity}/keys/${second.kid}` });
      expect(del.status, String(del.reason)).toBe(204);
      const one = await ivy.getGk(boundGk.payload.uri);
      expect(one.status).toBe(200);
      const { payload, k } = await keyOf(ivy, one.gk);
      expect(payload.key.recipients).toHaveLength(1);
      expect(recipientHeader(payload.key, 0).kid).toBe(ivy.keys[0]!.kid);
      expect(k).toBe(boundGk.k);
    });
  });

  describe("no GK key material at rest or in the logs", () => {
    it("the SQLite files (db, -wal, -shm; before and after a checkpoint) and the data dir never hold a GK's key", async () => {
      const keys: Uint8Array[] = [];
      const uris: string[] = [];
      const remember = async (party: Party, jws: unknown) => {
        const { payload, bytes, k } = await keyOf(party, jws);
        keys.push(bytes);
        uris.push(payload.uri);
        return k;
      };
      for (let i = 0; i < 3; i++) {
        // created unbound, then bound, then fetched by alice and bob
        const a = await createOk(alice);
        const bind = await alice.bindGk(a.payload.uri, g.tail);
        expect(bind.status).toBe(200);
        expect(await remember(alice, bind.gk)).toBe(a.k);
        expect(await remember(bob, (await bob.getGk(a.payload.uri)).gk)).toBe(a.k);
        // created bound
        const b = await createOk(alice, g.tail);
        expect(await remember(ivy, (await ivy.getGk(b.payload.uri)).gk)).toBe(b.k);
        // created unbound, fetched unbound
        const c = await createOk(alice);
        expect(await remember(alice, (await alice.getGk(c.payload.uri)).gk)).toBe(c.k);
      }

      const scan = (files: { path: string; bytes: Buffer }[], when: string) => {
        for (const { path, bytes } of files) {
          for (const key of keys) {
            for (const { label, needle } of keyForms(key)) {
              expect(bytes.indexOf(needle), `${when}: ${path} contains a GK key (${label})`).toBe(-1);
            }
          }
        }
      };
      const contains = (files: { bytes: Buffer }[], s: string) => files.some(({ bytes }) => bytes.includes(Buffer.from(s)));

      // Before a checkpoint: the -wal holds the recent writes.
      const live = databaseFiles(kms);
      expect(live.some((f) => f.path.endsWith("-wal"))).toBe(true);
      for (const uri of uris) expect(contains(live, uri), `positive control: ${uri} is in the db or wal`).toBe(true);
      scan(live, "before checkpoint");

      // After a TRUNCATE checkpoint: everything is in the main file.
      checkpoint(kms);
      const settled = databaseFiles(kms);
      for (const uri of uris) expect(contains(settled.filter((f) => !f.path.endsWith("-wal")), uri), `positive control: ${uri} in the db`).toBe(true);
      scan(settled, "after checkpoint");

      // And no other file of the data directory.
      const all: { path: string; bytes: Buffer }[] = [];
      const walk = (dir: string) => {
        for (const name of readdirSync(dir)) {
          const p = join(dir, name);
          if (statSync(p).isDirectory()) walk(p);
          else all.push({ path: p, bytes: readFileSync(p) });
        }
      };
      walk(kms.dataDir);
      scan(all, "data dir");
    });

    it("the logs never contain any GK's key", () => {
      const logs = kms.logs();
      expect(logs.length).toBeGreaterThan(0);
      expect(seen.size).toBeGreaterThanOrEqual(10);
      for (const k of seen) {
        for (const { label, needle } of keyForms(base64url.decode(k))) {
          if (label === "raw bytes") continue; // the log is text
          expect(logs.includes(needle.toString("latin1")), `logs contain a GK key (${label})`).toBe(false);
        }
      }
    });
  });
});
