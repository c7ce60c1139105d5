import Database from "better-sqlite3";
import type {
  BlockRecord,
  ChainRecord,
  BlockRef,
  ChannelRecord,
  EntityKeyRecord,
  GkRecord,
  MembershipChange,
  NewBlock,
  CountOutcome,
  RecordOutcome,
  RegisterKeyOutcome,
  Store,
} from "../store.js";
import { StoreUnavailableError } from "../store.js";
import { auditRecordFromRow, nextAuditRecord, type AuditEvent, type AuditRecord } from "../audit.js";
import { sqliteMigrations } from "./migrations.js";

/**
 * SQLite result codes (with their extended forms, `SQLITE_IOERR_WRITE` etc.) that mean the data
 * file cannot be opened or written now: read-only file or file system, I/O error, disk full, and
 * a lock still held by another connection once `busy_timeout` has run out.
 */
const UNAVAILABLE_CODES = ["SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_FULL", "SQLITE_BUSY"];

/**
 * A better-sqlite3 error as a {@link StoreUnavailableError} when it means "cannot open / cannot
 * write", else undefined (a constraint violation or a bug stays what it is).
 *
 * @example
 * classifySqliteError(Object.assign(new Error("attempt to write a readonly database"), { code: "SQLITE_READONLY" }))?.code; // "SQLITE_READONLY"
 */
export function classifySqliteError(e: unknown): StoreUnavailableError | undefined {
  if (e instanceof StoreUnavailableError) return e;
  if (!(e instanceof Error)) return undefined;
  const code = (e as { code?: unknown }).code;
  if (typeof code === "string" && UNAVAILABLE_CODES.some((c) => code === c || code.startsWith(`${c}_`))) {
    return new StoreUnavailableError("sqlite", code, e.message, { cause: e });
  }
  // better-sqlite3 after close(): the store is shutting down.
  if (e instanceof TypeError && /database connection is not open/i.test(e.message)) {
    return new StoreUnavailableError("sqlite", "SQLITE_CLOSED", e.message, { cause: e });
  }
  return undefined;
}

interface PendingRecord {
  readonly uri: string;
  /** undefined: count the message only (a refusal answered before the replay check). */
  readonly requestId: string | undefined;
  readonly limit: number;
  resolve?: (outcome: RecordOutcome) => void;
  reject?: (e: unknown) => void;
}

interface KeyRow {
  entity: string;
  kid: string;
  jwk: string;
  created_at: number;
  revoked_at: number | null;
}

interface GkRow {
  uri: string;
  requester: string;
  created_at: number;
  sealed_key: string;
  block_hash: string | null;
  chain_uri: string | null;
  block_position: number | null;
}

interface ChainRow {
  uri: string;
  requester: string;
  created_at: number;
  length: number;
  tail_hash: string;
}

interface BlockRow {
  chain_uri: string;
  position: number;
  hash: string;
  jws: string;
  creator: string;
  created_at: number;
}

interface ChannelRow {
  uri: string;
  entity: string;
  client_id: string;
  credential_kind: "bearer" | "certificate";
  credential_thumbprint: string | null;
  client_key_thumbprint: string;
  sealed_key: string;
  created_at: number;
  expires_at: number;
  message_count: number;
}

/**
 * The embedded store: one SQLite file in WAL mode (better-sqlite3, synchronous calls wrapped in
 * the async Store interface). Several processes may open the same file: SQLite serialises writers,
 * and every check-then-write below runs in one IMMEDIATE transaction.
 *
 * @example
 * const store = new SqliteStore("/var/lib/keyward/keyward.db");
 * await store.migrate();
 */
export class SqliteStore implements Store {
  private readonly db: Database.Database;
  private readonly stmts;
  private readonly transactions;
  private pendingRecords: Required<PendingRecord>[] = [];
  private pendingGks: { gk: GkRecord; audit: AuditEvent | undefined; resolve: () => void; reject: (e: unknown) => void }[] = [];
  private pendingAudits: { event: AuditEvent; resolve: (r: AuditRecord) => void; reject: (e: unknown) => void }[] = [];

