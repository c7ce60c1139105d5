import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { base64url, exportJWK, generalDecrypt, importPKCS8, type JWK } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { REL_KMS } from "../../src/protocol/constants.js";
import { deriveEphemeralKey, generateEphemeralKeyPair, importEcdhPublicKey } from "../../src/protocol/jose/ephemeral-key.js";
import { openJws, post, RawClient, startTestKms, type TestKms } from "../helpers/harness.js";
import { createGroup, gkKeyFor, gkRows, openGk, Party, recipientHeader, type Reply } from "../helpers/gk-fixtures.js";
import { rowCount } from "../helpers/gmbc-fixtures.js";
import { createCa, issueLeaf, signProof, type TestLeaf } from "../helpers/test-pki.js";
import Database from "better-sqlite3";
import { auditRecordFromRow, type AuditRecord } from "../../src/store/audit.js";
import { storePath } from "../helpers/gk-fixtures.js";

/** The last audit record matching `match` (the SQLite data file, through its own connection). */
function lastAudit(kms: TestKms, match: (r: AuditRecord) => boolean): AuditRecord | undefined {
  const db = new Database(storePath(kms), { readonly: true });
  try {
    const rows = db.prepare("SELECT body, prev_hash, hash FROM audit_log ORDER BY seq").all() as { body: string; prev_hash: string; hash: string }[];
    return rows.map((r) => auditRecordFromRow(r.body, r.prev_hash, r.hash)).filter(match).at(-1);
  } finally {
    db.close();
  }
}

/**
 * The curator's side of federation (PROTOCOL.md §12 "Acting for a user"): a real KMS (the curator,
 * kms.example.com, domain example.com) federating with peer kms.b.example, a real WebFinger server
 * on loopback that the test controls, and raw peers that open certificate-credential channels.
 */

type Behaviour = "peer" | "other-kms" | "no-link" | "404" | "500" | "not-jrd" | "not-json" | "redirect" | "hang";

