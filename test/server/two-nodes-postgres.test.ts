import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeviceKey, Groups, GroupKeys, KmsClient, KmsRequestError } from "../../src/client/index.js";
import { blockHash } from "../../src/primitives/block-hash.js";
import { buildAppendedPayload, signAppendedBlock, verifyChain } from "../../src/primitives/gmbc/index.js";
import { postgresForSuite } from "../helpers/postgres.js";
import { stopAllServers } from "../helpers/spawn-kms.js";
import { RawChannel, RoutingTransport, startTwoNodes, type TwoNodes } from "../helpers/two-nodes.js";

/**
 * Issue #6, stateless nodes: two `keyward serve --workers 1` processes on one data dir (same master
 * key, static key, configuration) and one PostgreSQL schema. Nothing is kept in a node's memory
 * that the other needs: a channel opened on one node is used, replay-checked and deleted on the
 * other, appends race on the same tail through both, and when one node dies the other carries on
 * with everything the dead one acknowledged.
 *
 * Needs PostgreSQL (KEYWARD_TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/test).
 * Without a server the suite is skipped, loudly; in CI (CI set) it fails instead.
 */
const available = await postgresForSuite("the two-node PostgreSQL suite");

const suite = available ? describe : describe.skip;

const ALICE = "alice@example.com";
const BOB = "bob@example.com";

/** The status of a settled SDK request: the reply's, or the KmsRequestError's (anything else is rethrown). */
function statusOf(outcome: PromiseSettledResult<{ status: number }>): number {
  if (outcome.status === "fulfilled") return outcome.value.status;
  if (outcome.reason instanceof KmsRequestError) return outcome.reason.status;
  throw outcome.reason;
}