  constructor(path: string) {
    this.db = new Database(path);
    this.db.pragma("journal_mode = WAL");
    // NORMAL in WAL mode is durable against process crashes (not power loss on every commit);
    // the trade-off is documented in docs/operations.md.
    this.db.pragma("synchronous = NORMAL");
    this.db.pragma("busy_timeout = 5000");
    this.db.pragma("foreign_keys = ON");
    this.migrateSync();
    this.stmts = this.prepare();
    this.transactions = this.buildTransactions();
  }

  private migrateSync(): void {
    this.db.exec("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)");
    const apply = this.db.transaction(() => {
      const done = new Set(
        (this.db.prepare("SELECT version FROM schema_migrations").all() as { version: number }[]).map((r) => r.version),
      );
      for (const m of sqliteMigrations) {
        if (done.has(m.version)) continue;
        this.db.exec(m.sql);
        this.db.prepare("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)").run(m.version, m.name, Date.now());
      }
    });
    apply.immediate();
  }

  private prepare() {
    const db = this.db;
    return {
      getKeyring: db.prepare("SELECT sealed FROM keyring WHERE id = 1").pluck(),
      insertKeyring: db.prepare("INSERT INTO keyring (id, sealed) VALUES (1, ?) ON CONFLICT (id) DO NOTHING"),
      insertChannel: db.prepare(
        `INSERT INTO channels (uri, entity, client_id, credential_kind, credential_thumbprint, client_key_thumbprint, sealed_key, created_at, expires_at, message_count)
         VALUES (@uri, @entity, @client_id, @credential_kind, @credential_thumbprint, @client_key_thumbprint, @sealed_key, @created_at, @expires_at, @message_count)
         ON CONFLICT (client_key_thumbprint) DO NOTHING`,
      ),
      getChannel: db.prepare("SELECT * FROM channels WHERE uri = ?"),
      deleteChannel: db.prepare("DELETE FROM channels WHERE uri = ?"),
      deleteRequests: db.prepare("DELETE FROM channel_requests WHERE channel_uri = ?"),
      countChannel: db.prepare("UPDATE channels SET message_count = message_count + 1 WHERE uri = ? AND message_count < ?"),
      deleteRequest: db.prepare("DELETE FROM channel_requests WHERE channel_uri = ? AND request_id = ?"),
      insertRequest: db.prepare("INSERT INTO channel_requests (channel_uri, request_id) VALUES (?, ?) ON CONFLICT DO NOTHING"),
      channelExists: db.prepare("SELECT 1 FROM channels WHERE uri = ?").pluck(),
      expired: db.prepare("SELECT uri FROM channels WHERE expires_at < ?").pluck(),
      insertKey: db.prepare("INSERT INTO entity_keys (entity, kid, jwk, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"),
      hasKid: db.prepare("SELECT 1 FROM entity_keys WHERE entity = ? AND kid = ?").pluck(),
      countActiveKeys: db.prepare("SELECT count(*) FROM entity_keys WHERE entity = ? AND revoked_at IS NULL").pluck(),
      activeKeys: db.prepare("SELECT * FROM entity_keys WHERE entity = ? AND revoked_at IS NULL ORDER BY created_at, kid"),
      allKeys: db.prepare("SELECT * FROM entity_keys WHERE entity = ? ORDER BY created_at, kid"),
      revokeKey: db.prepare("UPDATE entity_keys SET revoked_at = ? WHERE entity = ? AND kid = ? AND revoked_at IS NULL"),
      insertChain: db.prepare("INSERT INTO chains (uri, requester, created_at, length, tail_hash) VALUES (?, ?, ?, ?, ?)"),
      getChain: db.prepare("SELECT * FROM chains WHERE uri = ?"),
      tail: db.prepare("SELECT tail_hash, length FROM chains WHERE uri = ?"),
      setTail: db.prepare("UPDATE chains SET tail_hash = ?, length = ? WHERE uri = ?"),
      insertBlock: db.prepare("INSERT INTO blocks (chain_uri, position, hash, jws, creator, created_at) VALUES (?, ?, ?, ?, ?, ?)"),
      blocksAfter: db.prepare("SELECT * FROM blocks WHERE chain_uri = ? AND position > ? ORDER BY position"),
      findBlock: db.prepare("SELECT chain_uri, position FROM blocks WHERE hash = ?"),
      openInterval: db.prepare("INSERT INTO memberships (chain_uri, entity, start_pos, end_pos) VALUES (?, ?, ?, NULL)"),
      closeInterval: db.prepare("UPDATE memberships SET end_pos = ? WHERE chain_uri = ? AND entity = ? AND end_pos IS NULL"),
      memberAt: db.prepare(
        "SELECT 1 FROM memberships WHERE chain_uri = ? AND entity = ? AND start_pos <= ? AND (end_pos IS NULL OR end_pos > ?) LIMIT 1",
      ).pluck(),
      insertGk: db.prepare(
        "INSERT INTO gks (uri, requester, created_at, sealed_key, block_hash, chain_uri, block_position) VALUES (?, ?, ?, ?, ?, ?, ?)",
      ),
      getGk: db.prepare("SELECT * FROM gks WHERE uri = ?"),
      bindGk: db.prepare("UPDATE gks SET block_hash = ?, chain_uri = ?, block_position = ? WHERE uri = ? AND block_hash IS NULL"),
      everMember: db.prepare("SELECT 1 FROM memberships WHERE chain_uri = ? AND entity = ? LIMIT 1").pluck(),
      auditHead: db.prepare("SELECT seq, hash FROM audit_head WHERE id = 1"),
      setAuditHead: db.prepare("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1"),
      insertAudit: db.prepare(
        "INSERT INTO audit_log (seq, time_ms, operation, actor, entity, object, body, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
      ),
      auditAfter: db.prepare("SELECT body, prev_hash, hash FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?"),
    };
  }

