import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { base64url, CompactSign, decodeProtectedHeader, generateKeyPair } from "jose";
import {
  DeviceKey,
  GroupKeys,
  Groups,
  KmsProtocolError,
  KmsRequestError,
  type GroupKey,
  type KmsClient,
} from "../../src/client/index.js";
import type { ResponsePayload } from "../../src/protocol/messages.js";
import { describeOverTransports, transportServers, type KmsOverTransport } from "../helpers/transports.js";

const ALICE = "alice@example.com";
const BOB = "bob@example.com";
const CAROL = "carol@example.com";
const KMS_URI = "kms://kms.example.com";
const GK_URI = /^kms:\/\/kms\.example\.com\/gks\/[^/]+$/;

/** One user on one device: a KmsClient, a registered device key, Groups and GroupKeys. */
interface Party {
  readonly user: string;
  readonly client: KmsClient;
  readonly device: DeviceKey;
  readonly groups: Groups;
  readonly gks: GroupKeys;
  /** A GroupKeys on the same client and device with an empty cache (a new session). */
  fresh(): GroupKeys;
}

/** Its client comes from `over` (which closes it). */
async function party(over: KmsOverTransport, user: string, type: "ec" | "rsa" = "ec"): Promise<Party> {
  const client = await over.client(user);
  const device = await DeviceKey.generate({ type, kid: `${user.split("@")[0]}-${type}` });
  const groups = new Groups(client, { user, device });
  await groups.registerDevice();
  const fresh = () => new GroupKeys(client, { user, device, chains: groups });
  return { user, client, device, groups, gks: fresh(), fresh };
}

type RequestFn = KmsClient["request"];

/** Replaces `client.request` for the duration of `fn`: `replace` gets the real one to call. */
async function withStub<T>(
  client: KmsClient,
  replace: (real: RequestFn, method: string, uri: string, fields: Record<string, unknown>) => Promise<ResponsePayload>,
  fn: () => Promise<T>,
): Promise<T> {
  const real: RequestFn = client.request.bind(client);
  const spy = vi.spyOn(client, "request").mockImplementation((method, uri, fields) => replace(real, method, uri, fields ?? {}));
  try {
    return await fn();
  } finally {
    spy.mockRestore();
  }
}

/** Counts the requests a client sends while `fn` runs. */
async function countingRequests<T>(client: KmsClient, fn: () => Promise<T>): Promise<{ result: T; calls: [string, string, Record<string, unknown>][] }> {
  const calls: [string, string, Record<string, unknown>][] = [];
  const result = await withStub(
    client,
    (real, method, uri, fields) => {
      calls.push([method, uri, fields]);
      return real(method, uri, fields);
    },
    fn,
  );
  return { result, calls };
}

async function refusal(p: Promise<unknown>): Promise<KmsRequestError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(KmsRequestError);
  return e as KmsRequestError;
}

async function protocolError(p: Promise<unknown>, code: string): Promise<KmsProtocolError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e, code).toBeInstanceOf(KmsProtocolError);
  expect((e as KmsProtocolError).code).toBe(code);
  return e as KmsProtocolError;
}

function jwsPayload(jws: string): Record<string, unknown> {
  return JSON.parse(new TextDecoder().decode(base64url.decode(jws.split(".")[1]!))) as Record<string, unknown>;
}

const bytes = (text: string) => new TextEncoder().encode(text);

/** A KMS per suite and transport (each suite registers the same users' devices); one Prosody for the file. */
const servers = transportServers();
afterAll(() => servers.close());

