/**
 * Seeds GKs into a KMS's store through the Store interface and the barrier the server uses
 * (`openStore` + `Barrier.open` with the data dir's master key; `createGk` with the key sealed
 * under `gk:<uri>`, exactly the record the `create /gks` handler stores), while the server is
 * stopped. Used by `npm run bench` to reach 1,000,000 stored GKs in seconds instead of the ~11
 * minutes the protocol takes; the GKs differ from protocol-created ones only in that nobody
 * received them wrapped and signed. On SQLite, 5,000 `createGk` calls are in flight at once, which
 * the store's group commit writes in one transaction each; PostgreSQL gets `inFlight` calls at
 * once. Job in SEED_JOB (JSON), one JSON line (SeedReport) on stdout.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { statSync } from "node:fs";
import { loadConfig } from "../../src/config/config.js";
import { objectUri } from "../../src/protocol/uri.js";
import { Barrier } from "../../src/server/barrier/barrier.js";
import { loadMasterKey } from "../../src/server/data-dir.js";
import { openStore } from "../../src/store/open-store.js";
import type { BlockRef } from "../../src/store/store.js";

export interface SeedJob {
  readonly dataDir: string;
  /** The KEYWARD_* settings the server runs with (store URL etc.). */
  readonly env: Record<string, string>;
  readonly count: number;
  /** The GKs' requester and the block they are bound to. */
  readonly requester: string;
  readonly block: BlockRef;
  /** How many of the seeded uris to return (spread over the whole run). */
  readonly sample: number;
  /** createGk calls in flight. */
  readonly inFlight: number;
}

export interface SeedReport {
  readonly count: number;
  readonly seconds: number;
  readonly perSec: number;
  readonly sample: string[];
  /** Size of the SQLite file (+ WAL) after seeding; NaN for PostgreSQL. */
  readonly dbBytes: number;
}

const job = JSON.parse(process.env.SEED_JOB ?? "{}") as SeedJob;
const config = loadConfig(job.dataDir, { ...process.env, ...job.env });
const store = await openStore(config.store);
await store.migrate();
const barrier = await Barrier.open(store, loadMasterKey(config));
const every = Math.max(1, Math.floor(job.count / Math.max(1, job.sample)));
const sample: string[] = [];
const t0 = performance.now();
let next = 0;
const createOne = (): Promise<void> => {
  const i = next++;
  const uri = objectUri(config.authority, "gks", randomUUID());
  if (i % every === 0 && sample.length < job.sample) sample.push(uri);
  return store.createGk({
    uri,
    requester: job.requester,
    created: new Date(Math.floor(Date.now() / 1000) * 1000),
    sealedKey: barrier.seal(`gk:${uri}`, randomBytes(32)),
    block: job.block,
  });
};
// Batches of 5,000 in flight: SQLite's store commits the GKs created in one turn of the event
// loop in one transaction (its group commit), PostgreSQL takes them over its pool.
const inFlight = config.store.kind === "sqlite" ? 5000 : job.inFlight;
await Promise.all(
  Array.from({ length: inFlight }, async () => {
    while (next < job.count) await createOne();
  }),
);
const seconds = (performance.now() - t0) / 1000;
await store.close();
const size = (p: string) => {
  try {
    return statSync(p).size;
  } catch {
    return 0;
  }
};
const dbBytes = config.store.kind === "sqlite" ? size(config.store.path) + size(`${config.store.path}-wal`) : Number.NaN;
const report: SeedReport = { count: job.count, seconds, perSec: job.count / seconds, sample, dbBytes };
console.log(JSON.stringify(report));
