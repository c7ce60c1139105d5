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
  /** Milliseconds to wait for a new connection before failing (default 10 000). */
  readonly connectionTimeoutMillis?: number;
  /**
   * Called when an idle pooled connection fails (the server restarted, the network dropped): the
   * pool discards it and opens a new one on demand. Default: ignore (the next query reports).
   */
  readonly onIdleError?: (e: Error) => void;
}

const SCHEMA_RE = /^[a-z_][a-z0-9_]{0,62}$/;
/** First key of the two-key advisory lock taken while migrating ("kw" + "mg"). */
const MIGRATION_LOCK_CLASS = 0x6b776d67;

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
    this.pool = new pg.Pool({
      connectionString,
      ...(connectionOptions ? { options: connectionOptions } : {}),
      max: options.maxConnections ?? 10,
      connectionTimeoutMillis: options.connectionTimeoutMillis ?? 10_000,
      application_name: "keyward",
    });
    const onIdleError = options.onIdleError ?? (() => {});
    // Without a listener, an idle connection's error would be an uncaught 'error' event.
    this.pool.on("error", onIdleError);
  }

  private async run<R extends pg.QueryResultRow>(name: StatementName, values: readonly unknown[]): Promise<pg.QueryResult<R>> {
    return this.pool.query<R>({ name, text: SQL[name], values: values as unknown[] });
  }

  /** Runs `body` in one transaction on one connection (ROLLBACK when it throws). */
  private async transaction<T>(body: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    let broken = false;
    try {
      await client.query("BEGIN");
      const result = await body(client);
      await client.query("COMMIT");
      return result;
    } catch (e) {
      // A connection that cannot even roll back is discarded, not returned to the pool.
      await client.query("ROLLBACK").catch(() => (broken = true));
      throw e;
    } finally {
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
    return this.transaction(async (client) => {
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
    const present = await this.pool.query<{ present: boolean }>("SELECT to_regclass($1) IS NOT NULL AS present", [table]);
    if (!present.rows[0]?.present) return 0;
    const r = await this.pool.query<{ v: number | null }>(`SELECT max(version) AS v FROM ${table}`);
    return r.rows[0]?.v ?? 0;
  }

  async ping(): Promise<void> {
    await this.pool.query("SELECT 1");
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

  async createChannel(c: ChannelRecord): Promise<boolean> {
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
    ]);
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
  private async deleteChannelsTx(statement: "deleteChannels" | "deleteExpired", arg: string | number): Promise<number> {
    return this.transaction(async (client) => {
      const gone = await client.query<{ uri: string }>({ name: statement, text: SQL[statement], values: [arg] });
      if (gone.rows.length > 0) {
        await client.query({ name: "deleteRequests", text: SQL.deleteRequests, values: [gone.rows.map((r) => r.uri)] });
      }
      return gone.rows.length;
    });
  }

  async deleteChannel(uri: string): Promise<boolean> {
    return (await this.deleteChannelsTx("deleteChannels", uri)) > 0;
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

  async registerEntityKey(key: EntityKeyRecord, maxActiveKeys: number): Promise<RegisterKeyOutcome> {
    const r = await this.run<{ outcome: RegisterKeyOutcome }>("registerKey", [key.entity, key.kid, JSON.stringify(key.jwk), key.created.getTime(), maxActiveKeys]);
    return r.rows[0]!.outcome;
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

  async revokeEntityKey(entity: string, kid: string, at: Date): Promise<boolean> {
    return (await this.run("revokeKey", [at.getTime(), entity, kid])).rowCount === 1;
  }

  async createChain(chain: { uri: string; requester: string; created: Date }, genesis: NewBlock, members: readonly string[]): Promise<void> {
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
    ]);
  }

  async appendBlocks(
    chainUri: string,
    expectedTail: string,
    blocks: readonly NewBlock[],
    changes: readonly MembershipChange[],
  ): Promise<"appended" | "conflict" | "unknown"> {
    const first = blocks[0];
    const last = blocks[blocks.length - 1];
    if (!first || !last) return (await this.run("chainExists", [chainUri])).rowCount === 0 ? "unknown" : "conflict";
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
    ]);
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

  async createGk(gk: GkRecord): Promise<void> {
    await this.run("insertGk", [
      gk.uri,
      gk.requester,
      gk.created.getTime(),
      gk.sealedKey,
      gk.block?.hash ?? null,
      gk.block?.chainUri ?? null,
      gk.block?.position ?? null,
    ]);
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

  async bindGk(uri: string, block: BlockRef): Promise<boolean> {
    return (await this.run("bindGk", [block.hash, block.chainUri, block.position, uri])).rowCount === 1;
  }
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}
