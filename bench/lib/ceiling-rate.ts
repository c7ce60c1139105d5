/** One way of running an operation (1 or N in flight) and its best rate. */
export interface CeilingMode {
  readonly inFlight: number;
  readonly opsPerSec: number;
  /** CPU time of one operation in the best window (ms): 1 / opsPerSec. */
  readonly meanMs: number;
}

/** An operation's ceiling: measured sequentially and concurrently, the better of the two. */
export interface Ceiling {
  readonly sequential: CeilingMode;
  readonly concurrent: CeilingMode;
  /** The better of the two: the ceiling. */
  readonly opsPerSec: number;
}

/**
 * The rate measurement every crypto-ceiling process uses: `parallel` loops run `op` back to back;
 * a warm-up window, then `windows` windows of equal length over `measureMs`. The best window is
 * the ceiling (the machine is shared: load from elsewhere can only make a window slower); the
 * mean is reported beside it.
 *
 * @example
 * const { best, mean } = await measureRate((i) => work(i), { parallel: 32, warmupMs: 500, measureMs: 2000, windows: 4 });
 */
export async function measureRate(
  op: (i: number) => Promise<void> | void,
  opts: { readonly parallel: number; readonly warmupMs: number; readonly measureMs: number; readonly windows: number },
): Promise<{ best: number; mean: number }> {
  let i = 0;
  const loop = async (until: number): Promise<number> => {
    let n = 0;
    while (performance.now() < until) {
      await op(i++);
      n++;
    }
    return n;
  };
  const window = async (length: number): Promise<number> => {
    const t0 = performance.now();
    const counts = await Promise.all(Array.from({ length: opts.parallel }, () => loop(t0 + length)));
    return counts.reduce((a, b) => a + b, 0) / ((performance.now() - t0) / 1000);
  };
  await window(opts.warmupMs);
  const rates: number[] = [];
  for (let w = 0; w < opts.windows; w++) rates.push(await window(opts.measureMs / opts.windows));
  return { best: Math.max(...rates), mean: rates.reduce((a, b) => a + b, 0) / rates.length };
}