  async migrate(): Promise<void> {
    this.migrateSync();
  }

  async ping(): Promise<void> {
    this.db.prepare("SELECT 1").get();
  }

  async close(): Promise<void> {
    if (this.pendingRecords.length > 0) this.flushRecords();
    if (this.pendingGks.length > 0) this.flushGks();
    if (this.pendingAudits.length > 0) this.flushAudits();
    this.db.close();
  }

  async getKeyring(): Promise<string | undefined> {
    return this.stmts.getKeyring.get() as string | undefined;
  }

  async initKeyring(sealed: string): Promise<string> {
    this.stmts.insertKeyring.run(sealed);
    return this.stmts.getKeyring.get() as string;
  }

  async createChannel(c: ChannelRecord, audit?: AuditEvent): Promise<boolean> {
    return this.transactions.createChannel.immediate(c, audit);
  }

  private insertChannel(c: ChannelRecord): boolean {
    const { changes } = this.stmts.insertChannel.run({
      uri: c.uri,
      entity: c.entity,
      client_id: c.clientId,
      credential_kind: c.credentialKind,
      credential_thumbprint: c.credentialThumbprint ?? null,
      client_key_thumbprint: c.clientKeyThumbprint,
      sealed_key: c.sealedKey,
      created_at: c.createdAt.getTime(),
      expires_at: c.expiresAt.getTime(),
      message_count: c.messageCount,
    });
    return changes === 1;
  }

