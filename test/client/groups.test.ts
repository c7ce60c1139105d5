import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { base64url, importJWK } from "jose";
import {
  ChainVerificationError,
  DeviceKey,
  Groups,
  KmsRequestError,
  Membership,
  type KmsClient,
} from "../../src/client/index.js";
import {
  buildAppendedPayload,
  parseBlock,
  signAppendedBlock,
  verifyAppendedBlockSignature,
  verifyChain,
  type GenesisPayload,
} from "../../src/primitives/gmbc/index.js";
import { describeOverTransports, transportServers, type KmsOverTransport } from "../helpers/transports.js";

const ALICE = "alice@example.com";
const BOB = "bob@example.com";
const CAROL = "carol@example.com";
const KMS_URI = "kms://kms.example.com";

describe("DeviceKey", () => {
  it("generates EC P-256 (ES256) and RSA-2048 (PS256) keys whose public JWK has no private member", async () => {
    const ec = await DeviceKey.generate({ kid: "laptop" });
    expect(ec.kid).toBe("laptop");
    expect(ec.alg).toBe("ES256");
    expect(ec.publicJwk).toEqual({ kty: "EC", crv: "P-256", x: expect.any(String), y: expect.any(String), kid: "laptop" });
    expect(ec.privateJwk.d).toEqual(expect.any(String));

    const rsa = await DeviceKey.generate({ type: "rsa" });
    expect(rsa.alg).toBe("PS256");
    expect(rsa.kid).toMatch(/^[0-9a-f-]{36}$/);
    expect(Object.keys(rsa.publicJwk).sort()).toEqual(["e", "kid", "kty", "n"]);
    expect(base64url.decode(rsa.publicJwk.n!).length).toBe(256);
  });

  it("round-trips through toJSON / fromJwk and signs with the restored key", async () => {
    for (const type of ["ec", "rsa"] as const) {
      const device = await DeviceKey.generate({ type });
      const saved = JSON.parse(JSON.stringify(device));
      expect(saved).toEqual(device.privateJwk);
      expect(saved.alg).toBeUndefined();
      expect(saved.key_ops).toBeUndefined();
      const restored = await DeviceKey.fromJwk(saved);
      expect(restored.publicJwk).toEqual(device.publicJwk);
      expect(restored.alg).toBe(device.alg);
      const payload = buildAppendedPayload({ antecedent: "0".repeat(64), creator: ALICE, operations: [{ entity: BOB, optype: "add" }] });
      const jws = await signAppendedBlock(payload, await restored.signingKey(), { alg: restored.alg, kid: restored.kid });
      const key = await verifyAppendedBlockSignature(await parseBlock(jws, { maxOperations: 10 }), [device.publicJwk]);
      expect(key.kid).toBe(device.kid);
      // The private JWK can later be imported for key unwrapping too.
      const { kid: _kid, ...jwk } = saved;
      await expect(importJWK(jwk, type === "ec" ? "ECDH-ES+A256KW" : "RSA-OAEP")).resolves.toBeDefined();
    }
  });

  it("fromJwk refuses a public key, another curve, a missing kid", async () => {
    const device = await DeviceKey.generate();
    await expect(DeviceKey.fromJwk({ ...device.publicJwk })).rejects.toThrow(/private/);
    await expect(DeviceKey.fromJwk({ ...device.privateJwk, crv: "P-384" })).rejects.toThrow(/P-256/);
    const { kid: _kid, ...noKid } = device.privateJwk;
    await expect(DeviceKey.fromJwk(noKid)).rejects.toThrow(/kid/);
    await expect(DeviceKey.fromJwk({ kty: "OKP", crv: "Ed25519", x: "AA", d: "AA", kid: "k" })).rejects.toThrow(/EC P-256 or RSA/);
  });
});

/** One KMS per transport (the suite's users and device kids would collide on a shared one); one Prosody for the file. */
const servers = transportServers();
afterAll(() => servers.close());

