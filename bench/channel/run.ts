/**
 * Channel throughput bench (`npm run bench:channel`): in one run, on a pinned two-core layout,
 *   1. ping/s, p50/p99 against a live Keyward KMS (`keyward dev`), fresh common message per request;
 *   2. ECDHE/s, p50/p99 (EC static key), a fresh client key pair per request (pre-built);
 *   3. req/s of a bare node:http server answering a fixed body to the same POST load;
 *   4. the crypto-only ceiling of ping and ECDHE (the library's own primitives, no HTTP, no store);
 * and prints the ratios against the targets (ping >= 40% of bare http; ECDHE >= 60% of its
 * crypto ceiling). Servers and the ceiling run on core 0, the load generator on core 1.
 * See bench/README.md.
 */
import { spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { loadConfig } from "../../src/config/config.js";
import { issueDevToken } from "../../src/identity/dev-idp.js";
import type { PhaseResult } from "../lib/load.js";
import { summarizeCpuProfile } from "../lib/cpuprofile.js";
import { appendResults } from "../lib/report.js";
import { pinPid, TASKSET } from "../lib/pin.js";
import { coreTicks, cpuSeconds, rssMiB } from "../lib/proc.js";
import type { CeilingReport } from "./ceiling.js";
import type { ClientKind, LoadgenRequest, SetupResult } from "./loadgen.js";
import { runBench } from "../lib/main.js";
import { build, Children, fmt, gitState, log, machineLine, pct, startIpcChild, startKeywardDev, startListeningChild, table, type KeywardDev } from "../lib/harness.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, "../..");
const SERVER_CORE = 0;
const CLIENT_CORE = 1;
const TARGET_PING_VS_BARE = 0.4;
const TARGET_ECDHE_VS_CEILING = 0.6;

const { values: args } = parseArgs({
  options: {
    concurrency: { type: "string", default: "32" },
    warmup: { type: "string", default: "2" },
    measure: { type: "string", default: "8" },
    channels: { type: "string", default: "8" },
    client: { type: "string", default: "raw" },
    only: { type: "string" },
    "no-build": { type: "boolean", default: false },
    "no-results": { type: "boolean", default: false },
    "cpu-prof": { type: "boolean", default: false },
    "quiet-wait": { type: "string", default: "30" },
    help: { type: "boolean", default: false },
  },
});
if (args.help) {
  console.log(`npm run bench:channel -- [options]
  --concurrency N   requests in flight (default 32)
  --warmup S        warm-up seconds per operation (default 2)
  --measure S       measured seconds per operation (default 8)
  --channels N      pre-opened channels the pings rotate over (default 8)
  --client raw|agent  load generator HTTP client: hand-parsed keep-alive sockets (default) or http.Agent
  --only LIST       comma-separated subset of bare,ping,ecdhe,ceiling
  --no-build        do not run \`npm run build\` first
  --no-results      do not append to bench/RESULTS.md
  --cpu-prof        run the KMS under --cpu-prof and print its top self-time functions
  --quiet-wait S    first wait up to S seconds (default 30) for both cores to be < 10% busy for 3 s`);
  process.exit(0);
}
const concurrency = Number(args.concurrency);
const warmupMs = Number(args.warmup) * 1000;
const measureMs = Number(args.measure) * 1000;
const channelCount = Number(args.channels);
const clientKind = args.client as ClientKind;
if (clientKind !== "raw" && clientKind !== "agent") throw new Error("--client is raw or agent");
const wanted = new Set((args.only ?? "bare,ping,ecdhe,ceiling").split(",").map((s) => s.trim()));

const children = new Children(ROOT);
let kms: KeywardDev | undefined;

async function startBare(): Promise<{ child: ChildProcess; port: number }> {
  return startListeningChild(children, SERVER_CORE, ["--import", "tsx", join(HERE, "bare-http.ts")]);
}

async function runCeiling(token: string): Promise<CeilingReport & { otherCpu0: number }> {
  const before = coreTicks(SERVER_CORE);
  const t0 = performance.now();
  const child = children.start(SERVER_CORE, ["--import", "tsx", join(HERE, "ceiling.ts")], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, CEILING_TOKEN: token, CEILING_IN_FLIGHT: String(concurrency) },
  });
  let out = "";
  child.stdout!.on("data", (c: Buffer) => (out += c.toString()));
  const code = await new Promise<number | null>((r) => child.once("exit", (c) => r(c)));
  if (code !== 0) throw new Error(`crypto ceiling process exited (${code}): ${out}`);
  const after = coreTicks(SERVER_CORE);
  const report = JSON.parse(out.trim().split("\n").pop()!) as CeilingReport;
  const busy = (after.busy - before.busy) / (after.total - before.total);
  return { ...report, otherCpu0: Math.max(0, busy - report.cpuSeconds / ((performance.now() - t0) / 1000)) };
}

