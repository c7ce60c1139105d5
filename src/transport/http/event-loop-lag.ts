import { performance } from "node:perf_hooks";

/** Weight of the newest sample: a lag must last several ticks to count, one pause does not. */
const ALPHA = 0.2;

/**
 * How late the event loop is running, in milliseconds, smoothed: the signal for shedding load
 * (§3: "429 when shedding load"). Counting requests in flight alone does not see overload here:
 * most KMS operations are short synchronous work, so the queue builds up in sockets the loop has
 * not read yet, not in requests it has started. A late timer sees that queue.
 *
 * A timer ticks every `intervalMs`; each tick measures how much later than due it ran, and the
 * reading is an exponentially weighted average of those samples. Under sustained overload every
 * tick is late and the average follows within a few ticks; a single pause (a GC, one slow
 * synchronous call) moves it by a fifth of its length, so it does not turn clients away.
 *
 * @example
 * const lag = new EventLoopLag(10).start();
 * if (lag.currentMs() > 100) reply429();
 * lag.stop();
 */
export class EventLoopLag {
  private timer?: NodeJS.Timeout;
  private lastTick = performance.now();
  private smoothed = 0;

  constructor(private readonly intervalMs = 10) {}

  start(): this {
    this.lastTick = performance.now();
    this.timer = setInterval(() => {
      const now = performance.now();
      const sample = Math.max(0, now - this.lastTick - this.intervalMs);
      this.smoothed += ALPHA * (sample - this.smoothed);
      this.lastTick = now;
    }, this.intervalMs);
    // Never keeps a process alive on its own.
    this.timer.unref();
    return this;
  }

  currentMs(): number {
    return this.smoothed;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
