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
];