suite("two stateless nodes on one PostgreSQL database (#6)", () => {
  let nodes: TwoNodes | undefined;
  const n = () => nodes!;
  const clientFor = (user: string, origin: string): KmsClient => n().data.client(user, origin);

  beforeAll(async () => {
    nodes = await startTwoNodes();
  }, 40_000);

  afterAll(async () => {
    await nodes?.close();
    await stopAllServers();
  });

  it("starts both nodes on the same schema, migrated once", async () => {
    const { a, b, query } = n();
    expect(a.pid).not.toBe(b.pid);
    expect(a.url).not.toBe(b.url);
    const versions = await query<{ version: number }>("SELECT version FROM {schema}.schema_migrations ORDER BY version");
    expect(versions.map((r) => r.version)).toEqual([1, 2, 3, 4, 5]);
    expect(await query("SELECT id FROM {schema}.keyring")).toHaveLength(1);
  });

  it("a channel opened on A is used on B: ping and a GK create on the same channel key", async () => {
    const { a, b, data, query } = n();
    const staticKid = ((await (await fetch(`${a.url}/.well-known/kms`)).json()) as { uri: string }).uri;
    const transport = new RoutingTransport(a.url, staticKid);
    const client = new KmsClient({ transport, user: ALICE, token: () => data.token(ALICE), trustRoots: [data.caPem] });
    const channel = await client.connect();
    expect(transport.log).toEqual([{ origin: a.url, kind: "ecdhe", kid: staticKid }]);
    expect(await query("SELECT uri FROM {schema}.channels WHERE uri = $1", [channel.uri])).toHaveLength(1);

    // Everything from here on goes to B on the channel A opened.
    transport.target = b.url;
    await client.ping();
    const device = await DeviceKey.generate({ kid: "alice-two-nodes" });
    const groups = new Groups(client, { user: ALICE, device });
    expect(await groups.registerDevice()).toBe("registered");
    const gks = new GroupKeys(client, { user: ALICE, device });
    const unbound = await gks.create();
    const group = await groups.create([ALICE, BOB]);
    const tail = (await groups.fetch(group.uri)).at(-1)!.hash;
    const bound = await gks.create({ block: tail });
    expect(bound.block).toBe(tail);

    // No re-key happened (the SDK re-keys silently on a JWS 401/403): one ECDHE, to A; all else on
    // that channel, to B.
    expect(client.channel?.uri).toBe(channel.uri);
    expect(transport.log.filter((e) => e.kind === "ecdhe")).toHaveLength(1);
    const onB = transport.log.slice(1);
    expect(onB.length).toBeGreaterThanOrEqual(6);
    expect(onB.every((e) => e.origin === b.url && e.kind === "channel" && e.kid === channel.uri), JSON.stringify(onB)).toBe(true);

    // And back on A, still the same channel: the GKs B created are there, with the same keys.
    transport.target = a.url;
    for (const gk of [unbound, bound]) {
      const fetched = await gks.fetch(gk.uri);
      expect(Buffer.from(fetched.key).equals(Buffer.from(gk.key))).toBe(true);
      expect(fetched.block).toBe(gk.block);
    }
    expect(client.channel?.uri).toBe(channel.uri);
    expect(transport.log.filter((e) => e.kind === "ecdhe")).toHaveLength(1);
    const [row] = await query<{ message_count: number }>("SELECT message_count FROM {schema}.channels WHERE uri = $1", [channel.uri]);
    expect(row!.message_count).toBe(transport.log.length - 1);
  });

  it("a requestId used on A is refused (409) on B; a channel deleted on B is unknown (JWS 401) on A", async () => {
    const { a, b, data, query } = n();
    const raw = new RawChannel(() => data.token(ALICE), ALICE);
    expect((await raw.open(a.url)).status).toBe(201);

    const first = await raw.request(a.url, { method: "update", uri: "/ping" });
    expect(first).toMatchObject({ form: "jwe", payload: { status: 200 } });
    const requestId = first.payload.requestId;

    // The exact same message, replayed on B, then on A: refused on the channel, nothing executed.
    const replayB = await raw.send(b.url, first.message);
    expect(replayB).toMatchObject({ form: "jwe", payload: { status: 409, requestId } });
    expect(String(replayB.payload.reason)).toMatch(/replay/);
    expect(await raw.send(a.url, first.message)).toMatchObject({ form: "jwe", payload: { status: 409, requestId } });

    // A requestId first used on B is refused on A too, even in a newly sealed message.
    const onB = await raw.request(b.url, { method: "update", uri: "/ping" });
    expect(onB).toMatchObject({ form: "jwe", payload: { status: 200 } });
    const reused = await raw.request(a.url, { method: "update", uri: "/ping", requestId: onB.payload.requestId });
    expect(reused).toMatchObject({ form: "jwe", payload: { status: 409, requestId: onB.payload.requestId } });

    // Delete the channel on B: A no longer knows it (JWS 401, not a common message), nor does B.
    expect(await raw.request(b.url, { method: "delete", uri: raw.uri })).toMatchObject({ form: "jwe", payload: { status: 204 } });
    expect(await query("SELECT uri FROM {schema}.channels WHERE uri = $1", [raw.uri])).toHaveLength(0);
    const afterOnA = await raw.request(a.url, { method: "update", uri: "/ping" });
    expect(afterOnA).toMatchObject({ form: "jws", payload: { status: 401 } });
    expect(await raw.request(b.url, { method: "update", uri: "/ping" })).toMatchObject({ form: "jws", payload: { status: 401 } });
    // The replayed first message, too, is now refused as an unknown key rather than as a replay.
    expect(await raw.send(a.url, first.message)).toMatchObject({ form: "jws", payload: { status: 401 } });
  });

  it("10 rounds of 6 parallel appends on one tail (3 via A, 3 via B): one 200 per round, the others 409", async () => {
    const { a, b, query } = n();
    const device = await DeviceKey.generate({ kid: "alice-race" });
    const setup = clientFor(ALICE, a.url);
    const groups = new Groups(setup, { user: ALICE, device });
    expect(await groups.registerDevice()).toBe("registered");
    const group = await groups.create([ALICE, BOB]);
    let tail = (await groups.fetch(group.uri)).at(-1)!.hash;
    const senders = [a, a, a, b, b, b].map((node) => ({ node: node === a ? "A" : "B", client: clientFor(ALICE, node.url) }));
    await Promise.all(senders.map((s) => s.client.connect()));
    const signingKey = await device.signingKey();

    const winners: { jws: string; node: string }[] = [];
    for (let round = 0; round < 10; round++) {
      const antecedent = tail;
      const jwss = await Promise.all(
        senders.map((_, i) =>
          signAppendedBlock(buildAppendedPayload({ antecedent, creator: ALICE, operations: [{ entity: `r${round}-s${i}@example.com`, optype: "add" }] }), signingKey, {
            alg: "ES256",
            kid: device.kid,
          }),
        ),
      );
      const outcomes = await Promise.allSettled(senders.map((s, i) => s.client.request("create", group.uri, { blocks: [jwss[i]] })));
      const statuses = outcomes.map(statusOf);
      expect(statuses.filter((s) => s === 200), `round ${round}: ${statuses}`).toHaveLength(1);
      expect(statuses.filter((s) => s === 409), `round ${round}: ${statuses}`).toHaveLength(5);
      const w = statuses.indexOf(200);
      const reply = (outcomes[w] as PromiseFulfilledResult<{ tail?: unknown }>).value;
      tail = String(reply.tail);
      expect(tail).toBe(await blockHash(jwss[w]!));
      winners.push({ jws: jwss[w]!, node: senders[w]!.node });
    }

    // The chain, read through B, verifies and holds exactly the winners in order.
    const reader = clientFor(ALICE, b.url);
    const blocks = (await reader.request("retrieve", group.uri)).blocks as string[];
    const verified = await verifyChain(blocks, await new Groups(reader, { user: ALICE, device }).verifyOptions(group.uri));
    expect(blocks).toHaveLength(11);
    expect(blocks.slice(1)).toEqual(winners.map((w) => w.jws));
    expect(verified.blocks.at(-1)!.hash).toBe(tail);

    // In the database: one block per position 0..10, the same hashes, and the chain row agrees.
    const rows = await query<{ position: number; n: number; hashes: string[] }>(
      "SELECT position, count(*)::int AS n, array_agg(hash) AS hashes FROM {schema}.blocks WHERE chain_uri = $1 GROUP BY position ORDER BY position",
      [group.uri],
    );
    expect(rows.map((r) => r.position)).toEqual([...Array(11).keys()]);
    expect(rows.every((r) => r.n === 1)).toBe(true);
    expect(rows.map((r) => r.hashes[0])).toEqual(verified.blocks.map((blk) => blk.hash));
    const [chain] = await query<{ length: number; tail_hash: string }>("SELECT length, tail_hash FROM {schema}.chains WHERE uri = $1", [group.uri]);
    expect(chain).toEqual({ length: 11, tail_hash: tail });
    const [{ n: total }] = (await query<{ n: number }>("SELECT count(*)::int AS n FROM {schema}.blocks WHERE chain_uri = $1", [group.uri])) as [{ n: number }];
    expect(total).toBe(11);
  });

  it("SIGKILL node A under a mixed write load: B keeps serving and has everything acknowledged", async () => {
    const { a, b } = n();
    const device = await DeviceKey.generate({ kid: "alice-kill" });
    const setup = clientFor(ALICE, b.url);
    const groups = new Groups(setup, { user: ALICE, device });
    expect(await groups.registerDevice()).toBe("registered");
    const chains = await Promise.all([0, 1].map(async () => (await groups.create([ALICE, BOB])).uri));
    const tails = new Map<string, string>();
    for (const uri of chains) tails.set(uri, (await groups.fetch(uri)).at(-1)!.hash);
    const signingKey = await device.signingKey();

    const ack = { appends: [] as { chain: string; jws: string; tail: string; node: "A" | "B"; at: number }[], gks: [] as { uri: string; block: string; key: Uint8Array; node: "A" | "B"; at: number }[] };
    const unexpected: string[] = [];
    let killedAt = Infinity; // when node A was confirmed dead
    let killing = false; // set just before the kill: A's failures from then on are expected
    let stop = false;
    let inFlightA = 0;
    let counter = 0;
    const failedA = { count: 0 };

    /** Runs one request on `node`; returns undefined when it failed because A is being killed. */
    const attempt = async <T>(node: "A" | "B", what: string, f: () => Promise<T>): Promise<{ ok: T } | { err: unknown } | undefined> => {
      if (node === "A") inFlightA++;
      try {
        return { ok: await f() };
      } catch (e) {
        if (e instanceof KmsRequestError) return { err: e };
        if (node === "A" && killing) {
          failedA.count++;
          return undefined;
        }
        unexpected.push(`${what} via ${node}: ${e instanceof Error ? e.message : String(e)}`);
        return undefined;
      } finally {
        if (node === "A") inFlightA--;
      }
    };

    const appendLoop = async (node: "A" | "B", chain: string) => {
      const client = clientFor(ALICE, node === "A" ? a.url : b.url);
      while (!stop) {
        const antecedent = tails.get(chain)!;
        const payload = buildAppendedPayload({ antecedent, creator: ALICE, operations: [{ entity: `k${++counter}@example.com`, optype: "add" }] });
        const jws = await signAppendedBlock(payload, signingKey, { alg: "ES256", kid: device.kid });
        const r = await attempt(node, `append to ${chain}`, () => client.request("create", chain, { blocks: [jws] }));
        if (r === undefined) return;
        if ("ok" in r) {
          const tail = String(r.ok.tail);
          ack.appends.push({ chain, jws, tail, node, at: Date.now() });
          if (tail !== (await blockHash(jws))) unexpected.push(`append via ${node}: tail ${tail} is not the block's hash`);
          if (tails.get(chain) === antecedent) tails.set(chain, tail);
          continue;
        }
        if (!(r.err instanceof KmsRequestError && r.err.status === 409)) {
          unexpected.push(`append via ${node}: ${String(r.err)}`);
          return;
        }
        // The other node's loop appended first: catch up with the blocks after our tail.
        const re = await attempt(node, `re-read ${chain}`, () => client.request("retrieve", chain, { antecedent }));
        if (re === undefined) return;
        if (!("ok" in re)) {
          unexpected.push(`re-read via ${node}: ${String(re.err)}`);
          return;
        }
        const blocks = re.ok.blocks as string[];
        if (blocks.length > 0 && tails.get(chain) === antecedent) tails.set(chain, await blockHash(blocks.at(-1)!));
      }
    };

    const gkLoop = async (node: "A" | "B", index: number) => {
      const gks = new GroupKeys(clientFor(ALICE, node === "A" ? a.url : b.url), { user: ALICE, device });
      for (let i = index; !stop; i++) {
        const block = tails.get(chains[i % chains.length]!)!;
        const r = await attempt(node, "create GK", () => gks.create({ block }));
        if (r === undefined) return;
        if (!("ok" in r)) {
          unexpected.push(`create GK via ${node}: ${String(r.err)}`);
          return;
        }
        if (r.ok.block !== block) unexpected.push(`GK via ${node} bound to ${r.ok.block}, not ${block}`);
        ack.gks.push({ uri: r.ok.uri, block, key: r.ok.key, node, at: Date.now() });
      }
    };

    const started = Date.now();
    const loops = [
      appendLoop("A", chains[0]!),
      appendLoop("B", chains[0]!),
      appendLoop("A", chains[1]!),
      appendLoop("B", chains[1]!),
      gkLoop("A", 0),
      gkLoop("B", 1),
    ];

    // After ~1 s, SIGKILL node A while it has requests in flight; B alone carries on for ~1 s more.
    await new Promise((r) => setTimeout(r, 1_000));
    const until = Date.now() + 2_000;
    while (inFlightA === 0 && Date.now() < until) await new Promise((r) => setImmediate(r));
    const inFlightAtKill = inFlightA;
    const ackedBeforeKill = ack.appends.filter((x) => x.node === "A").length + ack.gks.filter((x) => x.node === "A").length;
    killing = true;
    process.kill(a.pid, "SIGKILL");
    expect(await a.exited).toEqual({ code: null, signal: "SIGKILL" });
    killedAt = Date.now();
    await new Promise((r) => setTimeout(r, 1_000));
    stop = true;
    await Promise.all(loops);
    const elapsed = Date.now() - started;

    expect(unexpected, "failures other than requests to the killed node").toEqual([]);
    expect(inFlightAtKill, "requests in flight on A when it was killed").toBeGreaterThan(0);
    expect(ackedBeforeKill, "writes A acknowledged before the kill").toBeGreaterThan(2);
    expect(failedA.count, "requests to A that failed with the kill").toBeGreaterThan(0);
    expect(ack.appends.filter((x) => x.node === "A" && x.at > killedAt), "nothing acknowledged by A after its death").toEqual([]);
    const appendsAfter = ack.appends.filter((x) => x.node === "B" && x.at > killedAt).length;
    const gksAfter = ack.gks.filter((x) => x.node === "B" && x.at > killedAt).length;
    expect(appendsAfter, "appends B acknowledged after A died").toBeGreaterThan(2);
    expect(gksAfter, "GKs B acknowledged after A died").toBeGreaterThan(2);
    expect(elapsed).toBeLessThan(15_000);

    // Everything acknowledged, by either node, is there through B, and every chain verifies.
    const after = clientFor(ALICE, b.url);
    const afterGroups = new Groups(after, { user: ALICE, device });
    for (const chain of chains) {
      const blocks = (await after.request("retrieve", chain)).blocks as string[];
      const verified = await verifyChain(blocks, await afterGroups.verifyOptions(chain));
      expect(verified.blocks.map((blk) => blk.jws)).toEqual(blocks);
      const stored = new Set(blocks);
      const acknowledged = ack.appends.filter((x) => x.chain === chain);
      for (const x of acknowledged) expect(stored.has(x.jws), `acknowledged block ${x.tail} (via ${x.node}) in ${chain}`).toBe(true);
      // Besides the genesis and the acknowledged blocks, at most the one append A committed but
      // could not acknowledge before dying (one A loop per chain).
      expect(blocks.length).toBeGreaterThanOrEqual(1 + acknowledged.length);
      expect(blocks.length).toBeLessThanOrEqual(1 + acknowledged.length + 1);
    }
    const afterGks = new GroupKeys(after, { user: ALICE, device });
    for (const gk of ack.gks) {
      const fetched = await afterGks.fetch(gk.uri);
      expect(fetched.block).toBe(gk.block);
      expect(Buffer.from(fetched.key).equals(Buffer.from(gk.key)), `the key of ${gk.uri} (via ${gk.node})`).toBe(true);
    }

    expect(b.isRunning()).toBe(true);
    expect(b.stdout() + b.stderr()).not.toMatch(/internal error/);
    expect(a.stdout() + a.stderr()).not.toMatch(/internal error/);
  }, 40_000);
});
