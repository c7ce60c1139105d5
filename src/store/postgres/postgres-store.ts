import pg from "pg";
import type {
  BlockRecord,
  BlockRef,
  ChainRecord,
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
import { auditBody, auditBodyAroundSeq, auditRecordFromRow, type AuditEvent, type AuditRecord } from "../audit.js";
import { postgresMigrations } from "./migrations.js";

export interface PostgresStoreOptions {
  /**
   * The schema holding Keyward's tables: every connection's `search_path`, and created by
   * {@link PostgresStore.migrate} when missing. Lower-case letters, digits and `_`. Default: the
   * URL's `schema` parameter (`postgres://host/db?schema=keyward`), else `public`.
   */
  readonly schema?: string;
  /** Most connections in the pool (default 10). */
  readonly maxConnections?: number;
  /**
   * Milliseconds to wait for a connection (a new one, or a free one from the pool) before failing
   * with {@link StoreUnavailableError} (default 5 000; the URL's `connect_timeout`, in seconds as
   * in libpq, sets it too).
   */
  readonly connectionTimeoutMillis?: number;
  /**
   * Milliseconds the client waits for a query's answer before giving up on it and on its
   * connection (default 5 000; URL parameter `query_timeout`). This is what bounds a request when
   * the server or the network stops answering without closing the connection (a blackhole).
   */
  readonly queryTimeoutMillis?: number;
  /**
   * The server-side `statement_timeout` in milliseconds (default 4 000, below the query timeout so
   * that a slow but reachable server cancels the statement itself, and stops working on it, before
   * the client gives up waiting; URL parameter `statement_timeout`). Migrations run without it.
   */
  readonly statementTimeoutMillis?: number;
  /**
   * Called when an idle pooled connection fails (the server restarted, the network dropped): the
   * pool discards it and opens a new one on demand. Default: ignore (the next query reports).
   */
  readonly onIdleError?: (e: Error) => void;
}

const SCHEMA_RE = /^[a-z_][a-z0-9_]{0,62}$/;
/** First key of the two-key advisory lock taken while migrating ("kw" + "mg"). */
const MIGRATION_LOCK_CLASS = 0x6b776d67;

/** Defaults of {@link PostgresStoreOptions}: a store that stops answering fails a request within seconds. */
export const POSTGRES_TIMEOUT_DEFAULTS = { connectionTimeoutMillis: 5_000, queryTimeoutMillis: 5_000, statementTimeoutMillis: 4_000 } as const;
/** Migrations may take locks and rewrite tables: they get their own, generous, client timeout. */
const MIGRATION_QUERY_TIMEOUT_MS = 10 * 60 * 1000;

/** Socket errors that mean the server cannot be reached (or the connection to it died). */
const NETWORK_CODES = new Set([
  "ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH", "EHOSTDOWN",
  "ENETUNREACH", "ENETDOWN", "ENETRESET", "ENOTFOUND", "EAI_AGAIN",
]);
/**
 * SQLSTATEs that say the server cannot serve or cannot write now, not that the request is wrong:
 * class 08 (connection exception), 53 (insufficient resources: disk full, out of memory, too many
 * connections), 57P01-57P05 (admin/crash shutdown, cannot connect now, idle session timeout),
 * 57014 (statement_timeout reached), 55P03 (lock_timeout), 25006 (read-only transaction: a hot
 * standby, or `default_transaction_read_only`), 58 (system error: I/O).
 */
function unavailableSqlState(code: string): boolean {
  return /^(08|53|58)/.test(code) || /^57P0[1-5]$/.test(code) || code === "57014" || code === "55P03" || code === "25006";
}
/** node-pg and pg-pool report a dead, closed or slow connection with these messages (no code). */
const DRIVER_MESSAGES: readonly [RegExp, string][] = [
  [/Query read timeout/i, "QUERY_TIMEOUT"],
  [/timeout exceeded when trying to connect|connection timeout/i, "CONNECT_TIMEOUT"],
  [/Connection terminated/i, "CONNECTION_TERMINATED"],
  [/not queryable|Cannot use a pool after calling end/i, "CONNECTION_CLOSED"],
];

/**
 * A node-pg error as a {@link StoreUnavailableError} when it means "cannot reach / cannot write",
 * else undefined (a constraint violation or a bug stays what it is).
 *
 * @example
 * classifyPostgresError(Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" }))?.code; // "ECONNREFUSED"
 */
export function classifyPostgresError(e: unknown): StoreUnavailableError | undefined {
  if (e instanceof StoreUnavailableError) return e;
  if (!(e instanceof Error)) return undefined;
  const code = (e as { code?: unknown }).code;
  if (typeof code === "string" && (NETWORK_CODES.has(code) || (/^[0-9A-Z]{5}$/.test(code) && unavailableSqlState(code)))) {
    return new StoreUnavailableError("postgres", code, e.message, { cause: e });
  }
  // An AggregateError (every address of a host refused) carries the codes in its parts.
  if (e instanceof AggregateError) {
    const inner = e.errors.map(classifyPostgresError).find((x) => x !== undefined);
    if (inner) return new StoreUnavailableError("postgres", inner.code, inner.message, { cause: e });
  }
  for (const [re, name] of DRIVER_MESSAGES) if (re.test(e.message)) return new StoreUnavailableError("postgres", name, e.message, { cause: e });
  return undefined;
}

/** Rethrows `e`, as a {@link StoreUnavailableError} when it is one. */
function rethrow(e: unknown): never {
  throw classifyPostgresError(e) ?? e;
}

/** `BIGINT` columns arrive as strings (node-pg keeps 64-bit precision); epoch-ms fit in a double. */
type Int8 = string;

interface ChannelRow {
  uri: string;
  entity: string;
  client_id: string;
  credential_kind: "bearer" | "certificate";
  credential_thumbprint: string | null;
  client_key_thumbprint: string;
  sealed_key: string;
  created_at: Int8;
  expires_at: Int8;
  message_count: number;
}

interface KeyRow {
  entity: string;
  kid: string;
  jwk: string;
  created_at: Int8;
  revoked_at: Int8 | null;
}

interface ChainRow {
  uri: string;
  requester: string;
  created_at: Int8;
  length: number;
  tail_hash: string;
}

interface BlockRow {
  chain_uri: string;
  position: number;
  hash: string;
  jws: string;
  creator: string;
  created_at: Int8;
}

interface GkRow {
  uri: string;
  requester: string;
  created_at: Int8;
  sealed_key: string;
  block_hash: string | null;
  chain_uri: string | null;
  block_position: number | null;
}

/**
 * Named statements: node-pg prepares each once per connection (parse/plan once), then only binds.
 * Table names are unqualified: they resolve through the connection's search_path (the schema).
 */
const SQL = {
  getKeyring: "SELECT sealed FROM keyring WHERE id = 1",
  initKeyring: `WITH ins AS (INSERT INTO keyring (id, sealed) VALUES (1, $1) ON CONFLICT (id) DO NOTHING RETURNING sealed)
    SELECT sealed FROM ins UNION ALL SELECT sealed FROM keyring WHERE id = 1`,
  insertChannel: `INSERT INTO channels (uri, entity, client_id, credential_kind, credential_thumbprint, client_key_thumbprint, sealed_key, created_at, expires_at, message_count)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (client_key_thumbprint) DO NOTHING`,
  getChannel: "SELECT * FROM channels WHERE uri = $1",
  recordMessage: "SELECT keyward_record_channel_message($1, $2, $3) AS outcome",
  countMessage: `WITH counted AS (UPDATE channels SET message_count = message_count + 1 WHERE uri = $1 AND message_count < $2 RETURNING 1)
    SELECT CASE WHEN EXISTS (SELECT 1 FROM counted) THEN 'recorded' WHEN EXISTS (SELECT 1 FROM channels WHERE uri = $1) THEN 'exhausted' ELSE 'unknown' END AS outcome`,
  deleteChannels: "DELETE FROM channels WHERE uri = $1 RETURNING uri",
  deleteExpired: "DELETE FROM channels WHERE expires_at < $1 RETURNING uri",
  deleteRequests: "DELETE FROM channel_requests WHERE channel_uri = ANY($1::text[])",
  registerKey: "SELECT keyward_register_entity_key($1, $2, $3, $4, $5) AS outcome",
  activeKeys: "SELECT * FROM entity_keys WHERE entity = $1 AND revoked_at IS NULL ORDER BY created_at, kid",
  allKeys: "SELECT * FROM entity_keys WHERE entity = $1 ORDER BY created_at, kid",
  revokeKey: "UPDATE entity_keys SET revoked_at = $1 WHERE entity = $2 AND kid = $3 AND revoked_at IS NULL",
  // One statement: all or nothing.
  createChain: `WITH c AS (
      INSERT INTO chains (uri, requester, created_at, length, tail_hash) VALUES ($1, $2, $3, 1, $4)
    ), b AS (
      INSERT INTO blocks (chain_uri, position, hash, jws, creator, created_at) VALUES ($1, $5, $4, $6, $7, $8)
    )
    INSERT INTO memberships (chain_uri, entity, start_pos, end_pos) SELECT $1, m, 0, NULL FROM unnest($9::text[]) AS m`,
  // One statement: the conditional UPDATE of the chain row is the tail check. A concurrent append
  // holding the row makes it wait; once that commits, the row is re-read (READ COMMITTED) and the
  // moved tail fails the WHERE, so nothing below runs: the chain cannot fork. The data-modifying
  // CTEs all run, each on the rows of `t` (none when the check failed).
  appendBlocks: `WITH t AS (
      UPDATE chains SET tail_hash = $4, length = $5 WHERE uri = $1 AND tail_hash = $2 AND length = $3 RETURNING uri
    ), b AS (
      INSERT INTO blocks (chain_uri, position, hash, jws, creator, created_at)
      SELECT t.uri, x.position, x.hash, x.jws, x.creator, x.created_at
      FROM t, unnest($6::int[], $7::text[], $8::text[], $9::text[], $10::bigint[]) AS x(position, hash, jws, creator, created_at)
    ), closed AS (
      UPDATE memberships m SET end_pos = c.pos
      FROM t, unnest($11::text[], $12::int[]) AS c(entity, pos)
      WHERE m.chain_uri = t.uri AND m.entity = c.entity AND m.end_pos IS NULL
    ), opened AS (
      INSERT INTO memberships (chain_uri, entity, start_pos, end_pos)
      SELECT t.uri, o.entity, o.start_pos, o.end_pos FROM t, unnest($13::text[], $14::int[], $15::int[]) AS o(entity, start_pos, end_pos)
    )
    SELECT EXISTS (SELECT 1 FROM t) AS appended, EXISTS (SELECT 1 FROM chains WHERE uri = $1) AS known`,
  chainExists: "SELECT 1 FROM chains WHERE uri = $1",
  getChain: "SELECT * FROM chains WHERE uri = $1",
  blocksAfter: "SELECT * FROM blocks WHERE chain_uri = $1 AND position > $2 ORDER BY position",
  findBlock: "SELECT chain_uri, position FROM blocks WHERE hash = $1",
  memberAt: "SELECT 1 FROM memberships WHERE chain_uri = $1 AND entity = $2 AND start_pos <= $3 AND (end_pos IS NULL OR end_pos > $3) LIMIT 1",
  everMember: "SELECT 1 FROM memberships WHERE chain_uri = $1 AND entity = $2 LIMIT 1",
  insertGk: "INSERT INTO gks (uri, requester, created_at, sealed_key, block_hash, chain_uri, block_position) VALUES ($1, $2, $3, $4, $5, $6, $7)",
  getGk: "SELECT * FROM gks WHERE uri = $1",
  bindGk: "UPDATE gks SET block_hash = $1, chain_uri = $2, block_position = $3 WHERE uri = $4 AND block_hash IS NULL",
  // §13: numbered, hashed and chained under the head row's lock (see migration 5).
  appendAudit: "SELECT seq::text AS seq, prev_hash, hash FROM keyward_append_audit($1, $2, $3, $4, $5, $6, $7)",
  auditAfter: "SELECT body, prev_hash, hash FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
  auditHead: "SELECT seq::text AS seq, hash FROM audit_head WHERE id = 1",
} as const;

type StatementName = keyof typeof SQL;

/**
 * The effect on the membership index of `changes` applied in order, as the SQLite store applies
 * them one by one (an add opens an interval; a remove closes every open interval of the entity),
 * computed up front so that the append is one statement:
 * - `close`: intervals already stored and open are closed at the entity's first remove;
 * - `open`: the intervals the changes open, with their end when a later change closes them.
 */
export function membershipEffects(changes: readonly MembershipChange[]): {
  close: { entity: string; position: number }[];
  open: { entity: string; start: number; end: number | null }[];
} {
  const close = new Map<string, number>();
  const open: { entity: string; start: number; end: number | null }[] = [];
  for (const c of changes) {
    if (c.optype === "add") {
      open.push({ entity: c.entity, start: c.position, end: null });
      continue;
    }
    if (!close.has(c.entity)) close.set(c.entity, c.position);
    for (const o of open) if (o.entity === c.entity && o.end === null) o.end = c.position;
  }
  return { close: [...close].map(([entity, position]) => ({ entity, position })), open };
}

/**
 * The store for several nodes: PostgreSQL through a node-pg connection pool. Every check-then-write
 * is one statement or one transaction, so that nodes sharing the database never disagree: channel
 * thumbprints and replay records are unique, the message limit is never passed, and a chain's tail
 * moves once per append (see {@link SQL}.appendBlocks).
 *
 * @example
 * const store = new PostgresStore("postgres://keyward@db.internal/keyward", { schema: "keyward" });
 * await store.migrate();
 */
export class PostgresStore implements Store {
  readonly schema: string;
  private readonly pool: pg.Pool;

  constructor(url: string, options: PostgresStoreOptions = {}) {
    const parsed = URL.canParse(url) ? new URL(url) : undefined;
    const schema = options.schema ?? (parsed?.searchParams.get("schema") || "public");
    if (!SCHEMA_RE.test(schema)) throw new Error(`invalid PostgreSQL schema name ${JSON.stringify(schema)}: expected [a-z_][a-z0-9_]*`);
    this.schema = schema;
    const searchPath = `-c search_path=${schema}`;
    // node-pg lets parameters of the connection string override the config: an `options`
    // parameter there is kept, and the search_path added to it.
    let connectionString = url;
    let connectionOptions: string | undefined = searchPath;
    const urlOptions = parsed?.searchParams.get("options");
    if (parsed && urlOptions) {
      parsed.searchParams.set("options", `${urlOptions} ${searchPath}`);
      connectionString = parsed.toString();
      connectionOptions = undefined;
    }
    // libpq's `connect_timeout` (seconds) in the URL; node-pg itself only reads the pool option.
    const urlConnectTimeout = Number(parsed?.searchParams.get("connect_timeout") ?? NaN);
    this.pool = new pg.Pool({
      connectionString,
      ...(connectionOptions ? { options: connectionOptions } : {}),
      max: options.maxConnections ?? 10,
      connectionTimeoutMillis:
        options.connectionTimeoutMillis ?? (urlConnectTimeout > 0 ? urlConnectTimeout * 1000 : POSTGRES_TIMEOUT_DEFAULTS.connectionTimeoutMillis),
      // URL parameters of the same names override these two (node-pg reads the connection string last).
      query_timeout: options.queryTimeoutMillis ?? POSTGRES_TIMEOUT_DEFAULTS.queryTimeoutMillis,
      statement_timeout: options.statementTimeoutMillis ?? POSTGRES_TIMEOUT_DEFAULTS.statementTimeoutMillis,
      // A peer that vanished without a FIN is found by the OS, not only by the next query.
      keepAlive: true,
      application_name: "keyward",
    });
    const onIdleError = options.onIdleError ?? (() => {});
    // Without a listener, an idle connection's error (the server restarted or shut down, the
    // network dropped) would be an uncaught 'error' event, and crash the process.
    this.pool.on("error", onIdleError);
  }

  private async run<R extends pg.QueryResultRow>(name: StatementName, values: readonly unknown[], client?: pg.PoolClient): Promise<pg.QueryResult<R>> {
    return (client ?? this.pool).query<R>({ name, text: SQL[name], values: values as unknown[] }).catch(rethrow);
  }

  /**
   * Runs a state change (`change`, on the connection it is given) and, when `audit` is given and
   * `happened` says the change was made, appends the audit record in the same transaction. Without
   * a record the change runs alone, as one statement on the pool.
   */
  private async audited<T>(audit: AuditEvent | undefined, change: (client?: pg.PoolClient) => Promise<T>, happened: (r: T) => boolean): Promise<T> {
    if (!audit) return change();
    return this.transaction(async (client) => {
      const r = await change(client);
      if (happened(r)) await this.writeAudit(client, audit);
      return r;
    });
  }

  /**
   * Appends `event` (one statement): inside the caller's transaction when given a client, holding
   * the head row until it commits; alone, the head is held only while the statement runs.
   */
  private async writeAudit(client: pg.PoolClient | undefined, event: AuditEvent): Promise<AuditRecord> {
    const { prefix, suffix } = auditBodyAroundSeq(event);
    const row = (await this.run<{ seq: string; prev_hash: string; hash: string }>(
      "appendAudit",
      [event.time.getTime(), event.operation, event.actor ?? null, event.entity ?? null, event.object ?? null, prefix, suffix],
      client,
    )).rows[0]!;
    return { ...auditBody(Number(row.seq), event), prev: row.prev_hash, hash: row.hash };
  }

  /**
   * Runs `body` in one transaction on one connection (ROLLBACK when it throws). A connection that
   * failed (unreachable, timed out) or cannot even roll back is discarded, not returned to the pool.
   */
  private async transaction<T>(body: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    const client = await this.pool.connect().catch(rethrow);
    // While checked out, the pool does not listen to the client: a connection that dies between
    // two statements would emit an 'error' nobody handles. The failure reaches the next query.
    const onError = () => {};
    client.on("error", onError);
    let broken = false;
    try {
      await client.query("BEGIN");
      const result = await body(client);
      await client.query("COMMIT");
      return result;
    } catch (e) {
      const unavailable = classifyPostgresError(e);
      if (unavailable) broken = true; // no ROLLBACK on a dead connection: it would only wait for its own timeout
      else await client.query("ROLLBACK").catch(() => (broken = true));
      throw unavailable ?? e;
    } finally {
      client.off("error", onError);
      client.release(broken);
    }
  }

  async migrate(): Promise<void> {
    await this.migrateTo();
  }

  /**
   * Applies the pending migrations in one transaction, under a transaction-level advisory lock
   * keyed by the schema: nodes starting together wait for each other and the later ones find
   * nothing left to do. Creates the schema when missing. Returns the versions before and after.
   */
  async migrateTo(): Promise<{ before: number; after: number; applied: number[] }> {
    return this.transaction(async (plain) => {
      // DDL and the lock wait of a node that starts while another migrates are not bounded by the
      // request timeouts.
      const client = { query: <R extends pg.QueryResultRow>(text: string, values?: unknown[]) => plain.query<R>({ text, values, query_timeout: MIGRATION_QUERY_TIMEOUT_MS } as pg.QueryConfig) };
      await client.query("SET LOCAL statement_timeout = 0");
      await client.query("SELECT pg_advisory_xact_lock($1, hashtext($2))", [MIGRATION_LOCK_CLASS, this.schema]);
      // CREATE ... IF NOT EXISTS checks the CREATE privilege even when the object exists: create
      // only what is missing, so that an up-to-date schema migrates without any DDL privilege.
      const table = `${quoteIdent(this.schema)}.schema_migrations`;
      const found = await client.query<{ schema: boolean; table: boolean }>(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1) AS schema, to_regclass($2) IS NOT NULL AS table",
        [this.schema, table],
      );
      if (!found.rows[0]!.schema) await client.query(`CREATE SCHEMA ${quoteIdent(this.schema)}`);
      if (!found.rows[0]!.table) {
        await client.query(`CREATE TABLE ${table} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)`);
      }
      const done = new Set((await client.query<{ version: number }>(`SELECT version FROM ${table}`)).rows.map((r) => r.version));
      const before = Math.max(0, ...done);
      const applied: number[] = [];
      for (const m of postgresMigrations) {
        if (done.has(m.version)) continue;
        await client.query(m.sql);
        await client.query(`INSERT INTO ${table} (version, name, applied_at) VALUES ($1, $2, $3)`, [m.version, m.name, Date.now()]);
        applied.push(m.version);
        done.add(m.version);
      }
      return { before, after: Math.max(0, ...done), applied };
    });
  }

  /** The highest applied migration (0 when none, or the schema is missing). */
  async schemaVersion(): Promise<number> {
    const table = `${quoteIdent(this.schema)}.schema_migrations`;
    const present = await this.pool.query<{ present: boolean }>("SELECT to_regclass($1) IS NOT NULL AS present", [table]).catch(rethrow);
    if (!present.rows[0]?.present) return 0;
    const r = await this.pool.query<{ v: number | null }>(`SELECT max(version) AS v FROM ${table}`).catch(rethrow);
    return r.rows[0]?.v ?? 0;
  }

  async ping(): Promise<void> {
    await this.pool.query("SELECT 1").catch(rethrow);
  }

  async close(): Promise<void> {
    await this.pool.end();
  }

  async getKeyring(): Promise<string | undefined> {
    return (await this.run<{ sealed: string }>("getKeyring", [])).rows[0]?.sealed;
  }

  async initKeyring(sealed: string): Promise<string> {
    const stored = (await this.run<{ sealed: string }>("initKeyring", [sealed])).rows[0]?.sealed;
    if (stored !== undefined) return stored;
    // A concurrent first writer committed after this statement's snapshot: read it now.
    const winner = await this.getKeyring();
    if (winner === undefined) throw new Error("keyring: neither inserted nor found");
    return winner;
  }

  async createChannel(c: ChannelRecord, audit?: AuditEvent): Promise<boolean> {
    return this.audited(audit, (client) => this.insertChannel(c, client), (created) => created);
  }

  private async insertChannel(c: ChannelRecord, client?: pg.PoolClient): Promise<boolean> {
    const r = await this.run("insertChannel", [
      c.uri,
      c.entity,
      c.clientId,
      c.credentialKind,
      c.credentialThumbprint ?? null,
      c.clientKeyThumbprint,
      c.sealedKey,
      c.createdAt.getTime(),
      c.expiresAt.getTime(),
      c.messageCount,
    ], client);
    return r.rowCount === 1;
  }

  async getChannel(uri: string): Promise<ChannelRecord | undefined> {
    const row = (await this.run<ChannelRow>("getChannel", [uri])).rows[0];
    if (!row) return undefined;
    return {
      uri: row.uri,
      entity: row.entity,
      clientId: row.client_id,
      credentialKind: row.credential_kind,
      ...(row.credential_thumbprint !== null ? { credentialThumbprint: row.credential_thumbprint } : {}),
      clientKeyThumbprint: row.client_key_thumbprint,
      sealedKey: row.sealed_key,
      createdAt: new Date(Number(row.created_at)),
      expiresAt: new Date(Number(row.expires_at)),
      messageCount: row.message_count,
    };
  }

  /**
   * Deleting the channel rows first locks them (waiting for a recordChannelMessage in flight);
   * the replay records are then deleted by a second statement, which sees that call's record.
   */
  private async deleteChannelsTx(statement: "deleteChannels" | "deleteExpired", arg: string | number, audit?: AuditEvent): Promise<number> {
    return this.transaction(async (client) => {
      const gone = await client.query<{ uri: string }>({ name: statement, text: SQL[statement], values: [arg] });
      if (gone.rows.length > 0) {
        await client.query({ name: "deleteRequests", text: SQL.deleteRequests, values: [gone.rows.map((r) => r.uri)] });
        if (audit) await this.writeAudit(client, audit);
      }
      return gone.rows.length;
    });
  }

  async deleteChannel(uri: string, audit?: AuditEvent): Promise<boolean> {
    return (await this.deleteChannelsTx("deleteChannels", uri, audit)) > 0;
  }

  async recordChannelMessage(uri: string, requestId: string, messageLimit: number): Promise<RecordOutcome> {
    const r = await this.run<{ outcome: RecordOutcome }>("recordMessage", [uri, requestId, messageLimit]);
    return r.rows[0]!.outcome;
  }

  async countChannelMessage(uri: string, messageLimit: number): Promise<CountOutcome> {
    const r = await this.run<{ outcome: CountOutcome }>("countMessage", [uri, messageLimit]);
    return r.rows[0]!.outcome;
  }

  async purgeChannels(before: Date): Promise<number> {
    return this.deleteChannelsTx("deleteExpired", before.getTime());
  }

  async registerEntityKey(key: EntityKeyRecord, maxActiveKeys: number, audit?: AuditEvent): Promise<RegisterKeyOutcome> {
    return this.audited(
      audit,
      async (client) =>
        (await this.run<{ outcome: RegisterKeyOutcome }>("registerKey", [key.entity, key.kid, JSON.stringify(key.jwk), key.created.getTime(), maxActiveKeys], client)).rows[0]!.outcome,
      (outcome) => outcome === "registered",
    );
  }

  async listEntityKeys(entity: string, opts: { includeRevoked?: boolean } = {}): Promise<EntityKeyRecord[]> {
    const r = await this.run<KeyRow>(opts.includeRevoked ? "allKeys" : "activeKeys", [entity]);
    return r.rows.map((row) => ({
      entity: row.entity,
      kid: row.kid,
      jwk: JSON.parse(row.jwk) as Record<string, unknown>,
      created: new Date(Number(row.created_at)),
      ...(row.revoked_at !== null ? { revoked: new Date(Number(row.revoked_at)) } : {}),
    }));
  }

  async revokeEntityKey(entity: string, kid: string, at: Date, audit?: AuditEvent): Promise<boolean> {
    return this.audited(audit, async (client) => (await this.run("revokeKey", [at.getTime(), entity, kid], client)).rowCount === 1, (r) => r);
  }

  async createChain(chain: { uri: string; requester: string; created: Date }, genesis: NewBlock, members: readonly string[], audit?: AuditEvent): Promise<void> {
    await this.audited(audit, (client) => this.insertChain(chain, genesis, members, client), () => true);
  }

  private async insertChain(chain: { uri: string; requester: string; created: Date }, genesis: NewBlock, members: readonly string[], client?: pg.PoolClient): Promise<void> {
    await this.run("createChain", [
      chain.uri,
      chain.requester,
      chain.created.getTime(),
      genesis.hash,
      genesis.position,
      genesis.jws,
      genesis.creator,
      genesis.created.getTime(),
      members,
    ], client);
  }

  async appendBlocks(
    chainUri: string,
    expectedTail: string,
    blocks: readonly NewBlock[],
    changes: readonly MembershipChange[],
    audit?: AuditEvent,
  ): Promise<"appended" | "conflict" | "unknown"> {
    return this.audited(audit, (client) => this.appendBlocksOn(chainUri, expectedTail, blocks, changes, client), (r) => r === "appended");
  }

  private async appendBlocksOn(
    chainUri: string,
    expectedTail: string,
    blocks: readonly NewBlock[],
    changes: readonly MembershipChange[],
    client?: pg.PoolClient,
  ): Promise<"appended" | "conflict" | "unknown"> {
    const first = blocks[0];
    const last = blocks[blocks.length - 1];
    if (!first || !last) return (await this.run("chainExists", [chainUri], client)).rowCount === 0 ? "unknown" : "conflict";
    const { close, open } = membershipEffects(changes);
    const r = await this.run<{ appended: boolean; known: boolean }>("appendBlocks", [
      chainUri,
      expectedTail,
      first.position,
      last.hash,
      last.position + 1,
      blocks.map((b) => b.position),
      blocks.map((b) => b.hash),
      blocks.map((b) => b.jws),
      blocks.map((b) => b.creator),
      blocks.map((b) => b.created.getTime()),
      close.map((c) => c.entity),
      close.map((c) => c.position),
      open.map((o) => o.entity),
      open.map((o) => o.start),
      open.map((o) => o.end),
    ], client);
    const row = r.rows[0]!;
    return row.appended ? "appended" : row.known ? "conflict" : "unknown";
  }

  async getChain(uri: string): Promise<ChainRecord | undefined> {
    const r = (await this.run<ChainRow>("getChain", [uri])).rows[0];
    return r && { uri: r.uri, requester: r.requester, created: new Date(Number(r.created_at)), length: r.length, tailHash: r.tail_hash };
  }

  async getBlocks(chainUri: string, afterPosition = -1): Promise<BlockRecord[]> {
    return (await this.run<BlockRow>("blocksAfter", [chainUri, afterPosition])).rows.map((r) => ({
      chainUri: r.chain_uri,
      position: r.position,
      hash: r.hash,
      jws: r.jws,
      creator: r.creator,
      created: new Date(Number(r.created_at)),
    }));
  }

  async findBlock(hash: string): Promise<{ chainUri: string; position: number } | undefined> {
    const r = (await this.run<{ chain_uri: string; position: number }>("findBlock", [hash])).rows[0];
    return r && { chainUri: r.chain_uri, position: r.position };
  }

  async isMemberAt(chainUri: string, entity: string, position: number): Promise<boolean> {
    return (await this.run("memberAt", [chainUri, entity, position])).rowCount === 1;
  }

  async wasEverMember(chainUri: string, entity: string): Promise<boolean> {
    return (await this.run("everMember", [chainUri, entity])).rowCount === 1;
  }

  async createGk(gk: GkRecord, audit?: AuditEvent): Promise<void> {
    await this.audited(audit, (client) => this.insertGk(gk, client), () => true);
  }

  private async insertGk(gk: GkRecord, client?: pg.PoolClient): Promise<void> {
    await this.run("insertGk", [
      gk.uri,
      gk.requester,
      gk.created.getTime(),
      gk.sealedKey,
      gk.block?.hash ?? null,
      gk.block?.chainUri ?? null,
      gk.block?.position ?? null,
    ], client);
  }

  async getGk(uri: string): Promise<GkRecord | undefined> {
    const r = (await this.run<GkRow>("getGk", [uri])).rows[0];
    if (!r) return undefined;
    return {
      uri: r.uri,
      requester: r.requester,
      created: new Date(Number(r.created_at)),
      sealedKey: r.sealed_key,
      ...(r.block_hash !== null ? { block: { hash: r.block_hash, chainUri: r.chain_uri!, position: r.block_position! } } : {}),
    };
  }

  async bindGk(uri: string, block: BlockRef, audit?: AuditEvent): Promise<boolean> {
    return this.audited(audit, async (client) => (await this.run("bindGk", [block.hash, block.chainUri, block.position, uri], client)).rowCount === 1, (r) => r);
  }

  async appendAudit(event: AuditEvent): Promise<AuditRecord> {
    return this.writeAudit(undefined, event);
  }

  async auditRecords(opts: { after?: number; limit: number }): Promise<AuditRecord[]> {
    const r = await this.run<{ body: string; prev_hash: string; hash: string }>("auditAfter", [opts.after ?? 0, opts.limit]);
    return r.rows.map((row) => auditRecordFromRow(row.body, row.prev_hash, row.hash));
  }

  async auditHead(): Promise<{ seq: number; hash: string }> {
    const h = (await this.run<{ seq: string; hash: string }>("auditHead", [])).rows[0]!;
    return { seq: Number(h.seq), hash: h.hash };
  }
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}
