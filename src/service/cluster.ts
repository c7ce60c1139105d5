/**
 * `keyward serve --workers N`: N worker processes (node:cluster) serving one data directory on one
 * listening address. The primary only supervises: it validates the configuration, forks the
 * workers, restarts a worker that dies unexpectedly (with a growing delay when one keeps dying),
 * and on close() asks every worker to stop accepting connections, let in-flight requests finish and
 * exit. Each worker is a complete KMS (`serveDataDir`): its own SQLite connection to the shared
 * file (WAL; SQLite serialises the writers), its own caches and purge timer. Nothing is shared in
 * memory: a channel opened on one worker is used on another through the store.
 *
 * With one worker the KMS runs in this process, without cluster.
 *
 * Workers run this module as their entry point (`cluster.setupPrimary({ exec: <this file> })`), so
 * they do not depend on how the primary was started (CLI, a test script, `node --import tsx`).
 */
import cluster, { type Worker } from "node:cluster";
import os from "node:os";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { loadConfig, type KeywardConfig } from "../config/config.js";
import type { Kms } from "./kms.js";
import { serveDataDir, WORKER_SLOT_ENV } from "./start.js";

/** The served KMS, as `serveWorkers` returns it once every worker listens. */
export interface ServedKms {
  /** The listening origin (`http://host:port`). */
  readonly url: string;
  readonly config: KeywardConfig;
  /** The number of worker processes (1: in-process). */
  readonly workers: number;
  /** PIDs of the processes serving now: the workers, or this process with one worker. */
  pids(): number[];
  /** Stops accepting connections, lets in-flight requests finish, and waits for every worker to exit. */
  close(): Promise<void>;
}

export interface ServeWorkersOptions {
  /** Start-up and lifecycle lines (default: stdout). */
  readonly log?: (line: string) => void;
  /** Worker deaths and restarts (default: stderr). */
  readonly warn?: (line: string) => void;
  /** How long a worker may take to finish in-flight requests on close before it exits anyway (default 10 s). */
  readonly shutdownGraceMs?: number;
}

/** First restart delay after a worker died; doubled for each further early death, up to the maximum. */
const RESTART_MIN_MS = 100;
const RESTART_MAX_MS = 30_000;
/** A worker that served this long before dying resets the restart delay. */
const STABLE_MS = 10_000;
const DEFAULT_GRACE_MS = 10_000;

const WORKER_FLAG = "--keyward-cluster-worker";
const THIS_FILE = fileURLToPath(import.meta.url);

type FromWorker = { readonly keyward: "listening"; readonly url: string } | { readonly keyward: "failed"; readonly message: string };
type ToWorker = { readonly keyward: "shutdown"; readonly graceMs: number };

/**
 * Serves the KMS of `dataDir` with `workers` processes (default: config `workers` /
 * `KEYWARD_WORKERS`, else `os.availableParallelism()`); resolves once every worker listens and
 * prints `keyward: KMS kms://<authority> listening on <url> (N workers)` (after one
 * `keyward: worker <pid> listening` line per worker). Configuration errors are thrown before any
 * worker starts; a worker that fails to start fails the whole call (the others are stopped).
 *
 * @example
 * const served = await serveWorkers("/var/lib/keyward", 4);
 * process.once("SIGTERM", () => void served.close().then(() => process.exit(0)));
 */
export async function serveWorkers(dataDir: string, workers?: number, options: ServeWorkersOptions = {}): Promise<ServedKms> {
  const log = options.log ?? ((line: string) => console.log(line));
  const config = loadConfig(resolve(dataDir));
  // An in-memory SQLite store lives in one process: workers would each have their own.
  const inMemory = config.store.kind === "sqlite" && config.store.path === ":memory:";
  const count = workers ?? config.workers ?? (inMemory ? 1 : os.availableParallelism());
  if (!Number.isSafeInteger(count) || count < 1) throw new RangeError(`the number of workers must be a positive integer (got ${count})`);
  if (inMemory && count > 1) throw new Error(`${count} workers cannot share an in-memory store (storeUrl sqlite::memory:): use one worker or a database file`);
  if (count === 1) {
    const { kms, url } = await serveDataDir(config.dataDir);
    log(`keyward: KMS kms://${config.authority} listening on ${url} (1 worker)`);
    return { url, config, workers: 1, pids: () => [process.pid], close: () => kms.close() };
  }
  if (!cluster.isPrimary) throw new Error("serveWorkers: a cluster worker cannot start workers of its own");
  return new Primary(config, count, {
    log,
    warn: options.warn ?? ((line: string) => console.error(line)),
    graceMs: options.shutdownGraceMs ?? DEFAULT_GRACE_MS,
  }).start();
}

