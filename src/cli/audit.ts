import { resolve } from "node:path";
import type { Command } from "commander";
import { loadConfig } from "../config/config.js";
import { AUDIT_GENESIS_HASH, verifyAuditChain, type AuditRecord, type AuditVerification } from "../store/audit.js";
import { openStore } from "../store/open-store.js";
import type { Store } from "../store/store.js";

/** Records read per round trip. */
const PAGE = 1000;

/**
 * Verifies a store's whole audit chain, page by page (§13, docs/audit.md): consecutive sequence
 * numbers from 1, each record's previous hash, each hash recomputed, and the stored head equal to
 * the last record (so that records removed from the end are found too).
 *
 * @example
 * const v = await verifyStoreAudit(store); if (!v.ok) console.error(v.seq, v.problem);
 */
export async function verifyStoreAudit(store: Store): Promise<AuditVerification> {
  let from = { seq: 0, hash: AUDIT_GENESIS_HASH };
  let count = 0;
  for (;;) {
    const page = await store.auditRecords({ after: from.seq, limit: PAGE });
    const v = verifyAuditChain(page, from);
    if (!v.ok) return { ...v, count: count + v.count };
    count += v.count;
    from = v.head;
    if (page.length < PAGE) break;
  }
  const head = await store.auditHead();
  if (head.seq !== from.seq || head.hash !== from.hash) {
    return { ok: false, count, seq: from.seq + 1, problem: `the log's head is record ${head.seq} but the records end at ${from.seq} (records removed or the head altered)` };
  }
  return { ok: true, count, head };
}

/** Filters of `keyward audit show`. */
export interface AuditFilter {
  /** Only records at or after this time (RFC 3339). */
  readonly since?: string;
  /** Only records whose actor or acted-for entity is this. */
  readonly entity?: string;
  /** Only records about this object URI. */
  readonly object?: string;
}

/**
 * Every record that passes `filter`, in order, page by page.
 *
 * @example
 * for await (const r of auditRecordsMatching(store, { entity: "alice@example.com" })) console.log(r.seq);
 */
export async function* auditRecordsMatching(store: Store, filter: AuditFilter): AsyncGenerator<AuditRecord> {
  const since = filter.since === undefined ? undefined : Date.parse(filter.since);
  if (since !== undefined && Number.isNaN(since)) throw new Error(`--since: '${filter.since}' is not a time (use RFC 3339, e.g. 2026-01-31T12:00:00Z)`);
  let after = 0;
  for (;;) {
    const page = await store.auditRecords({ after, limit: PAGE });
    for (const r of page) {
      if (since !== undefined && Date.parse(r.time) < since) continue;
      if (filter.entity !== undefined && r.actor !== filter.entity && r.entity !== filter.entity) continue;
      if (filter.object !== undefined && r.object !== filter.object) continue;
      yield r;
    }
    if (page.length < PAGE) return;
    after = page[page.length - 1]!.seq;
  }
}

/** One record as a line of text: seq, time, operation, status, who, object, and the rest. */
export function formatAuditRecord(r: AuditRecord): string {
  const who = r.actor === undefined ? "(unauthenticated)" : r.entity !== undefined ? `${r.actor} for ${r.entity}` : r.actor;
  return [
    String(r.seq), r.time, r.operation, String(r.status), who, r.object ?? "-",
    ...(r.code !== undefined ? [r.code] : []),
    ...(r.recipients !== undefined ? [`recipients=${r.recipients.join(",")}`] : []),
    ...(r.decision !== undefined ? [`decision="${r.decision}"`] : []),
  ].join("  ");
}

async function withStore<T>(dir: string, use: (store: Store) => Promise<T>): Promise<T> {
  const store = await openStore(loadConfig(resolve(dir)).store);
  try {
    return await use(store);
  } finally {
    await store.close();
  }
}

/** `keyward audit verify --dir D` and `keyward audit show --dir D [--since T] [--entity E] [--object URI] [--json]`. */
export function registerAuditCommands(program: Command): void {
  const audit = program.command("audit").description("the audit log of a data directory's store (PROTOCOL.md §13, docs/audit.md)");
  audit
    .command("verify")
    .description("verify the audit log's hash chain: exit 0 with the record count, exit 1 naming the first broken record")
    .requiredOption("--dir <dir>", "the data directory")
    .action(async (o: { dir: string }) => {
      const v = await withStore(o.dir, verifyStoreAudit);
      if (v.ok) {
        console.log(`keyward: audit log verified: ${v.count} records (head ${v.head.seq} ${v.head.hash})`);
      } else {
        console.error(`keyward: audit log broken at record ${v.seq}: ${v.problem} (${v.count} records verified before it)`);
        process.exitCode = 1;
      }
    });
  audit
    .command("show")
    .description("print audit records, oldest first")
    .requiredOption("--dir <dir>", "the data directory")
    .option("--since <time>", "only records at or after this time (RFC 3339)")
    .option("--entity <entity>", "only records whose actor, or the user acted for, is this entity")
    .option("--object <uri>", "only records about this object URI")
    .option("--json", "one JSON record per line (the stored record, with prev and hash)")
    .action(async (o: { dir: string; since?: string; entity?: string; object?: string; json?: boolean }) => {
      await withStore(o.dir, async (store) => {
        const filter = { ...(o.since !== undefined ? { since: o.since } : {}), ...(o.entity !== undefined ? { entity: o.entity } : {}), ...(o.object !== undefined ? { object: o.object } : {}) };
        for await (const r of auditRecordsMatching(store, filter)) process.stdout.write(`${o.json ? JSON.stringify(r) : formatAuditRecord(r)}\n`);
      });
    });
}