describeOverTransports("GroupKeys against a real KMS (policy 1)", (kind) => {
  let over: KmsOverTransport;
  let alice: Party;
  let bob: Party;
  let carol: Party;
  let groupUri: string;
  let genesis: string;

  beforeAll(async () => {
    over = await servers.start(kind);
    alice = await party(over, ALICE);
    bob = await party(over, BOB, "rsa");
    carol = await party(over, CAROL);
    const group = await alice.groups.create([ALICE, BOB]);
    groupUri = group.uri;
    genesis = group.genesis.hash;
  });

  afterAll(() => over?.close());

  it("creates an unbound GK: a 256-bit key, signed by the KMS, cached for its creator", async () => {
    const gk = await alice.gks.create();
    expect(gk.uri).toMatch(GK_URI);
    expect(gk.block).toBeUndefined();
    expect(gk.key).toBeInstanceOf(Uint8Array);
    expect(gk.key.length).toBe(32);
    expect(gk.created).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    const { result, calls } = await countingRequests(alice.client, () => alice.gks.fetch(gk.uri));
    expect(result).toBe(gk);
    expect(calls).toEqual([]);
    // Nobody else may fetch an unbound GK, not even a member of a group alice is in.
    expect((await refusal(bob.fresh().fetch(gk.uri))).status).toBe(403);
  });

  it("creates a GK bound at a block where the creator is a member; members fetch it", async () => {
    const gk = await alice.gks.create({ block: genesis });
    expect(gk.uri).toMatch(GK_URI);
    expect(gk.block).toBe(genesis);
    const forBob = await bob.fresh().fetch(gk.uri);
    expect(forBob.uri).toBe(gk.uri);
    expect(forBob.block).toBe(genesis);
    expect(forBob.created).toBe(gk.created);
    expect(forBob.key).toEqual(gk.key);
    // carol is not a member at that block: she may neither create a GK there nor fetch this one.
    expect((await refusal(carol.gks.create({ block: genesis }))).status).toBe(403);
    expect((await refusal(carol.fresh().fetch(gk.uri))).status).toBe(403);
  });

  it("binds an unbound GK: refused to others before, granted after, same key", async () => {
    const gk = await alice.gks.create();
    expect((await refusal(bob.fresh().fetch(gk.uri))).status).toBe(403);
    const bound = await alice.gks.bind(gk.uri, genesis);
    expect(bound.uri).toBe(gk.uri);
    expect(bound.block).toBe(genesis);
    expect(bound.created).toBe(gk.created);
    expect(bound.key).toEqual(gk.key);
    expect((await bob.fresh().fetch(gk.uri)).key).toEqual(gk.key);
    // A GK binds once, and only its creator binds it.
    expect((await refusal(alice.gks.bind(gk.uri, genesis))).status).toBe(409);
    const other = await alice.gks.create();
    expect((await refusal(bob.gks.bind(other.uri, genesis))).status).toBe(403);
  });

  it("fetch caches: a second fetch sends no request", async () => {
    const gk = await alice.gks.create({ block: genesis });
    const gks = bob.fresh();
    const first = await countingRequests(bob.client, () => gks.fetch(gk.uri));
    expect(first.calls).toEqual([["retrieve", gk.uri, { entity: BOB }]]);
    const second = await countingRequests(bob.client, () => gks.fetch(gk.uri));
    expect(second.calls).toEqual([]);
    expect(second.result).toBe(first.result);
  });

  it("encrypts and decrypts: compact JWE dir/A256GCM with kid = the GK uri; another member fetches the GK by kid", async () => {
    const gk = await alice.gks.create({ block: genesis });
    const plaintext = globalThis.crypto.getRandomValues(new Uint8Array(1000));
    const jwe = await alice.gks.encrypt(gk, plaintext, "application/octet-stream");
    expect(jwe.split(".")).toHaveLength(5);
    expect(decodeProtectedHeader(jwe)).toEqual({ alg: "dir", enc: "A256GCM", kid: gk.uri, cty: "application/octet-stream" });

    const own = await alice.gks.decrypt(jwe);
    expect(own.plaintext).toEqual(plaintext);
    expect(own.contentType).toBe("application/octet-stream");

    const gks = bob.fresh();
    const { result, calls } = await countingRequests(bob.client, () => gks.decrypt(jwe));
    expect(calls).toEqual([["retrieve", gk.uri, { entity: BOB }]]);
    expect(result.plaintext).toEqual(plaintext);
    expect(result.gk.uri).toBe(gk.uri);
    expect(result.gk.key).toEqual(gk.key);
    // The second decrypt reuses the cached GK.
    expect((await countingRequests(bob.client, () => gks.decrypt(jwe))).calls).toEqual([]);

    // No cty: none comes back. A JWE without kid is refused before anything is fetched.
    expect((await bob.fresh().decrypt(await alice.gks.encrypt(gk, bytes("hi")))).contentType).toBeUndefined();
    const noKid = jwe.replace(/^[^.]+/, base64url.encode(JSON.stringify({ alg: "dir", enc: "A256GCM" })));
    await protocolError(bob.fresh().decrypt(noKid), "ERR_NO_KID");
    // A JWE tampered with does not decrypt.
    const parts = jwe.split(".");
    parts[3] = base64url.encode(globalThis.crypto.getRandomValues(new Uint8Array(1000)));
    await expect(gks.decrypt(parts.join("."))).rejects.toThrow();
  });

  describe("checks on what the KMS returns", () => {
    let gkA: GroupKey;
    let gkB: GroupKey;
    let tail: string;

    beforeAll(async () => {
      gkA = await alice.gks.create({ block: genesis });
      gkB = await alice.gks.create({ block: genesis });
      // A second group of alice and bob, for a block that is not the one asked for.
      const other = await alice.groups.create([ALICE, BOB]);
      tail = other.genesis.hash;
    });

    it("a GK reply for another uri (a swapped reply) is refused: ERR_GK_MISMATCH", async () => {
      await withStub(
        bob.client,
        (real, method, uri, fields) => real(method, uri === gkA.uri ? gkB.uri : uri, fields),
        async () => {
          const e = await protocolError(bob.fresh().fetch(gkA.uri), "ERR_GK_MISMATCH");
          expect(e.message).toContain(gkA.uri);
          expect(e.message).toContain(gkB.uri);
        },
      );
      // decrypt goes through the same check.
      const jwe = await alice.gks.encrypt(gkA, bytes("secret"));
      await withStub(
        bob.client,
        (real, method, uri, fields) => real(method, uri === gkA.uri ? gkB.uri : uri, fields),
        () => protocolError(bob.fresh().decrypt(jwe), "ERR_GK_MISMATCH"),
      );
    });

    it("a GK bound to another block than the one asked for is refused: ERR_GK_MISMATCH", async () => {
      await withStub(
        alice.client,
        (real, method, uri, fields) => real(method, uri, method === "create" && uri === "/gks" ? { ...fields, block: tail } : fields),
        () => protocolError(alice.fresh().create({ block: genesis }), "ERR_GK_MISMATCH"),
      );
      // bind: the KMS answers with a GK bound elsewhere.
      const unbound = await alice.gks.create();
      const elsewhere = await alice.client.request("create", "/gks", { block: tail });
      await withStub(
        alice.client,
        async (real, method, uri, fields) => {
          if (method === "update" && uri === unbound.uri) return { status: 200, gk: elsewhere.gk };
          return real(method, uri, fields);
        },
        () => protocolError(alice.fresh().bind(unbound.uri, genesis), "ERR_GK_MISMATCH"),
      );
    });

    it("a GK not signed by the KMS, or altered after signing, is refused: ERR_KMS_SIGNATURE", async () => {
      const real = await bob.client.request("retrieve", gkA.uri, { entity: BOB });
      const payload = jwsPayload(real.gk as string);
      // Signed by another key that claims to be the KMS.
      const { privateKey } = await generateKeyPair("ES256");
      const impostor = await new CompactSign(bytes(JSON.stringify(payload))).setProtectedHeader({ alg: "ES256", kid: KMS_URI }).sign(privateKey);
      // The KMS's signature over another payload (the block changed).
      const [h, , s] = (real.gk as string).split(".");
      const altered = `${h}.${base64url.encode(JSON.stringify({ ...payload, block: tail }))}.${s}`;
      for (const gk of [impostor, altered]) {
        await withStub(
          bob.client,
          async (r, method, uri, fields) => (method === "retrieve" && uri === gkA.uri ? { status: 200, gk } : r(method, uri, fields)),
          () => protocolError(bob.fresh().fetch(gkA.uri), "ERR_KMS_SIGNATURE"),
        );
      }
    });

    it("a GK wrapped to another entity's device, or a reply without gk, is refused", async () => {
      // alice's reply (wrapped to alice's device only) is handed to bob.
      const forAlice = await alice.client.request("retrieve", gkA.uri, { entity: ALICE });
      await withStub(
        bob.client,
        async (real, method, uri, fields) => (method === "retrieve" && uri === gkA.uri ? forAlice : real(method, uri, fields)),
        async () => {
          const e = await protocolError(bob.fresh().fetch(gkA.uri), "ERR_GK_NOT_FOR_DEVICE");
          expect(e.message).toContain(bob.device.kid);
        },
      );
      await withStub(
        bob.client,
        async (real, method, uri, fields) => (method === "retrieve" && uri === gkA.uri ? { status: 200 } : real(method, uri, fields)),
        () => protocolError(bob.fresh().fetch(gkA.uri), "ERR_GK_REPLY"),
      );
    });
  });

  it("encryptFor needs chains; an unknown group is the KMS's refusal", async () => {
    const bare = new GroupKeys(alice.client, { user: ALICE, device: alice.device });
    await expect(bare.encryptFor(groupUri, bytes("x"))).rejects.toThrow(TypeError);
    const e = await refusal(alice.fresh().encryptFor(`${KMS_URI}/blocks/does-not-exist`, bytes("x")));
    expect(e.status).toBe(404);
  });
});

