/**
 * The performance record (`npm run bench`, issue #6): one command, one table, one dated section
 * appended to bench/RESULTS.md. Parts (see bench/README.md for the method of each):
 *   ops        ping, ECDHE, genesis, append, GK create, GK get at a fixed concurrency against a
 *              `keyward dev` KMS on each store (SQLite, PostgreSQL), with the crypto-only ceiling of
 *              each operation measured in the same run (the channel, GMBC and GK benches' ceilings);
 *   sweep      GK get at concurrency 1..64 (SQLite): p99 at the lowest concurrency reaching 80% of peak;
 *   membership isMemberAt on chains of 10 and 100,000 blocks (bench/gmbc/membership.ts);
 *   rss        KMS resident memory with 1,000,000 stored GKs (seeded through the Store interface,
 *              or through the protocol with --gk-count), plus GKs created and fetched via the protocol;
 *   workers    `keyward serve --workers 1` vs `--workers 2`, GK get and ping;
 *   overload   GK get with concurrency far above the HTTP binding's shedding threshold: 429 share
 *              and latency, latency of the accepted requests;
 *   transports ping and GK get over HTTP, WebSocket and XMPP against one KMS (bench/transports/run.ts,
 *              run as a child process; its section is included as part 7).
 * The KMS runs on core 0 and the load generators on core 1 (taskset), except in `workers`, where the
 * server has both cores and shares them with its load generator.
 */
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { randomBytes } from "node:crypto";
import pg from "pg";
import { loadConfig } from "../src/config/config.js";
import { issueDevToken, startDevIdp } from "../src/identity/dev-idp.js";
import { build, Children, fmt, gitState, log, machineLine, pct, runJsonChild, startIpcChild, table, type IpcChild, type KeywardDev } from "./lib/harness.js";
import { prepareDataDir, startKeywardDevAt } from "./lib/harness.js";
import { cpuSampler, measureCpu, waitQuiet, type CpuUse } from "./lib/cpu.js";
import type { PhaseResult } from "./lib/load.js";
import { otherBenchProcesses } from "./lib/others.js";
import { pinPid, TASKSET } from "./lib/pin.js";
import { childPids, rssMiB } from "./lib/proc.js";
import { appendResults } from "./lib/report.js";
import { ALICE, type BigChainShape } from "./gmbc/blocks.js";
import type { CeilingReport as ChannelCeiling } from "./channel/ceiling.js";
import type { LoadgenRequest as ChannelReq, SetupResult as ChannelSetup } from "./channel/loadgen.js";
import type { CeilingReport as GmbcCeiling } from "./gmbc/ceiling.js";
import type { LoadgenRequest as GmbcReq, SetupResult as GmbcSetup } from "./gmbc/loadgen.js";
import type { MembershipJob, MembershipReport } from "./gmbc/membership.js";
import type { CeilingReport as GkCeiling } from "./gk/ceiling.js";
import type { LoadgenPhaseResult, LoadgenRequest as GkReq, PregenResult, SetupResult as GkSetup } from "./gk/loadgen.js";
import type { SeedJob, SeedReport } from "./record/seed-gks.js";
import { runBench } from "./lib/main.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, "..");
const SERVER_CORE = 0;
const CLIENT_CORE = 1;
const BOTH = "0,1";
const PARTS = ["ops", "sweep", "membership", "rss", "workers", "overload", "transports"] as const;
type Part = (typeof PARTS)[number];

const { values: a } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    only: { type: "string" },
    stores: { type: "string", default: "sqlite,postgres" },
    "postgres-url": { type: "string", default: process.env.KEYWARD_BENCH_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/test" },
    concurrency: { type: "string" },
    warmup: { type: "string" },
    measure: { type: "string" },
    channels: { type: "string", default: "8" },
    gks: { type: "string" },
    sweep: { type: "string" },
    "sweep-measure": { type: "string" },
    "gk-seed": { type: "string" },
    "gk-count": { type: "string" },
    "rss-extra": { type: "string" },
    "big-blocks": { type: "string" },
    "big-members": { type: "string" },
    "big-pool": { type: "string" },
    queries: { type: "string" },
    "overload-concurrency": { type: "string" },
    "quiet-wait": { type: "string" },
    "no-build": { type: "boolean", default: false },
    "no-results": { type: "boolean", default: false },
    help: { type: "boolean", default: false },
  },
});
if (a.help) {
  console.log(`npm run bench -- [options]      the performance record (issue #6); see bench/README.md
  --quick                 every part, briefly (smoke test, < 2 min); results are marked QUICK
  --only LIST             subset of ${PARTS.join(",")} (default: all; transports runs bench/transports/run.ts)
  --stores LIST           sqlite,postgres (default both; PostgreSQL skipped, and said so, when unreachable)
  --postgres-url URL      server for the PostgreSQL store, a fresh schema per run, dropped at the end
                          (default KEYWARD_BENCH_POSTGRES_URL or postgres://postgres@127.0.0.1:5432/test)
  --concurrency N         requests in flight in the ops and workers parts (default 32)
  --warmup S / --measure S  per operation (default 2 / 6; quick 0.3 / 1)
  --channels N            channels per load generator (default 8)
  --gks N                 GKs pre-created for the GK get phases, fetched round robin (default 1000; quick 200)
  --sweep LIST            GK get concurrencies of the sweep (default 1,2,4,8,16,32,64; quick 1,8,32)
  --sweep-measure S       measured seconds per sweep point, after 1 s warm-up (default 3; quick 0.5 after 0.3)
  --gk-seed N             GKs written through the Store interface before the RSS measurement (default 1000000; quick 20000)
  --gk-count N            instead, create N GKs through the protocol (slow: ~1,500/s)
  --rss-extra N           GKs created then fetched through the protocol in the RSS part (default 5000; quick 500)
  --big-blocks N, --big-members N, --big-pool N   the membership part's large chain (default 100000, 10000, 20000;
                          quick 2000, 200, 400); a chain cached by npm run bench:gk is reused when it matches
  --queries N             membership queries per chain (default 20000; quick 2000)
  --overload-concurrency N  requests in flight in the overload part (default 512; quick 256)
  --quiet-wait S          wait up to S s for quiet cores before the run (default 30; quick 0)
  --no-build              do not run npm run build first
  --no-results            do not append to bench/RESULTS.md`);
  process.exit(0);
}
const quick = a.quick;
const num = (v: string | undefined, full: number, q: number) => (v !== undefined ? Number(v) : quick ? q : full);
const concurrency = num(a.concurrency, 32, 32);
const warmupMs = num(a.warmup, 2, 0.3) * 1000;
const measureMs = num(a.measure, 6, 1) * 1000;
const channels = Number(a.channels);
const gkCount = num(a.gks, 1000, 200);
const sweepPoints = (a.sweep ?? (quick ? "1,8,32" : "1,2,4,8,16,32,64")).split(",").map(Number).filter((n) => n > 0);
const sweepMs = num(a["sweep-measure"], 3, 0.5) * 1000;
const sweepWarmupMs = quick ? 300 : 1000;
const seedCount = num(a["gk-seed"], 1_000_000, 20_000);
const protocolGks = a["gk-count"] !== undefined ? Number(a["gk-count"]) : undefined;
const rssExtra = num(a["rss-extra"], 5000, 500);
const shape: BigChainShape = { blocks: num(a["big-blocks"], 100_000, 2000), members: num(a["big-members"], 10_000, 200), pool: num(a["big-pool"], 20_000, 400), seed: 20250101 };
const queries = num(a.queries, 20_000, 2000);
const overloadConcurrency = num(a["overload-concurrency"], 512, 256);
const quietWait = num(a["quiet-wait"], 30, 0);
const wanted = new Set<Part>((a.only ?? PARTS.join(",")).split(",").map((s) => s.trim() as Part));
for (const p of wanted) if (!PARTS.includes(p)) throw new Error(`--only: unknown part ${p} (parts: ${PARTS.join(",")})`);
const stores = a.stores.split(",").map((s) => s.trim()).filter((s) => s === "sqlite" || s === "postgres");

