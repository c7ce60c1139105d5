import { performance } from "node:perf_hooks";

/**
 * How late the event loop is running, in milliseconds: the signal for shedding load (§3: "429
 * when shedding load"). Counting requests in flight alone does not see overload here: most KMS
 * operations are short synchronous work, so the queue builds up in sockets the loop has not read
 * yet, not in requests it has started. A late timer sees that queue.
 *
 * A timer ticks every `intervalMs`; the lag is how much later than due the last tick ran, or, if
 * the loop is busy right now, how long the next tick has been overdue, so that requests at the
 * tail of a long batch of I/O see the lag as it is, not as it was at the last tick.
 *
 * @example
 * const lag = new EventLoopLag(10).start();
 * if (lag.currentMs() > 100) reply429();
 * lag.stop();
 */
export class EventLoopLag {
  private timer?: NodeJS.Timeout;
  private lastTick = performance.now();
  private lastLag = 0;

  constructor(private readonly intervalMs = 10) {}

  start(): this {
    this.lastTick = performance.now();
    this.timer = setInterval(() => {
      const now = performance.now();
      this.lastLag = Math.max(0, now - this.lastTick - this.intervalMs);
      this.lastTick = now;
    }, this.intervalMs);
    // Never keeps a process alive on its own.
    this.timer.unref();
    return this;
  }

  currentMs(): number {
    const overdue = performance.now() - this.lastTick - this.intervalMs;
    return Math.max(this.lastLag, overdue);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