interface Slot {
  worker?: Worker;
  pid?: number;
  listening: boolean;
  startedAt: number;
  /** Consecutive early deaths (before listening or within STABLE_MS). */
  failures: number;
  restartTimer?: NodeJS.Timeout;
  /** What the worker reported before it died at start-up. */
  error?: string;
}

class Primary {
  private readonly slots: Slot[];
  private url?: string;
  private started = false;
  private closing?: Promise<void>;
  private startup?: { resolve: (s: ServedKms) => void; reject: (e: Error) => void };
  private allExited?: () => void;

  constructor(
    private readonly config: KeywardConfig,
    private readonly count: number,
    private readonly opts: { log: (l: string) => void; warn: (l: string) => void; graceMs: number },
  ) {
    this.slots = Array.from({ length: count }, () => ({ listening: false, startedAt: 0, failures: 0 }));
  }

  start(): Promise<ServedKms> {
    // Node's default scheduler on Linux (round-robin) accepts every connection in the primary and
    // hands it to a worker over IPC; a connection handed to a worker that dies before taking it is
    // never closed nor given to another worker (lib/internal/cluster/round_robin_handle.js), so its
    // client hangs until it times out. With SCHED_NONE the workers accept from the shared socket
    // themselves: what waits in the backlog goes to the surviving workers, and only connections the
    // dead worker had accepted fail (reset). NODE_CLUSTER_SCHED_POLICY=rr chooses round-robin.
    if (!process.env.NODE_CLUSTER_SCHED_POLICY) cluster.schedulingPolicy = cluster.SCHED_NONE;
    cluster.setupPrimary({ exec: THIS_FILE, args: [WORKER_FLAG, this.config.dataDir], silent: false });
    return new Promise<ServedKms>((resolveStart, rejectStart) => {
      this.startup = { resolve: resolveStart, reject: rejectStart };
      for (const slot of this.slots) this.fork(slot);
    });
  }

  private fork(slot: Slot): void {
    // The slot number (stable across restarts): only slot 0 holds the XMPP component link (start.ts).
    const worker = cluster.fork({ [WORKER_SLOT_ENV]: String(this.slots.indexOf(slot)) });
    Object.assign(slot, { worker, pid: worker.process.pid, listening: false, startedAt: Date.now(), error: undefined });
    worker.on("message", (m: FromWorker) => {
      if (slot.worker !== worker || typeof m !== "object" || m === null) return;
      if (m.keyward === "failed") slot.error = m.message;
      if (m.keyward !== "listening") return;
      slot.listening = true;
      this.url = m.url;
      this.opts.log(`keyward: worker ${worker.process.pid} listening`);
      if (this.closing) this.tell(worker, { keyward: "shutdown", graceMs: this.opts.graceMs });
      else if (!this.started && this.slots.every((s) => s.listening)) this.ready();
    });
    // The IPC channel failing (e.g. a send to a worker that just died) must not crash the primary.
    worker.on("error", (e) => this.opts.warn(`keyward: worker ${worker.process.pid}: ${e.message}`));
    worker.on("exit", (code, signal) => this.exited(slot, worker, code, signal));
  }

  private ready(): void {
    this.started = true;
    const url = this.url!;
    this.opts.log(`keyward: KMS kms://${this.config.authority} listening on ${url} (${this.count} workers)`);
    this.startup?.resolve({
      url,
      config: this.config,
      workers: this.count,
      pids: () => this.slots.flatMap((s) => (s.worker && s.pid !== undefined ? [s.pid] : [])),
      close: () => this.close(),
    });
    this.startup = undefined;
  }

