import { afterAll, describe, expect, it } from "vitest";
import { DeviceKey, Groups, GroupKeys, KmsClient, KmsRequestError } from "../../src/client/index.js";
import { blockHash } from "../../src/primitives/block-hash.js";
import { buildAppendedPayload, signAppendedBlock, verifyChain } from "../../src/primitives/gmbc/index.js";
import { initTestDataDir, killServe, spawnServe, stopAllServers, type ServeProcess, type TestDataDir } from "../helpers/spawn-kms.js";

const ALICE = "alice@example.com";
const BOB = "bob@example.com";
const LOAD_MS = 2_000;

/** What the server acknowledged before it was killed: each of these must survive the crash. */
interface Acknowledged {
  /** Appends: the chain, the block's JWS, and the tail hash the KMS answered (the block's hash). */
  appends: { chain: string; jws: string; tail: string }[];
  /** GKs created bound to a tail: their uri, the block and the key bytes alice unwrapped. */
  gks: { uri: string; block: string; key: Uint8Array }[];
  /** Bob's registered device keys (kid). */
  keys: string[];
  /** Bob's revoked device keys (kid). */
  revokedKeys: string[];
}

describe("crash: SIGKILL during a mixed write load, restart on the same data dir", () => {
  let data: TestDataDir | undefined;

  afterAll(async () => {
    await stopAllServers();
    await data?.close();
  });

  it("keeps every acknowledged append, GK and key registration, and every chain verifies", async () => {
    data = await initTestDataDir();
    const d = data;
    let serve: ServeProcess = await spawnServe(d, { workers: 1 });
    const url = serve.url;

    // Alice registers her device key and creates three groups with bob.
    const device = await DeviceKey.generate({ kid: "alice-laptop" });
    const clientFor = (user: string, origin: string) => new KmsClient({ url: origin, user, token: () => d.token(user), trustRoots: [d.caPem] });
    const aliceClient = clientFor(ALICE, url);
    const groups = new Groups(aliceClient, { user: ALICE, device });
    expect(await groups.registerDevice()).toBe("registered");
    const chains = await Promise.all([0, 1, 2].map(async () => (await groups.create([ALICE, BOB])).uri));
    const tails = new Map<string, string>();
    for (const uri of chains) tails.set(uri, (await groups.fetch(uri)).at(-1)!.hash);

    const ack: Acknowledged = { appends: [], gks: [], keys: [], revokedKeys: [] };
    /** Failures before the kill (other than 409s): there must be none. */
    const unexpected: string[] = [];
    let killed = false;
    let inFlight = 0;
    let counter = 0;
    const track = async <T>(f: () => Promise<T>): Promise<T> => {
      inFlight++;
      try {
        return await f();
      } finally {
        inFlight--;
      }
    };
    const failed = (what: string, e: unknown) => {
      if (!killed) unexpected.push(`${what}: ${e instanceof Error ? e.message : String(e)}`);
    };

    // Appends: two loops per chain on the first two chains (they race on the tail: 409 → re-read the
    // tail, sign again), one on the third. Each block adds a new member.
    const appendLoop = async (client: KmsClient, chain: string) => {
      const signingKey = await device.signingKey();
      while (!killed) {
        const antecedent = tails.get(chain)!;
        const payload = buildAppendedPayload({ antecedent, creator: ALICE, operations: [{ entity: `m${++counter}@example.com`, optype: "add" }] });
        const jws = await signAppendedBlock(payload, signingKey, { alg: "ES256", kid: device.kid });
        try {
          const reply = await track(() => client.request("create", chain, { blocks: [jws] }));
          const tail = String(reply.tail);
          ack.appends.push({ chain, jws, tail });
          expect(tail).toBe(await blockHash(jws));
          if (tails.get(chain) === antecedent) tails.set(chain, tail);
        } catch (e) {
          if (e instanceof KmsRequestError && e.status === 409) {
            // Another loop appended first: catch up with the chain's blocks after our tail.
            try {
              const reply = await track(() => client.request("retrieve", chain, { antecedent }));
              const blocks = reply.blocks as string[];
              if (blocks.length > 0 && tails.get(chain) === antecedent) tails.set(chain, await blockHash(blocks.at(-1)!));
            } catch (e2) {
              failed(`re-read ${chain}`, e2);
              return;
            }
            continue;
          }
          failed(`append to ${chain}`, e);
          return;
        }
      }
    };

    // GKs bound to the current tail of a chain.
    const gkLoop = async (client: KmsClient, index: number) => {
      const gks = new GroupKeys(client, { user: ALICE, device });
      for (let i = index; !killed; i++) {
        const block = tails.get(chains[i % chains.length]!)!;
        try {
          const gk = await track(() => gks.create({ block }));
          expect(gk.block).toBe(block);
          ack.gks.push({ uri: gk.uri, block, key: gk.key });
        } catch (e) {
          failed("create GK", e);
          return;
        }
      }
    };

    // Bob registers device keys, revoking his oldest one whenever he holds the most an entity may
    // (16 unrevoked, §10): registrations and revocations are both acknowledged writes.
    const keyLoop = async (client: KmsClient) => {
      const unrevoked: string[] = [];
      while (!killed) {
        const key = await DeviceKey.generate({ kid: `bob-${++counter}` });
        try {
          if (unrevoked.length === 16) {
            const oldest = unrevoked[0]!;
            await track(() => client.request("delete", `/entities/${BOB}/keys/${oldest}`));
            unrevoked.shift();
            ack.revokedKeys.push(oldest);
          }
          await track(() => client.request("create", "/entities/keys", { jwk: { ...key.publicJwk } }));
          ack.keys.push(key.kid);
          unrevoked.push(key.kid);
        } catch (e) {
          failed("register or revoke a key", e);
          return;
        }
      }
    };

    // Each loop has its own channel (its own client) so that they run in parallel on the server.
    const aliceClients = Array.from({ length: 7 }, () => clientFor(ALICE, url));
    const bobClient = clientFor(BOB, url);
    await Promise.all([...aliceClients, bobClient].map((c) => c.connect()));
    const loops = [
      appendLoop(aliceClients[0]!, chains[0]!),
      appendLoop(aliceClients[1]!, chains[0]!),
      appendLoop(aliceClients[2]!, chains[1]!),
      appendLoop(aliceClients[3]!, chains[1]!),
      appendLoop(aliceClients[4]!, chains[2]!),
      gkLoop(aliceClients[5]!, 0),
      gkLoop(aliceClients[6]!, 1),
      keyLoop(bobClient),
    ];

    // After LOAD_MS, SIGKILL the server at a moment when requests are in flight.
    await new Promise((r) => setTimeout(r, LOAD_MS));
    const until = Date.now() + 2_000;
    while (inFlight === 0 && Date.now() < until) await new Promise((r) => setImmediate(r));
    const inFlightAtKill = inFlight;
    process.kill(serve.pid, "SIGKILL");
    killed = true;
    expect(await serve.exited).toEqual({ code: null, signal: "SIGKILL" });
    await Promise.all(loops);

    expect(unexpected, "failures before the kill").toEqual([]);
    expect(inFlightAtKill, "requests in flight when the server was killed").toBeGreaterThan(0);
    expect(ack.appends.length, "acknowledged appends").toBeGreaterThan(5);
    expect(ack.gks.length, "acknowledged GKs").toBeGreaterThan(2);
    expect(ack.keys.length, "acknowledged key registrations").toBeGreaterThan(2);

    // Restart on the same data dir (another port) and check everything acknowledged is there.
    await killServe(serve);
    serve = await spawnServe(d, { workers: 1 });
    const after = clientFor(ALICE, serve.url);
    const afterGroups = new Groups(after, { user: ALICE, device });
    for (const chain of chains) {
      const reply = await after.request("retrieve", chain);
      const blocks = reply.blocks as string[];
      const verified = await verifyChain(blocks, await afterGroups.verifyOptions(chain));
      expect(verified.blocks.map((b) => b.jws)).toEqual(blocks);
      const stored = new Set(blocks);
      const acknowledged = ack.appends.filter((a) => a.chain === chain);
      for (const a of acknowledged) expect(stored.has(a.jws), `acknowledged block ${a.tail} in ${chain}`).toBe(true);
      // Appends are acknowledged in chain order on one chain: the last acknowledged block is in place,
      // possibly followed by blocks committed but not acknowledged before the kill (at most one per loop).
      const hashes = verified.blocks.map((b) => b.hash);
      for (const a of acknowledged) expect(hashes).toContain(a.tail);
      expect(blocks.length).toBeGreaterThanOrEqual(1 + acknowledged.length);
      expect(blocks.length).toBeLessThanOrEqual(1 + acknowledged.length + 2);
    }
    const afterGks = new GroupKeys(after, { user: ALICE, device });
    for (const gk of ack.gks) {
      const fetched = await afterGks.fetch(gk.uri);
      expect(fetched.block).toBe(gk.block);
      expect(Buffer.from(fetched.key).equals(Buffer.from(gk.key)), `the key of ${gk.uri}`).toBe(true);
    }
    const bobKeys = new Map((await afterGroups.keysOf(BOB, { includeRevoked: true })).map((k) => [k.kid, k]));
    for (const kid of ack.keys) expect(bobKeys.has(kid), `bob's key ${kid}`).toBe(true);
    for (const kid of ack.revokedKeys) expect(bobKeys.get(kid), `bob's revoked key ${kid}`).toHaveProperty("revoked");

    process.kill(serve.pid, "SIGTERM");
    expect(await serve.exited).toEqual({ code: 0, signal: null });
    expect(serve.stdout() + serve.stderr()).not.toMatch(/internal error|SQLITE_BUSY|database is locked/);
  }, 40_000);
});