const TARGET_VS_CEILING = 0.5;
const TARGET_PG_VS_SQLITE = 0.5;
const TARGET_RSS_MIB = 300;
const TARGET_WORKERS = 1.6;
const TARGET_P99_AT_80 = 20;
const TARGET_MEMBERSHIP_RATIO = 1.5;

const children = new Children(ROOT);
const cleanups: (() => Promise<void> | void)[] = [];
let pinned = false;
const notes: string[] = [];
const noisy: string[] = [];

type Op = "ping" | "ECDHE" | "genesis" | "append" | "GK create" | "GK get";
const OPS: Op[] = ["ping", "ECDHE", "genesis", "append", "GK create", "GK get"];
type Measured = PhaseResult & { cpu: CpuUse };

const CHANNEL_LG = ["--import", "tsx", join(HERE, "channel/loadgen.ts")];
const GMBC_LG = ["--import", "tsx", join(HERE, "gmbc/loadgen.ts")];
const GK_LG = ["--import", "tsx", join(HERE, "gk/loadgen.ts")];

function noteNoise(what: string, cpu: CpuUse): void {
  if (cpu.otherCpu.some((u) => u > 0.1)) noisy.push(`${what} (${cpu.otherCpu.map(pct).join("/")})`);
}

async function tokenFor(server: KeywardDev, user = ALICE): Promise<string> {
  const config = loadConfig(server.dir, { ...process.env, ...server.env });
  return issueDevToken({ dataDir: server.dir, issuer: config.oauthIssuer, audience: config.oauthAudience, user, lifetimeSeconds: 3 * 3600 });
}

async function stopIpc<R>(lg: IpcChild<R> | undefined): Promise<void> {
  if (!lg) return;
  await lg.call({ cmd: "exit" } as R).catch(() => {});
  await children.stop(lg.child);
}

