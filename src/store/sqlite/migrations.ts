/**
 * Versioned schema migrations, applied in order, each once (table schema_migrations). A migration
 * is never edited after release: a change is a new migration.
 */
export const sqliteMigrations: readonly { version: number; name: string; sql: string }[] = [
  {
    version: 1,
    name: "keyring and secure channels",
    sql: `
      CREATE TABLE keyring (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        sealed TEXT NOT NULL
      );
      CREATE TABLE channels (
        uri TEXT PRIMARY KEY,
        entity TEXT NOT NULL,
        client_id TEXT NOT NULL,
        credential_kind TEXT NOT NULL,
        credential_thumbprint TEXT,
        client_key_thumbprint TEXT NOT NULL UNIQUE,
        sealed_key TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        message_count INTEGER NOT NULL DEFAULT 0
      );
      CREATE INDEX channels_expires_at ON channels (expires_at);
      CREATE TABLE channel_requests (
        channel_uri TEXT NOT NULL,
        request_id TEXT NOT NULL,
        PRIMARY KEY (channel_uri, request_id)
      ) WITHOUT ROWID;
    `,
  },
  {
    version: 2,
    name: "entity keys, chains, blocks and the membership index",
    sql: `
      CREATE TABLE entity_keys (
        entity TEXT NOT NULL,
        kid TEXT NOT NULL,
        jwk TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER,
        PRIMARY KEY (entity, kid)
      );
      CREATE TABLE chains (
        uri TEXT PRIMARY KEY,
        requester TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        length INTEGER NOT NULL,
        tail_hash TEXT NOT NULL
      );
      CREATE TABLE blocks (
        chain_uri TEXT NOT NULL,
        position INTEGER NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        jws TEXT NOT NULL,
        creator TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (chain_uri, position)
      );
      -- One row per membership interval: the entity is a member from block start_pos (its add
      -- applied) until block end_pos (its remove applied), end_pos NULL while still a member.
      CREATE TABLE memberships (
        chain_uri TEXT NOT NULL,
        entity TEXT NOT NULL,
        start_pos INTEGER NOT NULL,
        end_pos INTEGER,
        PRIMARY KEY (chain_uri, entity, start_pos)
      ) WITHOUT ROWID;
    `,
  },
  {
    version: 3,
    name: "group keys",
    sql: `
      CREATE TABLE gks (
        uri TEXT PRIMARY KEY,
        requester TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        sealed_key TEXT NOT NULL,
        block_hash TEXT,
        chain_uri TEXT,
        block_position INTEGER
      );
    `,
  },
  {
    // PostgreSQL's version 4 also adds a function; SQLite counts inside an IMMEDIATE transaction
    // instead (src/store/sqlite/sqlite-store.ts). The index makes that count cheap.
    version: 4,
    name: "at most N unrevoked keys per entity",
    sql: "CREATE INDEX IF NOT EXISTS entity_keys_active ON entity_keys (entity) WHERE revoked_at IS NULL;",
  },
  {
    // §13: the audit log. `body` is the record's canonical JSON (what is hashed, src/store/audit.ts);
    // the other columns repeat some of its members for filtering. The one-row head holds the last
    // seq and hash, so that a truncated tail is detected too; it is read and moved inside the
    // IMMEDIATE transaction of the change being recorded, which keeps the chain linear.
    version: 5,
    name: "audit log",
    sql: `
      CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY,
        time_ms INTEGER NOT NULL,
        operation TEXT NOT NULL,
        actor TEXT,
        entity TEXT,
        object TEXT,
        body TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
      );
      CREATE TABLE audit_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL,
        hash TEXT NOT NULL
      );
      INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '${"0".repeat(64)}');
    `,
  },
];
