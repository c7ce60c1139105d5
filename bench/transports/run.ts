/**
 * Transports bench (`npm run bench:transports`, issue #11 item 7): ping and GK get over HTTP,
 * WebSocket and XMPP (PROTOCOL.md §3), against one and the same `keyward dev` KMS, in one run, one
 * operation and one transport at a time, with the same load shape (N requests in flight, closed
 * loop, every reply decrypted and checked), next to the ceilings: the crypto-only ceiling of each
 * operation (the channel and GK benches' ceiling processes) and, per transport, a bare reference
 * server answering a fixed ping-sized reply (bare node:http, a bare `ws` server, a bare XEP-0114
 * component behind the same Prosody).
 *
 * Layout (taskset): the KMS, the ceiling processes and the bare servers on core 0, one at a time;
 * Prosody (started only with its own temp config, test/helpers/prosody.ts) on `--prosody-core`
 * (default 0: the XMPP server is part of the serving side); load generators and this orchestrator
 * on core 1. Everything on loopback; every process is stopped by its own PID. See bench/README.md.
 */
import { randomBytes } from "node:crypto";
import { rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { loadConfig } from "../../src/config/config.js";
import { issueDevToken } from "../../src/identity/dev-idp.js";
import { prosodyInstalled, startProsody, XMPP_DOMAIN, type ProsodyServer } from "../../test/helpers/prosody.js";
import { build, Children, fmt, gitState, log, machineLine, pct, prepareDataDir, runJsonChild, startIpcChild, startKeywardDevAt, startListeningChild, table, waitFor } from "../lib/harness.js";
import type { IpcChild, KeywardDev } from "../lib/harness.js";
import { cpuSampler, measureCpu, waitQuiet, type CpuUse } from "../lib/cpu.js";
import type { PhaseResult } from "../lib/load.js";
import { runBench } from "../lib/main.js";
import { otherBenchProcesses } from "../lib/others.js";
import { pinPid, TASKSET } from "../lib/pin.js";
import { coreTicks, rssMiB } from "../lib/proc.js";
import { appendResults } from "../lib/report.js";
import { KMS_WS_PATH, shapeOf, type TransportKind, type TransportTarget } from "../lib/transports.js";
import { ALICE } from "../gmbc/blocks.js";
import type { CeilingReport as ChannelCeiling } from "../channel/ceiling.js";
import type { LoadgenRequest as ChannelReq, SetupResult as ChannelSetup } from "../channel/loadgen.js";
import type { CeilingReport as GkCeiling } from "../gk/ceiling.js";
import type { LoadgenRequest as GkReq, PregenResult, SetupResult as GkSetup } from "../gk/loadgen.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, "../..");
const SERVER_CORE = 0;
const CLIENT_CORE = 1;
const TRANSPORTS: readonly TransportKind[] = ["http", "ws", "xmpp"];
const PARTS = ["ceiling", "bare", "ping", "get"] as const;
type Part = (typeof PARTS)[number];
const KMS_COMPONENT = "kms.localhost";
const ECHO_COMPONENT = "echo.localhost";
const XMPP_USER = "bench";

const { values: a } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    concurrency: { type: "string", default: "32" },
    connections: { type: "string", default: "4" },
    warmup: { type: "string" },
    measure: { type: "string" },
    channels: { type: "string", default: "8" },
    gks: { type: "string" },
    transports: { type: "string", default: TRANSPORTS.join(",") },
    only: { type: "string", default: PARTS.join(",") },
    "prosody-core": { type: "string", default: String(SERVER_CORE) },
    "quiet-wait": { type: "string" },
    "phase-quiet": { type: "string" },
    "no-build": { type: "boolean", default: false },
    "no-results": { type: "boolean", default: false },
    "section-out": { type: "string" },
    help: { type: "boolean", default: false },
  },
});
if (a.help) {
  console.log(`npm run bench:transports -- [options]   ping and GK get over HTTP, WebSocket and XMPP; see bench/README.md
  --quick               shorter still (smoke test, ~1 min; the section says QUICK)
  --concurrency N       requests in flight, every transport (default 32)
  --connections N       WebSocket connections / XMPP sessions the requests are spread over (default 4;
                        HTTP always has one keep-alive connection per request in flight)
  --warmup S / --measure S   per phase (default 1 / 4; quick 0.3 / 1)
  --channels N          channels per load generator (default 8)
  --gks N               GKs pre-created for GK get, fetched round robin (default 300; quick 100)
  --transports LIST     subset of ${TRANSPORTS.join(",")} (default all; xmpp is skipped, and said so, without prosody)
  --only LIST           subset of ${PARTS.join(",")} (default all)
  --prosody-core N      the core Prosody is pinned to (default ${SERVER_CORE}, with the KMS)
  --quiet-wait S        wait up to S s for quiet cores before the run (default 10; quick 0)
  --phase-quiet S       the same before each phase (default 3; quick 0)
  --no-build            do not run npm run build first
  --no-results          do not append to bench/RESULTS.md
  --section-out FILE    also write the section (markdown) to FILE (how npm run bench includes it)`);
  process.exit(0);
}
const quick = a.quick;
const num = (v: string | undefined, full: number, q: number) => (v !== undefined ? Number(v) : quick ? q : full);
const concurrency = Number(a.concurrency);
const connections = Number(a.connections);
const warmupMs = num(a.warmup, 1, 0.3) * 1000;
const measureMs = num(a.measure, 4, 1) * 1000;
const channels = Number(a.channels);
const gkCount = num(a.gks, 300, 100);
const quietWait = num(a["quiet-wait"], 10, 0);
const phaseQuiet = num(a["phase-quiet"], 3, 0);
const prosodyCore = Number(a["prosody-core"]);
const wanted = new Set(a.only.split(",").map((s) => s.trim() as Part));
for (const p of wanted) if (!PARTS.includes(p)) throw new Error(`--only: unknown part ${p} (parts: ${PARTS.join(",")})`);
let transports = a.transports.split(",").map((s) => s.trim() as TransportKind);
for (const t of transports) if (!TRANSPORTS.includes(t)) throw new Error(`--transports: unknown transport ${t}`);