  async getChannel(uri: string): Promise<ChannelRecord | undefined> {
    const row = this.stmts.getChannel.get(uri) as ChannelRow | undefined;
    if (!row) return undefined;
    return {
      uri: row.uri,
      entity: row.entity,
      clientId: row.client_id,
      credentialKind: row.credential_kind,
      ...(row.credential_thumbprint !== null ? { credentialThumbprint: row.credential_thumbprint } : {}),
      clientKeyThumbprint: row.client_key_thumbprint,
      sealedKey: row.sealed_key,
      createdAt: new Date(row.created_at),
      expiresAt: new Date(row.expires_at),
      messageCount: row.message_count,
    };
  }

  /**
   * Appends `event` to the audit chain. Only inside a write transaction: the head is read and moved
   * under SQLite's write lock, so that writers (connections or processes) never fork the chain.
   */
  private writeAudit(event: AuditEvent): AuditRecord {
    const head = this.stmts.auditHead.get() as { seq: number; hash: string };
    const { record, json } = nextAuditRecord(head, event);
    this.stmts.insertAudit.run(record.seq, event.time.getTime(), record.operation, record.actor ?? null, record.entity ?? null, record.object ?? null, json, record.prev, record.hash);
    this.stmts.setAuditHead.run(record.seq, record.hash);
    return record;
  }

  private buildTransactions() {
    const audited = <A extends unknown[], R>(change: (...args: A) => R, happened: (r: R) => boolean) =>
      this.db.transaction((audit: AuditEvent | undefined, ...args: A): R => {
        const r = change(...args);
        if (audit && happened(r)) this.writeAudit(audit);
        return r;
      });
    const createChannel = this.db.transaction((c: ChannelRecord, audit: AuditEvent | undefined): boolean => {
      const created = this.insertChannel(c);
      if (created && audit) this.writeAudit(audit);
      return created;
    });
    const deleteChannel = this.db.transaction((uri: string, audit?: AuditEvent): boolean => {
      this.stmts.deleteRequests.run(uri);
      const deleted = this.stmts.deleteChannel.run(uri).changes > 0;
      if (deleted && audit) this.writeAudit(audit);
      return deleted;
    });
    const revokeKey = audited((entity: string, kid: string, at: Date) => this.stmts.revokeKey.run(at.getTime(), entity, kid).changes === 1, (r) => r);
    const bindGk = audited(
      (uri: string, block: BlockRef) => this.stmts.bindGk.run(block.hash, block.chainUri, block.position, uri).changes === 1,
      (r) => r,
    );
    const insertGk = this.db.transaction((gk: GkRecord, audit: AuditEvent | undefined) => {
      this.insertGk(gk);
      if (audit) this.writeAudit(audit);
    });
    const appendAudits = this.db.transaction((events: readonly AuditEvent[]) => events.map((e) => this.writeAudit(e)));
    const appendAudit = this.db.transaction((event: AuditEvent) => this.writeAudit(event));
    // Group commit: every replay record asked for in one event-loop turn is written in one
    // transaction (one WAL append instead of one per request), each with its own outcome.
    const recordBatch = this.db.transaction((items: readonly PendingRecord[]): RecordOutcome[] =>
      items.map(({ uri, requestId, limit }): RecordOutcome => {
        if (requestId !== undefined && this.stmts.insertRequest.run(uri, requestId).changes === 0) return "replay";
        if (this.stmts.countChannel.run(uri, limit).changes === 0) {
          // Exhausted or unknown: leave no replay record behind.
          if (requestId !== undefined) this.stmts.deleteRequest.run(uri, requestId);
          return this.stmts.channelExists.get(uri) ? "exhausted" : "unknown";
        }
        return "recorded";
      }),
    );
    const createChain = this.db.transaction((chain: { uri: string; requester: string; created: Date }, genesis: NewBlock, members: readonly string[], audit?: AuditEvent) => {
      this.stmts.insertChain.run(chain.uri, chain.requester, chain.created.getTime(), 1, genesis.hash);
      this.insertBlock(chain.uri, genesis);
      for (const m of members) this.stmts.openInterval.run(chain.uri, m, 0);
      if (audit) this.writeAudit(audit);
    });
    const append = this.db.transaction(
      (chainUri: string, expectedTail: string, blocks: readonly NewBlock[], changes: readonly MembershipChange[], audit?: AuditEvent) => {
        const tail = this.stmts.tail.get(chainUri) as { tail_hash: string; length: number } | undefined;
        if (!tail) return "unknown" as const;
        if (tail.tail_hash !== expectedTail || blocks[0]?.position !== tail.length) return "conflict" as const;
        for (const b of blocks) this.insertBlock(chainUri, b);
        for (const c of changes) {
          if (c.optype === "add") this.stmts.openInterval.run(chainUri, c.entity, c.position);
          else this.stmts.closeInterval.run(c.position, chainUri, c.entity);
        }
        const last = blocks[blocks.length - 1]!;
        this.stmts.setTail.run(last.hash, last.position + 1, chainUri);
        if (audit) this.writeAudit(audit);
        return "appended" as const;
      },
    );
    const purge = this.db.transaction((before: number): number => {
      let removed = 0;
      for (const uri of this.stmts.expired.all(before) as string[]) {
        this.stmts.deleteRequests.run(uri);
        removed += this.stmts.deleteChannel.run(uri).changes;
      }
      return removed;
    });
    const insertGks = this.db.transaction((gks: readonly { gk: GkRecord; audit: AuditEvent | undefined }[]) => {
      for (const { gk, audit } of gks) {
        this.insertGk(gk);
        if (audit) this.writeAudit(audit);
      }
    });
    const registerKey = this.db.transaction((key: EntityKeyRecord, maxActiveKeys: number, audit?: AuditEvent): RegisterKeyOutcome => {
      if (this.stmts.hasKid.get(key.entity, key.kid) !== undefined) return "duplicate";
      if ((this.stmts.countActiveKeys.get(key.entity) as number) >= maxActiveKeys) return "limit";
      this.stmts.insertKey.run(key.entity, key.kid, JSON.stringify(key.jwk), key.created.getTime());
      if (audit) this.writeAudit(audit);
      return "registered";
    });
    return { createChannel, deleteChannel, recordBatch, createChain, append, purge, insertGks, insertGk, registerKey, revokeKey, bindGk, appendAudits, appendAudit };
  }