interface PhaseReport extends PhaseResult {
  readonly op: string;
  /** CPU used by the measured server process over the measured window, in cores (1.0 = one full core). */
  readonly serverCpu: number;
  readonly clientCpu: number;
  /** Busy time of each core NOT used by this bench's processes (other work on the machine, steal). */
  readonly otherCpu0: number;
  readonly otherCpu1: number;
}

interface Sample {
  readonly t: number;
  readonly server: number;
  readonly core0Pids: number;
  readonly core1Pids: number;
  readonly core0: { busy: number; total: number };
  readonly core1: { busy: number; total: number };
}

/** Runs one phase in the load generator while sampling CPU use over the measured window. */
async function measuredPhase(
  call: <T>(req: LoadgenRequest) => Promise<T>,
  op: "bare" | "ping" | "ecdhe",
  port: number,
  serverPid: number,
  core0Pids: number[],
  core1Pids: number[],
): Promise<PhaseReport> {
  const sum = (pids: number[]) => pids.reduce((a, p) => a + cpuSeconds(p), 0);
  const sample = (): Sample => ({
    t: performance.now(),
    server: cpuSeconds(serverPid),
    core0Pids: sum(core0Pids),
    core1Pids: sum(core1Pids),
    core0: coreTicks(SERVER_CORE),
    core1: coreTicks(CLIENT_CORE),
  });
  let first: Sample | undefined;
  let last: Sample | undefined;
  const a = setTimeout(() => (first = sample()), warmupMs);
  const b = setTimeout(() => (last = sample()), warmupMs + measureMs);
  const result = await call<PhaseResult>({ cmd: "phase", op, port, warmupMs, measureMs });
  clearTimeout(a);
  clearTimeout(b);
  first ??= sample();
  last ??= sample();
  const secs = (last.t - first.t) / 1000;
  const frac = (x: { busy: number; total: number }, y: { busy: number; total: number }) => (y.busy - x.busy) / (y.total - x.total);
  return {
    op,
    ...result,
    serverCpu: (last.server - first.server) / secs,
    clientCpu: (last.core1Pids - first.core1Pids) / secs,
    otherCpu0: Math.max(0, frac(first.core0, last.core0) - (last.core0Pids - first.core0Pids) / secs),
    otherCpu1: Math.max(0, frac(first.core1, last.core1) - (last.core1Pids - first.core1Pids) / secs),
  };
}

/** Waits (up to `seconds`) for 3 seconds in a row in which both cores are less than 10% busy. */
async function waitForQuiet(seconds: number): Promise<boolean> {
  const until = Date.now() + seconds * 1000;
  let quiet = 0;
  for (;;) {
    const a0 = coreTicks(SERVER_CORE), a1 = coreTicks(CLIENT_CORE);
    await new Promise((r) => setTimeout(r, 1000));
    const b0 = coreTicks(SERVER_CORE), b1 = coreTicks(CLIENT_CORE);
    const busy0 = (b0.busy - a0.busy) / (b0.total - a0.total);
    const busy1 = (b1.busy - a1.busy) / (b1.total - a1.total);
    quiet = busy0 >= 0.1 || busy1 >= 0.1 ? 0 : quiet + 1;
    if (quiet >= 3) return true;
    if (Date.now() >= until) {
      log(`WARNING: the machine is busy (core 0 ${pct(busy0)}, core 1 ${pct(busy1)} used by others); measuring anyway`);
      return false;
    }
  }
}

