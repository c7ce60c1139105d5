/**
 * GMBC bench (`npm run bench:gmbc`): in one run, on a pinned two-core layout,
 *   1. append throughput and p50/p99 against a live Keyward KMS (`keyward dev`, SQLite store):
 *      one block per append, one `add` operation, signed ES256 by alice (a member); one chain per
 *      worker, each worker appending sequentially to its own chain (appends on one chain serialize
 *      on its tail), blocks pre-signed by the load generator before the timed phase;
 *   2. the crypto-only ceiling of that append (common-message decrypt + SHA-256 block hash + ES256
 *      verify + common-message encrypt, library primitives, single process on the server core);
 *   3. a 100,000-block chain with 10,000 members built through the server API (appends of 100
 *      blocks signed by alice), timed; if it does not finish within the budget, the rate measured
 *      through the server is reported and the chain is built through SqliteStore.appendBlocks;
 *   4. SqliteStore.isMemberAt latency, in process on the server core, on a 10-block chain and on
 *      the large chain (random entity, random position; every answer checked).
 * Targets: appends >= 50% of the crypto ceiling; large-chain membership check within 1.5x of the
 * small chain's. Server, ceiling and membership processes run on core 0, the load generator on core 1.
 * See bench/README.md.
 */
import { existsSync, mkdirSync, readdirSync, copyFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { loadConfig } from "../../src/config/config.js";
import { issueDevToken } from "../../src/identity/dev-idp.js";
import { appendResults, printCpuProfile } from "../lib/report.js";
import { build, Children, fmt, gitState, log, machineLine, pct, runJsonChild, startIpcChild, startKeywardDev, table, type KeywardDev } from "../lib/harness.js";
import type { PhaseResult } from "../lib/load.js";
import { pinPid, TASKSET } from "../lib/pin.js";
import { coreTicks, cpuSeconds, rssMiB } from "../lib/proc.js";
import type { BigChainShape } from "./blocks.js";
import type { CeilingReport } from "./ceiling.js";
import type { BigResult, LoadgenRequest, SetupResult } from "./loadgen.js";
import type { MembershipJob, MembershipReport } from "./membership.js";
import type { BreakdownJob, BreakdownReport } from "./breakdown.js";
import { runBench } from "../lib/main.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, "../..");
const SERVER_CORE = 0;
const CLIENT_CORE = 1;
const TARGET_APPEND_VS_CEILING = 0.5;
const TARGET_MEMBERSHIP_RATIO = 1.5;
const TARGET_BIG_BUILD_SECONDS = 300;

const { values: args } = parseArgs({
  options: {
    concurrency: { type: "string", default: "32" },
    warmup: { type: "string", default: "2" },
    measure: { type: "string", default: "10" },
    channels: { type: "string", default: "8" },
    "big-blocks": { type: "string", default: "100000" },
    "big-members": { type: "string", default: "10000" },
    "big-pool": { type: "string", default: "20000" },
    batch: { type: "string", default: "100" },
    "big-budget": { type: "string", default: "180" },
    "big-via": { type: "string", default: "server" },
    queries: { type: "string", default: "20000" },
    "many-small": { type: "string", default: "10000" },
    seed: { type: "string", default: "20250101" },
    "quiet-wait": { type: "string", default: "60" },
    only: { type: "string" },
    "no-build": { type: "boolean", default: false },
    "no-results": { type: "boolean", default: false },
    "cpu-prof": { type: "boolean", default: false },
    help: { type: "boolean", default: false },
  },
});
if (args.help) {
  console.log(`npm run bench:gmbc -- [options]
  --concurrency N    appends in flight = chains = workers (default 32)
  --warmup S         append warm-up seconds (default 2)
  --measure S        append measured seconds (default 10)
  --channels N       channels the workers share (default 8)
  --big-blocks N     blocks of the large chain, genesis included (default 100000)
  --big-members N    members of the large chain (default 10000)
  --big-pool N       entities that come and go in the large chain (default 20000)
  --batch N          blocks per append when building the large chain (default 100)
  --big-budget S     give up building the large chain through the server after S seconds (default 180)
  --big-via server|store  build the large chain through the server API (default) or SqliteStore.appendBlocks
  --queries N        membership queries per chain (default 20000)
  --many-small N     also query N chains of 10 blocks, a random one per query (default 10000; 0 = skip)
  --quiet-wait S     first wait up to S seconds for both cores to be < 10% busy for 3 s in a row (default 60)
  --only LIST        comma-separated subset of ceiling,append,breakdown,big,membership
  --no-build         do not run \`npm run build\` first
  --no-results       do not append to bench/RESULTS.md
  --cpu-prof         run the KMS under --cpu-prof and print its top self-time functions
                     (with --only append[,ceiling] the profile covers the append phase only)`);
  process.exit(0);
}
const concurrency = Number(args.concurrency);
const warmupMs = Number(args.warmup) * 1000;
const measureMs = Number(args.measure) * 1000;
const shape: BigChainShape = { blocks: Number(args["big-blocks"]), members: Number(args["big-members"]), pool: Number(args["big-pool"]), seed: Number(args.seed) };
const batch = Number(args.batch);
const bigVia = args["big-via"];
if (bigVia !== "server" && bigVia !== "store") throw new Error("--big-via is server or store");
const wanted = new Set((args.only ?? "ceiling,append,breakdown,big,membership").split(",").map((s) => s.trim()));
const children = new Children(ROOT);
let kms: KeywardDev | undefined;
let stopping = false;

interface Sample {
  readonly t: number;
  readonly server: number;
  readonly core0Pids: number;
  readonly core1Pids: number;
  readonly core0: { busy: number; total: number };
  readonly core1: { busy: number; total: number };
}

interface CpuUse {
  /** CPU of the server process, in cores (1.0 = one full core). */
  readonly serverCpu: number;
  readonly clientCpu: number;
  /** Busy time of each core NOT used by this bench's processes (other work on the machine). */
  readonly otherCpu0: number;
  readonly otherCpu1: number;
}

function sampler(serverPid: number, core0Pids: () => number[], core1Pids: () => number[]): () => Sample {
  const sum = (pids: number[]) => pids.reduce((a, p) => a + (cpuSeconds(p) || 0), 0);
  return () => ({
    t: performance.now(),
    server: cpuSeconds(serverPid),
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

/** Waits (up to `seconds`) until both bench cores are < 10% busy for 3 s in a row; returns the other load seen last. */
async function waitQuiet(seconds: number): Promise<{ core0: number; core1: number; waited: number }> {
  const t0 = performance.now();
  const self = () => cpuSeconds(process.pid);
  let quietFor = 0;
  for (;;) {
    const a0 = coreTicks(SERVER_CORE), a1 = coreTicks(CLIENT_CORE), s0 = self();
    await new Promise((r) => setTimeout(r, 1000));
    const b0 = coreTicks(SERVER_CORE), b1 = coreTicks(CLIENT_CORE), s1 = self();
    const mine = s1 - s0;
    const core0 = (b0.busy - a0.busy) / (b0.total - a0.total);
    const core1 = Math.max(0, (b1.busy - a1.busy) / (b1.total - a1.total) - mine);
    const waited = (performance.now() - t0) / 1000;
    quietFor = core0 < 0.1 && core1 < 0.1 ? quietFor + 1 : 0;
    if (quietFor >= 3 || waited >= seconds || !Number.isFinite(core0)) return { core0, core1, waited };
    if (quietFor === 0) log(`other processes are using the bench cores (core0 ${pct(core0)}, core1 ${pct(core1)}); waiting for them (${waited.toFixed(0)}/${seconds} s)`);
  }
}

async function main(): Promise<void> {
  const startedAt = new Date();
  const t0 = performance.now();
  if (!args["no-build"]) build(ROOT);
  const pinned = TASKSET !== undefined && (await pinPid(process.pid, CLIENT_CORE));
  if (!TASKSET) log("WARNING: taskset not found: nothing is pinned, results mix server and client CPU");
  const pinning = TASKSET
    ? `KMS, crypto ceiling and membership processes on core ${SERVER_CORE} (taskset -c ${SERVER_CORE}), load generator${pinned ? " and orchestrator" : ""} on core ${CLIENT_CORE}`
    : "UNPINNED (taskset missing)";
  const quiet = await waitQuiet(Number(args["quiet-wait"]));

  const needServer = wanted.has("append") || (wanted.has("big") && bigVia === "server");
  let setup: SetupResult | undefined;
  let ceiling: (CeilingReport & { otherCpu0: number }) | undefined;
  let appendR: (PhaseResult & CpuUse & { pregen: { blocks: number; seconds: number } }) | undefined;
  let bigR: (BigResult & CpuUse) | undefined;
  let serverRss = Number.NaN;
  let dbPath: string | undefined;
  let token = "";

  if (needServer) {
    log("starting keyward dev (SQLite store, EC static key)");
    kms = await startKeywardDev(children, SERVER_CORE, { cpuProf: args["cpu-prof"], tmpPrefix: "keyward-gmbc-" });
    const server = kms;
    server.child.once("exit", (code, signal) => {
      if (!stopping) log(`ERROR: the KMS exited during the run (code ${code}, signal ${signal}); its output:\n${server.output().slice(-4000)}`);
    });
    const config = loadConfig(kms.dir, { ...process.env, ...kms.env });
    if (config.store.kind !== "sqlite") throw new Error("the bench expects the SQLite store");
    dbPath = config.store.path;
    token = await issueDevToken({ dataDir: kms.dir, issuer: config.oauthIssuer, audience: config.oauthAudience, user: "alice@example.com", lifetimeSeconds: 3600 });
  }
  const lg = needServer ? startIpcChild<LoadgenRequest>(children, CLIENT_CORE, ["--import", "tsx", join(HERE, "loadgen.ts")]) : undefined;
  const serverPid = kms?.child.pid ?? 0;
  const core0 = () => [serverPid];
  const core1 = () => [...(lg ? [lg.child.pid!] : []), ...(pinned ? [process.pid] : [])];
  const sample = sampler(serverPid, core0, core1);

  if (lg && kms) {
    setup = await lg.call<SetupResult>({ cmd: "setup", url: kms.url, token, channels: Number(args.channels), chains: wanted.has("append") ? concurrency : 0 });
    log(`registered alice's ES256 key, created ${setup.chains} chains; append request ${setup.appendRequestBytes} B (block ${setup.blockBytes} B)`);
  }
  // The load generator pre-signs blocks on core 1 while core 0 measures the crypto ceiling.
  if (lg && wanted.has("append")) await lg.call({ cmd: "pregen-start" });
  if (wanted.has("ceiling")) {
    log("crypto-only ceiling (core 0)");
    const before = coreTicks(SERVER_CORE);
    const c0 = performance.now();
    const report = await runJsonChild<CeilingReport>(children, SERVER_CORE, ["--import", "tsx", join(HERE, "ceiling.ts")], {
      CEILING_TOKEN: token || "x".repeat(700),
      CEILING_IN_FLIGHT: String(concurrency),
    });
    const after = coreTicks(SERVER_CORE);
    const busy = (after.busy - before.busy) / (after.total - before.total);
    ceiling = { ...report, otherCpu0: Math.max(0, busy - report.cpuSeconds / ((performance.now() - c0) / 1000)) };
  }

  if (lg && wanted.has("append")) {
    // Enough blocks for the whole phase at 1.15x the ceiling (the server cannot beat it), 2,000/s if unknown.
    const rate = Math.max(ceiling?.append.opsPerSec ?? 2000, 500) * 1.15;
    const perChain = Math.ceil((rate * (warmupMs + measureMs)) / 1000 / concurrency);
    const pregen = await lg.call<{ blocks: number; seconds: number }>({ cmd: "pregen-target", perChain });
    log(`pre-signed ${pregen.blocks} blocks (${perChain} per chain) in ${pregen.seconds.toFixed(1)} s`);
    log(`appends: ${args.warmup} s warm-up + ${args.measure} s, ${concurrency} in flight`);
    let first: Sample | undefined;
    let last: Sample | undefined;
    const a = setTimeout(() => (first = sample()), warmupMs);
    const b = setTimeout(() => (last = sample()), warmupMs + measureMs);
    const result = await lg.call<PhaseResult>({ cmd: "phase", warmupMs, measureMs });
    clearTimeout(a);
    clearTimeout(b);
    first ??= sample();
    last ??= sample();
    appendR = { ...result, ...cpuBetween(first, last), pregen };
  }

  let breakdown: BreakdownReport | undefined;
  if (kms && setup && wanted.has("breakdown")) {
    log("server cost breakdown: KmsCore in process on the server's data dir, and each step alone (core 0)");
    const job: BreakdownJob = {
      dataDir: kms.dir, env: kms.env, token, alicePrivateJwk: setup.alicePrivateJwk as BreakdownJob["alicePrivateJwk"],
      concurrency, perChain: 100,
    };
    breakdown = await runJsonChild<BreakdownReport>(children, SERVER_CORE, ["--import", "tsx", join(HERE, "breakdown.ts")], { BREAKDOWN_JOB: JSON.stringify(job) });
  }

  if (lg && wanted.has("big") && bigVia === "server") {
    log(`large chain through the server: ${fmt(shape.blocks)} blocks in appends of ${batch} (budget ${args["big-budget"]} s)`);
    const first = sample();
    const r = await lg.call<BigResult>({ cmd: "big", shape, batch, budgetMs: Number(args["big-budget"]) * 1000 });
    bigR = { ...r, ...cpuBetween(first, sample()) };
    log(`large chain: ${fmt(r.blocks)} blocks in ${r.seconds.toFixed(1)} s (${fmt(r.appendsPerSec, 1)} appends/s, ${fmt(r.blocksPerSec)} blocks/s)${r.complete ? "" : " — INCOMPLETE, building it through the store"}`);
  }
  if (kms) serverRss = rssMiB(kms.child.pid!);
  if (lg) {
    await lg.call({ cmd: "exit" }).catch(() => {});
    await children.stop(lg.child);
  }
  stopping = true;
  if (kms) await children.stop(kms.child);

  let membership: MembershipReport | undefined;
  if (wanted.has("membership")) {
    const viaServer = bigR?.complete === true && dbPath !== undefined;
    log(`membership checks (core 0)${viaServer ? "" : "; building the large chain through SqliteStore.appendBlocks first"}`);
    const job: MembershipJob = {
      shape, smallBlocks: 10, queries: Number(args.queries), warmupQueries: 5000, batch, manySmall: Number(args["many-small"]),
      ...(viaServer ? { bigDb: dbPath!, bigChainUri: bigR!.chainUri } : {}),
    };
    membership = await runJsonChild<MembershipReport>(children, SERVER_CORE, ["--import", "tsx", join(HERE, "membership.ts")], { MEMBERSHIP_JOB: JSON.stringify(job) });
  }

  // ---- report ----
  const verdict = (ok: boolean) => (ok ? "PASS" : "FAIL");
  const ms = (v: number) => fmt(v, 2);
  const us = (v: number) => fmt(v * 1000, 1);
  const sections: string[] = [];
  const ratioRows = [["target", "value", "target", "verdict"]];
  const noisy: string[] = [];

  if (appendR || ceiling) {
    const rows = [["append (1 block, 1 add, ES256)", "appends/s", "p50 ms", "p99 ms", "mean ms", "slowest–fastest s", "server CPU", "loadgen CPU", "other CPU core0/core1", "errors"]];
    if (appendR) {
      const short = appendR.exhausted ? ` (supply ran out: ${fmt(appendR.measuredMs / 1000, 1)} s measured)` : "";
      rows.push([
        `KMS, SQLite store, ${concurrency} chains × 1 in flight${short}`, fmt(appendR.throughput), ms(appendR.latency.p50Ms), ms(appendR.latency.p99Ms), ms(appendR.latency.meanMs),
        `${fmt(appendR.perSecondMin)}–${fmt(appendR.perSecondMax)}`, pct(appendR.serverCpu), pct(appendR.clientCpu), `${pct(appendR.otherCpu0)} / ${pct(appendR.otherCpu1)}`,
        `${appendR.errors}${appendR.firstError ? ` (${appendR.firstError})` : ""}`,
      ]);
      if (appendR.otherCpu0 > 0.1 || appendR.otherCpu1 > 0.1) noisy.push("append");
    }
    if (ceiling) {
      const c = ceiling;
      rows.push([`crypto-only ceiling (core 0, the server's primitives): open + SHA-256 + ES256 verify + seal`, fmt(c.append.opsPerSec), "–", "–", ms(1000 / c.append.opsPerSec), "best 0.5 s", "100%", "–", `${pct(c.otherCpu0)} / –`, "–"]);
      if (c.otherCpu0 > 0.1) noisy.push("ceiling");
    }
    sections.push(table(rows));
    if (ceiling) {
      const c = ceiling;
      const info = [["crypto ceiling detail (core 0)", "ops/s", "1 in flight", `${concurrency} in flight`]];
      info.push(["ceiling: member key imported once", fmt(c.append.opsPerSec), fmt(c.append.sequential.opsPerSec), fmt(c.append.concurrent.opsPerSec)]);
      info.push(["info: importJWK on every verify (today's verifyAppendedBlockSignature)", fmt(c.appendImportEachTime.opsPerSec), fmt(c.appendImportEachTime.sequential.opsPerSec), fmt(c.appendImportEachTime.concurrent.opsPerSec)]);
      info.push(["info: node:crypto one-shot (createDecipheriv, createHash, verify, createCipheriv)", fmt(c.appendNodeCrypto.opsPerSec), fmt(c.appendNodeCrypto.opsPerSec), "–"]);
      sections.push(table(info));
      sections.push(table([["ceiling part (sequential)", "µs"], ...Object.entries(c.partsUs).map(([k, v]) => [k, fmt(v, 1)])]));
    }
    if (appendR && ceiling) {
      const r = appendR.throughput / ceiling.append.opsPerSec;
      ratioRows.push(["appends / append crypto ceiling", pct(r), `>= ${pct(TARGET_APPEND_VS_CEILING)}`, verdict(r >= TARGET_APPEND_VS_CEILING)]);
    }
  }

  if (breakdown) {
    const b = breakdown;
    const core = [["KmsCore.handle in process (no HTTP), core 0", "appends/s", "vs HTTP"]];
    for (const r of b.core) core.push([`${r.inFlight} in flight (${fmt(r.appends)} appends)`, fmt(r.appendsPerSec), appendR ? pct(appendR.throughput / r.appendsPerSec) : "–"]);
    sections.push(table(core));
    sections.push(table([
      [`append path step, alone, sequential (core 0; data dir on ${b.dataDirFs})`, "mean µs", "p50 µs", "p99 µs", "max µs"],
      ...Object.entries(b.steps).map(([k, v]) => [k, fmt(v.meanUs, 1), fmt(v.p50Us, 1), fmt(v.p99Us, 1), fmt(v.maxUs, 0)]),
    ]));
  }

  if (bigR || membership?.storeBuild) {
    const rows = [["large chain build", "blocks", "seconds", "appends/s", "blocks/s", "append p50 ms", "append p99 ms", "server CPU", "other CPU core0/core1"]];
    if (bigR) {
      rows.push([
        `through the server API, ${batch} blocks per append${bigR.complete ? "" : " (INCOMPLETE: budget ran out)"}`, fmt(bigR.blocks), fmt(bigR.seconds, 1), fmt(bigR.appendsPerSec, 1), fmt(bigR.blocksPerSec),
        ms(bigR.appendLatency.p50Ms), ms(bigR.appendLatency.p99Ms), pct(bigR.serverCpu), `${pct(bigR.otherCpu0)} / ${pct(bigR.otherCpu1)}`,
      ]);
      if (bigR.otherCpu0 > 0.1 || bigR.otherCpu1 > 0.1) noisy.push("large chain build");
    }
    if (membership?.storeBuild) {
      const s = membership.storeBuild;
      rows.push([`through SqliteStore.appendBlocks directly (${fmt(s.signSeconds, 1)} s of it signing)`, fmt(shape.blocks), fmt(s.seconds, 1), fmt(s.blocksPerSec / batch, 1), fmt(s.blocksPerSec), "–", "–", "–", "–"]);
    }
    sections.push(table(rows));
    if (bigR) {
      const projected = (shape.blocks - 1) / bigR.blocksPerSec;
      const seconds = bigR.complete ? bigR.seconds : projected;
      ratioRows.push([`${fmt(shape.blocks)}-block chain through the server API${bigR.complete ? "" : " (projected)"}`, `${fmt(seconds, 0)} s`, `<= ${TARGET_BIG_BUILD_SECONDS} s ("minutes")`, verdict(bigR.complete && seconds <= TARGET_BIG_BUILD_SECONDS)]);
      if (bigR.waitedForSigningSeconds > 0.1 * bigR.seconds) {
        sections.push(`(the load generator's signing limited the build: it waited ${fmt(bigR.waitedForSigningSeconds, 1)} s for signed batches)`);
      }
    }
  }

  if (membership) {
    const m = membership;
    const rows = [["isMemberAt (SqliteStore, in process, core 0)", "blocks/chain", "members", "index rows", "p50 µs", "p99 µs", "mean µs", "vs small p50", "answers true", "wrong"]];
    for (const q of [m.small, m.smallInBigDb, m.big, ...(m.manySmall ? [m.manySmall] : [])]) {
      rows.push([
        `${q.label}${q === m.manySmall ? " (info)" : ""}`, fmt(q.blocks), fmt(q.members), fmt(q.intervals * q.chains), us(q.latency.p50Ms), us(q.latency.p99Ms), us(q.latency.meanMs),
        `${fmt(q.latency.p50Ms / m.small.latency.p50Ms, 2)}x`, pct(q.trueShare), String(q.wrong),
      ]);
    }
    sections.push(table(rows));
    sections.push(`(${fmt(Number(args.queries))} random (entity, position) queries per chain after ${fmt(5000)} warm-up, interleaved; large db ${fmt(m.bigDbBytes / 2 ** 20, 1)} MiB; plan: ${m.queryPlan})`);
    const r50 = m.big.latency.p50Ms / m.small.latency.p50Ms;
    const r99 = m.big.latency.p99Ms / m.small.latency.p99Ms;
    ratioRows.push(["membership p50: large / small chain", `${fmt(r50, 2)}x`, `<= ${TARGET_MEMBERSHIP_RATIO}x`, verdict(r50 <= TARGET_MEMBERSHIP_RATIO)]);
    ratioRows.push(["membership p99: large / small chain", `${fmt(r99, 2)}x`, `<= ${TARGET_MEMBERSHIP_RATIO}x`, verdict(r99 <= TARGET_MEMBERSHIP_RATIO)]);
    if (m.manySmall) ratioRows.push([`info: membership p50: large / ${fmt(m.manySmall.chains)} small chains`, `${fmt(m.big.latency.p50Ms / m.manySmall.latency.p50Ms, 2)}x`, "–", "–"]);
    if (m.small.wrong + m.smallInBigDb.wrong + m.big.wrong + (m.manySmall?.wrong ?? 0) > 0) ratioRows.push(["membership answers checked against a replay", "WRONG ANSWERS", "0", "FAIL"]);
  }

  const { commit, srcDirty } = gitState(ROOT);
  const method = [
    ...(wanted.has("append") ? [] : ["(no append phase in this run)"]),
    `append: concurrency ${concurrency} (closed loop, ${concurrency} chains, one worker and one keep-alive connection per chain, ${args.channels} channels), ${args.warmup} s warm-up + ${args.measure} s measured; blocks pre-signed ES256 by alice (${setup?.blockBytes ?? "?"} B JWS, request ${setup?.appendRequestBytes ?? "?"} B)` +
      (appendR ? `; ${fmt(appendR.pregen.blocks)} blocks pre-signed in ${fmt(appendR.pregen.seconds, 1)} s` : ""),
    ...(wanted.has("big") || wanted.has("membership")
      ? [`large chain: ${fmt(shape.blocks)} blocks, ${fmt(shape.members)} members (blocks 1..${fmt(shape.members - 1)} add one each, then each block removes a random member and adds a random non-member of a pool of ${fmt(shape.pool)}), built ${bigVia === "server" && !wanted.has("big") ? "through SqliteStore.appendBlocks (no server build in this run)" : bigVia === "server" ? (bigR?.complete ? "through the server API" : "through SqliteStore.appendBlocks (the server build did not finish in its budget)") : "through SqliteStore.appendBlocks (--big-via store)"}`]
      : []),
    pinning,
    `before the run, other load: core0 ${pct(quiet.core0)}, core1 ${pct(quiet.core1)} (waited ${fmt(quiet.waited, 0)} s for quiet)`,
  ];
  const text = [
    `## GMBC ${startedAt.toISOString()} (commit ${commit}${srcDirty ? ", src/ modified" : ""})`,
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

  if (kms?.profDir) {
    const files = existsSync(kms.profDir) ? readdirSync(kms.profDir).filter((f) => f.endsWith(".cpuprofile")) : [];
    if (files.length === 0) log("no CPU profile was written");
    for (const f of files) {
      const kept = join(HERE, "profiles");
      mkdirSync(kept, { recursive: true });
      const target = join(kept, `keyward-${startedAt.toISOString().replace(/[:.]/g, "-")}.cpuprofile`);
      copyFileSync(join(kms.profDir, f), target);
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
  kms?.cleanup();
}

await runBench(main, cleanup);