  private insertBlock(chainUri: string, b: NewBlock): void {
    this.stmts.insertBlock.run(chainUri, b.position, b.hash, b.jws, b.creator, b.created.getTime());
  }

  async deleteChannel(uri: string, audit?: AuditEvent): Promise<boolean> {
    return this.transactions.deleteChannel.immediate(uri, audit);
  }

  async recordChannelMessage(uri: string, requestId: string, messageLimit: number): Promise<RecordOutcome> {
    return this.queueRecord(uri, requestId, messageLimit);
  }

  async countChannelMessage(uri: string, messageLimit: number): Promise<CountOutcome> {
    return this.queueRecord(uri, undefined, messageLimit) as Promise<CountOutcome>;
  }

  private queueRecord(uri: string, requestId: string | undefined, messageLimit: number): Promise<RecordOutcome> {
    return new Promise<RecordOutcome>((resolve, reject) => {
      this.pendingRecords.push({ uri, requestId, limit: messageLimit, resolve, reject });
      if (this.pendingRecords.length === 1) setImmediate(() => this.flushRecords());
    });
  }

  private flushRecords(): void {
    const batch = this.pendingRecords;
    this.pendingRecords = [];
    try {
      const outcomes = this.transactions.recordBatch.immediate(batch);
      batch.forEach((item, i) => item.resolve(outcomes[i]!));
    } catch (e) {
      for (const item of batch) item.reject(e);
    }
  }

