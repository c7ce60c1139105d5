/**
 * CPU accounting of a measured window: the CPU the bench's own processes used (server, load
 * generator), and the busy time of the bench cores NOT used by them (other work on the machine),
 * from /proc. Also the bounded wait for quiet cores before a phase.
 */
import { coreTicks, cpuSeconds } from "./proc.js";
import { log } from "./harness.js";

export interface CpuSample {
  readonly t: number;
  readonly server: number;
  readonly client: number;
  readonly ours: number;
  /** CPU seconds of the side processes (e.g. the XMPP server between client and KMS). */
  readonly side: number;
  readonly cores: { busy: number; total: number }[];
}

export interface CpuUse {
  /** CPU of the server processes over the window, in cores (1.0 = one full core). */
  readonly serverCpu: number;
  /** CPU of the load generator(s), in cores. */
  readonly clientCpu: number;
  /** Busy time per bench core not used by the bench's processes (fraction of that core). */
  readonly otherCpu: number[];
  /** CPU of the side processes (`cpuSampler`'s `side`), in cores; 0 without any. */
  readonly sideCpu: number;
}

const sum = (pids: readonly number[]) => pids.reduce((a, p) => a + (cpuSeconds(p) || 0), 0);

/**
 * A sampler of the given processes; `others` are further processes of ours (e.g. the orchestrator,
 * idle loadgens); `side` are processes of ours reported apart (e.g. the XMPP server a transport
 * goes through). Neither counts as "other" CPU.
 */
export function cpuSampler(
  cores: readonly number[],
  server: () => readonly number[],
  client: () => readonly number[],
  others: () => readonly number[] = () => [],
  side: () => readonly number[] = () => [],
): () => CpuSample {
  return () => {
    const s = sum(server());
    const c = sum(client());
    const d = sum(side());
    return { t: performance.now(), server: s, client: c, side: d, ours: s + c + d + sum(others()), cores: cores.map((k) => coreTicks(k)) };
  };
}

export function cpuBetween(a: CpuSample, b: CpuSample): CpuUse {
  const secs = (b.t - a.t) / 1000;
  const ours = (b.ours - a.ours) / secs;
  // Our processes' CPU cannot be split per core in general: spread it over the cores in proportion to their busy time.
  const busy = a.cores.map((x, i) => (b.cores[i]!.busy - x.busy) / (b.cores[i]!.total - x.total));
  const totalBusy = busy.reduce((x, y) => x + y, 0) || 1;
  return {
    serverCpu: (b.server - a.server) / secs,
    clientCpu: (b.client - a.client) / secs,
    otherCpu: busy.map((u) => Math.max(0, u - (ours * u) / totalBusy)),
    sideCpu: (b.side - a.side) / secs,
  };
}

/**
 * Runs `phase` (a closed-loop phase of `warmupMs` + `measureMs` in a load generator) and samples
 * CPU at the start and the end of its measured window.
 */
export async function measureCpu<T>(sample: () => CpuSample, warmupMs: number, measureMs: number, phase: () => Promise<T>): Promise<T & { cpu: CpuUse }> {
  let first: CpuSample | undefined;
  let last: CpuSample | undefined;
  const a = setTimeout(() => (first = sample()), warmupMs);
  const b = setTimeout(() => (last = sample()), warmupMs + measureMs);
  const result = await phase();
  clearTimeout(a);
  clearTimeout(b);
  first ??= sample();
  last ??= sample();
  return { ...result, cpu: cpuBetween(first, last) };
}

/** Waits up to `seconds` until every core in `cores` is < 10% busy (minus this process) for 3 s in a row. */
export async function waitQuiet(cores: readonly number[], seconds: number): Promise<{ busy: number[]; waited: number }> {
  const t0 = performance.now();
  let quietFor = 0;
  for (;;) {
    const a = cores.map((k) => coreTicks(k));
    const s0 = cpuSeconds(process.pid);
    await new Promise((r) => setTimeout(r, 1000));
    const b = cores.map((k) => coreTicks(k));
    const mine = (cpuSeconds(process.pid) - s0) / cores.length;
    const busy = a.map((x, i) => Math.max(0, (b[i]!.busy - x.busy) / (b[i]!.total - x.total) - mine));
    const waited = (performance.now() - t0) / 1000;
    quietFor = busy.every((u) => u < 0.1) ? quietFor + 1 : 0;
    if (quietFor >= 3 || waited >= seconds || !busy.every(Number.isFinite)) return { busy, waited };
    if (quietFor === 0) log(`other processes are using the bench cores (${busy.map((u) => `${(100 * u).toFixed(0)}%`).join(", ")}); waiting (${waited.toFixed(0)}/${seconds} s)`);
  }
}