const children = new Children(ROOT);
const cleanups: (() => Promise<void> | void)[] = [];
const notes: string[] = [];
const noisy: string[] = [];

type Load = readonly [number, number, number];
const loadavg = (): Load => os.loadavg() as unknown as Load;
const fmtLoad = (l: Load) => l.map((x) => x.toFixed(2)).join(" / ");

interface Row {
  readonly what: string;
  readonly transport: TransportKind | "–";
  readonly shape: string;
  readonly result: PhaseResult & { cpu: CpuUse };
  /** 1-minute load average at the end of the phase. */
  readonly load1: number;
}

async function stopIpc<R>(lg: IpcChild<R> | undefined): Promise<void> {
  if (!lg) return;
  await lg.call({ cmd: "exit" } as R).catch(() => {});
  await children.stop(lg.child);
}

async function main(): Promise<void> {
  const startedAt = new Date();
  const t0 = performance.now();
  const loadStart = loadavg();
  const byKind = new Map<string, number[]>();
  for (const o of otherBenchProcesses()) byKind.set(o.kind, [...(byKind.get(o.kind) ?? []), o.pid]);
  for (const [kind, pids] of byKind) notes.push(`at the start, ${pids.length} other ${kind} process${pids.length > 1 ? "es" : ""} of other sessions (pids ${pids.join(", ")})`);
  if (!a["no-build"]) build(ROOT);
  const pinned = TASKSET !== undefined && (await pinPid(process.pid, CLIENT_CORE));
  if (!TASKSET) notes.push("taskset not found: nothing is pinned, server and client CPU mix");
  if (transports.includes("xmpp") && !prosodyInstalled()) {
    transports = transports.filter((t) => t !== "xmpp");
    notes.push("prosody is not installed (apt-get install prosody): the XMPP rows are missing");
    log("WARNING: prosody not installed; XMPP skipped");
  }
  if (quietWait > 0) await waitQuiet([SERVER_CORE, CLIENT_CORE], quietWait);

  // ---- Prosody (own temp config, loopback, free ports), the KMS as its component ----
  let prosody: ProsodyServer | undefined;
  const xmppPassword = randomBytes(12).toString("hex");
  if (transports.includes("xmpp")) {
    prosody = await startProsody({
      users: { [XMPP_USER]: xmppPassword },
      components: { [KMS_COMPONENT]: randomBytes(16).toString("hex"), [ECHO_COMPONENT]: randomBytes(16).toString("hex") },
    });
    const p = prosody;
    cleanups.push(() => p.stop());
    if (TASKSET && !(await pinPid(p.pid()!, prosodyCore))) notes.push(`could not pin Prosody (pid ${p.pid()}) to core ${prosodyCore}`);
    log(`prosody on core ${prosodyCore}: c2s ${p.c2sPort}, components ${p.componentPort}`);
  }
  const prosodyPid = () => (prosody?.pid() !== undefined ? [prosody.pid()!] : []);

  const { tmpDir, dir } = prepareDataDir("keyward-transports-");
  cleanups.push(() => rmSync(tmpDir, { recursive: true, force: true }));
  const xmppEnv: Record<string, string> = prosody
    ? { KEYWARD_XMPP_SERVICE: prosody.componentService, KEYWARD_XMPP_DOMAIN: KMS_COMPONENT, KEYWARD_XMPP_SECRET: prosody.components[KMS_COMPONENT]! }
    : {};
  log(`starting keyward dev (SQLite, EC static key) on core ${SERVER_CORE}${prosody ? `, component ${KMS_COMPONENT} of the bench's Prosody` : ""}`);
  const kms: KeywardDev = await startKeywardDevAt(children, SERVER_CORE, { dir, tmpDir, env: xmppEnv });
  cleanups.push(() => children.stop(kms.child)); // before its data dir is removed (cleanups run in reverse)
  // /readyz is 503 until the XMPP component link is up.
  await waitFor(async () => (await fetch(`${kms.url}/readyz`)).status === 200, "keyward /readyz (store and XMPP link)");
  const config = loadConfig(dir, { ...process.env, ...kms.env });
  const token = await issueDevToken({ dataDir: dir, issuer: config.oauthIssuer, audience: config.oauthAudience, user: ALICE, lifetimeSeconds: 3600 });

  const chLg = startIpcChild<ChannelReq>(children, CLIENT_CORE, ["--import", "tsx", join(ROOT, "bench/channel/loadgen.ts")]);
  const gkLg = startIpcChild<GkReq>(children, CLIENT_CORE, ["--import", "tsx", join(ROOT, "bench/gk/loadgen.ts")]);
  cleanups.push(() => stopIpc(chLg), () => stopIpc(gkLg));
  const ch = await chLg.call<ChannelSetup>({ cmd: "setup", url: kms.url, token, channels, concurrency, client: "raw" });
  let gk: GkSetup | undefined;
  let pre: PregenResult | undefined;
  if (wanted.has("get")) {
    gk = await gkLg.call<GkSetup>({ cmd: "setup", url: kms.url, token, channels });
    pre = await gkLg.call<PregenResult>({ cmd: "pregen", main: gkCount, compare: 0, concurrency });
  }
  log(`load generators ready (${channels} channels each${pre ? `, ${fmt(pre.main)} GKs pre-created` : ""})`);

  const kmsTarget = (t: TransportKind): TransportTarget =>
    t === "http"
      ? { kind: "http", host: "127.0.0.1", port: kms.port }
      : t === "ws"
        ? { kind: "ws", url: `ws://127.0.0.1:${kms.port}${KMS_WS_PATH}`, connections }
        : { kind: "xmpp", service: prosody!.c2sService, domain: XMPP_DOMAIN, username: XMPP_USER, password: xmppPassword, to: KMS_COMPONENT, connections };

  // ---- crypto-only ceilings, on core 0 with the other core idle ----
  let chCeil: ChannelCeiling | undefined;
  let gkCeil: GkCeiling | undefined;
  let ceilingOther: number | undefined;
  if (wanted.has("ceiling")) {
    const before = coreTicks(SERVER_CORE);
    const c0 = performance.now();
    log("crypto-only ceilings on core 0 (channel/ceiling.ts, gk/ceiling.ts)");
    const env = {
      CEILING_TOKEN: token,
      CEILING_IN_FLIGHT: String(concurrency),
      ...(quick ? { CEILING_WARMUP_MS: "100", CEILING_MEASURE_MS: "300", CEILING_WINDOWS: "1" } : { CEILING_WARMUP_MS: "300", CEILING_MEASURE_MS: "1000", CEILING_WINDOWS: "3" }),
    };
    if (wanted.has("ping")) chCeil = await runJsonChild<ChannelCeiling>(children, SERVER_CORE, ["--import", "tsx", join(ROOT, "bench/channel/ceiling.ts")], env);
    if (wanted.has("get")) gkCeil = await runJsonChild<GkCeiling>(children, SERVER_CORE, ["--import", "tsx", join(ROOT, "bench/gk/ceiling.ts")], env);
    // Busy time of core 0 not used by the ceiling processes (as the channel bench reports it).
    const after = coreTicks(SERVER_CORE);
    const own = ((chCeil?.cpuSeconds ?? 0) + (gkCeil?.cpuSeconds ?? 0)) / ((performance.now() - c0) / 1000);
    ceilingOther = Math.max(0, (after.busy - before.busy) / (after.total - before.total) - own);
    if (ceilingOther > 0.1) noisy.push(`crypto-only ceilings (core 0 ${pct(ceilingOther)})`);
  }

  // ---- measured phases ----
  let serverPids: number[] = [kms.child.pid!];
  const sample = cpuSampler([SERVER_CORE, CLIENT_CORE], () => serverPids, () => [chLg.child.pid!, gkLg.child.pid!], () => (pinned ? [process.pid] : []), prosodyPid);
  const rows: Row[] = [];
  const phase = async (what: string, transport: TransportKind, target: TransportTarget, call: () => Promise<PhaseResult>) => {
    if (phaseQuiet > 0) await waitQuiet([SERVER_CORE, CLIENT_CORE], phaseQuiet);
    log(`${what} over ${transport} (${shapeOf(target, concurrency)}): ${warmupMs / 1000} s warm-up + ${measureMs / 1000} s`);
    const result = await measureCpu(sample, warmupMs, measureMs, call);
    if (result.cpu.otherCpu.some((u) => u > 0.1)) noisy.push(`${what} over ${transport} (${result.cpu.otherCpu.map(pct).join("/")})`);
    if (result.errors > 0) log(`WARNING: ${what} over ${transport}: ${result.errors} errors, first: ${result.firstError}`);
    if (result.completed === 0) log(`WARNING: ${what} over ${transport}: no reply completed inside the measured window (a stall: requests in flight across the whole window)`);
    log(`  ${fmt(result.throughput)} req/s, p50 ${result.latency.p50Ms?.toFixed(2)} ms, p99 ${result.latency.p99Ms?.toFixed(2)} ms, ${result.errors} errors, other CPU ${result.cpu.otherCpu.map(pct).join("/")}`);
    rows.push({ what, transport, shape: shapeOf(target, concurrency), result, load1: loadavg()[0] });
  };

  if (wanted.has("bare")) {
    for (const t of transports) {
      const argv = ["--import", "tsx", join(HERE, t === "http" ? "../channel/bare-http.ts" : t === "ws" ? "bare-ws.ts" : "bare-xmpp.ts")];
      const env = t === "xmpp" ? { BARE_XMPP_SERVICE: prosody!.componentService, BARE_XMPP_DOMAIN: ECHO_COMPONENT, BARE_XMPP_SECRET: prosody!.components[ECHO_COMPONENT]! } : undefined;
      const bare = await startListeningChild(children, SERVER_CORE, argv, env);
      const target: TransportTarget =
        t === "http"
          ? { kind: "http", host: "127.0.0.1", port: bare.port }
          : t === "ws"
            ? { kind: "ws", url: `ws://127.0.0.1:${bare.port}${KMS_WS_PATH}`, connections }
            : { ...(kmsTarget("xmpp") as Extract<TransportTarget, { kind: "xmpp" }>), to: ECHO_COMPONENT };
      serverPids = [bare.child.pid!];
      try {
        await phase(`bare ${t === "http" ? "node:http" : t === "ws" ? "ws echo server" : "XMPP echo component"}`, t, target, () =>
          chLg.call<PhaseResult>({ cmd: "phase", op: "bare", port: 0, warmupMs, measureMs, transport: target }),
        );
      } finally {
        serverPids = [kms.child.pid!];
        await children.stop(bare.child);
      }
    }
  }
  if (wanted.has("ping")) {
    for (const t of transports) {
      const target = kmsTarget(t);
      await phase("ping", t, target, () => chLg.call<PhaseResult>({ cmd: "phase", op: "ping", port: 0, warmupMs, measureMs, transport: target }));
    }
  }
  if (wanted.has("get")) {
    for (const t of transports) {
      const target = kmsTarget(t);
      await phase("GK get", t, target, () => gkLg.call<PhaseResult>({ cmd: "phase", kind: "get", warmupMs, measureMs, concurrency, transport: target }));
    }
  }
  const rss = rssMiB(kms.child.pid!);
  const loadEnd = loadavg();

  // ---- report ----
  const row = (what: string, t: TransportKind) => rows.find((r) => r.what === what && r.transport === t);
  const bareOf = (t: TransportKind) => rows.find((r) => r.what.startsWith("bare") && r.transport === t);
  const opCeiling = (what: string) => (what === "ping" ? chCeil?.ping.opsPerSec : what === "GK get" ? gkCeil?.get.opsPerSec : undefined);
  // NaN (no replies) arrives over IPC as null.
  const ms = (v: number | null) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(2) : "–");
  const ratio = (x: number, y: number | undefined) => (y !== undefined && y > 0 ? pct(x / y) : "–");
  const header = ["operation", "transport", "load shape", "req/s", "p50 ms", "p99 ms", "errors", "vs crypto ceiling", "vs bare transport", "server CPU", "Prosody CPU", "loadgen CPU", "other CPU core0/core1", "load avg 1 min"];
  const line = (r: Row) => {
    const isOp = !r.what.startsWith("bare");
    const bare = r.transport !== "–" ? bareOf(r.transport) : undefined;
    return [
      r.what, r.transport, r.shape, fmt(r.result.throughput), ms(r.result.latency.p50Ms), ms(r.result.latency.p99Ms), fmt(r.result.errors),
      isOp ? ratio(r.result.throughput, opCeiling(r.what)) : "–",
      isOp && r.what === "ping" && bare ? ratio(r.result.throughput, bare.result.throughput) : "–",
      pct(r.result.cpu.serverCpu), r.transport === "xmpp" ? pct(r.result.cpu.sideCpu) : "–", pct(r.result.cpu.clientCpu),
      r.result.cpu.otherCpu.map(pct).join(" / "), r.load1.toFixed(2),
    ];
  };
  const ceilingRow = (name: string, ops: number | undefined) => (ops === undefined ? [] : [[name, "–", `best of 1 / ${concurrency} in flight, in process`, fmt(ops), "–", "–", "–", "–", "–", "–", "–", "–", "–", "–"]]);
  const body: string[][] = [header];
  for (const what of ["ping", "GK get"]) {
    for (const t of transports) {
      const r = row(what, t);
      if (r) body.push(line(r));
    }
  }
  body.push(...ceilingRow("ping crypto-only ceiling (core 0)", chCeil?.ping.opsPerSec));
  body.push(...ceilingRow("GK get crypto-only ceiling (core 0)", gkCeil?.get.opsPerSec));
  for (const t of transports) {
    const r = bareOf(t);
    if (r) body.push(line(r));
  }
  const errors = rows.filter((r) => r.result.errors > 0 || r.result.completed === 0);
  const { commit, srcDirty } = gitState(ROOT);
  const section = [
    `## Transports ${startedAt.toISOString()} (commit ${commit}${srcDirty ? ", src/ modified" : ""})${quick ? " QUICK (numbers mean nothing)" : ""}`,
    "",
    `- machine: ${machineLine()}`,
    `- load average (1 / 5 / 15 min): ${fmtLoad(loadStart)} at the start, ${fmtLoad(loadEnd)} at the end, on ${os.cpus().length} cores shared with other sessions: these figures are noisy (see the other-CPU column); re-run on a quiet machine before reading ratios`,
    `- one \`keyward dev\` KMS (dist/, SQLite, EC static key) for every row, on core ${SERVER_CORE}; Prosody (own temp config, loopback) on core ${prosodyCore}; load generators${pinned ? " and orchestrator" : ""} on core ${CLIENT_CORE}${TASKSET ? "" : " (UNPINNED: taskset missing)"}`,
    `- closed loop, ${concurrency} requests in flight on every transport: HTTP ${shapeOf(kmsTarget("http"), concurrency)} (hand-parsed keep-alive sockets), WebSocket ${shapeOf({ kind: "ws", url: "", connections }, concurrency)} frames \`{id, kmsMessage}\` matched by id, XMPP ${shapeOf({ kind: "ws", url: "", connections }, concurrency)} pipelined \`kms\` IQs (@xmpp/client sessions of one user, one resource each, through Prosody to the KMS component)`,
    `- ${warmupMs / 1000} s warm-up + ${measureMs / 1000} s measured per phase; ${channels} channels per load generator; ping: a fresh requestId per request, reply decrypted, status 200 and requestId checked; GK get: round robin over ${fmt(pre?.main ?? 0)} pre-created bound GKs, reply decrypted, status 200, the GK asked for, bound to the group's tail, one recipient`,
    `- ceilings: crypto-only = channel/ceiling.ts (ping) and gk/ceiling.ts (GK get) in this run, core 0, the bench's load generators idle${ceilingOther !== undefined ? ` (other CPU on core 0 meanwhile: ${pct(ceilingOther)})` : ""}, best of ${quick ? 1 : 3} windows × 2 modes (1 and ${concurrency} in flight); bare transports = a server answering a fixed ping-sized reply over the same transport, driven by the same load generator and shape: node:http (channel/bare-http.ts), a \`ws\` server (transports/bare-ws.ts), an XEP-0114 component (transports/bare-xmpp.ts, same Prosody)`,
    `- KMS RSS at the end: ${fmt(rss)} MiB; whole bench ${fmt((performance.now() - t0) / 1000)} s`,
    ...notes.map((n) => `- note: ${n}`),
    "",
    table(body),
    "",
    ...(noisy.length ? [`WARNING: other processes used more than 10% of a bench core during: ${noisy.join(", ")}; those numbers are low by about that much.`, ""] : []),
    ...(errors.length ? [`ERRORS: ${errors.map((r) => r.result.completed === 0 ? `${r.what} over ${r.transport}: NO reply completed in the window` : `${r.what} over ${r.transport}: ${r.result.errors} (first: ${r.result.firstError})`).join("; ")}`, ""] : []),
  ].join("\n");
  console.log(`\n${section}`);
  if (gk) log(`GK get request ${gk.getRequestBytes} B, ping request ${ch.pingRequestBytes} B`);
  if (a["section-out"]) writeFileSync(a["section-out"], section);
  if (!a["no-results"]) log(`appended to ${appendResults(ROOT, section)}`);
  if (errors.length) process.exitCode = 1;
}

async function cleanup(): Promise<void> {
  for (const c of cleanups.reverse()) await Promise.resolve(c()).catch((e: unknown) => log(`cleanup: ${String(e)}`));
  cleanups.length = 0;
  await children.stopAll();
}

await runBench(main, cleanup);