/**
 * Rotation: encryptFor uses one GK per tail. After bob's removal, new content uses a new GK bound
 * to the new tail, which bob cannot fetch under any policy; what he may still fetch of the old
 * content depends on the KMS's policy.
 */
describeOverTransports("encryptFor rotates after a membership change", (kind) => {
  describe.each([
    { policy: 1, bobKeepsOld: true },
    { policy: 2, bobKeepsOld: false },
    { policy: 3, bobKeepsOld: false },
  ] as const)("KEYWARD_POLICY=$policy", ({ policy, bobKeepsOld }) => {
    let over: KmsOverTransport;
    let alice: Party;
    let bob: Party;

    beforeAll(async () => {
      over = await servers.start(kind, { env: { KEYWARD_POLICY: String(policy) } });
      expect(over.kms.config.policy).toBe(policy);
      alice = await party(over, ALICE);
      bob = await party(over, BOB);
    });

    afterAll(() => over?.close());

    it(`uses a new GK bound to the new tail after bob's removal; bob ${bobKeepsOld ? "still reads" : "no longer reads"} the old content`, async () => {
      const { uri, genesis } = await alice.groups.create([ALICE, BOB]);
      const old = bytes("before bob's removal");
      const jwe1 = await alice.gks.encryptFor(uri, old);
      const gk1 = await alice.gks.currentKey(uri);
      expect(decodeProtectedHeader(jwe1).kid).toBe(gk1.uri);
      expect(gk1.block).toBe(genesis.hash);

      // No membership change: the same GK, and no new one is created.
      const again = await countingRequests(alice.client, () => alice.gks.encryptFor(uri, bytes("still the same members")));
      expect(decodeProtectedHeader(again.result).kid).toBe(gk1.uri);
      expect(again.calls.filter(([m, u]) => m === "create" && u === "/gks")).toEqual([]);

      // bob, a member at the bound block and now, reads it under every policy.
      expect((await bob.fresh().decrypt(jwe1)).plaintext).toEqual(old);

      const tail = await alice.groups.remove(uri, [BOB]);
      const fresh = bytes("after bob's removal");
      const jwe2 = await alice.gks.encryptFor(uri, fresh);
      const gk2 = await alice.gks.currentKey(uri);
      expect(gk2.uri).not.toBe(gk1.uri);
      expect(gk2.block).toBe(tail);
      expect(gk2.key).not.toEqual(gk1.key);
      expect(decodeProtectedHeader(jwe2).kid).toBe(gk2.uri);
      expect((await alice.fresh().decrypt(jwe2)).plaintext).toEqual(fresh);

      // The new GK: bob is a member neither at its block nor now → 403 under every policy.
      const newGk = await refusal(bob.fresh().fetch(gk2.uri));
      expect(newGk.status).toBe(403);
      expect(newGk.reason).toContain(`policy ${policy}`);
      await expect(bob.fresh().decrypt(jwe2)).rejects.toBeInstanceOf(KmsRequestError);

      // The old GK, asked for again (no cached copy): policy 1 keeps bob's entitlement, 2 and 3 do not.
      if (bobKeepsOld) {
        expect((await bob.fresh().decrypt(jwe1)).plaintext).toEqual(old);
      } else {
        const e = await refusal(bob.fresh().decrypt(jwe1));
        expect(e.status).toBe(403);
        expect(e.reason).toContain(`policy ${policy}`);
      }
    });
  });
});
