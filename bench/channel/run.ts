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
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import os from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { loadConfig } from "../../src/config/config.js";
import { issueDevToken } from "../../src/identity/dev-idp.js";
import type { PhaseResult } from "../lib/load.js";
import { summarizeCpuProfile } from "../lib/cpuprofile.js";
import { appendResults } from "../lib/report.js";
import { pinPid, spawnPinned, TASKSET } from "../lib/pin.js";
import { coreTicks, cpuSeconds, freePort, rssMiB } from "../lib/proc.js";
import type { CeilingReport } from "./ceiling.js";
import type { ClientKind, LoadgenRequest, SetupResult } from "./loadgen.js";
import { runBench } from "../lib/main.js";

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

const children: ChildProcess[] = [];
let tmpDir: string | undefined;

function log(msg: string): void {
  process.stderr.write(`[bench] ${msg}\n`);
}

/** Spawns a pinned child and remembers it, so that cleanup stops it (by its own PID). */
function start(core: number, argv: string[], opts: Parameters<typeof spawnPinned>[3]): ChildProcess {
  const child = spawnPinned(core, process.execPath, argv, { cwd: ROOT, ...opts });
  children.push(child);
  return child;
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
  await exited;
  clearTimeout(timer);
}

function build(): void {
  log("npm run build");
  const r = spawnSync("npm", ["run", "build"], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"], encoding: "utf8" });
  if (r.status === 0) return;
  const out = `${r.stdout}${r.stderr}`.trim().split("\n").slice(-15).join("\n");
  if (!existsSync(join(ROOT, "dist/cli/main.js"))) throw new Error(`npm run build failed and there is no dist/:\n${out}`);
  log(`WARNING: npm run build failed; benchmarking the existing dist/ (may be stale):\n${out}`);
}

async function waitFor(check: () => Promise<boolean>, what: string, timeoutMs = 30_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (await check().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** `keyward dev` on a fresh data dir, ports chosen here, pinned to the server core. */
async function startKeyward(): Promise<{ child: ChildProcess; url: string; dir: string; env: Record<string, string>; profDir?: string }> {
  tmpDir = mkdtempSync(join(os.tmpdir(), "keyward-bench-"));
  const dir = join(tmpDir, "data");
  const kmsPort = await freePort();
  const idpPort = await freePort();
  const issuer = `http://127.0.0.1:${idpPort}`;
  const env: Record<string, string> = {
    KEYWARD_LISTEN: `127.0.0.1:${kmsPort}`,
    KEYWARD_DEV_IDP_LISTEN: `127.0.0.1:${idpPort}`,
    KEYWARD_OAUTH_ISSUER: issuer,
    KEYWARD_OAUTH_JWKS_URI: `${issuer}/jwks`,
    KEYWARD_LOG_LEVEL: "warn",
  };
  const profDir = args["cpu-prof"] ? join(tmpDir, "prof") : undefined;
  const nodeArgs = profDir ? ["--cpu-prof", `--cpu-prof-dir=${profDir}`] : [];
  const child = start(SERVER_CORE, [...nodeArgs, "bin/keyward.js", "dev", "--dir", dir], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout!.on("data", (c: Buffer) => (output += c.toString()));
  child.stderr!.on("data", (c: Buffer) => (output += c.toString()));
  const url = `http://127.0.0.1:${kmsPort}`;
  const died = new Promise<never>((_, reject) => child.once("exit", (code) => reject(new Error(`keyward dev exited (${code}):\n${output}`))));
  await Promise.race([died, waitFor(async () => (await fetch(`${url}/healthz`)).ok, "keyward /healthz")]);
  died.catch(() => {});
  return { child, url, dir, env, ...(profDir ? { profDir } : {}) };
}

async function startBare(): Promise<{ child: ChildProcess; port: number }> {
  const child = start(SERVER_CORE, ["--import", "tsx", join(HERE, "bare-http.ts")], { stdio: ["ignore", "pipe", "inherit"] });
  const port = await new Promise<number>((resolve, reject) => {
    let out = "";
    child.stdout!.on("data", (c: Buffer) => {
      out += c.toString();
      const m = /listening (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once("exit", (code) => reject(new Error(`bare http server exited (${code})`)));
  });
  return { child, port };
}

/** The load generator, pinned to the client core, driven by request/response over IPC. */
function startLoadgen(): { child: ChildProcess; call: <T>(req: LoadgenRequest) => Promise<T> } {
  const child = start(CLIENT_CORE, ["--import", "tsx", join(HERE, "loadgen.ts")], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
  let next = 0;
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  child.on("message", (m: { id: number; ok: boolean; result?: unknown; error?: string }) => {
    const p = pending.get(m.id);
    pending.delete(m.id);
    if (m.ok) p?.resolve(m.result);
    else p?.reject(new Error(`load generator: ${m.error}`));
  });
  child.once("exit", (code) => {
    for (const p of pending.values()) p.reject(new Error(`load generator exited (${code})`));
    pending.clear();
  });
  return {
    child,
    call: <T>(req: LoadgenRequest) =>
      new Promise<T>((resolve, reject) => {
        const id = next++;
        pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
        child.send({ id, req });
      }),
  };
}

async function runCeiling(token: string): Promise<CeilingReport & { otherCpu0: number }> {
  const before = coreTicks(SERVER_CORE);
  const t0 = performance.now();
  const child = start(SERVER_CORE, ["--import", "tsx", join(HERE, "ceiling.ts")], {
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

const fmt = (n: number, d = 0) => (Number.isFinite(n) ? n.toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d }) : "–");
const pct = (n: number) => (Number.isFinite(n) ? `${(100 * n).toFixed(0)}%` : "–");

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => `| ${r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(" | ")} |`;
  return [line(rows[0]!), `|${widths.map((w, i) => (i === 0 ? ":" : "") + "-".repeat(w + 1) + (i === 0 ? "" : ":")).join("|")}|`, ...rows.slice(1).map(line)].join("\n");
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
  if (!args["no-build"]) build();
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
  const kms = await startKeyward();
  const bare = wanted.has("bare") ? await startBare() : undefined;
  const config = loadConfig(kms.dir, { ...process.env, ...kms.env });
  const token = await issueDevToken({ dataDir: kms.dir, issuer: config.oauthIssuer, audience: config.oauthAudience, user: "alice@example.com", lifetimeSeconds: 3600 });

  const lg = startLoadgen();
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
  await stop(lg.child);
  if (bare) await stop(bare.child);
  await stop(kms.child);

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

  const cpus = os.cpus();
  const machine = `${cpus[0]?.model ?? "unknown CPU"}, ${cpus.length} cores, ${fmt(os.totalmem() / 2 ** 30, 1)} GiB RAM, Node ${process.version}, ${os.platform()} ${os.release()}`;
  const git = spawnSync("git", ["rev-parse", "--short", "HEAD"], { cwd: ROOT, encoding: "utf8" }).stdout.trim();
  const dirty = spawnSync("git", ["status", "--porcelain", "--", "src"], { cwd: ROOT, encoding: "utf8" }).stdout.trim() !== "";
  const method = [
    `concurrency ${concurrency} (closed loop, one request in flight per keep-alive connection, ${clientKind === "raw" ? "hand-parsed HTTP/1.1 sockets" : "http.Agent keepAlive"})`,
    `${args.warmup} s warm-up + ${args.measure} s measured per operation`,
    `${channelCount} ping channels, a fresh requestId per ping; a fresh client key pair per ECDHE; one cached bearer token`,
    pinning,
  ];
  const text = [
    `## ${startedAt.toISOString()} (commit ${git || "?"}${dirty ? ", src/ modified" : ""})`,
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
  await Promise.all(children.map((c) => stop(c).catch(() => {})));
  if (tmpDir) rmSync(tmpDir, { recursive: true, force: true });
}

await runBench(main, cleanup);