describe("acting for a user: the curator's checks (PROTOCOL.md §12)", () => {
  let kms: TestKms;
  let webfinger: Server;
  let wfOrigin: string;
  let dir: string;
  let peerLeaf: TestLeaf;
  let strangerLeaf: TestLeaf;
  /** WebFinger requests seen, per resource. */
  const hits = new Map<string, number>();
  const seen: string[] = [];

  /** How the WebFinger server answers for a local part (the user's name says what it gets). */
  const behaviourOf = (acct: string): Behaviour => {
    const local = acct.replace(/^acct:/, "").split("@")[0]!;
    return (local.split("+")[0] as Behaviour) ?? "404";
  };

  beforeAll(async () => {
    const root = await createCa({ name: "Federation Test Root" });
    [peerLeaf, strangerLeaf] = await Promise.all([
      issueLeaf({ issuer: root, dnsNames: ["kms.b.example"] }),
      issueLeaf({ issuer: root, dnsNames: ["kms.c.example"] }),
    ]);
    dir = mkdtempSync(join(tmpdir(), "keyward-fed-"));
    writeFileSync(join(dir, "roots.pem"), root.pem);

    webfinger = createServer((req, res: ServerResponse) => {
      const url = new URL(req.url ?? "/", "http://x");
      const resource = url.searchParams.get("resource") ?? "";
      seen.push(req.url ?? "");
      hits.set(resource, (hits.get(resource) ?? 0) + 1);
      const jrd = (links: unknown[]) => {
        res.writeHead(200, { "content-type": "application/jrd+json" });
        res.end(JSON.stringify({ subject: resource, links }));
      };
      if (url.pathname !== "/.well-known/webfinger") return void res.writeHead(404).end();
      switch (behaviourOf(resource)) {
        case "peer":
          return jrd([{ rel: "http://webfinger.net/rel/avatar", href: "https://b.example/a.png" }, { rel: REL_KMS, href: "kms://kms.b.example" }]);
        case "other-kms":
          return jrd([{ rel: REL_KMS, href: "kms://kms.c.example" }]);
        case "no-link":
          return jrd([]);
        case "500":
          return void res.writeHead(500).end("oops");
        case "not-jrd":
          res.writeHead(200, { "content-type": "application/json" });
          return void res.end(JSON.stringify({ subject: resource, links: "kms://kms.b.example" }));
        case "not-json":
          res.writeHead(200, { "content-type": "text/html" });
          return void res.end("<html>hello</html>");
        case "redirect":
          return void res.writeHead(302, { location: `${wfOrigin}/.well-known/webfinger?resource=${encodeURIComponent("acct:peer@b.example")}&rel=${encodeURIComponent(REL_KMS)}` }).end();
        case "hang":
          return; // never answers
        default:
          res.writeHead(404, { "content-type": "application/json" });
          return void res.end("{}");
      }
    });
    await new Promise<void>((resolve) => webfinger.listen(0, "127.0.0.1", resolve));
    wfOrigin = `http://127.0.0.1:${(webfinger.address() as AddressInfo).port}`;
    // A port nothing listens on: bind one, note it, close it.
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const deadPort = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));

    kms = await startTestKms({
      env: {
        KEYWARD_TRUST_ROOTS: join(dir, "roots.pem"),
        KEYWARD_FEDERATION: JSON.stringify({
          peers: [{ authority: "kms.b.example", url: "http://127.0.0.1:9" }],
          webfinger: { "b.example": wfOrigin, "down.example": `http://127.0.0.1:${deadPort}` },
        }),
      },
    });
  }, 60_000);

  afterAll(async () => {
    await kms?.close();
    webfinger?.closeAllConnections();
    await new Promise<void>((resolve) => (webfinger ? webfinger.close(() => resolve()) : resolve()));
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** The credential of a KMS presenting its static key: kid = its KMS URI, with x5c. */
  const kmsJwk = (leaf: TestLeaf, host: string): JWK => ({ ...leaf.jwk, kid: `kms://${host}` });
  const credentialOf = (leaf: TestLeaf, host: string) => ({ client: { clientId: "peer-kms", credential: { jwk: kmsJwk(leaf, host) } } });

  /** Opens a certificate-credential channel (JWE(K_kms, JWS(K_peer, request)), §6) as a KMS. */
  async function peerChannel(leaf: TestLeaf, host: string): Promise<{ raw: RawClient; call: (fields: Record<string, unknown>) => Promise<Reply> }> {
    const pair = await generateEphemeralKeyPair();
    const { kty, crv, x, y } = await exportJWK(pair.publicKey);
    const payload = { ...credentialOf(leaf, host), method: "create", uri: "/ecdhe", requestId: crypto.randomUUID(), jwk: { kty, crv, x, y } };
    const raw = new RawClient(kms);
    const res = await post(kms.url, await raw.ecdheMessage(await signProof(leaf, payload)));
    const { payload: reply } = await openJws(kms.url, res.body);
    expect(reply.status, String(reply.reason)).toBe(201);
    const key = reply.key as { uri: string; jwk: JWK; userId: string };
    expect(key.userId).toBe(`kms://${host}`);
    raw.uri = key.uri;
    raw.key = await deriveEphemeralKey(pair.privateKey, await importEcdhPublicKey(key.jwk));
    const call = async (fields: Record<string, unknown>) => {
      const r = await raw.request({ ...credentialOf(leaf, host), ...fields });
      expect(r.form, `reply to ${String(fields.method)} ${String(fields.uri)}`).toBe("jwe");
      return r.payload as Reply;
    };
    return { raw, call };
  }

  let peer: Awaited<ReturnType<typeof peerChannel>>;
  let stranger: Awaited<ReturnType<typeof peerChannel>>;
  let alice: Party;
  let chainUri: string;
  let gkUri: string;
  beforeAll(async () => {
    [peer, stranger, alice] = await Promise.all([peerChannel(peerLeaf, "kms.b.example"), peerChannel(strangerLeaf, "kms.c.example"), Party.open(kms, "alice@example.com")]);
    const chain = await createGroup(alice, ["alice@example.com", "peer+member@b.example"]);
    chainUri = chain.uri;
    const gk = await alice.createGk(chain.tail);
    expect(gk.status, String(gk.reason)).toBe(201);
    gkUri = (await openGk(kms, gk.gk)).payload.uri;
  }, 60_000);

  /** What a refusal must not have changed. */
  const stored = () => ({ gks: gkRows(kms).length, chains: rowCount(kms, "chains"), blocks: rowCount(kms, "blocks"), keys: rowCount(kms, "entity_keys") });
  async function expectRefused(call: Promise<Reply>, status: number, reason: RegExp, before: ReturnType<typeof stored>) {
    const r = await call;
    expect(r.status, String(r.reason)).toBe(status);
    expect(String(r.reason)).toMatch(reason);
    expect(r.requestId).toBeDefined();
    expect(stored()).toEqual(before);
    return r;
  }

  describe("the four checks", () => {
    it("1. a KMS whose certificate validates but that is no configured peer → 403, nothing stored, no WebFinger asked", async () => {
      const before = stored();
      const n = seen.length;
      await expectRefused(stranger.call({ method: "create", uri: "/gks", entity: "peer+c1@b.example" }), 403, /kms:\/\/kms\.c\.example is not a federation peer/, before);
      await expectRefused(stranger.call({ method: "retrieve", uri: gkUri, entity: "peer+member@b.example" }), 403, /not a federation peer/, before);
      expect(seen.length).toBe(n);
    });

    it("2. entity of the curator's own domain → 403 (a peer never acts for this KMS's users), before any WebFinger", async () => {
      const before = stored();
      const n = seen.length;
      await expectRefused(peer.call({ method: "retrieve", uri: gkUri, entity: "alice@example.com" }), 403, /own domain/, before);
      await expectRefused(peer.call({ method: "create", uri: "/gks", entity: "acct:bob@EXAMPLE.com" }), 403, /own domain/, before);
      expect(seen.length).toBe(n);
    });

    it.each([
      ["404", "404@b.example"],
      ["a JRD without the link", "no-link@b.example"],
      ["a JRD naming another KMS", "other-kms@b.example"],
    ])("3. WebFinger answers %s → 403 naming the user's domain, nothing stored", async (_what, entity) => {
      const before = stored();
      await expectRefused(peer.call({ method: "create", uri: "/gks", entity }), 403, /the domain b\.example does not name kms:\/\/kms\.b\.example/, before);
    });

    it("3. the WebFinger query: resource=acct:<entity>, rel=urn:x-keyward:rel:kms, at the configured origin", async () => {
      const n = seen.length;
      expect((await peer.call({ method: "create", uri: "/gks", entity: "404+query@B.Example" })).status).toBe(403);
      const url = new URL(seen.slice(n)[0]!, "http://x");
      expect(url.pathname).toBe("/.well-known/webfinger");
      expect(url.searchParams.get("resource")).toBe("acct:404+query@b.example");
      expect(url.searchParams.getAll("rel")).toEqual([REL_KMS]);
    });

    it.each([
      ["HTTP 500", "500@b.example", /answered HTTP 500/],
      ["a 200 that is not a JRD", "not-jrd@b.example", /not a JRD/],
      ["a 200 that is not JSON", "not-json@b.example", /not JSON/],
      ["a redirect (never followed)", "redirect@b.example", /answered HTTP 302/],
      ["nothing (connection refused)", "anyone@down.example", /could not be reached/],
    ])("3. WebFinger answers %s → 502 (fail closed), nothing stored", async (_what, entity, reason) => {
      const before = stored();
      const n = seen.length;
      await expectRefused(peer.call({ method: "create", uri: "/gks", entity }), 502, reason, before);
      if (entity.startsWith("redirect")) expect(seen.length).toBe(n + 1); // the redirect target was never fetched
    });

    it("3. WebFinger that does not answer within 5 s → 502", async () => {
      const before = stored();
      const t0 = Date.now();
      await expectRefused(peer.call({ method: "create", uri: "/gks", entity: "hang@b.example" }), 502, /did not answer within 5 s/, before);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(4900);
      expect(Date.now() - t0).toBeLessThan(15_000);
    }, 20_000);

    it("4. then authorized as the user: a peer's user who is not a member → 403 policy, nothing stored", async () => {
      const before = stored();
      await expectRefused(peer.call({ method: "retrieve", uri: gkUri, entity: "peer+outsider@b.example" }), 403, /policy/, before);
      // And the requester rule: only the GK's requester binds it.
      await expectRefused(peer.call({ method: "update", uri: gkUri, entity: "peer+outsider@b.example", block: "0".repeat(64) }), 403, /only the entity that created/, before);
    });

    it("§4's checks come first: an unknown GK is 404 for a stranger too; an unknown method 400", async () => {
      const before = stored();
      await expectRefused(stranger.call({ method: "retrieve", uri: "/gks/nope", entity: "peer@b.example" }), 404, /nothing at|no group key/, before);
      await expectRefused(peer.call({ method: "retrieve", uri: "/blocks/nope", entity: "peer@b.example" }), 404, /nothing at|no chain/, before);
    });
  });

  describe("the WebFinger cache", () => {
    it("a positive answer is cached per entity; a negative one is asked again every time", async () => {
      const pos = "acct:peer+cached@b.example";
      const neg = "acct:404+again@b.example";
      for (let i = 0; i < 3; i++) {
        expect((await peer.call({ method: "create", uri: "/gks", entity: pos.slice(5) })).status).toBe(201);
        expect((await peer.call({ method: "create", uri: "/gks", entity: neg.slice(5) })).status).toBe(403);
      }
      expect(hits.get(pos)).toBe(1);
      expect(hits.get(neg)).toBe(3);
      // Per entity: another user of the same domain is asked about on its own.
      expect((await peer.call({ method: "create", uri: "/gks", entity: "peer+second@b.example" })).status).toBe(201);
      expect(hits.get("acct:peer+second@b.example")).toBe(1);
    });

    it("a failure (502) is not cached either", async () => {
      for (let i = 0; i < 2; i++) expect((await peer.call({ method: "create", uri: "/gks", entity: "500+twice@b.example" })).status).toBe(502);
      expect(hits.get("acct:500+twice@b.example")).toBe(2);
    });
  });

  describe("GKs across KMSs: wrapped to the peer's static key only", () => {
    /** Unwraps a GK's only recipient with the peer's private key. */
    async function unwrapForPeer(jws: unknown): Promise<{ uri: string; block?: string; k: string; kid: unknown }> {
      const { payload } = await openGk(kms, jws);
      expect(payload.key.recipients).toHaveLength(1);
      const header = recipientHeader(payload.key, 0);
      const priv = await importPKCS8(peerLeaf.privateKeyPem, header.alg as string);
      const { plaintext } = await generalDecrypt(payload.key, priv);
      const key = JSON.parse(new TextDecoder().decode(plaintext)) as { kty: string; alg: string; kid: string; k: string };
      expect(key).toEqual({ kty: "oct", alg: "A256GCM", kid: payload.uri, k: key.k });
      return { uri: payload.uri, ...(payload.block ? { block: payload.block } : {}), k: key.k, kid: header.kid };
    }

    it("GK get by the peer for its user who is a member → 200, one recipient, kid = the peer's KMS URI, the same key alice gets", async () => {
      const r = await peer.call({ method: "retrieve", uri: gkUri, entity: "peer+member@b.example" });
      expect(r.status, String(r.reason)).toBe(200);
      const got = await unwrapForPeer(r.gk);
      expect(got.kid).toBe("kms://kms.b.example");
      expect(got.uri).toBe(gkUri);
      // §13: the release is audited with the peer as the actor and the user it acts for.
      expect(lastAudit(kms, (r) => r.operation === "gk.get" && r.actor === "kms://kms.b.example")).toMatchObject({
        entity: "peer+member@b.example", object: gkUri, status: 200, recipients: ["kms://kms.b.example"],
      });
      const mine = await gkKeyFor(alice, (await alice.getGk(gkUri)).gk);
      expect(base64url.decode(got.k)).toEqual(mine.bytes);
    });

    it("GK create for a user with no keys at the curator → 201 (no 409), wrapped to the peer only; the user is its requester", async () => {
      const before = gkRows(kms).length;
      const r = await peer.call({ method: "create", uri: "/gks", entity: "peer+creator@b.example" });
      expect(r.status, String(r.reason)).toBe(201);
      const got = await unwrapForPeer(r.gk);
      expect(got.kid).toBe("kms://kms.b.example");
      const row = gkRows(kms).find((g) => g.uri === got.uri)!;
      expect(gkRows(kms).length).toBe(before + 1);
      expect(row.requester).toBe("peer+creator@b.example");
      // Unbound: only its requester may get it, through the peer.
      expect((await peer.call({ method: "retrieve", uri: got.uri, entity: "peer+creator@b.example" })).status).toBe(200);
      expect((await peer.call({ method: "retrieve", uri: got.uri, entity: "peer+member@b.example" })).status).toBe(403);
      // Bind by the user (a member at the genesis block) → 200, still the peer's key only.
      const genesis = (await openGk(kms, (await alice.getGk(gkUri)).gk)).payload.block!;
      const creatorChain = await createGroup(alice, ["alice@example.com", "peer+creator@b.example"]);
      const bound = await peer.call({ method: "update", uri: got.uri, entity: "peer+creator@b.example", block: creatorChain.tail });
      expect(bound.status, String(bound.reason)).toBe(200);
      expect((await unwrapForPeer(bound.gk)).block).toBe(creatorChain.tail);
      expect(genesis).not.toBe(creatorChain.tail);
    });

    it("GMBC get for a member through the peer → 200 with the blocks", async () => {
      const r = await peer.call({ method: "retrieve", uri: chainUri, entity: "peer+member@b.example" });
      expect(r.status, String(r.reason)).toBe(200);
      expect(r.blocks).toHaveLength(1);
    });
  });

  describe("a KMS acting as itself (no entity)", () => {
    it("ping, retrieve /entities/<acct>/keys → 200, for a configured peer and any other validated KMS", async () => {
      for (const ch of [peer, stranger]) {
        expect((await ch.call({ method: "update", uri: "/ping" })).status).toBe(200);
        const keys = await ch.call({ method: "retrieve", uri: "/entities/alice@example.com/keys" });
        expect(keys.status).toBe(200);
        expect((keys.keys as unknown[]).length).toBe(1);
      }
    });

    it("GMBC append: allowed (the block authenticates itself; a bad one is refused as any other)", async () => {
      const before = stored();
      const r = await stranger.call({ method: "create", uri: chainUri, blocks: ["not.a.block"] });
      expect(r.status).toBe(400);
      expect(stored()).toEqual(before);
    });

    it.each([
      ["GK get", { method: "retrieve", uri: "GK" }],
      ["GK create", { method: "create", uri: "/gks" }],
      ["GK bind", { method: "update", uri: "GK", block: "0".repeat(64) }],
      ["GMBC get", { method: "retrieve", uri: "CHAIN" }],
    ])("%s without entity → 400 naming 'entity', nothing stored", async (_what, fields) => {
      const before = stored();
      const uri = fields.uri === "GK" ? gkUri : fields.uri === "CHAIN" ? chainUri : fields.uri;
      await expectRefused(peer.call({ ...fields, uri }), 400, /'entity'/, before);
    });

    it.each([
      ["genesis", { method: "create", uri: "/blocks", blockPayload: { operations: [{ entity: "alice@example.com", optype: "add" }] } }],
      ["key registration", { method: "create", uri: "/entities/keys", jwk: { kty: "EC", crv: "P-256", x: "x", y: "y", kid: "k" } }],
      ["key revocation", { method: "delete", uri: "/entities/alice@example.com/keys/alice-ec-1" }],
    ])("%s → 403, with or without entity, nothing stored", async (_what, fields) => {
      const before = stored();
      await expectRefused(peer.call(fields), 403, /no groups or device keys of its own/, before);
      await expectRefused(peer.call({ ...fields, entity: "peer+member@b.example" }), 403, /no groups or device keys of its own/, before);
      await expectRefused(stranger.call(fields), 403, /no groups or device keys of its own/, before);
    });

    it("a malformed entity → 400 naming the field", async () => {
      const before = stored();
      await expectRefused(peer.call({ method: "create", uri: "/gks", entity: 7 }), 400, /'entity'/, before);
      await expectRefused(peer.call({ method: "create", uri: "/gks", entity: "not-an-entity" }), 400, /'entity'/, before);
    });
  });

  it("bearer users are unchanged: alice's own GK get and create work as before", async () => {
    expect((await alice.getGk(gkUri)).status).toBe(200);
    expect((await alice.createGk()).status).toBe(201);
  });
});