  async registerEntityKey(key: EntityKeyRecord, maxActiveKeys: number, audit?: AuditEvent): Promise<RegisterKeyOutcome> {
    // IMMEDIATE: the count and the insert hold the write lock together, so worker processes
    // sharing the file cannot both pass the limit.
    return this.transactions.registerKey.immediate(key, maxActiveKeys, audit);
  }

  async listEntityKeys(entity: string, opts: { includeRevoked?: boolean } = {}): Promise<EntityKeyRecord[]> {
    const rows = (opts.includeRevoked ? this.stmts.allKeys : this.stmts.activeKeys).all(entity) as KeyRow[];
    return rows.map((r) => ({
      entity: r.entity,
      kid: r.kid,
      jwk: JSON.parse(r.jwk) as Record<string, unknown>,
      created: new Date(r.created_at),
      ...(r.revoked_at !== null ? { revoked: new Date(r.revoked_at) } : {}),
    }));
  }

  async revokeEntityKey(entity: string, kid: string, at: Date, audit?: AuditEvent): Promise<boolean> {
    return this.transactions.revokeKey.immediate(audit, entity, kid, at);
  }

  async createChain(chain: { uri: string; requester: string; created: Date }, genesis: NewBlock, members: readonly string[], audit?: AuditEvent): Promise<void> {
    this.transactions.createChain.immediate(chain, genesis, members, audit);
  }

  async appendBlocks(chainUri: string, expectedTail: string, blocks: readonly NewBlock[], changes: readonly MembershipChange[], audit?: AuditEvent) {
    return this.transactions.append.immediate(chainUri, expectedTail, blocks, changes, audit);
  }

  async getChain(uri: string): Promise<ChainRecord | undefined> {
    const r = this.stmts.getChain.get(uri) as ChainRow | undefined;
    return r && { uri: r.uri, requester: r.requester, created: new Date(r.created_at), length: r.length, tailHash: r.tail_hash };
  }

  async getBlocks(chainUri: string, afterPosition = -1): Promise<BlockRecord[]> {
    return (this.stmts.blocksAfter.all(chainUri, afterPosition) as BlockRow[]).map((r) => ({
      chainUri: r.chain_uri,
      position: r.position,
      hash: r.hash,
      jws: r.jws,
      creator: r.creator,
      created: new Date(r.created_at),
    }));
  }

  async findBlock(hash: string): Promise<{ chainUri: string; position: number } | undefined> {
    const r = this.stmts.findBlock.get(hash) as { chain_uri: string; position: number } | undefined;
    return r && { chainUri: r.chain_uri, position: r.position };
  }

  async isMemberAt(chainUri: string, entity: string, position: number): Promise<boolean> {
    return this.stmts.memberAt.get(chainUri, entity, position, position) === 1;
  }

  async wasEverMember(chainUri: string, entity: string): Promise<boolean> {
    return this.stmts.everMember.get(chainUri, entity) === 1;
  }