// ---- PostgreSQL ----
async function pgQuery(url: string, text: string): Promise<void> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000, query_timeout: 5000 });
  client.on("error", () => {});
  await client.connect();
  try {
    await client.query(text);
  } finally {
    await client.end().catch(() => {});
  }
}
async function postgresReachable(url: string): Promise<string | undefined> {
  try {
    await pgQuery(url, "SELECT 1");
    return undefined;
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
}
/** A store URL with a fresh schema (created by the KMS's migrations) and its cleanup. */
function freshSchemaUrl(url: string): string {
  const schema = `keyward_bench_${process.pid}_${randomBytes(4).toString("hex")}`;
  const u = new URL(url);
  u.searchParams.set("schema", schema);
  cleanups.push(() => pgQuery(url, `DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch((e: unknown) => log(`WARNING: could not drop schema ${schema}: ${String(e)}`)));
  return u.toString();
}

// ---- ceilings (core 0, once per run) ----
interface Ceilings {
  readonly channel: ChannelCeiling;
  readonly gmbc: GmbcCeiling;
  readonly gk: GkCeiling;
  readonly seconds: number;
}
async function runCeilings(token: string): Promise<Ceilings> {
  const env: Record<string, string> = { CEILING_TOKEN: token, CEILING_IN_FLIGHT: String(concurrency), ...(quick ? { CEILING_WARMUP_MS: "100", CEILING_MEASURE_MS: "300", CEILING_WINDOWS: "1" } : {}) };
  const t0 = performance.now();
  const run = <T>(file: string) => runJsonChild<T>(children, SERVER_CORE, ["--import", "tsx", join(HERE, file)], env);
  const channel = await run<ChannelCeiling>("channel/ceiling.ts");
  const gmbc = await run<GmbcCeiling>("gmbc/ceiling.ts");
  const gk = await run<GkCeiling>("gk/ceiling.ts");
  return { channel, gmbc, gk, seconds: (performance.now() - t0) / 1000 };
}
const ceilingOf = (c: Ceilings, op: Op): number =>
  ({ ping: c.channel.ping.opsPerSec, ECDHE: c.channel.ecdhe.opsPerSec, genesis: c.gmbc.genesis.opsPerSec, append: c.gmbc.append.opsPerSec, "GK create": c.gk.create.opsPerSec, "GK get": c.gk.get.opsPerSec })[op];

// ---- part 1 (and 5): every operation on one store ----
interface StoreRun {
  readonly store: string;
  readonly ops: Partial<Record<Op, Measured>>;
  readonly sweep: (Measured & { concurrency: number })[];
  readonly rss: number;
}

async function runStore(store: "sqlite" | "postgres", pgUrl: string | undefined, withCeilings: boolean): Promise<{ run: StoreRun; ceilings?: Ceilings }> {
  const { tmpDir, dir } = prepareDataDir(`keyward-record-${store}-`);
  cleanups.push(() => rmSync(tmpDir, { recursive: true, force: true }));
  const env: Record<string, string> = pgUrl ? { KEYWARD_STORE_URL: freshSchemaUrl(pgUrl) } : {};
  log(`[${store}] starting keyward dev (KMS on core ${SERVER_CORE})`);
  const kms = await startKeywardDevAt(children, SERVER_CORE, { dir, tmpDir, env });
  const config = loadConfig(dir, { ...process.env, ...kms.env });
  if (config.store.kind !== store) throw new Error(`the KMS runs the ${config.store.kind} store, expected ${store}`);
  const token = await tokenFor(kms);
  const chLg = startIpcChild<ChannelReq>(children, CLIENT_CORE, CHANNEL_LG);
  const gmLg = startIpcChild<GmbcReq>(children, CLIENT_CORE, GMBC_LG);
  const gkLg = startIpcChild<GkReq>(children, CLIENT_CORE, GK_LG);
  const lgs = [chLg, gmLg, gkLg];
  const port = kms.port;
  try {
    await chLg.call<ChannelSetup>({ cmd: "setup", url: kms.url, token, channels, concurrency, client: "raw" });
    const gm = await gmLg.call<GmbcSetup>({ cmd: "setup", url: kms.url, token, channels, chains: concurrency });
    await gkLg.call<GkSetup>({ cmd: "setup", url: kms.url, token, channels, alicePrivateJwk: gm.alicePrivateJwk });
    const pre = await gkLg.call<PregenResult>({ cmd: "pregen", main: gkCount, compare: 0, concurrency });
    log(`[${store}] loadgens ready (${channels} channels each, ${concurrency} chains, ${fmt(pre.main)} GKs pre-created)`);
    // The ceilings first, on a quiet machine: measured while the load generators pre-computed on
    // the other core, they came out below what the server itself reached (the two vCPUs are not
    // independent), so the client-side pre-computation waits for them.
    let ceilings: Ceilings | undefined;
    if (withCeilings) {
      log("crypto-only ceilings on core 0 (channel, GMBC, GK ceilings), the other core idle");
      ceilings = await runCeilings(token);
    }
    await chLg.call({ cmd: "pregen-start" });
    await gmLg.call({ cmd: "pregen-start" });
    const window = (warmupMs + measureMs) / 1000;
    const ecdheRate = Math.max(ceilings?.channel.ecdhe.opsPerSec ?? 1500, 1000) * 1.5;
    const e = await chLg.call<{ count: number; seconds: number }>({ cmd: "pregen-target", target: Math.ceil(ecdheRate * window) });
    // Enough pre-signed blocks for 1.5x the ceiling, at least 2,500/s: a ceiling measured under noise must not cut the window short.
    const appendRate = Math.max(ceilings?.gmbc.append.opsPerSec ?? 4000, 2500) * 1.5;
    const b = await gmLg.call<{ blocks: number; seconds: number }>({ cmd: "pregen-target", perChain: Math.ceil((appendRate * window) / concurrency) });
    log(`[${store}] pre-built ${fmt(e.count)} ECDHE requests and ${fmt(b.blocks)} signed blocks`);

    const serverPids = () => [kms.child.pid!];
    const clientPids = () => lgs.map((l) => l.child.pid!);
    const sample = cpuSampler([SERVER_CORE, CLIENT_CORE], serverPids, clientPids, () => (pinned ? [process.pid] : []));
    const ops: Partial<Record<Op, Measured>> = {};
    const phase = async (op: Op, call: () => Promise<PhaseResult>) => {
      if (quietWait > 0) await waitQuiet([SERVER_CORE, CLIENT_CORE], 10);
      log(`[${store}] ${op}: ${warmupMs / 1000} s warm-up + ${measureMs / 1000} s, ${concurrency} in flight`);
      const r = await measureCpu(sample, warmupMs, measureMs, call);
      noteNoise(`${store} ${op}`, r.cpu);
      ops[op] = r;
    };
    await phase("ping", () => chLg.call({ cmd: "phase", op: "ping", port, warmupMs, measureMs }));
    await phase("ECDHE", () => chLg.call({ cmd: "phase", op: "ecdhe", port, warmupMs, measureMs }));
    await phase("genesis", () => gmLg.call({ cmd: "genesis", concurrency, warmupMs, measureMs }));
    await phase("append", () => gmLg.call({ cmd: "phase", warmupMs, measureMs }));
    await phase("GK create", () => gkLg.call({ cmd: "phase", kind: "create", concurrency, warmupMs, measureMs }));
    await phase("GK get", () => gkLg.call({ cmd: "phase", kind: "get", concurrency, warmupMs, measureMs }));

    const sweep: (Measured & { concurrency: number })[] = [];
    if (store === "sqlite" && wanted.has("sweep")) {
      for (const c of sweepPoints) {
        log(`[${store}] sweep: GK get at ${c} in flight, ${sweepWarmupMs / 1000} s + ${sweepMs / 1000} s`);
        const r = await measureCpu(sample, sweepWarmupMs, sweepMs, () => gkLg.call<LoadgenPhaseResult>({ cmd: "phase", kind: "get", concurrency: c, warmupMs: sweepWarmupMs, measureMs: sweepMs }));
        noteNoise(`sweep ${c}`, r.cpu);
        sweep.push({ ...r, concurrency: c });
      }
    }
    const rss = rssMiB(kms.child.pid!);
    return { run: { store, ops, sweep, rss }, ...(ceilings ? { ceilings } : {}) };
  } finally {
    await stopIpc(chLg);
    await stopIpc(gmLg);
    await stopIpc(gkLg);
    await children.stop(kms.child);
  }
}

// ---- part 2: membership checks ----
async function runMembership(): Promise<MembershipReport & { bigSource: string }> {
  const cacheDir = join(HERE, "gk/cache", `chain-${shape.blocks}-${shape.members}-${shape.pool}-${shape.seed}`);
  let job: MembershipJob = { shape, smallBlocks: 10, queries, warmupQueries: Math.min(5000, queries / 4), batch: 100, manySmall: 0 };
  let bigSource = "built through SqliteStore.appendBlocks in this run (chain signed by alice, bench/gmbc/membership.ts)";
  if (existsSync(join(cacheDir, "meta.json"))) {
    // The chain npm run bench:gk built through the server API; copied (the membership job adds a small chain to it).
    const meta = JSON.parse(readFileSync(join(cacheDir, "meta.json"), "utf8")) as { chainUri: string; build: { at: string; commit: string } };
    const tmp = mkdtempSync(join(os.tmpdir(), "keyward-record-membership-"));
    cleanups.push(() => rmSync(tmp, { recursive: true, force: true }));
    cpSync(join(cacheDir, "data"), join(tmp, "data"), { recursive: true });
    job = { ...job, bigDb: join(tmp, "data/keyward.db"), bigChainUri: meta.chainUri };
    bigSource = `built through the server API by npm run bench:gk (cached ${relative(ROOT, cacheDir)}, ${meta.build.at.slice(0, 10)}, commit ${meta.build.commit})`;
  }
  log(`membership checks on core 0 (${fmt(shape.blocks)}-block chain ${job.bigDb ? "from the GK bench's cache" : "built through the store"})`);
  const r = await runJsonChild<MembershipReport>(children, SERVER_CORE, ["--import", "tsx", join(HERE, "gmbc/membership.ts")], { MEMBERSHIP_JOB: JSON.stringify(job) });
  return { ...r, bigSource };
}

// ---- part 3: RSS with 1,000,000 GKs ----
interface RssRun {
  readonly how: string;
  readonly stored: number;
  readonly seed?: SeedReport;
  readonly protocolCreated: number;
  readonly protocolCreateSeconds: number;
  readonly fetchedSeeded: number;
  readonly rssAfterStart: number;
  readonly rssAfterFetches: number;
  readonly rssEnd: number;
  readonly get: Measured;
}
async function runRss(): Promise<RssRun> {
  const { tmpDir, dir } = prepareDataDir("keyward-record-rss-");
  cleanups.push(() => rmSync(tmpDir, { recursive: true, force: true }));
  let kms = await startKeywardDevAt(children, SERVER_CORE, { dir, tmpDir });
  const gkLg = startIpcChild<GkReq>(children, CLIENT_CORE, GK_LG);
  try {
    const setup = await gkLg.call<GkSetup>({ cmd: "setup", url: kms.url, token: await tokenFor(kms), channels });
    let seed: SeedReport | undefined;
    let protocolCreated = 0;
    let protocolCreateSeconds = 0;
    if (protocolGks === undefined) {
      await children.stop(kms.child);
      log(`RSS: seeding ${fmt(seedCount)} GKs through the Store interface (SqliteStore.createGk + barrier seal), server stopped`);
      const job: SeedJob = { dataDir: dir, env: kms.env, count: seedCount, requester: ALICE, block: { hash: setup.tail, chainUri: setup.groupUri, position: 0 }, sample: 1000, inFlight: 64 };
      seed = await runJsonChild<SeedReport>(children, SERVER_CORE, ["--import", "tsx", join(HERE, "record/seed-gks.ts")], { SEED_JOB: JSON.stringify(job) });
      log(`RSS: seeded ${fmt(seed.count)} GKs in ${fmt(seed.seconds, 1)} s (${fmt(seed.perSec)}/s), db ${fmt(seed.dbBytes / 2 ** 20)} MiB`);
      kms = await startKeywardDevAt(children, SERVER_CORE, { dir, tmpDir });
      await gkLg.call({ cmd: "reconnect", url: kms.url, token: await tokenFor(kms), memberTokens: [] });
    } else {
      log(`RSS: creating ${fmt(protocolGks)} GKs through the protocol (create /gks, ${concurrency} in flight)`);
      const p = await gkLg.call<PregenResult>({ cmd: "pregen", main: protocolGks, compare: 0, concurrency });
      protocolCreated += p.main;
      protocolCreateSeconds += p.seconds;
    }
    const rssAfterStart = rssMiB(kms.child.pid!);
    let fetchedSeeded = 0;
    if (seed) {
      const f = await gkLg.call<{ fetched: number }>({ cmd: "fetch", uris: seed.sample, block: setup.tail, concurrency });
      fetchedSeeded = f.fetched;
    }
    const p = await gkLg.call<PregenResult>({ cmd: "pregen", main: rssExtra, compare: 0, concurrency });
    protocolCreated += p.main;
    protocolCreateSeconds += p.seconds;
    const rssAfterFetches = rssMiB(kms.child.pid!);
    log(`RSS: GK get over the ${fmt(p.main)} GKs just created, ${warmupMs / 1000} s + ${measureMs / 1000} s`);
    const sample = cpuSampler([SERVER_CORE, CLIENT_CORE], () => [kms.child.pid!], () => [gkLg.child.pid!]);
    const get = await measureCpu(sample, warmupMs, measureMs, () => gkLg.call<LoadgenPhaseResult>({ cmd: "phase", kind: "get", concurrency, warmupMs, measureMs }));
    const rssEnd = rssMiB(kms.child.pid!);
    const stored = (seed?.count ?? 0) + protocolCreated + 2; // + the two of the loadgen's setup round trip
    const how = seed
      ? `${fmt(seed.count)} GKs written through the Store interface by a separate process (bench/record/seed-gks.ts: SqliteStore.createGk, 5,000 in flight, written by the store's group commit in one transaction per batch, each key sealed by the data dir's barrier, bound to alice's group) while the KMS was stopped, at ${fmt(seed.perSec)}/s; then the KMS was started on that data dir, fetched ${fmt(fetchedSeeded)} of them through the protocol (checked), and ${fmt(protocolCreated)} more were created through the protocol (create /gks) and fetched (GK get phase)`
      : `${fmt(protocolCreated)} GKs created through the protocol (create /gks, ${concurrency} in flight, ${fmt(protocolCreateSeconds, 0)} s), then fetched (GK get phase)`;
    return { how, stored, ...(seed ? { seed } : {}), protocolCreated, protocolCreateSeconds, fetchedSeeded, rssAfterStart, rssAfterFetches, rssEnd, get };
  } finally {
    await stopIpc(gkLg);
    await children.stop(kms.child);
  }
}

// ---- part 4: keyward serve --workers 1 vs 2 ----
interface WorkersRun {
  readonly workers: number;
  readonly ping: Measured;
  readonly get: Measured;
}
async function runWorkers(): Promise<WorkersRun[]> {
  const { tmpDir, dir } = prepareDataDir("keyward-record-workers-");
  cleanups.push(() => rmSync(tmpDir, { recursive: true, force: true }));
  // keyward dev initialises the data dir (config, keys, dev-IdP key); keyward serve then serves it.
  await children.stop((await startKeywardDevAt(children, SERVER_CORE, { dir, tmpDir })).child);
  const out: WorkersRun[] = [];
  const chLg = startIpcChild<ChannelReq>(children, BOTH, CHANNEL_LG);
  const gkLg = startIpcChild<GkReq>(children, BOTH, GK_LG);
  try {
    for (const workers of [1, 2]) {
      log(`workers: keyward serve --workers ${workers} (server and load generators share cores 0,1)`);
      const kms = await startKeywardDevAt(children, BOTH, { dir, tmpDir, command: ["bin/keyward.js", "serve", "--dir", dir, "--workers", String(workers)] });
      // keyward serve has no dev IdP: serve its JWKS from this process (idle while measuring; tokens are cached by the KMS).
      const [idpHost, idpPort] = kms.env.KEYWARD_DEV_IDP_LISTEN!.split(":");
      const config = loadConfig(dir, { ...process.env, ...kms.env });
      const idp = await startDevIdp({ dataDir: dir, host: idpHost!, port: Number(idpPort), audience: config.oauthAudience });
      try {
        const token = await tokenFor(kms);
        await chLg.call<ChannelSetup>({ cmd: "setup", url: kms.url, token, channels, concurrency, client: "raw" });
        if (workers === 1) {
          await gkLg.call<GkSetup>({ cmd: "setup", url: kms.url, token, channels });
          await gkLg.call<PregenResult>({ cmd: "pregen", main: gkCount, compare: 0, concurrency });
        } else {
          await gkLg.call({ cmd: "reconnect", url: kms.url, token, memberTokens: [] });
        }
        const serverPids = () => [kms.child.pid!, ...childPids(kms.child.pid!)];
        const pids = serverPids();
        if (pids.length !== workers + (workers > 1 ? 1 : 0)) notes.push(`workers ${workers}: found ${pids.length} server processes`);
        const sample = cpuSampler([0, 1], serverPids, () => [chLg.child.pid!, gkLg.child.pid!], () => [process.pid]);
        if (quietWait > 0) await waitQuiet([0, 1], 10);
        const ping = await measureCpu(sample, warmupMs, measureMs, () => chLg.call<PhaseResult>({ cmd: "phase", op: "ping", port: kms.port, warmupMs, measureMs }));
        const get = await measureCpu(sample, warmupMs, measureMs, () => gkLg.call<LoadgenPhaseResult>({ cmd: "phase", kind: "get", concurrency, warmupMs, measureMs }));
        noteNoise(`workers ${workers} ping`, ping.cpu);
        noteNoise(`workers ${workers} GK get`, get.cpu);
        out.push({ workers, ping, get });
      } finally {
        await children.stop(kms.child);
        await idp.close();
      }
    }
  } finally {
    await stopIpc(chLg);
    await stopIpc(gkLg);
  }
  return out;
}

// ---- part 6: overload ----
interface OverloadRun {
  readonly below: Measured;
  readonly above: Measured;
}
async function runOverload(): Promise<OverloadRun> {
  const { tmpDir, dir } = prepareDataDir("keyward-record-overload-");
  cleanups.push(() => rmSync(tmpDir, { recursive: true, force: true }));
  await children.stop((await startKeywardDevAt(children, SERVER_CORE, { dir, tmpDir })).child);
  log(`overload: keyward dev with its default shedding (429 above 100 ms of event-loop lag), GK get at ${concurrency} then ${overloadConcurrency} in flight`);
  const kms = await startKeywardDevAt(children, SERVER_CORE, { dir, tmpDir });
  const gkLg = startIpcChild<GkReq>(children, CLIENT_CORE, GK_LG);
  try {
    await gkLg.call<GkSetup>({ cmd: "setup", url: kms.url, token: await tokenFor(kms), channels });
    await gkLg.call<PregenResult>({ cmd: "pregen", main: gkCount, compare: 0, concurrency });
    const sample = cpuSampler([SERVER_CORE, CLIENT_CORE], () => [kms.child.pid!], () => [gkLg.child.pid!], () => (pinned ? [process.pid] : []));
    const run = (c: number) => measureCpu(sample, warmupMs, measureMs, () => gkLg.call<LoadgenPhaseResult>({ cmd: "phase", kind: "get", concurrency: c, warmupMs, measureMs, shed: true }));
    const below = await run(concurrency);
    const above = await run(overloadConcurrency);
    noteNoise("overload", above.cpu);
    return { below, above };
  } finally {
    await stopIpc(gkLg);
    await children.stop(kms.child);
  }
}

// ---- part 7: transports (its own runner, as a child: it starts its own KMS and Prosody) ----
async function runTransports(): Promise<string> {
  const tmp = mkdtempSync(join(os.tmpdir(), "keyward-record-transports-"));
  cleanups.push(() => rmSync(tmp, { recursive: true, force: true }));
  const out = join(tmp, "section.md");
  const argv = ["--import", "tsx", join(HERE, "transports/run.ts"), "--no-build", "--no-results", "--section-out", out, "--concurrency", String(concurrency), "--quiet-wait", "0",
    ...(quick ? ["--quick"] : []), ...(a.warmup ? ["--warmup", a.warmup] : []), ...(a.measure ? ["--measure", a.measure] : [])];
  // Not pinned here: the runner pins itself and each process it starts.
  const child = children.start(BOTH, argv, { stdio: ["ignore", "inherit", "inherit"] });
  const code = await new Promise<number | null>((r) => child.once("exit", (c) => r(c)));
  if (!existsSync(out)) return `The transports runner failed (exit ${code}); see its output.`;
  const text = readFileSync(out, "utf8");
  // Its own "## Transports …" heading becomes this record's part 7 (machine line and notes kept).
  return text.replace(/^## Transports [^\n]*\n/, `### 7. Transports (bench/transports/run.ts${code === 0 ? "" : `, exit ${code}: reply errors`})\n`);
}

// ---- report ----
const verdict = (ok: boolean) => (ok ? "PASS" : "FAIL");
const ms = (v: number) => fmt(v, 2);
const errs = (r: PhaseResult) => `${r.errors}${r.firstError ? ` (${r.firstError.slice(0, 60)})` : ""}${r.exhausted ? ` [supply ran out: ${fmt(r.measuredMs / 1000, 1)} s]` : ""}`;

async function main(): Promise<void> {
  const startedAt = new Date();
  const t0 = performance.now();
  if (!a["no-build"]) build(ROOT);
  pinned = TASKSET !== undefined && (await pinPid(process.pid, CLIENT_CORE));
  if (!TASKSET) log("WARNING: taskset not found: nothing is pinned, results mix server and client CPU");
  const others = otherBenchProcesses();
  for (const o of others) log(`note: another ${o.kind} process is running (pid ${o.pid}): ${o.command}`);
  const quiet = quietWait > 0 ? await waitQuiet([SERVER_CORE, CLIENT_CORE], quietWait) : undefined;

  // Stores to run.
  let pgUrl: string | undefined;
  let pgProblem: string | undefined;
  const storeList: ("sqlite" | "postgres")[] = [];
  if (wanted.has("ops") || wanted.has("sweep")) {
    if (stores.includes("sqlite")) storeList.push("sqlite");
    if (stores.includes("postgres") && wanted.has("ops")) {
      pgProblem = await postgresReachable(a["postgres-url"]);
      if (pgProblem) log(`PostgreSQL NOT reachable at ${a["postgres-url"]} (${pgProblem}): its column is skipped`);
      else (pgUrl = a["postgres-url"], storeList.push("postgres"));
    }
  }
  const runs: StoreRun[] = [];
  let ceilings: Ceilings | undefined;
  for (const s of storeList) {
    const r = await runStore(s, s === "postgres" ? pgUrl : undefined, ceilings === undefined && wanted.has("ops"));
    runs.push(r.run);
    ceilings ??= r.ceilings;
  }
  const membership = wanted.has("membership") ? await runMembership() : undefined;
  const rss = wanted.has("rss") ? await runRss() : undefined;
  const workers = wanted.has("workers") ? await runWorkers() : undefined;
  const overload = wanted.has("overload") ? await runOverload() : undefined;
  const transportsSection = wanted.has("transports") ? await runTransports() : undefined;

  const targets = [["target", "value", "goal", "verdict"]];
  const sections: string[] = [];
  const sq = runs.find((r) => r.store === "sqlite");
  const pq = runs.find((r) => r.store === "postgres");

  if (wanted.has("ops") && (sq || pq)) {
    const head = ["operation", "SQLite req/s", "p50 ms", "p99 ms", "crypto ceiling/s", "SQLite / ceiling", "≥ 50%"];
    if (pq) head.push("PostgreSQL req/s", "p50 ms", "p99 ms", "PG / SQLite", "≥ 0.5x");
    const rows = [head];
    const cpuRows = [["operation, store", "server CPU", "loadgen CPU", "other CPU core0/core1", "slowest–fastest 1 s", "errors"]];
    for (const op of OPS) {
      const s = sq?.ops[op];
      const p = pq?.ops[op];
      const c = ceilings ? ceilingOf(ceilings, op) : Number.NaN;
      const rs = s ? s.throughput / c : Number.NaN;
      const row = [op, s ? fmt(s.throughput) : "–", s ? ms(s.latency.p50Ms) : "–", s ? ms(s.latency.p99Ms) : "–", fmt(c), pct(rs), s && ceilings ? verdict(rs >= TARGET_VS_CEILING) : "–"];
      if (s && ceilings) targets.push([`${op}: SQLite / crypto ceiling`, pct(rs), `≥ ${pct(TARGET_VS_CEILING)}`, verdict(rs >= TARGET_VS_CEILING)]);
      if (pq) {
        const rp = p && s ? p.throughput / s.throughput : Number.NaN;
        row.push(p ? fmt(p.throughput) : "–", p ? ms(p.latency.p50Ms) : "–", p ? ms(p.latency.p99Ms) : "–", `${fmt(rp, 2)}x`, p && s ? verdict(rp >= TARGET_PG_VS_SQLITE) : "–");
        if (p && s) targets.push([`${op}: PostgreSQL / SQLite throughput`, `${fmt(rp, 2)}x`, `≥ ${TARGET_PG_VS_SQLITE}x`, verdict(rp >= TARGET_PG_VS_SQLITE)]);
      }
      rows.push(row);
      for (const [label, r] of [["SQLite", s], ["PostgreSQL", p]] as const) {
        if (r) cpuRows.push([`${op}, ${label}`, pct(r.cpu.serverCpu), pct(r.cpu.clientCpu), r.cpu.otherCpu.map(pct).join(" / "), `${fmt(r.perSecondMin)}–${fmt(r.perSecondMax)}`, errs(r)]);
      }
    }
    if (!pq) targets.push(["PostgreSQL / SQLite, every operation", pgProblem ? "PostgreSQL not reachable" : "not run", "≥ 0.5x", "SKIPPED"]);
    sections.push(`### 1. Operations at ${concurrency} in flight, each store`, "", table(rows), "", table(cpuRows));
    if (!pq) sections.push("", pgProblem ? `PostgreSQL was NOT reachable at ${a["postgres-url"]} (${pgProblem}): its column is skipped.` : "PostgreSQL not run (--stores).");
    if (ceilings) {
      sections.push("", `Crypto-only ceilings (core 0, the server's own primitives, best window of 1 and ${concurrency} in flight; ${fmt(ceilings.seconds, 0)} s): ` +
        `ping ${fmt(ceilings.channel.ping.opsPerSec)}/s, ECDHE ${fmt(ceilings.channel.ecdhe.opsPerSec)}/s (bench/channel/ceiling.ts); genesis ${fmt(ceilings.gmbc.genesis.opsPerSec)}/s, append ${fmt(ceilings.gmbc.append.opsPerSec)}/s (bench/gmbc/ceiling.ts); ` +
        `GK create ${fmt(ceilings.gk.create.opsPerSec)}/s, GK get ${fmt(ceilings.gk.get.opsPerSec)}/s (bench/gk/ceiling.ts).`);
    }
  }

  if (sq && sq.sweep.length) {
    const peak = Math.max(...sq.sweep.map((r) => r.throughput));
    const at80 = sq.sweep.find((r) => r.throughput >= 0.8 * peak)!;
    const rows = [["GK get, SQLite, in flight", "req/s", "of peak", "p50 ms", "p99 ms", "server CPU", "loadgen CPU", "errors"]];
    for (const r of sq.sweep) rows.push([`${r.concurrency}${r === at80 ? " ← lowest ≥ 80% of peak" : ""}`, fmt(r.throughput), pct(r.throughput / peak), ms(r.latency.p50Ms), ms(r.latency.p99Ms), pct(r.cpu.serverCpu), pct(r.cpu.clientCpu), errs(r)]);
    sections.push("", `### 5. GK get concurrency sweep (SQLite; ${sweepWarmupMs / 1000} s + ${sweepMs / 1000} s per point)`, "", table(rows));
    targets.push([`GK get p99 at ${at80.concurrency} in flight (lowest reaching 80% of peak ${fmt(peak)}/s)`, `${ms(at80.latency.p99Ms)} ms`, `< ${TARGET_P99_AT_80} ms`, verdict(at80.latency.p99Ms < TARGET_P99_AT_80)]);
  }

  if (membership) {
    const m = membership;
    const rows = [["isMemberAt (SqliteStore, in process, core 0)", "blocks", "members", "p50 µs", "p99 µs", "mean µs", "wrong answers"]];
    for (const q of [m.small, m.smallInBigDb, m.big]) rows.push([q.label, fmt(q.blocks), fmt(q.members), fmt(q.latency.p50Ms * 1000, 1), fmt(q.latency.p99Ms * 1000, 1), fmt(q.latency.meanMs * 1000, 1), String(q.wrong)]);
    sections.push("", "### 2. Membership check latency", "", table(rows), "", `(${fmt(queries)} random (entity, position) queries per chain, every answer checked against a replay; the large chain ${m.bigSource})`);
    const r50 = m.big.latency.p50Ms / m.small.latency.p50Ms;
    const r99 = m.big.latency.p99Ms / m.small.latency.p99Ms;
    targets.push([`membership p50, ${fmt(shape.blocks)} / 10 blocks`, `${fmt(r50, 2)}x`, `≤ ${TARGET_MEMBERSHIP_RATIO}x`, verdict(r50 <= TARGET_MEMBERSHIP_RATIO)]);
    targets.push([`membership p99, ${fmt(shape.blocks)} / 10 blocks`, `${fmt(r99, 2)}x`, `≤ ${TARGET_MEMBERSHIP_RATIO}x`, verdict(r99 <= TARGET_MEMBERSHIP_RATIO)]);
    if (m.small.wrong + m.smallInBigDb.wrong + m.big.wrong > 0) targets.push(["membership answers", "WRONG ANSWERS", "0", "FAIL"]);
  }

  if (rss) {
    const rows = [["KMS RSS (VmRSS, SQLite)", "MiB"], ["after start on the seeded data dir", fmt(rss.rssAfterStart)], ["after fetching seeded GKs and creating more", fmt(rss.rssAfterFetches)], [`after the GK get phase (${fmt(rss.get.throughput)} req/s, p99 ${ms(rss.get.latency.p99Ms)} ms, errors ${errs(rss.get)})`, fmt(rss.rssEnd)]];
    sections.push("", `### 3. Resident memory with ${fmt(rss.stored)} GKs stored`, "", table(rows), "", `How the GKs were stored: ${rss.how}.${rss.seed ? ` SQLite file ${fmt(rss.seed.dbBytes / 2 ** 20)} MiB.` : ""}`);
    const peakRss = Math.max(rss.rssAfterStart, rss.rssAfterFetches, rss.rssEnd);
    targets.push([`KMS RSS with ${fmt(rss.stored)} GKs (max of the three readings)`, `${fmt(peakRss)} MiB`, `< ${TARGET_RSS_MIB} MB`, verdict(peakRss * 1.048576 < TARGET_RSS_MIB)]);
    if (rss.stored < 1_000_000) targets.push(["GKs stored for the RSS target", fmt(rss.stored), "1,000,000", "NOT MET (smaller run)"]);
  }

  if (workers) {
    const rows = [["keyward serve", "ping req/s", "ping p99 ms", "GK get req/s", "GK get p99 ms", "server CPU (ping / get)", "loadgen CPU (ping / get)", "other CPU core0/core1 (get)", "errors"]];
    for (const w of workers) {
      rows.push([`--workers ${w.workers}`, fmt(w.ping.throughput), ms(w.ping.latency.p99Ms), fmt(w.get.throughput), ms(w.get.latency.p99Ms), `${pct(w.ping.cpu.serverCpu)} / ${pct(w.get.cpu.serverCpu)}`, `${pct(w.ping.cpu.clientCpu)} / ${pct(w.get.cpu.clientCpu)}`, w.get.cpu.otherCpu.map(pct).join(" / "), `${errs(w.ping)}; ${errs(w.get)}`]);
    }
    sections.push("", `### 4. Workers (server and load generator share both cores; ${concurrency} in flight)`, "", table(rows));
    const [w1, w2] = workers;
    if (w1 && w2) {
      const rg = w2.get.throughput / w1.get.throughput;
      const rp = w2.ping.throughput / w1.ping.throughput;
      targets.push(["GK get, workers 2 / workers 1", `${fmt(rg, 2)}x`, `≥ ${TARGET_WORKERS}x`, verdict(rg >= TARGET_WORKERS)]);
      targets.push(["ping, workers 2 / workers 1", `${fmt(rp, 2)}x`, `≥ ${TARGET_WORKERS}x`, verdict(rp >= TARGET_WORKERS)]);
      sections.push("", `(the load generator used ${pct(w2.get.cpu.clientCpu)} of a core during GK get with 2 workers, and ${pct(w2.ping.cpu.clientCpu)} during ping: that much of the 2 cores is not available to the server. Server CPU per 1,000 GK gets: ${fmt((1000 * w1.get.cpu.serverCpu) / w1.get.throughput, 2)} s with 1 worker, ${fmt((1000 * w2.get.cpu.serverCpu) / w2.get.throughput, 2)} s with 2.)`);
    }
  }

  if (overload) {
    const { below, above } = overload;
    const shed = above.shed ?? { count: 0, perSecond: 0, latency: { p50Ms: Number.NaN, p99Ms: Number.NaN } };
    const share = shed.count / (shed.count + above.completed);
    const rows = [["GK get, default shedding", "accepted req/s", "accepted p50 ms", "accepted p99 ms", "429/s", "429 share", "429 p50 ms", "429 p99 ms", "server CPU", "loadgen CPU", "errors"]];
    for (const [label, r] of [[`${concurrency} in flight (reference)`, below], [`${overloadConcurrency} in flight (overload)`, above]] as const) {
      const s = r.shed;
      rows.push([label, fmt(r.throughput), ms(r.latency.p50Ms), ms(r.latency.p99Ms), fmt(s?.perSecond ?? 0), pct(s ? s.count / (s.count + r.completed) : 0), s?.count ? ms(s.latency.p50Ms) : "–", s?.count ? ms(s.latency.p99Ms) : "–", pct(r.cpu.serverCpu), pct(r.cpu.clientCpu), errs(r)]);
    }
    sections.push("", "### 6. Overload", "", table(rows), "", "(closed loop: a client answered 429 sends its next request at once, the worst case. " +
      "The KMS sheds a message with 429, before reading its body, while its event loop runs more than 100 ms late (config maxEventLoopLag) or more than 4,096 messages are in progress (maxInFlight): " +
      "the lag is what sees a queue building in unread sockets)");
    const bound = 2 * below.latency.p99Ms;
    targets.push([`overload: 429 share at ${overloadConcurrency} in flight`, pct(share), "> 0 (load is shed)", verdict(share > 0)]);
    targets.push(["overload: accepted p99 vs p99 at the reference concurrency", `${ms(above.latency.p99Ms)} ms vs ${ms(below.latency.p99Ms)} ms`, "≤ 2x (bounded)", verdict(above.latency.p99Ms <= bound)]);
  }

  if (transportsSection) sections.push("", transportsSection);

  const { commit, srcDirty } = gitState(ROOT);
  const text = [
    `## Performance record ${startedAt.toISOString()}${quick ? " (QUICK: smoke run, not a measurement)" : ""} (commit ${commit}${srcDirty ? ", src/ modified" : ""})`,
    "",
    `- machine: ${machineLine()}`,
    `- layout: ${TASKSET ? `KMS and ceilings on core ${SERVER_CORE}, load generators${pinned ? " and orchestrator" : ""} on core ${CLIENT_CORE} (taskset); workers part: everything on both cores` : "UNPINNED (taskset missing)"}`,
    `- closed loop, hand-parsed keep-alive HTTP/1.1 sockets, ${warmupMs / 1000} s warm-up + ${measureMs / 1000} s per operation, every reply decrypted and checked`,
    ...(quiet ? [`- before the run, other load per core: ${quiet.busy.map(pct).join(" / ")} (waited ${fmt(quiet.waited, 0)} s)`] : []),
    ...(others.length ? [`- other processes running: ${others.map((o) => `${o.kind} ${o.pid}`).join(", ")}`] : []),
    `- whole run ${fmt((performance.now() - t0) / 1000)} s`,
    ...notes.map((n) => `- note: ${n}`),
    "",
    ...sections,
    "",
    "### Targets",
    "",
    table(targets),
    "",
    ...(noisy.length ? [`WARNING: other processes used more than 10% of a bench core during: ${noisy.join(", ")}; those numbers are low by about that much.`, ""] : []),
  ].join("\n");
  console.log(`\n${text}`);
  if (!a["no-results"]) log(`appended to ${relative(ROOT, appendResults(ROOT, text))}`);
}

async function cleanup(): Promise<void> {
  await children.stopAll();
  for (const c of cleanups.splice(0).reverse()) await c();
}

await runBench(main, cleanup);
