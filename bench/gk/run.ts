/**
 * GK bench (`npm run bench:gk`): Group Keys (PROTOCOL.md §9) on a live Keyward KMS (`keyward dev`,
 * SQLite store, EC static key), in one run, on a pinned two-core layout:
 *   1. GK create (`create /gks` with `{block: <tail hash>}`, each call a new GK) and GK get
 *      (`retrieve <gk uri>` with `{entity: alice}`, round robin over 1,000 pre-created bound GKs):
 *      throughput and p50/p99 at fixed concurrency; alice has one EC P-256 device key;
 *   2. the crypto-only ceiling of each, measured in the same run on the server core, with the
 *      server's own functions: openCommonMessage + wrapGroupKey (jose GeneralEncrypt,
 *      ECDH-ES+A256KW, one recipient) + StaticKey.sign (ES256) + sealCommonMessage;
 *   3. GK get on a group whose chain has 100,000 blocks (10,000 members; built through the server
 *      API as bench/gmbc does, with its load generator, once, then cached) against a 2-block
 *      group: GKs bound at each tail, gets by the same members, alternating rounds; under policy 1
 *      (default) and, with the KMS restarted on the same data dir, policy 3.
 * Targets: create and get >= 50% of their crypto ceiling; large-group get within 1.5x of the
 * 2-block group's (throughput, p50, p99). KMS and ceiling on core 0, load generators on core 1.
 * See bench/README.md.
 */
import { copyFileSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import Database from "better-sqlite3";
import { loadConfig } from "../../src/config/config.js";
import { issueDevToken } from "../../src/identity/dev-idp.js";
import { appendResults, printCpuProfile } from "../lib/report.js";
import { build, Children, fmt, gitState, log, machineLine, pct, runJsonChild, startIpcChild, table, type IpcChild, type KeywardDev } from "../lib/harness.js";
import { prepareDataDir, startKeywardDevAt } from "../lib/harness.js";
import { otherBenchProcesses, type OtherProcess } from "../lib/others.js";
import { pinPid, TASKSET } from "../lib/pin.js";
import { coreTicks, cpuSeconds, rssMiB } from "../lib/proc.js";
import { latencyStats, type LatencyStats } from "../lib/stats.js";
import { ALICE, bigChainOperations, intervalsOf, type BigChainShape } from "../gmbc/blocks.js";
import type { BigResult, LoadgenRequest as GmbcRequest, SetupResult as GmbcSetup } from "../gmbc/loadgen.js";
import type { CeilingReport } from "./ceiling.js";
import type { LoadgenPhaseResult, LoadgenRequest, MembersResult, PhaseKind, PregenResult, SetupResult } from "./loadgen.js";
import { runBench } from "../lib/main.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, "../..");
const SERVER_CORE = 0;
const CLIENT_CORE = 1;
const TARGET_VS_CEILING = 0.5;
const TARGET_BIG_RATIO = 1.5;

const { values: args } = parseArgs({
  options: {
    concurrency: { type: "string", default: "32" },
    warmup: { type: "string", default: "2" },
    measure: { type: "string", default: "8" },
    channels: { type: "string", default: "8" },
    gks: { type: "string", default: "1000" },
    members: { type: "string", default: "8" },
    rounds: { type: "string", default: "4" },
    "round-warmup": { type: "string", default: "1" },
    "round-measure": { type: "string", default: "3" },
    policies: { type: "string", default: "1,3" },
    "big-blocks": { type: "string", default: "100000" },
    "big-members": { type: "string", default: "10000" },
    "big-pool": { type: "string", default: "20000" },
    seed: { type: "string", default: "20250101" },
    batch: { type: "string", default: "100" },
    "big-budget": { type: "string", default: "600" },
    "cache-dir": { type: "string", default: join(HERE, "cache") },
    rebuild: { type: "boolean", default: false },
    "quiet-wait": { type: "string", default: "60" },
    "phase-quiet": { type: "string", default: "15" },
    only: { type: "string" },
    "no-build": { type: "boolean", default: false },
    "no-results": { type: "boolean", default: false },
    "cpu-prof": { type: "boolean", default: false },
    help: { type: "boolean", default: false },
  },
});
if (args.help) {
  console.log(`npm run bench:gk -- [options]
  --concurrency N     requests in flight (default 32)
  --warmup S          warm-up seconds of the create and get phases (default 2)
  --measure S         measured seconds of the create and get phases (default 8)
  --channels N        alice's channels the workers share (default 8)
  --gks N             GKs pre-created per group for the gets, fetched round robin (default 1000)
  --members N         members fetching in the large/2-block comparison, one channel each (default 8)
  --rounds N          comparison rounds, each a 2-block then a large-group phase (default 4)
  --round-warmup S    warm-up seconds of each comparison phase (default 1)
  --round-measure S   measured seconds of each comparison phase (default 3)
  --policies LIST     membership policies to compare under, KMS restarted for each (default 1,3)
  --big-blocks N      blocks of the large chain, genesis included (default 100000)
  --big-members N     members of the large chain (default 10000)
  --big-pool N        entities that come and go in the large chain (default 20000)
  --batch N           blocks per append when building the large chain (default 100)
  --big-budget S      give up building the large chain after S seconds (default 600)
  --cache-dir DIR     where the built large chain's data dir is kept (default bench/gk/cache, git-ignored)
  --rebuild           build the large chain again even if it is cached
  --quiet-wait S      first wait up to S seconds for both cores to be < 10% busy for 3 s in a row (default 60)
  --phase-quiet S     the same before the ceiling, create, get and each policy's comparison, up to S seconds (default 15)
  --only LIST         comma-separated subset of ceiling,create,get,compare
  --no-build          do not run \`npm run build\` first
  --no-results        do not append to bench/RESULTS.md
  --cpu-prof          run the KMS under --cpu-prof and print its top functions (one profile per KMS start;
                      with --only get (or create, or compare) the profile covers mostly that phase)`);
  process.exit(0);
}
const concurrency = Number(args.concurrency);
const warmupMs = Number(args.warmup) * 1000;
const measureMs = Number(args.measure) * 1000;
const roundWarmupMs = Number(args["round-warmup"]) * 1000;
const roundMeasureMs = Number(args["round-measure"]) * 1000;
const rounds = Number(args.rounds);
const policies = args.policies.split(",").map((s) => Number(s.trim())).filter((p) => p === 1 || p === 2 || p === 3);
const shape: BigChainShape = { blocks: Number(args["big-blocks"]), members: Number(args["big-members"]), pool: Number(args["big-pool"]), seed: Number(args.seed) };
const wanted = new Set((args.only ?? "ceiling,create,get,compare").split(",").map((s) => s.trim()));
const children = new Children(ROOT);
let kms: KeywardDev | undefined;
let stopping = false;
const profDirs: string[] = [];
/** Other bench / keyward / vitest processes seen at the start or before a phase (pid → description). */
const othersSeen = new Map<number, OtherProcess>();
function noteOthers(when: string): void {
  for (const o of otherBenchProcesses()) {
    if (othersSeen.has(o.pid)) continue;
    othersSeen.set(o.pid, o);
    log(`${o.kind === "vitest" ? "note" : "WARNING"} (${when}): another ${o.kind} process is running (pid ${o.pid}): ${o.command}`);
  }
}
/** Before a measured phase: note other processes, wait (bounded) for both cores to be quiet. */
async function beforePhase(what: string): Promise<void> {
  noteOthers(what);
  const seconds = Number(args["phase-quiet"]);
  if (seconds > 0) {
    const q = await waitQuiet(seconds);
    if (q.waited > 3.5) log(`${what}: waited ${q.waited.toFixed(0)} s for quiet cores (core0 ${pct(q.core0)}, core1 ${pct(q.core1)} other load at the end)`);
  }
}
const cleanups: (() => void)[] = [];

// ---- CPU accounting (the GMBC bench's) ----
interface Sample {
  readonly t: number;
  readonly server: number;
  readonly core0Pids: number;
  readonly core1Pids: number;
  readonly core0: { busy: number; total: number };
  readonly core1: { busy: number; total: number };
}
interface CpuUse {
  readonly serverCpu: number;
  readonly clientCpu: number;
  readonly otherCpu0: number;
  readonly otherCpu1: number;
}
function sampler(serverPid: () => number, core0Pids: () => number[], core1Pids: () => number[]): () => Sample {
  const sum = (pids: number[]) => pids.reduce((a, p) => a + (cpuSeconds(p) || 0), 0);
  return () => ({
    t: performance.now(),
    server: cpuSeconds(serverPid()),
    core0Pids: sum(core0Pids()),
    core1Pids: sum(core1Pids()),
    core0: coreTicks(SERVER_CORE),
    core1: coreTicks(CLIENT_CORE),
  });
}
function cpuBetween(first: Sample, last: Sample): CpuUse {
  const secs = (last.t - first.t) / 1000;
  const frac = (x: { busy: number; total: number }, y: { busy: number; total: number }) => (y.busy - x.busy) / (y.total - x.total);
  return {
    serverCpu: (last.server - first.server) / secs,
    clientCpu: (last.core1Pids - first.core1Pids) / secs,
    otherCpu0: Math.max(0, frac(first.core0, last.core0) - (last.core0Pids - first.core0Pids) / secs),
    otherCpu1: Math.max(0, frac(first.core1, last.core1) - (last.core1Pids - first.core1Pids) / secs),
  };
}
/** CPU use over several windows: time-weighted mean. */
function cpuMean(list: readonly (CpuUse & { seconds: number })[]): CpuUse {
  const total = list.reduce((a, c) => a + c.seconds, 0) || 1;
  const w = (k: keyof CpuUse) => list.reduce((a, c) => a + c[k] * c.seconds, 0) / total;
  return { serverCpu: w("serverCpu"), clientCpu: w("clientCpu"), otherCpu0: w("otherCpu0"), otherCpu1: w("otherCpu1") };
}

async function waitQuiet(seconds: number): Promise<{ core0: number; core1: number; waited: number }> {
  const t0 = performance.now();
  const self = () => cpuSeconds(process.pid);
  let quietFor = 0;
  for (;;) {
    const a0 = coreTicks(SERVER_CORE), a1 = coreTicks(CLIENT_CORE), s0 = self();
    await new Promise((r) => setTimeout(r, 1000));
    const b0 = coreTicks(SERVER_CORE), b1 = coreTicks(CLIENT_CORE), s1 = self();
    const core0 = (b0.busy - a0.busy) / (b0.total - a0.total);
    const core1 = Math.max(0, (b1.busy - a1.busy) / (b1.total - a1.total) - (s1 - s0));
    const waited = (performance.now() - t0) / 1000;
    quietFor = core0 < 0.1 && core1 < 0.1 ? quietFor + 1 : 0;
    if (quietFor >= 3 || waited >= seconds || !Number.isFinite(core0)) return { core0, core1, waited };
    if (quietFor === 0) log(`other processes are using the bench cores (core0 ${pct(core0)}, core1 ${pct(core1)}); waiting for them (${waited.toFixed(0)}/${seconds} s)`);
  }
}

// ---- the large chain, built once through the server API (bench/gmbc's load generator) and cached ----
interface BigCache {
  readonly chainUri: string;
  readonly tail: string;
  readonly length: number;
  readonly alicePrivateJwk: Record<string, unknown>;
  readonly shape: BigChainShape;
  readonly build: {
    readonly seconds: number;
    readonly blocksPerSec: number;
    readonly appendsPerSec: number;
    readonly appendP50Ms: number;
    readonly appendP99Ms: number;
    readonly serverCpu: number;
    readonly otherCpu0: number;
    readonly otherCpu1: number;
    readonly at: string;
    readonly commit: string;
  };
  readonly dbBytes: number;
}

function tokenFor(server: KeywardDev, user: string): Promise<string> {
  const config = loadConfig(server.dir, { ...process.env, ...server.env });
  return issueDevToken({ dataDir: server.dir, issuer: config.oauthIssuer, audience: config.oauthAudience, user, lifetimeSeconds: 3600 });
}

async function ensureBigChain(): Promise<{ cache: BigCache; dataDir: string; cached: boolean }> {
  const cacheDir = join(resolve(args["cache-dir"]), `chain-${shape.blocks}-${shape.members}-${shape.pool}-${shape.seed}`);
  const metaPath = join(cacheDir, "meta.json");
  const dataDir = join(cacheDir, "data");
  if (!args.rebuild && existsSync(metaPath) && existsSync(dataDir)) {
    return { cache: JSON.parse(readFileSync(metaPath, "utf8")) as BigCache, dataDir, cached: true };
  }
  log(`building the ${fmt(shape.blocks)}-block chain through the server API (bench/gmbc's load generator, appends of ${args.batch} blocks; cached in ${relative(ROOT, cacheDir) || cacheDir})`);
  const { tmpDir, dir } = prepareDataDir("keyward-gk-build-");
  cleanups.push(() => rmSync(tmpDir, { recursive: true, force: true }));
  const server = await startKeywardDevAt(children, SERVER_CORE, { dir, tmpDir, env: { KEYWARD_POLICY: "1" } });
  const lg = startIpcChild<GmbcRequest>(children, CLIENT_CORE, ["--import", "tsx", join(ROOT, "bench/gmbc/loadgen.ts")]);
  const sample = sampler(() => server.child.pid!, () => [server.child.pid!], () => [lg.child.pid!]);
  const setup = await lg.call<GmbcSetup>({ cmd: "setup", url: server.url, token: await tokenFor(server, ALICE), channels: 1, chains: 1 });
  const first = sample();
  const big = await lg.call<BigResult>({ cmd: "big", shape, batch: Number(args.batch), budgetMs: Number(args["big-budget"]) * 1000 });
  const cpu = cpuBetween(first, sample());
  await lg.call({ cmd: "exit" }).catch(() => {});
  await children.stop(lg.child);
  await children.stop(server.child);
  if (!big.complete) throw new Error(`the large chain did not finish within ${args["big-budget"]} s (${fmt(big.blocks)} blocks, ${fmt(big.blocksPerSec)} blocks/s); raise --big-budget`);
  log(`large chain: ${fmt(big.blocks)} blocks in ${big.seconds.toFixed(1)} s (${fmt(big.blocksPerSec)} blocks/s)`);
  const config = loadConfig(dir, { ...process.env, ...server.env });
  if (config.store.kind !== "sqlite") throw new Error("the bench expects the SQLite store");
  const db = new Database(config.store.path, { readonly: true });
  const row = db.prepare("SELECT tail_hash, length FROM chains WHERE uri = ?").get(big.chainUri) as { tail_hash: string; length: number };
  db.close();
  if (row.length !== shape.blocks) throw new Error(`the large chain has ${row.length} blocks, expected ${shape.blocks}`);
  const { commit } = gitState(ROOT);
  const cache: BigCache = {
    chainUri: big.chainUri,
    tail: row.tail_hash,
    length: row.length,
    alicePrivateJwk: setup.alicePrivateJwk,
    shape,
    build: {
      seconds: big.seconds, blocksPerSec: big.blocksPerSec, appendsPerSec: big.appendsPerSec,
      appendP50Ms: big.appendLatency.p50Ms, appendP99Ms: big.appendLatency.p99Ms,
      serverCpu: cpu.serverCpu, otherCpu0: cpu.otherCpu0, otherCpu1: cpu.otherCpu1,
      at: new Date().toISOString(), commit,
    },
    dbBytes: statSync(config.store.path).size,
  };
  rmSync(cacheDir, { recursive: true, force: true });
  mkdirSync(cacheDir, { recursive: true });
  cpSync(dir, dataDir, { recursive: true });
  writeFileSync(metaPath, `${JSON.stringify(cache, null, 2)}\n`);
  server.cleanup();
  return { cache, dataDir, cached: false };
}

/** Members of the large chain at its tail with the most membership intervals (they left and came back most often). */
function pickMembers(count: number): { entity: string; intervals: number }[] {
  const intervals = intervalsOf([ALICE], bigChainOperations(shape));
  return [...intervals.entries()]
    .filter(([e, list]) => e !== ALICE && list[list.length - 1]![1] === Infinity)
    .map(([entity, list]) => ({ entity, intervals: list.length }))
    .sort((a, b) => b.intervals - a.intervals || a.entity.localeCompare(b.entity))
    .slice(0, count);
}

type Measured = LoadgenPhaseResult & CpuUse;

async function runMeasured(lg: IpcChild<LoadgenRequest>, sample: () => Sample, kind: PhaseKind, wMs: number, mMs: number): Promise<Measured> {
  let first: Sample | undefined;
  let last: Sample | undefined;
  const a = setTimeout(() => (first = sample()), wMs);
  const b = setTimeout(() => (last = sample()), wMs + mMs);
  const result = await lg.call<LoadgenPhaseResult>({ cmd: "phase", kind, warmupMs: wMs, measureMs: mMs, concurrency });
  clearTimeout(a);
  clearTimeout(b);
  first ??= sample();
  last ??= sample();
  return { ...result, ...cpuBetween(first, last) };
}

interface CompareSide {
  readonly throughput: number;
  readonly latency: LatencyStats;
  readonly perRound: number[];
  readonly errors: number;
  readonly firstError?: string;
  readonly cpu: CpuUse;
}
interface CompareResult {
  readonly policy: number;
  readonly small: CompareSide;
  readonly big: CompareSide;
}

function combine(list: Measured[]): CompareSide {
  const completed = list.reduce((a, r) => a + r.completed, 0);
  const ms = list.reduce((a, r) => a + r.measuredMs, 0);
  const all = Float64Array.from(list.flatMap((r) => r.latencies ?? []));
  const firstError = list.find((r) => r.firstError)?.firstError;
  return {
    throughput: completed / (ms / 1000),
    latency: latencyStats(all),
    perRound: list.map((r) => r.throughput),
    errors: list.reduce((a, r) => a + r.errors, 0),
    ...(firstError ? { firstError } : {}),
    cpu: cpuMean(list.map((r) => ({ ...r, seconds: r.measuredMs / 1000 }))),
  };
}

function summarizeOthers(): string {
  const by = new Map<string, number>();
  for (const o of othersSeen.values()) by.set(o.kind, (by.get(o.kind) ?? 0) + 1);
  return [...by.entries()].map(([k, n]) => `${n} ${k} process${n > 1 ? "es" : ""}`).join(", ") + " (of other sessions; see the noise columns)";
}

async function main(): Promise<void> {
  const startedAt = new Date();
  const t0 = performance.now();
  noteOthers("start");
  if (!args["no-build"]) build(ROOT);
  const pinned = TASKSET !== undefined && (await pinPid(process.pid, CLIENT_CORE));
  if (!TASKSET) log("WARNING: taskset not found: nothing is pinned, results mix server and client CPU");
  const pinning = TASKSET
    ? `KMS and crypto-ceiling process on core ${SERVER_CORE} (taskset -c ${SERVER_CORE}), load generator${pinned ? " and orchestrator" : ""} on core ${CLIENT_CORE}`
    : "UNPINNED (taskset missing)";
  const quiet = await waitQuiet(Number(args["quiet-wait"]));

  const needCompare = wanted.has("compare") && policies.length > 0;
  const needServer = needCompare || wanted.has("create") || wanted.has("get");
  let big: { cache: BigCache; dataDir: string; cached: boolean } | undefined;
  if (needCompare) big = await ensureBigChain();

  let setup: SetupResult | undefined;
  let membersR: MembersResult | undefined;
  let picked: { entity: string; intervals: number }[] = [];
  let pregen: PregenResult | undefined;
  let ceiling: (CeilingReport & { otherCpu0: number }) | undefined;
  let createR: Measured | undefined;
  let getR: Measured | undefined;
  const compares: CompareResult[] = [];
  let serverRss = Number.NaN;
  let aliceToken = "";
  let lg: IpcChild<LoadgenRequest> | undefined;
  let tmpDir = "";
  let dataDir = "";

  const startServer = async (policy: number) => {
    kms = await startKeywardDevAt(children, SERVER_CORE, { dir: dataDir, tmpDir, cpuProf: args["cpu-prof"], env: { KEYWARD_POLICY: String(policy) }, label: `policy${policy}-${profDirs.length}` });
    if (kms.profDir) profDirs.push(kms.profDir);
    const server = kms;
    server.child.once("exit", (code, signal) => {
      if (!stopping && kms === server) log(`ERROR: the KMS exited during the run (code ${code}, signal ${signal}); its output:\n${server.output().slice(-4000)}`);
    });
    const config = loadConfig(kms.dir, { ...process.env, ...kms.env });
    if (config.store.kind !== "sqlite") throw new Error("the bench expects the SQLite store");
    if (config.policy !== policy) throw new Error(`the KMS runs policy ${config.policy}, expected ${policy}`);
    aliceToken = await tokenFor(kms, ALICE);
  };
  const stopServer = async () => {
    if (!kms) return;
    serverRss = rssMiB(kms.child.pid!);
    const server = kms;
    kms = undefined;
    await children.stop(server.child);
  };

  const firstPolicy = needCompare ? policies[0]! : 1;
  if (needServer) {
    ({ tmpDir, dir: dataDir } = prepareDataDir("keyward-gk-", big?.dataDir));
    cleanups.push(() => rmSync(tmpDir, { recursive: true, force: true }));
    log(`starting keyward dev (SQLite store, EC static key, policy ${firstPolicy})${big ? `, on a copy of the cached data dir with the ${fmt(shape.blocks)}-block chain` : ""}`);
    await startServer(firstPolicy);
    lg = startIpcChild<LoadgenRequest>(children, CLIENT_CORE, ["--import", "tsx", join(HERE, "loadgen.ts")]);
    setup = await lg.call<SetupResult>({ cmd: "setup", url: kms!.url, token: aliceToken, channels: Number(args.channels), ...(big ? { alicePrivateJwk: big.cache.alicePrivateJwk } : {}) });
    log(`alice's EC P-256 device key ${setup.registered ? "registered" : "reused (registered when the large chain was built)"}; group ${setup.groupUri}; create request ${setup.createRequestBytes} B, get request ${setup.getRequestBytes} B, reply ${setup.createReplyBytes} B (GK JWS ${setup.gkJwsBytes} B)`);
    if (needCompare && big) {
      picked = pickMembers(Number(args.members));
      const members = await Promise.all(picked.map(async (m) => ({ entity: m.entity, token: await tokenFor(kms!, m.entity) })));
      membersR = await lg.call<MembersResult>({ cmd: "members", members, big: { uri: big.cache.chainUri, tail: big.cache.tail } });
      log(`${picked.length} members of both groups registered a device key (large chain: ${picked.map((m) => m.intervals).join(", ")} membership intervals each); 2-block group ${membersR.smallUri}`);
    }
    pregen = await lg.call<PregenResult>({ cmd: "pregen", main: wanted.has("get") ? Number(args.gks) : 1, compare: needCompare ? Number(args.gks) : 0, concurrency });
    log(`pre-created ${fmt(pregen.main + pregen.small + pregen.big)} bound GKs in ${pregen.seconds.toFixed(1)} s`);
  }
  const serverPid = () => kms?.child.pid ?? 0;
  const sample = sampler(serverPid, () => [serverPid()], () => [...(lg ? [lg.child.pid!] : []), ...(pinned ? [process.pid] : [])]);

  if (wanted.has("ceiling")) {
    await beforePhase("ceiling");
    log("crypto-only ceilings (core 0)");
    const before = coreTicks(SERVER_CORE);
    const c0 = performance.now();
    const report = await runJsonChild<CeilingReport>(children, SERVER_CORE, ["--import", "tsx", join(HERE, "ceiling.ts")], {
      CEILING_TOKEN: aliceToken || "x".repeat(700),
      CEILING_IN_FLIGHT: String(concurrency),
    });
    const after = coreTicks(SERVER_CORE);
    const busy = (after.busy - before.busy) / (after.total - before.total);
    ceiling = { ...report, otherCpu0: Math.max(0, busy - report.cpuSeconds / ((performance.now() - c0) / 1000)) };
  }
  if (lg && wanted.has("create")) {
    await beforePhase("create");
    log(`GK create: ${args.warmup} s warm-up + ${args.measure} s, ${concurrency} in flight`);
    createR = await runMeasured(lg, sample, "create", warmupMs, measureMs);
  }
  if (lg && wanted.has("get")) {
    await beforePhase("get");
    log(`GK get: ${args.warmup} s warm-up + ${args.measure} s, ${concurrency} in flight, round robin over ${fmt(Number(args.gks))} GKs`);
    getR = await runMeasured(lg, sample, "get", warmupMs, measureMs);
  }
  if (lg && needCompare) {
    for (const [i, policy] of policies.entries()) {
      if (i > 0) {
        log(`restarting the KMS on the same data dir with KEYWARD_POLICY=${policy}`);
        await stopServer();
        await startServer(policy);
        const memberTokens = await Promise.all(picked.map((m) => tokenFor(kms!, m.entity)));
        await lg.call({ cmd: "reconnect", url: kms!.url, token: aliceToken, memberTokens });
      }
      await beforePhase(`compare, policy ${policy}`);
      log(`policy ${policy}: GK get, 2-block vs ${fmt(shape.blocks)}-block group, ${rounds} rounds of ${args["round-warmup"]} s + ${args["round-measure"]} s each`);
      const smallRuns: Measured[] = [];
      const bigRuns: Measured[] = [];
      for (let r = 0; r < rounds; r++) {
        smallRuns.push(await runMeasured(lg, sample, "get-small", roundWarmupMs, roundMeasureMs));
        bigRuns.push(await runMeasured(lg, sample, "get-big", roundWarmupMs, roundMeasureMs));
      }
      compares.push({ policy, small: combine(smallRuns), big: combine(bigRuns) });
    }
  }
  if (lg) {
    await lg.call({ cmd: "exit" }).catch(() => {});
    await children.stop(lg.child);
  }
  stopping = true;
  await stopServer();

  // ---- report ----
  const verdict = (ok: boolean) => (ok ? "PASS" : "FAIL");
  const ms = (v: number) => fmt(v, 2);
  const sections: string[] = [];
  const ratioRows = [["target", "value", "target", "verdict"]];
  const noisy: string[] = [];
  const noiseOf = (c: CpuUse, what: string) => {
    if (c.otherCpu0 > 0.1 || c.otherCpu1 > 0.1) noisy.push(what);
  };

  if (createR || getR || ceiling) {
    const rows = [["operation", "req/s", "p50 ms", "p99 ms", "mean ms", "slowest–fastest 1 s", "server CPU", "loadgen CPU", "other CPU core0/core1", "errors"]];
    const row = (label: string, r: Measured) => {
      rows.push([
        label, fmt(r.throughput), ms(r.latency.p50Ms), ms(r.latency.p99Ms), ms(r.latency.meanMs), `${fmt(r.perSecondMin)}–${fmt(r.perSecondMax)}`,
        pct(r.serverCpu), pct(r.clientCpu), `${pct(r.otherCpu0)} / ${pct(r.otherCpu1)}`, `${r.errors}${r.firstError ? ` (${r.firstError})` : ""}`,
      ]);
    };
    if (createR) (row(`GK create (create /gks, bound), KMS + SQLite`, createR), noiseOf(createR, "create"));
    if (ceiling) rows.push([`GK create crypto-only ceiling (core 0)`, fmt(ceiling.create.opsPerSec), "–", "–", ms(1000 / ceiling.create.opsPerSec), "best 0.4 s", "100%", "–", `${pct(ceiling.otherCpu0)} / –`, "–"]);
    if (getR) (row(`GK get (retrieve <gk>, ${fmt(Number(args.gks))} GKs round robin), KMS + SQLite`, getR), noiseOf(getR, "get"));
    if (ceiling) rows.push([`GK get crypto-only ceiling (core 0)`, fmt(ceiling.get.opsPerSec), "–", "–", ms(1000 / ceiling.get.opsPerSec), "best 0.4 s", "100%", "–", `${pct(ceiling.otherCpu0)} / –`, "–"]);
    if (ceiling && ceiling.otherCpu0 > 0.1) noisy.push("ceiling");
    sections.push(table(rows));
    if (ceiling) {
      const c = ceiling;
      sections.push(table([
        ["crypto-only ceiling (core 0): openCommonMessage + wrapGroupKey + StaticKey.sign + sealCommonMessage", "ops/s", "1 in flight", `${concurrency} in flight`],
        ["GK create (fresh 256-bit key)", fmt(c.create.opsPerSec), fmt(c.create.sequential.opsPerSec), fmt(c.create.concurrent.opsPerSec)],
        ["GK get (stored key)", fmt(c.get.opsPerSec), fmt(c.get.sequential.opsPerSec), fmt(c.get.concurrent.opsPerSec)],
        ["info: GK get with node:crypto one-shot calls (ECDH, Concat KDF, AES-KW, AES-GCM, ES256 sign)", fmt(c.getNodeCrypto.opsPerSec), fmt(c.getNodeCrypto.opsPerSec), "–"],
      ]));
      sections.push(table([["ceiling part (sequential)", "µs"], ...Object.entries(c.partsUs).map(([k, v]) => [k, fmt(v, 1)])]));
    }
    if (createR && ceiling) {
      const r = createR.throughput / ceiling.create.opsPerSec;
      ratioRows.push(["GK create / create crypto ceiling", pct(r), `>= ${pct(TARGET_VS_CEILING)}`, verdict(r >= TARGET_VS_CEILING)]);
    }
    if (getR && ceiling) {
      const r = getR.throughput / ceiling.get.opsPerSec;
      ratioRows.push(["GK get / get crypto ceiling", pct(r), `>= ${pct(TARGET_VS_CEILING)}`, verdict(r >= TARGET_VS_CEILING)]);
    }
    if (getR) ratioRows.push(["info: GK gets/s (issue: \"well over 2,000\" on this machine)", fmt(getR.throughput), "> 2,000", verdict(getR.throughput > 2000)]);
  }

  if (big) {
    const b = big.cache.build;
    sections.push(table([
      ["large chain (built through the server API, bench/gmbc's load generator)", "blocks", "members", "seconds", "blocks/s", "appends/s", "append p50 ms", "append p99 ms", "server CPU", "other CPU core0/core1", "db MiB", "built"],
      [
        `${big.cached ? "cached" : "built in this run"}: ${args.batch} blocks per append`, fmt(big.cache.length), fmt(shape.members), fmt(b.seconds, 1), fmt(b.blocksPerSec), fmt(b.appendsPerSec, 1),
        ms(b.appendP50Ms), ms(b.appendP99Ms), pct(b.serverCpu), `${pct(b.otherCpu0)} / ${pct(b.otherCpu1)}`, fmt(big.cache.dbBytes / 2 ** 20, 1), `${b.at.slice(0, 16)}Z, commit ${b.commit}`,
      ],
    ]));
  }
  if (compares.length) {
    const rows = [["GK get by a member, GK bound at the tail", "policy", "blocks", "req/s", "per round", "p50 ms", "p99 ms", "mean ms", "server CPU", "loadgen CPU", "other CPU core0/core1", "errors"]];
    for (const c of compares) {
      for (const [label, side, blocks] of [["2-block group", c.small, 2], [`${fmt(shape.blocks)}-block group (${fmt(shape.members)} members)`, c.big, shape.blocks]] as const) {
        rows.push([
          label, String(c.policy), fmt(blocks), fmt(side.throughput), side.perRound.map((v) => fmt(v)).join(" / "), ms(side.latency.p50Ms), ms(side.latency.p99Ms), ms(side.latency.meanMs),
          pct(side.cpu.serverCpu), pct(side.cpu.clientCpu), `${pct(side.cpu.otherCpu0)} / ${pct(side.cpu.otherCpu1)}`, `${side.errors}${side.firstError ? ` (${side.firstError})` : ""}`,
        ]);
        noiseOf(side.cpu, `compare policy ${c.policy} (${blocks} blocks)`);
      }
      const rT = c.small.throughput / c.big.throughput;
      const r50 = c.big.latency.p50Ms / c.small.latency.p50Ms;
      const r99 = c.big.latency.p99Ms / c.small.latency.p99Ms;
      ratioRows.push([`policy ${c.policy}: get throughput, 2-block / large group`, `${fmt(rT, 2)}x`, `<= ${TARGET_BIG_RATIO}x`, verdict(rT <= TARGET_BIG_RATIO)]);
      ratioRows.push([`policy ${c.policy}: get p50, large / 2-block group`, `${fmt(r50, 2)}x`, `<= ${TARGET_BIG_RATIO}x`, verdict(r50 <= TARGET_BIG_RATIO)]);
      ratioRows.push([`policy ${c.policy}: get p99, large / 2-block group`, `${fmt(r99, 2)}x`, `<= ${TARGET_BIG_RATIO}x`, verdict(r99 <= TARGET_BIG_RATIO)]);
    }
    sections.push(table(rows));
    sections.push(
      `(${rounds} rounds per policy, each a 2-block phase then a large-group phase of ${args["round-warmup"]} s + ${args["round-measure"]} s; ` +
        `${concurrency} in flight over ${picked.length} members, one channel and one EC P-256 device key each, ${fmt(Number(args.gks))} GKs per group round robin; ` +
        `the members are those of the large chain's tail with the most membership intervals (${picked.map((m) => m.intervals).join(", ")}); both groups in the same database)`,
    );
  }

  const { commit, srcDirty } = gitState(ROOT);
  const method = [
    `concurrency ${concurrency} (closed loop, one request in flight per keep-alive connection, hand-parsed HTTP/1.1 sockets), ${args.warmup} s warm-up + ${args.measure} s measured for create and get; alice: one EC P-256 device key, ${args.channels} channels, group of 1 block (genesis), GKs bound to its tail`,
    ...(setup ? [`create request ${setup.createRequestBytes} B, get request ${setup.getRequestBytes} B, reply ${setup.createReplyBytes} B (GK JWS ${setup.gkJwsBytes} B)${pregen ? `; ${fmt(pregen.main + pregen.small + pregen.big)} GKs pre-created in ${fmt(pregen.seconds, 1)} s` : ""}`] : []),
    ...(big ? [`all phases on a copy of the cached data dir holding the ${fmt(shape.blocks)}-block chain (${fmt(big.cache.dbBytes / 2 ** 20, 1)} MiB SQLite db)`] : ["fresh data dir"]),
    pinning,
    `before the run, other load: core0 ${pct(quiet.core0)}, core1 ${pct(quiet.core1)} (waited ${fmt(quiet.waited, 0)} s for quiet)`,
    `other processes seen at the start or before a phase: ${othersSeen.size ? summarizeOthers() : "no other bench, keyward or vitest process"}`,
  ];
  const text = [
    `## GK ${startedAt.toISOString()} (commit ${commit}${srcDirty ? ", src/ modified" : ""})`,
    "",
    `- machine: ${machineLine()}`,
    ...method.map((m) => `- ${m}`),
    `- KMS RSS at the end: ${fmt(serverRss)} MiB; whole bench ${fmt((performance.now() - t0) / 1000)} s`,
    "",
    ...sections.flatMap((s) => [s, ""]),
    table(ratioRows),
    "",
    ...(noisy.length
      ? [`WARNING: other processes used more than 10% of a bench core during: ${noisy.join(", ")}; those numbers are low by about that much (run again on a quiet machine).`, ""]
      : []),
  ].join("\n");
  console.log(`\n${text}`);

  for (const dir of profDirs) {
    const files = existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith(".cpuprofile")) : [];
    if (files.length === 0) log(`no CPU profile was written in ${dir}`);
    for (const f of files) {
      const kept = join(HERE, "profiles");
      mkdirSync(kept, { recursive: true });
      const target = join(kept, `keyward-${startedAt.toISOString().replace(/[:.]/g, "-")}-${dir.split("/").pop()}.cpuprofile`);
      copyFileSync(join(dir, f), target);
      printCpuProfile(ROOT, target);
    }
  }
  if (!args["no-results"]) {
    log(`appended to ${relative(ROOT, appendResults(ROOT, text))}`);
  }
}

async function cleanup(): Promise<void> {
  stopping = true;
  await children.stopAll();
  for (const c of cleanups.splice(0)) c();
}

await runBench(main, cleanup);
