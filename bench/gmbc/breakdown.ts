/**
 * Where an append's server time goes, measured in one process pinned to the server core:
 *   - the KMS core (KmsCore.handle, everything but HTTP) in process, on the live server's data dir
 *     and SQLite file (the server is idle meanwhile), with N appends in flight and with 1;
 *   - each step of the append path alone, sequentially, in µs: the store calls the core and the
 *     append handler make, block parsing and hashing, the member key import and ES256 verify, the
 *     common-message decrypt and encrypt, the barrier.
 * Prints one JSON line (BreakdownReport). Configured by the BREAKDOWN_JOB env (JSON).
 */
import { spawnSync } from "node:child_process";
import { createHash, randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { compactVerify, importJWK, type JWK } from "jose";
import { loadConfig } from "../../src/config/config.js";
import { blockHash } from "../../src/primitives/block-hash.js";
import { parseBlock } from "../../src/primitives/gmbc/parse-block.js";
import { verifyAppendedBlockSignature } from "../../src/primitives/gmbc/verify-chain.js";
import { decryptCommonMessage, encryptCommonMessage } from "../../src/protocol/jose/common-message.js";
import { createLogger } from "../../src/server/logger.js";
import { kmsFromConfig } from "../../src/service/start.js";
import { SqliteStore } from "../../src/store/sqlite/sqlite-store.js";
import type { Store } from "../../src/store/store.js";
import { latencyStats } from "../lib/stats.js";
import { KmsSession, openReply, seal, type KmsChannel } from "../lib/kms-session.js";
import { ALICE, ChainSigner, DOMAIN, memberKeyFromJwk, type SignedBlock } from "./blocks.js";

export interface BreakdownJob {
  readonly dataDir: string;
  readonly env: Record<string, string>;
  readonly token: string;
  readonly alicePrivateJwk: JWK & { kid: string };
  readonly concurrency: number;
  /** Appends per chain in the in-flight run. */
  readonly perChain: number;
}

export interface CoreRun {
  readonly inFlight: number;
  readonly appends: number;
  readonly appendsPerSec: number;
}

export interface Step {
  readonly meanUs: number;
  readonly p50Us: number;
  readonly p99Us: number;
  readonly maxUs: number;
}

export interface BreakdownReport {
  readonly core: CoreRun[];
  /** Step → time per call, sequential. */
  readonly steps: Readonly<Record<string, Step>>;
  /** Filesystem of the server's data dir (the store writes there). */
  readonly dataDirFs: string;
  readonly cpuSeconds: number;
}

const job = JSON.parse(process.env.BREAKDOWN_JOB ?? "{}") as BreakdownJob;
const config = loadConfig(job.dataDir, { ...process.env, ...job.env });
const kms = await kmsFromConfig(config, { logger: createLogger("warn") });
const { store, barrier, settings } = kms.core.services;
const staticJwk = (kms.wellKnown() as { jwk: JWK }).jwk;
const session = await KmsSession.over((m) => kms.core.handle(m), staticJwk, job.token, "keyward-bench-breakdown");
const alice = await memberKeyFromJwk(ALICE, job.alicePrivateJwk);
const channels: KmsChannel[] = [];
for (let i = 0; i < 8; i++) channels.push(await session.openChannel());
let entitySeq = 0;
const fresh = () => `d${entitySeq++}-${randomUUID().slice(0, 6)}@${DOMAIN}`;

async function newChain(ch: KmsChannel): Promise<{ uri: string; signer: ChainSigner }> {
  const reply = await session.request(ch, "create", "/blocks", { blockPayload: { operations: [{ entity: ALICE, optype: "add" }] } });
  const genesis = await parseBlock(reply.block as string, { maxOperations: 10_000 });
  return { uri: (genesis.payload as { uri: string }).uri, signer: new ChainSigner(alice, genesis.hash) };
}

/** `inFlight` chains, each appended `perChain` pre-signed blocks one after another, through KmsCore.handle. */
async function coreRun(inFlight: number, perChain: number): Promise<CoreRun> {
  const chains = [];
  for (let i = 0; i < inFlight; i++) {
    const c = await newChain(channels[i % channels.length]!);
    const blocks: SignedBlock[] = [];
    for (let k = 0; k < perChain; k++) blocks.push(await c.signer.next([{ entity: fresh(), optype: "add" }]));
    chains.push({ uri: c.uri, blocks });
  }
  const t0 = performance.now();
  await Promise.all(
    chains.map(async (c, w) => {
      const ch = channels[w % channels.length]!;
      for (const b of c.blocks) {
        const reply = openReply(ch, await kms.core.handle(seal(ch, session.payload("create", c.uri, { blocks: [b.jws] }))));
        if (reply.status !== 200 || reply.tail !== b.hash) throw new Error(`in-process append: ${reply.status} ${reply.reason ?? ""}`);
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  return { inFlight, appends: inFlight * perChain, appendsPerSec: (inFlight * perChain) / seconds };
}

/** Time per call of `op`, sequential, after a short warm-up (`warm` false: no warm-up calls). */
async function us(n: number, op: (i: number) => unknown, warm = true): Promise<Step> {
  if (warm) for (let i = 0; i < Math.min(200, n); i++) await op(i);
  const lat = new Float64Array(n);
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const a = performance.now();
    await op(i + 200);
    lat[i] = performance.now() - a;
  }
  const s = latencyStats(lat);
  return { meanUs: ((performance.now() - t0) / n) * 1000, p50Us: s.p50Ms * 1000, p99Us: s.p99Ms * 1000, maxUs: s.maxMs * 1000 };
}

/** Appends `blocks` one per transaction to a new chain of `target`, as the handler does. */
async function appendEach(target: Store, blocks: readonly SignedBlock[], n: number): Promise<Step> {
  const uri = `kms://${settings.authority}/blocks/${randomUUID()}`;
  const genesis = createHash("sha256").update(uri).digest("hex");
  await target.createChain({ uri, requester: ALICE, created: new Date() }, { position: 0, hash: genesis, jws: blocks[0]!.jws, creator: ALICE, created: new Date() }, [ALICE]);
  let position = 1;
  let tail = genesis;
  return us(n, async () => {
    const b = blocks[position - 1]!;
    const outcome = await target.appendBlocks(uri, tail, [{ position, hash: b.hash, jws: b.jws, creator: ALICE, created: new Date() }], [{ entity: `a${position}-${randomUUID()}@${DOMAIN}`, optype: "add", position }]);
    if (outcome !== "appended") throw new Error(`store append: ${outcome}`);
    tail = b.hash;
    position++;
  }, false);
}

// Warm the core's code paths, then the two runs.
await coreRun(4, 25);
const core = [await coreRun(job.concurrency, job.perChain), await coreRun(1, Math.min(1500, job.concurrency * job.perChain))];

// ---- steps, sequential ----
const ch = channels[0]!;
const channel = (await store.getChannel(ch.uri))!;
const { uri: chainUri, signer } = await newChain(ch);
const N = 1500;
const blocks: SignedBlock[] = [];
for (let i = 0; i < N + 200; i++) blocks.push(await signer.next([{ entity: fresh(), optype: "add" }]));
const requests = blocks.map((b) => seal(ch, session.payload("create", chainUri, { blocks: [b.jws] })));
const aliceKeys = (await store.listEntityKeys(ALICE)).map((k) => k.jwk) as JWK[];
const parsed = await Promise.all(blocks.slice(0, 300).map((b) => parseBlock(b.jws, { maxOperations: 10_000 })));
const publicKey = await importJWK(alice.publicJwk, "ES256");

const stepsUs: Record<string, Step> = {};
stepsUs["store.getChannel"] = await us(N, () => store.getChannel(ch.uri));
stepsUs["barrier.open (channel key)"] = await us(N, () => barrier.open(`ecdhe:${channel.uri}`, channel.sealedKey));
stepsUs["decryptCommonMessage"] = await us(N, (i) => decryptCommonMessage(ch.key, requests[i % requests.length]!));
stepsUs["store.recordChannelMessage (write txn)"] = await us(N, () => store.recordChannelMessage(ch.uri, JSON.stringify(randomUUID()), settings.channelMessageLimit));
stepsUs["store.getChain"] = await us(N, () => store.getChain(chainUri));
stepsUs["parseBlock (incl. blockHash)"] = await us(N, (i) => parseBlock(blocks[i % blocks.length]!.jws, { maxOperations: 10_000 }));
stepsUs["  of which blockHash (WebCrypto SHA-256)"] = await us(N, (i) => blockHash(blocks[i % blocks.length]!.jws));
stepsUs["store.listEntityKeys"] = await us(N, () => store.listEntityKeys(ALICE));
stepsUs["verifyAppendedBlockSignature (importJWK + verify)"] = await us(N, (i) => verifyAppendedBlockSignature(parsed[i % parsed.length]!, aliceKeys));
stepsUs["  importJWK ES256 alone"] = await us(N, () => importJWK(alice.publicJwk, "ES256"));
stepsUs["  compactVerify ES256 alone (key imported once)"] = await us(N, (i) => compactVerify(parsed[i % parsed.length]!.jws, publicKey, { algorithms: ["ES256"] }));
stepsUs["store.isMemberAt ×2 (creator, added entity)"] = await us(N, async (i) => {
  await store.isMemberAt(chainUri, ALICE, 0);
  await store.isMemberAt(chainUri, `x${i}@${DOMAIN}`, 0);
});
stepsUs["store.appendBlocks 1 block + 1 change (write txn)"] = await appendEach(store, blocks, N);
stepsUs["encryptCommonMessage (reply)"] = await us(N, (i) => encryptCommonMessage(ch.key, ch.uri, { status: 200, requestId: `r${i}`, tail: blocks[0]!.hash }));

// The same writes on tmpfs: what the data dir's disk (WAL checkpoints, fsync) adds.
if (existsSync("/dev/shm")) {
  const dir = mkdtempSync(join("/dev/shm", "keyward-gmbc-"));
  try {
    const shm = new SqliteStore(join(dir, "keyward.db"));
    await shm.createChannel({ ...channel, clientKeyThumbprint: randomUUID() });
    stepsUs["store.appendBlocks on tmpfs (/dev/shm), same SQL"] = await appendEach(shm, blocks, N);
    stepsUs["store.recordChannelMessage on tmpfs (/dev/shm)"] = await us(N, () => shm.recordChannelMessage(channel.uri, JSON.stringify(randomUUID()), settings.channelMessageLimit));
    await shm.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
const dataDirFs = spawnSync("df", ["-T", job.dataDir], { encoding: "utf8" }).stdout.trim().split("\n").pop()?.split(/\s+/)[1] ?? "?";

await kms.close();
const cpu = process.cpuUsage();
const report: BreakdownReport = { core, steps: stepsUs, dataDirFs, cpuSeconds: (cpu.user + cpu.system) / 1e6 };
console.log(JSON.stringify(report));
process.exit(0);
