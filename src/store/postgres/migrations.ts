/**
 * Versioned PostgreSQL schema migrations, applied in order, each once (table schema_migrations),
 * under an advisory lock (src/store/postgres/postgres-store.ts). The logical schema and the version
 * numbers are those of the SQLite store (src/store/sqlite/migrations.ts); a migration is never
 * edited after release: a change is a new migration.
 *
 * Types: epoch-millisecond timestamps are BIGINT; counts and chain positions INTEGER; every text
 * key is COLLATE "C", so that ordering and uniqueness are by bytes, as in SQLite, whatever the
 * database's default collation (and B-tree comparisons are plain memcmp).
 */
export const postgresMigrations: readonly { version: number; name: string; sql: string }[] = [
  {
    version: 1,
    name: "keyring and secure channels",
    sql: `
      CREATE TABLE keyring (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        sealed TEXT NOT NULL
      );
      CREATE TABLE channels (
        uri TEXT COLLATE "C" PRIMARY KEY,
        entity TEXT NOT NULL,
        client_id TEXT NOT NULL,
        credential_kind TEXT NOT NULL,
        credential_thumbprint TEXT,
        client_key_thumbprint TEXT COLLATE "C" NOT NULL UNIQUE,
        sealed_key TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        message_count INTEGER NOT NULL DEFAULT 0
      );
      CREATE INDEX channels_expires_at ON channels (expires_at);
      CREATE TABLE channel_requests (
        channel_uri TEXT COLLATE "C" NOT NULL,
        request_id TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (channel_uri, request_id)
      );
      -- recordChannelMessage in one round trip with the SQLite store's exact semantics: record the
      -- requestId (a concurrent insert of the same one waits for its transaction, then conflicts),
      -- count the message under the limit, and take the record back when it cannot be counted.
      -- Each statement of a volatile PL/pgSQL function sees the latest committed data (READ
      -- COMMITTED), and the whole call is one transaction.
      CREATE FUNCTION keyward_record_channel_message(p_uri TEXT, p_request_id TEXT, p_limit BIGINT)
      RETURNS TEXT LANGUAGE plpgsql VOLATILE AS $$
      BEGIN
        INSERT INTO channel_requests (channel_uri, request_id) VALUES (p_uri, p_request_id) ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
          RETURN 'replay';
        END IF;
        UPDATE channels SET message_count = message_count + 1 WHERE uri = p_uri AND message_count < p_limit;
        IF FOUND THEN
          RETURN 'recorded';
        END IF;
        -- Exhausted or unknown: leave no replay record behind.
        DELETE FROM channel_requests WHERE channel_uri = p_uri AND request_id = p_request_id;
        IF EXISTS (SELECT 1 FROM channels WHERE uri = p_uri) THEN
          RETURN 'exhausted';
        END IF;
        RETURN 'unknown';
      END
      $$;
    `,
  },
  {
    version: 2,
    name: "entity keys, chains, blocks and the membership index",
    sql: `
      CREATE TABLE entity_keys (
        entity TEXT COLLATE "C" NOT NULL,
        kid TEXT COLLATE "C" NOT NULL,
        jwk TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT,
        PRIMARY KEY (entity, kid)
      );
      CREATE TABLE chains (
        uri TEXT COLLATE "C" PRIMARY KEY,
        requester TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        length INTEGER NOT NULL,
        tail_hash TEXT NOT NULL
      );
      CREATE TABLE blocks (
        chain_uri TEXT COLLATE "C" NOT NULL,
        position INTEGER NOT NULL,
        hash TEXT COLLATE "C" NOT NULL UNIQUE,
        jws TEXT NOT NULL,
        creator TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (chain_uri, position)
      );
      -- One row per membership interval: the entity is a member from block start_pos (its add
      -- applied) until block end_pos (its remove applied), end_pos NULL while still a member.
      CREATE TABLE memberships (
        chain_uri TEXT COLLATE "C" NOT NULL,
        entity TEXT COLLATE "C" NOT NULL,
        start_pos INTEGER NOT NULL,
        end_pos INTEGER,
        PRIMARY KEY (chain_uri, entity, start_pos)
      );
    `,
  },
  {
    version: 3,
    name: "group keys",
    sql: `
      CREATE TABLE gks (
        uri TEXT COLLATE "C" PRIMARY KEY,
        requester TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        sealed_key TEXT NOT NULL,
        block_hash TEXT,
        chain_uri TEXT,
        block_position INTEGER
      );
    `,
  },
  {
    version: 4,
    name: "at most N unrevoked keys per entity",
    sql: `
      CREATE INDEX entity_keys_active ON entity_keys (entity) WHERE revoked_at IS NULL;
      -- registerEntityKey with the §10 limit in one round trip. The advisory lock (per entity, held
      -- to the end of the call's transaction) serializes registrations of one entity across nodes;
      -- each later statement reads the latest committed rows (READ COMMITTED), so the count includes
      -- the key the previous holder just inserted. Nothing is written unless 'registered'.
      CREATE FUNCTION keyward_register_entity_key(p_entity TEXT, p_kid TEXT, p_jwk TEXT, p_created BIGINT, p_max INTEGER)
      RETURNS TEXT LANGUAGE plpgsql VOLATILE AS $$
      BEGIN
        PERFORM pg_advisory_xact_lock(hashtextextended('keyward:entity_keys:' || p_entity, 0));
        IF EXISTS (SELECT 1 FROM entity_keys WHERE entity = p_entity AND kid = p_kid) THEN
          RETURN 'duplicate';
        END IF;
        IF (SELECT count(*) FROM entity_keys WHERE entity = p_entity AND revoked_at IS NULL) >= p_max THEN
          RETURN 'limit';
        END IF;
        INSERT INTO entity_keys (entity, kid, jwk, created_at) VALUES (p_entity, p_kid, p_jwk, p_created) ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
          RETURN 'duplicate';
        END IF;
        RETURN 'registered';
      END
      $$;
    `,
  },
  {
    // §13: the audit log (same shape as SQLite's version 5). Appends are serialized by the one-row
    // head: keyward_append_audit locks it (SELECT ... FOR UPDATE), numbers the record, hashes it
    // (SHA-256(prev || body), the body's canonical JSON built by the client around its seq: see
    // auditBodyAroundSeq in src/store/audit.ts), inserts it and moves the head, in one round trip.
    // An audited change calls it after its own statements, in the same transaction; a concurrent
    // writer waits on the head row until that commits, so the chain stays linear across nodes.
    version: 5,
    name: "audit log",
    sql: `
      CREATE TABLE audit_log (
        seq BIGINT PRIMARY KEY,
        time_ms BIGINT NOT NULL,
        operation TEXT NOT NULL,
        actor TEXT COLLATE "C",
        entity TEXT COLLATE "C",
        object TEXT COLLATE "C",
        body TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
      );
      CREATE TABLE audit_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq BIGINT NOT NULL,
        hash TEXT NOT NULL
      );
      INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '${"0".repeat(64)}');
      CREATE FUNCTION keyward_append_audit(p_time BIGINT, p_operation TEXT, p_actor TEXT, p_entity TEXT, p_object TEXT, p_prefix TEXT, p_suffix TEXT)
      RETURNS TABLE (seq BIGINT, prev_hash TEXT, hash TEXT) LANGUAGE plpgsql VOLATILE AS $$
      DECLARE
        v_seq BIGINT;
        v_prev TEXT;
        v_body TEXT;
        v_hash TEXT;
      BEGIN
        SELECT h.seq + 1, h.hash INTO v_seq, v_prev FROM audit_head h WHERE h.id = 1 FOR UPDATE;
        v_body := p_prefix || v_seq::text || p_suffix;
        v_hash := encode(sha256(convert_to(v_prev || v_body, 'UTF8')), 'hex');
        INSERT INTO audit_log (seq, time_ms, operation, actor, entity, object, body, prev_hash, hash)
          VALUES (v_seq, p_time, p_operation, p_actor, p_entity, p_object, v_body, v_prev, v_hash);
        UPDATE audit_head SET seq = v_seq, hash = v_hash WHERE id = 1;
        RETURN QUERY SELECT v_seq, v_prev, v_hash;
      END
      $$;
    `,
  },
];