  /**
   * Group commit, like replay records: the GKs created in one turn of the event loop are written in
   * one transaction (one WAL commit instead of one each), and each promise resolves only once that
   * transaction has committed, so a GK is never acknowledged before it is stored.
   */
  async createGk(gk: GkRecord, audit?: AuditEvent): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.pendingGks.push({ gk, audit, resolve, reject });
      if (this.pendingGks.length === 1) setImmediate(() => this.flushGks());
    });
  }

  private insertGk(gk: GkRecord): void {
    this.stmts.insertGk.run(gk.uri, gk.requester, gk.created.getTime(), gk.sealedKey, gk.block?.hash ?? null, gk.block?.chainUri ?? null, gk.block?.position ?? null);
  }

  private flushGks(): void {
    const batch = this.pendingGks;
    this.pendingGks = [];
    try {
      this.transactions.insertGks.immediate(batch);
      for (const p of batch) p.resolve();
    } catch {
      // One bad row must not fail the others: write them one by one, each (with its audit record)
      // in its own transaction and with its own outcome.
      for (const p of batch) {
        try {
          this.transactions.insertGk.immediate(p.gk, p.audit);
          p.resolve();
        } catch (e) {
          p.reject(e);
        }
      }
    }
  }

  async getGk(uri: string): Promise<GkRecord | undefined> {
    const r = this.stmts.getGk.get(uri) as GkRow | undefined;
    if (!r) return undefined;
    return {
      uri: r.uri,
      requester: r.requester,
      created: new Date(r.created_at),
      sealedKey: r.sealed_key,
      ...(r.block_hash !== null ? { block: { hash: r.block_hash, chainUri: r.chain_uri!, position: r.block_position! } } : {}),
    };
  }

  async bindGk(uri: string, block: BlockRef, audit?: AuditEvent): Promise<boolean> {
    return this.transactions.bindGk.immediate(audit, uri, block);
  }

  /** Group commit, like GKs: the records asked for in one turn are written in one transaction. */
  async appendAudit(event: AuditEvent): Promise<AuditRecord> {
    return new Promise<AuditRecord>((resolve, reject) => {
      this.pendingAudits.push({ event, resolve, reject });
      if (this.pendingAudits.length === 1) setImmediate(() => this.flushAudits());
    });
  }

  private flushAudits(): void {
    const batch = this.pendingAudits;
    this.pendingAudits = [];
    try {
      const records = this.transactions.appendAudits.immediate(batch.map((p) => p.event));
      batch.forEach((p, i) => p.resolve(records[i]!));
    } catch {
      for (const p of batch) {
        try {
          p.resolve(this.transactions.appendAudit.immediate(p.event));
        } catch (e) {
          p.reject(e);
        }
      }
    }
  }

  async auditRecords(opts: { after?: number; limit: number }): Promise<AuditRecord[]> {
    const rows = this.stmts.auditAfter.all(opts.after ?? 0, opts.limit) as { body: string; prev_hash: string; hash: string }[];
    return rows.map((r) => auditRecordFromRow(r.body, r.prev_hash, r.hash));
  }

  async auditHead(): Promise<{ seq: number; hash: string }> {
    const h = this.stmts.auditHead.get() as { seq: number; hash: string };
    return { seq: h.seq, hash: h.hash };
  }

  async purgeChannels(before: Date): Promise<number> {
    return this.transactions.purge.immediate(before.getTime());
  }
}

/**
 * The Store methods of {@link SqliteStore}, each wrapped below so that every failure to open or
 * write the data file reaches the caller as a {@link StoreUnavailableError} (better-sqlite3 is
 * synchronous: the errors are thrown inside the async methods, group commits included).
 */
const GUARDED_METHODS = [
  "migrate", "ping", "close", "getKeyring", "initKeyring", "createChannel", "getChannel", "deleteChannel",
  "recordChannelMessage", "countChannelMessage", "purgeChannels", "registerEntityKey", "listEntityKeys", "revokeEntityKey",
  "createChain", "appendBlocks", "getChain", "getBlocks", "findBlock", "isMemberAt", "wasEverMember",
  "createGk", "getGk", "bindGk", "appendAudit", "auditRecords", "auditHead",
] as const satisfies readonly (keyof Store)[];
// Compile-time check that no Store method is left out of GUARDED_METHODS.
const everyMethodGuarded: Exclude<keyof Store, (typeof GUARDED_METHODS)[number]> extends never ? true : never = true;
void everyMethodGuarded;

for (const name of GUARDED_METHODS) {
  const original = SqliteStore.prototype[name] as (...args: unknown[]) => Promise<unknown>;
  Object.defineProperty(SqliteStore.prototype, name, {
    configurable: true,
    writable: true,
    value: async function guarded(this: SqliteStore, ...args: unknown[]): Promise<unknown> {
      try {
        return await original.apply(this, args);
      } catch (e) {
        throw classifySqliteError(e) ?? e;
      }
    },
  });
}
