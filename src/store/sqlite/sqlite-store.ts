import Database from "better-sqlite3";
import type { ChannelRecord, RecordOutcome, Store } from "../store.js";
import { sqliteMigrations } from "./migrations.js";

class ReplayDetected extends Error {}

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
      insertRequest: db.prepare("INSERT INTO channel_requests (channel_uri, request_id) VALUES (?, ?) ON CONFLICT DO NOTHING"),
      channelExists: db.prepare("SELECT 1 FROM channels WHERE uri = ?").pluck(),
      expired: db.prepare("SELECT uri FROM channels WHERE expires_at < ?").pluck(),
    };
  }

  async migrate(): Promise<void> {
    this.migrateSync();
  }

  async ping(): Promise<void> {
    this.db.prepare("SELECT 1").get();
  }

  async close(): Promise<void> {
    this.db.close();
  }

  async getKeyring(): Promise<string | undefined> {
    return this.stmts.getKeyring.get() as string | undefined;
  }

  async initKeyring(sealed: string): Promise<string> {
    this.stmts.insertKeyring.run(sealed);
    return this.stmts.getKeyring.get() as string;
  }

  async createChannel(c: ChannelRecord): Promise<boolean> {
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

  private deleteTx(uri: string): boolean {
    return this.transactions.deleteChannel.immediate(uri);
  }

  private buildTransactions() {
    const deleteChannel = this.db.transaction((uri: string): boolean => {
      this.stmts.deleteRequests.run(uri);
      return this.stmts.deleteChannel.run(uri).changes > 0;
    });
    const record = this.db.transaction((uri: string, requestId: string, limit: number): RecordOutcome => {
    // Count first: an exhausted or unknown channel must leave no replay record behind.
    if (this.stmts.countChannel.run(uri, limit).changes === 0) {
      return this.stmts.channelExists.get(uri) ? "exhausted" : "unknown";
    }
    if (this.stmts.insertRequest.run(uri, requestId).changes === 0) {
      throw new ReplayDetected(); // rolls the count back
    }
    return "recorded";
    });
    return { deleteChannel, record };
  }

  async deleteChannel(uri: string): Promise<boolean> {
    return this.deleteTx(uri);
  }

  async recordChannelMessage(uri: string, requestId: string, messageLimit: number): Promise<RecordOutcome> {
    try {
      return this.transactions.record.immediate(uri, requestId, messageLimit);
    } catch (e) {
      if (e instanceof ReplayDetected) return "replay";
      throw e;
    }
  }

  async purgeChannels(before: Date): Promise<number> {
    const uris = this.stmts.expired.all(before.getTime()) as string[];
    for (const uri of uris) this.deleteTx(uri);
    return uris.length;
  }
}
