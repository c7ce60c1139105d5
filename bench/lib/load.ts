import type { PostClient, SimpleResponse } from "./raw-http.js";
import { latencyStats, type LatencyStats } from "./stats.js";

export interface PhaseOptions {
  readonly client: PostClient;
  /** Requests in flight (one per connection). */
  readonly concurrency: number;
  readonly warmupMs: number;
  readonly measureMs: number;
  /** The next request body, or undefined when the pre-built supply is exhausted (ends the phase). */
  next(worker: number): string | undefined;
  /** Checks a response; returns an error description, or undefined when it is the expected reply. */
  check(response: SimpleResponse, body: string, worker: number): string | undefined;
  /**
   * An HTTP status that means "shed by the server" (e.g. 429): such replies are neither successes
   * nor errors; they are counted apart, with their own latencies (`shed` in the result).
   */
  readonly shedStatus?: number;
}

export interface PhaseResult {
  /** Successful replies completed inside the measured window, per second. */
  readonly throughput: number;
  readonly latency: LatencyStats;
  /** Length of the measured window (shorter than asked if the request supply ran out). */
  readonly measuredMs: number;
  readonly completed: number;
  readonly errors: number;
  readonly firstError?: string;
  readonly exhausted: boolean;
  /** Slowest and fastest whole second of the window (req/s): a wide spread means a noisy run. */
  readonly perSecondMin: number;
  readonly perSecondMax: number;
  /** Replies with `shedStatus` completed in the window, and their latencies (only when `shedStatus` was set). */
  readonly shed?: { readonly count: number; readonly perSecond: number; readonly latency: LatencyStats };
}

/**
 * A closed loop: `concurrency` workers, each sends one request, waits for its reply, sends the
 * next. Replies completing in [warm-up end, warm-up end + measure] are counted and their
 * latencies recorded (Float64Array, milliseconds); the throughput is that count over the window.
 */
export async function runPhase(o: PhaseOptions): Promise<PhaseResult> {
  const latencies = new Float64Array(4_000_000);
  const completions = new Float64Array(latencies.length);
  let n = 0;
  const shedLatencies: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  let exhaustedAt = Infinity;
  const start = performance.now();
  const measureFrom = start + o.warmupMs;
  const measureTo = measureFrom + o.measureMs;

  const worker = async (w: number): Promise<void> => {
    for (;;) {
      const t0 = performance.now();
      if (t0 >= measureTo || t0 >= exhaustedAt) return;
      const body = o.next(w);
      if (body === undefined) {
        exhaustedAt = Math.min(exhaustedAt, t0);
        return;
      }
      let problem: string | undefined;
      let shed = false;
      try {
        const res = await o.client.post(w, body);
        shed = res.status === o.shedStatus;
        if (!shed) problem = o.check(res, body, w);
      } catch (e) {
        problem = e instanceof Error ? e.message : String(e);
      }
      const t1 = performance.now();
      if (t1 < measureFrom || t1 > measureTo) continue;
      if (shed) {
        shedLatencies.push(t1 - t0);
        continue;
      }
      if (problem !== undefined) {
        errors++;
        firstError ??= problem;
        continue;
      }
      if (n < latencies.length) {
        completions[n] = t1;
        latencies[n++] = t1 - t0;
      }
    }
  };
  await Promise.all(Array.from({ length: o.concurrency }, (_, w) => worker(w)));
  const windowEnd = Math.min(measureTo, exhaustedAt);
  const measuredMs = Math.max(0, windowEnd - measureFrom);
  // Replies counted only up to the end of the window actually measured (the supply may have run
  // out while some requests were still in flight).
  let kept = 0;
  const seconds = new Float64Array(Math.max(1, Math.floor(measuredMs / 1000)));
  for (let i = 0; i < n; i++) {
    if (completions[i]! > windowEnd) continue;
    latencies[kept++] = latencies[i]!;
    const s = Math.floor((completions[i]! - measureFrom) / 1000);
    if (s < seconds.length) seconds[s]!++;
  }
  n = kept;
  return {
    throughput: measuredMs > 0 ? n / (measuredMs / 1000) : 0,
    latency: latencyStats(latencies.subarray(0, n)),
    measuredMs,
    completed: n,
    errors,
    ...(firstError !== undefined ? { firstError } : {}),
    exhausted: exhaustedAt !== Infinity,
    perSecondMin: Math.min(...seconds),
    perSecondMax: Math.max(...seconds),
    ...(o.shedStatus !== undefined
      ? { shed: { count: shedLatencies.length, perSecond: measuredMs > 0 ? shedLatencies.length / (measuredMs / 1000) : 0, latency: latencyStats(Float64Array.from(shedLatencies)) } }
      : {}),
  };
}