  private exited(slot: Slot, worker: Worker, code: number | null, signal: string | null): void {
    if (slot.worker !== worker) return;
    const wasListening = slot.listening;
    slot.worker = undefined;
    slot.listening = false;
    const how = signal ? `signal ${signal}` : `code ${code}`;
    if (this.closing) {
      if (this.slots.every((s) => !s.worker)) this.allExited?.();
      return;
    }
    if (!this.started) {
      // A worker that cannot start (port taken, store unreadable, ...) will not start on a retry either.
      const reason = slot.error ? `: ${slot.error}` : "";
      const startup = this.startup;
      this.startup = undefined;
      const failure = new Error(`worker ${worker.process.pid} exited (${how}) before listening${reason}`);
      void this.close().then(
        () => startup?.reject(failure),
        () => startup?.reject(failure),
      );
      return;
    }
    // A worker that died before listening or soon after is likely to die again: back off.
    const early = !wasListening || Date.now() - slot.startedAt < STABLE_MS;
    slot.failures = early ? slot.failures + 1 : 0;
    const delay = Math.min(RESTART_MIN_MS * 2 ** Math.max(0, slot.failures - 1), RESTART_MAX_MS);
    this.opts.warn(`keyward: worker ${worker.process.pid} died (${how})${slot.error ? `: ${slot.error}` : ""}; restarting it in ${delay} ms`);
    slot.restartTimer = setTimeout(() => {
      slot.restartTimer = undefined;
      if (!this.closing) this.fork(slot);
    }, delay);
  }

  private tell(worker: Worker, message: ToWorker): void {
    if (!worker.isConnected()) return;
    worker.send(message, undefined, () => {}); // a worker that died meanwhile is handled by "exit"
  }

  /** Asks every worker to stop gracefully; kills those still running after the grace period. */
  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolveClose, rejectClose) => {
      for (const slot of this.slots) {
        if (slot.restartTimer) clearTimeout(slot.restartTimer);
        slot.restartTimer = undefined;
      }
      let killed = 0;
      const force = setTimeout(() => {
        for (const slot of this.slots) {
          if (!slot.worker) continue;
          killed++;
          this.opts.warn(`keyward: worker ${slot.pid} did not stop within ${this.opts.graceMs + 2000} ms; killing it`);
          slot.worker.process.kill("SIGKILL");
        }
      }, this.opts.graceMs + 2000);
      this.allExited = () => {
        clearTimeout(force);
        if (killed > 0) rejectClose(new Error(`${killed} worker(s) had to be killed`));
        else resolveClose();
      };
      for (const slot of this.slots) if (slot.worker) this.tell(slot.worker, { keyward: "shutdown", graceMs: this.opts.graceMs });
      if (this.slots.every((s) => !s.worker)) this.allExited();
    });
    return this.closing;
  }
}

/** A worker process: serve, report to the primary, stop when it says so (or on SIGTERM). */
async function runWorker(dataDir: string): Promise<void> {
  let kms: Kms | undefined;
  let stopping: { graceMs: number } | undefined;
  const send = (m: FromWorker) => new Promise<void>((r) => (process.send ? process.send(m, undefined, {}, () => r()) : r()));
  const stop = async (graceMs: number) => {
    if (!kms) {
      stopping ??= { graceMs }; // still starting: stop right after listen
      return;
    }
    const closing = kms.close();
    kms = undefined;
    const deadline = new Promise<void>((r) => setTimeout(r, graceMs).unref());
    await Promise.race([closing.catch(() => {}), deadline]);
    process.exit(0);
  };
  process.on("message", (m: ToWorker) => {
    if (typeof m === "object" && m !== null && m.keyward === "shutdown") void stop(m.graceMs);
  });
  process.on("SIGTERM", () => void stop(DEFAULT_GRACE_MS));
  // Ctrl-C reaches the whole process group: the primary coordinates the shutdown.
  process.on("SIGINT", () => {});
  try {
    const served = await serveDataDir(dataDir);
    kms = served.kms;
    void send({ keyward: "listening", url: served.url });
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    console.error(`keyward: worker ${process.pid}: ${message}`);
    await send({ keyward: "failed", message });
    process.exit(1);
  }
  if (stopping) await stop(stopping.graceMs);
}

if (cluster.isWorker && process.argv[2] === WORKER_FLAG && process.argv[1] !== undefined && resolve(process.argv[1]) === THIS_FILE) {
  void runWorker(process.argv[3] ?? "");
}