async function main(): Promise<void> {
  const startedAt = new Date();
  const t0 = performance.now();
  if (!args["no-build"]) build(ROOT);
  const quietWait = Number(args["quiet-wait"]);
  const w0 = performance.now();
  let quiet = true;
  if (quietWait > 0) {
    log(`waiting up to ${quietWait} s for a quiet machine`);
    quiet = await waitForQuiet(quietWait);
  }
  const waited = (performance.now() - w0) / 1000;
  const pinned = TASKSET !== undefined && (await pinPid(process.pid, CLIENT_CORE));
  if (!TASKSET) log("WARNING: taskset not found: nothing is pinned, results mix server and client CPU");
  const pinning = TASKSET ? `server processes on core ${SERVER_CORE} (taskset -c ${SERVER_CORE}), load generator${pinned ? " and orchestrator" : ""} on core ${CLIENT_CORE}` : "UNPINNED (taskset missing)";

  log("starting keyward dev (EC static key)");
  kms = await startKeywardDev(children, SERVER_CORE, { cpuProf: Boolean(args["cpu-prof"]) });
  const bare = wanted.has("bare") ? await startBare() : undefined;
  const config = loadConfig(kms.dir, { ...process.env, ...kms.env });
  const token = await issueDevToken({ dataDir: kms.dir, issuer: config.oauthIssuer, audience: config.oauthAudience, user: "alice@example.com", lifetimeSeconds: 3600 });

  const lg = startIpcChild<LoadgenRequest>(children, CLIENT_CORE, ["--import", "tsx", join(HERE, "loadgen.ts")]);
  const setup = await lg.call<SetupResult>({ cmd: "setup", url: kms.url, token, channels: channelCount, concurrency, client: clientKind });
  log(`opened ${channelCount} channels; ping request ${setup.pingRequestBytes} B, ECDHE request ${setup.ecdheRequestBytes} B`);

  // The load generator pre-builds ECDHE requests on core 1 while core 0 measures the crypto ceilings.
  if (wanted.has("ecdhe")) await lg.call({ cmd: "pregen-start" });
  let ceiling: (CeilingReport & { otherCpu0: number }) | undefined;
  if (wanted.has("ceiling")) {
    log("crypto-only ceilings (core 0)");
    ceiling = await runCeiling(token);
  }
  if (wanted.has("ecdhe")) {
    // Enough requests for the whole phase at up to 1.5x the crypto ceiling (or 1500/s if unknown).
    const rate = Math.max(ceiling?.ecdhe.opsPerSec ?? 1000, 1000) * 1.5;
    const target = Math.ceil((rate * (warmupMs + measureMs)) / 1000);
    const { count, seconds } = await lg.call<{ count: number; seconds: number }>({ cmd: "pregen-target", target });
    log(`pre-built ${count} ECDHE requests in ${seconds.toFixed(1)} s`);
  }

  const phases: PhaseReport[] = [];
  const serverPid = kms.child.pid!;
  const core0 = [serverPid, ...(bare ? [bare.child.pid!] : [])];
  const core1 = [lg.child.pid!, ...(pinned ? [process.pid] : [])];
  if (bare) {
    log(`bare http: ${args.warmup} s warm-up + ${args.measure} s`);
    phases.push(await measuredPhase(lg.call, "bare", bare.port, bare.child.pid!, core0, core1));
  }
  const kmsPort = Number(new URL(kms.url).port);
  if (wanted.has("ping")) {
    log(`ping: ${args.warmup} s warm-up + ${args.measure} s`);
    phases.push(await measuredPhase(lg.call, "ping", kmsPort, serverPid, core0, core1));
  }
  if (wanted.has("ecdhe")) {
    log(`ECDHE: ${args.warmup} s warm-up + ${args.measure} s`);
    phases.push(await measuredPhase(lg.call, "ecdhe", kmsPort, serverPid, core0, core1));
  }
  const serverRss = rssMiB(serverPid);

  await lg.call({ cmd: "exit" }).catch(() => {});
  await children.stop(lg.child);
  if (bare) await children.stop(bare.child);
  await children.stop(kms.child);

  // ---- report ----
  const get = (op: string) => phases.find((p) => p.op === op);
  const bareR = get("bare"), pingR = get("ping"), ecdheR = get("ecdhe");
  const rows = [["operation", "req/s", "slowest–fastest 1 s", "p50 ms", "p99 ms", "mean ms", "server CPU", "loadgen CPU", "other CPU core0/core1", "errors"]];
  const names: Record<string, string> = { bare: "bare node:http (fixed body)", ping: "ping (update /ping, common msg)", ecdhe: "ECDHE (create /ecdhe, EC static key)" };
  for (const p of phases) {
    const short = p.exhausted ? ` (supply ran out: ${fmt(p.measuredMs / 1000, 1)} s measured)` : "";
    rows.push([names[p.op]! + short, fmt(p.throughput), `${fmt(p.perSecondMin)}–${fmt(p.perSecondMax)}`, fmt(p.latency.p50Ms, 2), fmt(p.latency.p99Ms, 2), fmt(p.latency.meanMs, 2), pct(p.serverCpu), pct(p.clientCpu), `${pct(p.otherCpu0)} / ${pct(p.otherCpu1)}`, `${p.errors}${p.firstError ? ` (${p.firstError})` : ""}`]);
  }
  const ceilRows = [["crypto-only ceiling (core 0, library primitives)", "ops/s", "1 in flight", `${concurrency} in flight`, "node:crypto one-shot (info)"]];
  if (ceiling) {
    ceilRows.push(["ping: server codec (node:crypto) dir/A256GCM open + seal", fmt(ceiling.ping.opsPerSec), fmt(ceiling.ping.sequential.opsPerSec), fmt(ceiling.ping.concurrent.opsPerSec), fmt(ceiling.ping.nodeCrypto.opsPerSec)]);
    ceilRows.push(["ECDHE: ECDH-ES+A256KW decrypt, keygen, ECDH, HKDF, ES256, seal", fmt(ceiling.ecdhe.opsPerSec), fmt(ceiling.ecdhe.sequential.opsPerSec), fmt(ceiling.ecdhe.concurrent.opsPerSec), fmt(ceiling.ecdhe.nodeCrypto.opsPerSec)]);
  }
  const verdict = (ok: boolean) => (ok ? "PASS" : "FAIL");
  const ratioRows = [["ratio", "value", "target", "verdict"]];
  if (pingR && bareR) {
    const r = pingR.throughput / bareR.throughput;
    ratioRows.push(["ping / bare http", pct(r), `>= ${pct(TARGET_PING_VS_BARE)}`, verdict(r >= TARGET_PING_VS_BARE)]);
  }
  const noisy = phases.filter((p) => p.otherCpu0 > 0.1 || p.otherCpu1 > 0.1).map((p) => p.op);
  if (ceiling && ceiling.otherCpu0 > 0.1) noisy.push("ceiling");
  if (ecdheR && ceiling) {
    const r = ecdheR.throughput / ceiling.ecdhe.opsPerSec;
    ratioRows.push(["ECDHE / ECDHE crypto ceiling", pct(r), `>= ${pct(TARGET_ECDHE_VS_CEILING)}`, verdict(r >= TARGET_ECDHE_VS_CEILING)]);
  }
  if (pingR && ceiling) ratioRows.push(["ping / ping crypto ceiling (info)", pct(pingR.throughput / ceiling.ping.opsPerSec), "–", "–"]);

  const machine = machineLine();
  const { commit: git, srcDirty: dirty } = gitState(ROOT);
  const method = [
    `concurrency ${concurrency} (closed loop, one request in flight per keep-alive connection, ${clientKind === "raw" ? "hand-parsed HTTP/1.1 sockets" : "http.Agent keepAlive"})`,
    `${args.warmup} s warm-up + ${args.measure} s measured per operation`,
    `${channelCount} ping channels, a fresh requestId per ping; a fresh client key pair per ECDHE; one cached bearer token`,
    pinning,
  ];
  const text = [
    `## ${startedAt.toISOString()} (commit ${git}${dirty ? ", src/ modified" : ""})`,
    "",
    `- machine: ${machine}`,
    ...method.map((m) => `- ${m}`),
    `- KMS RSS after the run: ${fmt(serverRss)} MiB; whole bench ${fmt((performance.now() - t0) / 1000)} s, of which ${fmt(waited)} s waiting for a quiet machine${quiet ? "" : " (never came)"}`,
    "",
    table(rows),
    "",
    ...(ceiling ? [table(ceilRows), "", `(other CPU on core 0 while the ceilings ran: ${pct(ceiling.otherCpu0)})`, ""] : []),
    table(ratioRows),
    "",
    ...(noisy.length
      ? [`WARNING: other processes used more than 10% of a bench core during: ${noisy.join(", ")}; those numbers are low by about that much (run again on a quiet machine).`, ""]
      : []),
  ].join("\n");
  console.log(`\n${text}`);

  if (kms.profDir) {
    const files = existsSync(kms.profDir) ? readdirSync(kms.profDir).filter((f) => f.endsWith(".cpuprofile")) : [];
    if (files.length === 0) log("no CPU profile was written");
    for (const f of files) {
      const kept = join(HERE, "profiles");
      const target = join(kept, `keyward-${startedAt.toISOString().replace(/[:.]/g, "-")}.cpuprofile`);
      spawnSync("mkdir", ["-p", kept]);
      spawnSync("cp", [join(kms.profDir, f), target]);
      const s = summarizeCpuProfile(target, 25);
      console.log(`KMS CPU profile (${relative(ROOT, target)}, ${statSync(target).size} B): busy ${s.busyPct.toFixed(0)}% of samples`);
      console.log(table([["self time by script", "% of busy"], ...s.scripts.slice(0, 15).map((l) => [l.name, l.selfPct.toFixed(1)])]));
      console.log("");
      console.log(table([["self time by function", "% of busy"], ...s.functions.map((l) => [l.name, l.selfPct.toFixed(1)])]));
      console.log("");
      console.log(table([["inclusive time (project and jose functions)", "% of busy"], ...s.inclusive.map((l) => [l.name, l.selfPct.toFixed(1)])]));
      console.log("(main thread only: WebCrypto work runs on libuv's pool; on one core it shows up as time inside the call that queued it)");
    }
  }
  if (!args["no-results"]) {
    log(`appended to ${relative(ROOT, appendResults(ROOT, text))}`);
  }
}

async function cleanup(): Promise<void> {
  await children.stopAll();
  kms?.cleanup();
}

await runBench(main, cleanup);