describeOverTransports("Groups against a real KMS", (kind) => {
  let over: KmsOverTransport;
  const clients: KmsClient[] = [];
  const client = async (user: string) => {
    const c = await over.client(user);
    clients.push(c);
    return c;
  };
  let alice: Groups;
  let bob: Groups;
  let groupUri: string;
  const tails: string[] = [];

  beforeAll(async () => {
    over = await servers.start(kind);
    alice = new Groups(await client(ALICE), { user: ALICE, device: await DeviceKey.generate({ type: "ec", kid: "alice-laptop" }) });
    bob = new Groups(await client(BOB), { user: BOB, device: await DeviceKey.generate({ type: "rsa", kid: "bob-phone" }) });
  });

  afterAll(() => over?.close());

  it("registers devices; registering again is a no-op; another key under the same kid is refused", async () => {
    expect(await alice.registerDevice()).toBe("registered");
    expect(await alice.registerDevice()).toBe("already-registered");
    expect(await bob.registerDevice()).toBe("registered");
    const keys = await alice.keysOf(BOB);
    expect(keys).toEqual([bob.device.publicJwk]);

    const impostor = new Groups(await client(ALICE), { user: ALICE, device: await DeviceKey.generate({ kid: "alice-laptop" }) });
    await expect(impostor.registerDevice()).rejects.toThrow(/different key registered as 'alice-laptop'/);
  });

  it("alice creates {alice, bob}: the genesis block is signed by the KMS and cached", async () => {
    const group = await alice.create([ALICE, "acct:bob@EXAMPLE.com"]);
    groupUri = group.uri;
    expect(groupUri).toMatch(/^kms:\/\/kms\.example\.com\/blocks\/.+/);
    expect(group.genesis.genesis).toBe(true);
    const payload = group.genesis.payload as GenesisPayload;
    expect(payload.curator).toBe(KMS_URI);
    expect(payload.creator).toBe(KMS_URI);
    expect(payload.operations).toEqual([
      { entity: ALICE, optype: "add" },
      { entity: BOB, optype: "add" },
    ]);
    expect((await alice.members(groupUri)).members()).toEqual([ALICE, BOB]);
    tails.push(group.genesis.hash);
  });

  it("bob (RSA device) adds carol; alice removes bob", async () => {
    tails.push(await bob.add(groupUri, [CAROL]));
    tails.push(await alice.remove(groupUri, [BOB]));
    const blocks = await alice.fetch(groupUri);
    expect(blocks.map((b) => b.hash)).toEqual(tails);
    expect(blocks[1]!.header).toEqual({ alg: "PS256", kid: "bob-phone" });
    expect(blocks[2]!.header).toEqual({ alg: "ES256", kid: "alice-laptop" });
  });

  it("verify passes and gives the current members and tail", async () => {
    const { members, tail, blocks } = await alice.verify(groupUri);
    expect(members).toBeInstanceOf(Membership);
    expect(members.members()).toEqual([ALICE, CAROL]);
    expect(tail).toBe(tails[2]);
    expect(blocks).toHaveLength(3);
  });

  it("membership at each block, by hash or index", async () => {
    const expected = [[ALICE, BOB], [ALICE, BOB, CAROL], [ALICE, CAROL]];
    for (const [i, hash] of tails.entries()) {
      expect((await alice.members(groupUri, hash)).members(), `block ${i}`).toEqual(expected[i]);
      expect((await alice.members(groupUri, i)).members(), `block ${i}`).toEqual(expected[i]);
    }
    expect((await alice.members(groupUri)).members()).toEqual([ALICE, CAROL]);
    await expect(alice.members(groupUri, "f".repeat(64))).rejects.toThrow(RangeError);
  });

  it("history gives a timeline", async () => {
    const history = await alice.history(groupUri);
    expect(history.map(({ index, hash, creator, operations, genesis }) => ({ index, hash, creator, operations, genesis }))).toEqual([
      { index: 0, hash: tails[0], creator: KMS_URI, genesis: true, operations: [{ entity: ALICE, optype: "add" }, { entity: BOB, optype: "add" }] },
      { index: 1, hash: tails[1], creator: BOB, genesis: false, operations: [{ entity: CAROL, optype: "add" }] },
      { index: 2, hash: tails[2], creator: ALICE, genesis: false, operations: [{ entity: BOB, optype: "remove" }] },
    ]);
    for (const h of history) expect(h.created).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  });

  it("a change that does not apply is refused locally, before anything is sent", async () => {
    await expect(alice.add(groupUri, [CAROL])).rejects.toThrow(/cannot add carol@example\.com: already a member/);
    await expect(alice.remove(groupUri, [BOB])).rejects.toThrow(/not a member/);
    await expect(alice.add(groupUri, ["not an entity"])).rejects.toThrow(/not an entity/);
    await expect(alice.change(groupUri, [])).rejects.toThrow(/no operations/);
    expect((await alice.verify(groupUri)).tail).toBe(tails[2]);
  });

  it("a non-member cannot read nor change the group (403)", async () => {
    // bob was removed: he cannot fetch any more, so his add fails with the KMS's 403.
    const refused = await bob.add(groupUri, ["dave@example.com"]).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(KmsRequestError);
    expect((refused as KmsRequestError).status).toBe(403);

    // mallory, never a member, signs a well-formed block on the real tail: the append is refused 403.
    const mallory = new Groups(await client("mallory@example.com"), { user: "mallory@example.com", device: await DeviceKey.generate() });
    await mallory.registerDevice();
    const mAdd = await mallory.add(groupUri, ["eve@example.com"]).catch((e: unknown) => e);
    expect(mAdd).toBeInstanceOf(KmsRequestError);
    expect((mAdd as KmsRequestError).status).toBe(403);
    const payload = buildAppendedPayload({ antecedent: tails[2]!, creator: "mallory@example.com", operations: [{ entity: "eve@example.com", optype: "add" }] });
    const jws = await signAppendedBlock(payload, await mallory.device.signingKey(), { alg: "ES256", kid: mallory.device.kid });
    const raw = await clients.at(-1)!.request("create", groupUri, { blocks: [jws] }).catch((e: unknown) => e);
    expect(raw).toBeInstanceOf(KmsRequestError);
    expect((raw as KmsRequestError).status).toBe(403);
    expect((await alice.verify(groupUri)).tail).toBe(tails[2]);
  });

  describe("tampering: verifyChain with the same options names the block", () => {
    let jws: string[];
    const opts = () => alice.verifyOptions(groupUri);
    const expectChainError = async (blocks: string[], code: string, index: number) => {
      const error = await verifyChain(blocks, await opts()).catch((e: unknown) => e);
      expect(error, `${code} at ${index}`).toBeInstanceOf(ChainVerificationError);
      expect((error as ChainVerificationError).code).toBe(code);
      expect((error as ChainVerificationError).index).toBe(index);
      expect((error as ChainVerificationError).message).toMatch(new RegExp(`^block ${index} `));
    };
    const withPayload = (block: string, edit: (p: Record<string, unknown>) => void) => {
      const [h, p, s] = block.split(".") as [string, string, string];
      const payload = JSON.parse(new TextDecoder().decode(base64url.decode(p))) as Record<string, unknown>;
      edit(payload);
      return `${h}.${base64url.encode(JSON.stringify(payload))}.${s}`;
    };

    beforeAll(async () => {
      jws = (await alice.fetch(groupUri)).map((b) => b.jws);
      await expect(verifyChain(jws, await opts())).resolves.toBeDefined();
    });

    it("an altered appended block: signature (ERR_CHAIN_SIGNATURE at 1)", async () => {
      const altered = withPayload(jws[1]!, (p) => (p.operations = [{ entity: "mallory@example.com", optype: "add" }]));
      await expectChainError([jws[0]!, altered, jws[2]!], "ERR_CHAIN_SIGNATURE", 1);
    });

    it("an altered genesis block: signature (ERR_CHAIN_SIGNATURE at 0)", async () => {
      const altered = withPayload(jws[0]!, (p) => (p.operations = [{ entity: "mallory@example.com", optype: "add" }]));
      await expectChainError([altered, jws[1]!, jws[2]!], "ERR_CHAIN_SIGNATURE", 0);
    });

    it("reordered blocks (ERR_CHAIN_LINK at 1)", async () => {
      await expectChainError([jws[0]!, jws[2]!, jws[1]!], "ERR_CHAIN_LINK", 1);
    });

    it("a dropped block (ERR_CHAIN_LINK at 1) or a dropped genesis (ERR_CHAIN_GENESIS at 0)", async () => {
      await expectChainError([jws[0]!, jws[2]!], "ERR_CHAIN_LINK", 1);
      await expectChainError([jws[1]!, jws[2]!], "ERR_CHAIN_GENESIS", 0);
    });

    it("a validly signed block by a non-member (ERR_CHAIN_NOT_MEMBER at 3)", async () => {
      const payload = buildAppendedPayload({ antecedent: tails[2]!, creator: BOB, operations: [{ entity: "eve@example.com", optype: "add" }] });
      const forged = await signAppendedBlock(payload, await bob.device.signingKey(), { alg: "PS256", kid: "bob-phone" });
      await expectChainError([...jws, forged], "ERR_CHAIN_NOT_MEMBER", 3);
    });
  });

  describe("several devices", () => {
    let alice2: Groups;
    let uri: string;

    it("alice's two devices and bob add three members concurrently: 409s are retried, all land", async () => {
      const alice2Client = await client(ALICE);
      alice2 = new Groups(alice2Client, { user: ALICE, device: await DeviceKey.generate({ kid: "alice-phone" }) });
      expect(await alice2.registerDevice()).toBe("registered");
      expect((await alice.keysOf(ALICE)).map((k) => k.kid).sort()).toEqual(["alice-laptop", "alice-phone"]);
      uri = (await alice.create([ALICE, BOB])).uri;

      // Hold the first append of each device until all three are ready to send, so that all
      // three sign on the same tail: one lands, the others get 409 and retry.
      const conflicts: number[] = [];
      let waiting: (() => void)[] = [];
      let held = 0;
      const gate = (c: KmsClient) => {
        const request = c.request.bind(c);
        let first = true;
        c.request = async (method, target, fields) => {
          if (method === "create" && target === uri && first) {
            first = false;
            await new Promise<void>((release) => {
              waiting.push(release);
              if (++held === 3) {
                for (const r of waiting) r();
                waiting = [];
              }
            });
          }
          try {
            return await request(method, target, fields);
          } catch (e) {
            if (e instanceof KmsRequestError && e.status === 409) conflicts.push(409);
            throw e;
          }
        };
      };
      const bobClient = clients[1]!;
      const aliceClient = clients[0]!;
      for (const c of [aliceClient, alice2Client, bobClient]) gate(c);
      try {
        const results = await Promise.all([
          alice.add(uri, ["dave@example.com"]),
          alice2.add(uri, ["erin@example.com"]),
          bob.add(uri, ["frank@example.com"]),
        ]);
        expect(new Set(results).size).toBe(3);
        expect(conflicts.length).toBeGreaterThanOrEqual(2);
      } finally {
        for (const c of [aliceClient, alice2Client, bobClient]) delete (c as { request?: unknown }).request;
      }

      for (const g of [alice, alice2, bob]) {
        const { members, blocks } = await g.verify(uri);
        expect(members.members()).toEqual([ALICE, BOB, "dave@example.com", "erin@example.com", "frank@example.com"]);
        expect(blocks).toHaveLength(4);
      }
      const kids = (await alice.fetch(uri)).slice(1).map((b) => b.header.kid).sort();
      expect(kids).toEqual(["alice-laptop", "alice-phone", "bob-phone"]);
    });

    it("retries are bounded: with maxRetries 0 a stale tail is a 409", async () => {
      const stale = new Groups(clients[0]!, { user: ALICE, device: alice.device, maxRetries: 0 });
      await stale.fetch(uri);
      const realRequest = clients[0]!.request.bind(clients[0]!);
      // Make the incremental fetch see nothing new, so the block is signed on the old tail.
      let interfered = false;
      clients[0]!.request = async (method, target, fields) => {
        if (method === "create" && target === uri && !interfered) {
          interfered = true;
          await bob.add(uri, ["gina@example.com"]);
        }
        return realRequest(method, target, fields);
      };
      try {
        const error = await stale.add(uri, ["hank@example.com"]).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(KmsRequestError);
        expect((error as KmsRequestError).status).toBe(409);
      } finally {
        delete (clients[0] as { request?: unknown }).request;
      }
      expect((await alice.verify(uri)).members.has("hank@example.com")).toBe(false);
    });

    it("a revoked device's old blocks still verify; it cannot sign new ones", async () => {
      await alice2.revokeDevice();
      expect((await alice.keysOf(ALICE)).map((k) => k.kid)).toEqual(["alice-laptop"]);
      const all = await alice.keysOf(ALICE, { includeRevoked: true });
      expect(all.find((k) => k.kid === "alice-phone")?.revoked).toEqual(expect.any(String));

      const { members } = await alice.verify(uri);
      expect(members.has("erin@example.com")).toBe(true);

      // Without the revoked key, the block alice-phone signed would not verify.
      const jws = (await alice.fetch(uri)).map((b) => b.jws);
      const index = (await alice.fetch(uri)).findIndex((b) => b.header.kid === "alice-phone");
      const opts = await alice.verifyOptions(uri);
      const error = await verifyChain(jws, { ...opts, keysOf: (e) => alice.keysOf(e) }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ChainVerificationError);
      expect((error as ChainVerificationError).code).toBe("ERR_CHAIN_SIGNATURE");
      expect((error as ChainVerificationError).index).toBe(index);

      const refused = await alice2.add(uri, ["ivan@example.com"]).catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(KmsRequestError);
      expect((refused as KmsRequestError).status).toBe(400);
      await expect(alice2.registerDevice()).rejects.toThrow(/revoked/);
    });
  });

  it("a cached tail the KMS does not know (404) makes the next fetch start from scratch", async () => {
    const fresh = new Groups(await client(ALICE), { user: ALICE, device: alice.device });
    await fresh.fetch(groupUri);
    const c = clients.at(-1)!;
    const realRequest = c.request.bind(c);
    const seen: unknown[] = [];
    c.request = async (method, target, fields) => {
      seen.push(fields?.antecedent);
      // The first incremental fetch names a block the KMS has never seen.
      if (fields?.antecedent !== undefined && seen.length === 1) return realRequest(method, target, { ...fields, antecedent: "e".repeat(64) });
      return realRequest(method, target, fields);
    };
    try {
      const blocks = await fresh.fetch(groupUri);
      expect(blocks.map((b) => b.hash)).toEqual(tails);
      expect(seen).toEqual([tails[2], undefined]);
    } finally {
      delete (c as { request?: unknown }).request;
    }
  });

  it("after a 404 on the cached tail, a re-fetched chain that lacks known blocks or forks before the tail is ERR_CHAIN_ROLLBACK", async () => {
    // A block alice (a member at block 1) really signed, on block 1: a fork that drops "remove bob".
    const forkPayload = buildAppendedPayload({ antecedent: tails[1]!, creator: ALICE, operations: [{ entity: "dave@example.com", optype: "add" }] });
    const fork = await signAppendedBlock(forkPayload, await alice.device.signingKey(), { alg: alice.device.alg, kid: alice.device.kid });
    const forkNext = await signAppendedBlock(
      buildAppendedPayload({ antecedent: (await parseBlock(fork, { maxOperations: 10 })).hash, creator: ALICE, operations: [{ entity: "erin@example.com", optype: "add" }] }),
      await alice.device.signingKey(),
      { alg: alice.device.alg, kid: alice.device.kid },
    );
    const variants: [name: string, edit: (blocks: string[]) => string[], index: number][] = [
      ["the removal dropped (shorter chain)", (b) => b.slice(0, 2), 2],
      ["only the genesis block", (b) => b.slice(0, 1), 1],
      ["a fork before the cached tail", (b) => [b[0]!, b[1]!, fork], 2],
      ["a longer fork before the cached tail", (b) => [b[0]!, b[1]!, fork, forkNext], 2],
    ];
    const fresh = new Groups(await client(ALICE), { user: ALICE, device: alice.device });
    await fresh.fetch(groupUri);
    const c = clients.at(-1)!;
    const realRequest = c.request.bind(c);
    for (const [name, edit, index] of variants) {
      c.request = async (method, target, fields = {}, opts) => {
        if (fields.antecedent !== undefined) throw new KmsRequestError(404, "unknown antecedent", "jwe");
        const reply = await realRequest(method, target, fields, opts);
        return { ...reply, blocks: edit(reply.blocks as string[]) };
      };
      try {
        const error = await fresh.fetch(groupUri).catch((e: unknown) => e);
        expect(error, name).toBeInstanceOf(ChainVerificationError);
        expect((error as ChainVerificationError).code, name).toBe("ERR_CHAIN_ROLLBACK");
        expect((error as ChainVerificationError).index, name).toBe(index);
        expect((error as ChainVerificationError).message, name).toMatch(new RegExp(`^block ${index} \\(${tails[index]!.slice(0, 8)}…\\): .* already had 3`));
      } finally {
        delete (c as { request?: unknown }).request;
      }
      // Nothing was replaced: the cache still has the three blocks, and the removal stands.
      expect((await fresh.members(groupUri)).members(), name).toEqual([ALICE, CAROL]);
      expect((await fresh.fetch(groupUri)).map((b) => b.hash), name).toEqual(tails);
    }
    // The same chain, or the chain grown after the cached tail, is accepted after a 404.
    c.request = async (method, target, fields = {}, opts) => {
      if (fields.antecedent !== undefined) throw new KmsRequestError(404, "unknown antecedent", "jwe");
      return realRequest(method, target, fields, opts);
    };
    try {
      expect((await fresh.fetch(groupUri)).map((b) => b.hash)).toEqual(tails);
    } finally {
      delete (c as { request?: unknown }).request;
    }
  });
});
