import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  CONFIG_KEYS,
  ConfigError,
  configReferenceMarkdown,
  configSchema,
  envNameOf,
  loadConfig,
  parseListen,
  resolveConfig,
  writeConfigFile,
  type ConfigKey,
} from "../../src/config/config.js";
import { runCli } from "../helpers/cli.js";

const BASE = {
  authority: "kms.example.com",
  oauthIssuer: "https://idp.example.com",
  oauthJwksUri: "https://idp.example.com/.well-known/jwks.json",
};

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "keyward-config-"));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function writeRaw(values: unknown): void {
  writeFileSync(join(dir, "config.json"), JSON.stringify(values));
}

/** Runs `fn`, expecting a ConfigError, and returns it. */
function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return e as ConfigError;
  }
  throw new Error("expected a ConfigError");
}

describe("loadConfig defaults", () => {
  it("applies every default", () => {
    writeRaw(BASE);
    const c = loadConfig(dir, {});
    expect(c).toEqual({
      dataDir: dir,
      listen: "127.0.0.1:8484",
      listenHost: "127.0.0.1",
      listenPort: 8484,
      authority: "kms.example.com",
      domain: "kms.example.com",
      oauthIssuer: BASE.oauthIssuer,
      oauthJwksUri: BASE.oauthJwksUri,
      oauthAudience: "kms://kms.example.com",
      oauthEntityClaim: "email",
      oauthIntrospectionCache: 60,
      oauthLeeway: 30,
      policy: 1,
      storeUrl: `sqlite:${join(dir, "keyward.db")}`,
      store: { kind: "sqlite", path: join(dir, "keyward.db") },
      ephemeralKeyLifetime: 3600,
      gmbcReaders: "members",
      corsOrigins: "*",
      maxMessageBytes: 1048576,
      maxBatchMessages: 50,
      maxInFlight: 4096,
      maxEventLoopLag: 100,
      bodyReadTimeout: 10,
      maxBlocksPerAppend: 100,
      maxOperationsPerBlock: 10000,
      maxKeysPerEntity: 16,
      maxSignatureChecksPerAppend: 200,
      clockSkew: 300,
      logLevel: "info",
      masterKeyFile: join(dir, "master.key"),
      staticKeyFile: join(dir, "static-key.json"),
    });
  });

  it("derives domain (host only, lower-cased) and audience from the authority", () => {
    writeRaw({ ...BASE, authority: "KMS.Example.COM:8443" });
    const c = loadConfig(dir, {});
    expect(c.domain).toBe("kms.example.com");
    expect(c.oauthAudience).toBe("kms://KMS.Example.COM:8443");
  });

  it("resolves a relative data dir to an absolute one", () => {
    writeRaw(BASE);
    const c = loadConfig(join(dir, "sub", ".."), {});
    expect(c.dataDir).toBe(dir);
  });

  it("uses process.env when no env is given", () => {
    writeRaw(BASE);
    const saved = process.env.KEYWARD_OAUTH_ENTITY_CLAIM;
    process.env.KEYWARD_OAUTH_ENTITY_CLAIM = "sub";
    try {
      expect(loadConfig(dir).oauthEntityClaim).toBe("sub");
    } finally {
      if (saved === undefined) delete process.env.KEYWARD_OAUTH_ENTITY_CLAIM;
      else process.env.KEYWARD_OAUTH_ENTITY_CLAIM = saved;
    }
  });

  it("the schema alone applies static defaults", () => {
    const v = configSchema.parse(BASE);
    expect(v.listen).toBe("127.0.0.1:8484");
    expect(v.policy).toBe(1);
    expect(v.oauthAudience).toBeUndefined();
  });
});

describe("file values", () => {
  it("are taken from config.json", () => {
    writeRaw({
      ...BASE,
      listen: "0.0.0.0:9000",
      publicUrl: "https://kms.example.com/",
      domain: "Example.COM",
      oauthAudience: "urn:keyward",
      oauthIntrospectionUrl: "https://idp.example.com/introspect",
      oauthClientId: "kms",
      oauthClientSecret: "s3cret",
      policy: 3,
      gmbcReaders: "members-and-former",
      workers: 4,
      logLevel: "debug",
      devIdp: {},
    });
    const c = loadConfig(dir, {});
    expect(c.listenHost).toBe("0.0.0.0");
    expect(c.listenPort).toBe(9000);
    expect(c.publicUrl).toBe("https://kms.example.com");
    expect(c.domain).toBe("example.com");
    expect(c.oauthAudience).toBe("urn:keyward");
    expect(c.oauthIntrospectionUrl).toBe("https://idp.example.com/introspect");
    expect(c.oauthClientId).toBe("kms");
    expect(c.oauthClientSecret).toBe("s3cret");
    expect(c.policy).toBe(3);
    expect(c.gmbcReaders).toBe("members-and-former");
    expect(c.workers).toBe(4);
    expect(c.logLevel).toBe("debug");
    expect(c.devIdp).toEqual({ listen: "127.0.0.1:8485", listenHost: "127.0.0.1", listenPort: 8485 });
  });
});

describe("environment overrides", () => {
  const cases: [ConfigKey | "devIdp", string, string, (c: ReturnType<typeof loadConfig>) => unknown, unknown][] = [
    ["listen", "KEYWARD_LISTEN", "10.0.0.1:80", (c) => [c.listen, c.listenHost, c.listenPort], ["10.0.0.1:80", "10.0.0.1", 80]],
    ["authority", "KEYWARD_AUTHORITY", "kms.other.org", (c) => [c.authority, c.domain, c.oauthAudience], ["kms.other.org", "kms.other.org", "kms://kms.other.org"]],
    ["publicUrl", "KEYWARD_PUBLIC_URL", "http://localhost:8080", (c) => c.publicUrl, "http://localhost:8080"],
    ["domain", "KEYWARD_DOMAIN", "Other.Org", (c) => c.domain, "other.org"],
    ["oauthIssuer", "KEYWARD_OAUTH_ISSUER", "https://issuer.test/realm", (c) => c.oauthIssuer, "https://issuer.test/realm"],
    ["oauthJwksUri", "KEYWARD_OAUTH_JWKS_URI", "https://issuer.test/keys", (c) => c.oauthJwksUri, "https://issuer.test/keys"],
    ["oauthAudience", "KEYWARD_OAUTH_AUDIENCE", "aud-1", (c) => c.oauthAudience, "aud-1"],
    ["oauthEntityClaim", "KEYWARD_OAUTH_ENTITY_CLAIM", "preferred_username", (c) => c.oauthEntityClaim, "preferred_username"],
    ["oauthIntrospectionUrl", "KEYWARD_OAUTH_INTROSPECTION_URL", "https://issuer.test/introspect", (c) => c.oauthIntrospectionUrl, "https://issuer.test/introspect"],
    ["oauthClientId", "KEYWARD_OAUTH_CLIENT_ID", "client", (c) => c.oauthClientId, "client"],
    ["oauthClientSecret", "KEYWARD_OAUTH_CLIENT_SECRET", "secret", (c) => c.oauthClientSecret, "secret"],
    ["oauthIntrospectionCache", "KEYWARD_OAUTH_INTROSPECTION_CACHE", "0", (c) => c.oauthIntrospectionCache, 0],
    ["oauthLeeway", "KEYWARD_OAUTH_LEEWAY", "0", (c) => c.oauthLeeway, 0],
    ["policy", "KEYWARD_POLICY", "2", (c) => c.policy, 2],
    ["storeUrl", "KEYWARD_STORE_URL", "postgres://u:p@db:5432/keyward", (c) => [c.storeUrl, c.store], ["postgres://u:p@db:5432/keyward", { kind: "postgres", url: "postgres://u:p@db:5432/keyward" }]],
    ["ephemeralKeyLifetime", "KEYWARD_EPHEMERAL_KEY_LIFETIME", "60", (c) => c.ephemeralKeyLifetime, 60],
    ["gmbcReaders", "KEYWARD_GMBC_READERS", "members-and-former", (c) => c.gmbcReaders, "members-and-former"],
    ["trustRoots", "KEYWARD_TRUST_ROOTS", "roots.pem", (c) => c.trustRoots, "<dir>/roots.pem"],
    ["corsOrigins", "KEYWARD_CORS_ORIGINS", "https://app.example.com, http://localhost:3000", (c) => c.corsOrigins, ["https://app.example.com", "http://localhost:3000"]],
    ["maxMessageBytes", "KEYWARD_MAX_MESSAGE_BYTES", "2048", (c) => c.maxMessageBytes, 2048],
    ["maxBatchMessages", "KEYWARD_MAX_BATCH_MESSAGES", "5", (c) => c.maxBatchMessages, 5],
    ["maxInFlight", "KEYWARD_MAX_IN_FLIGHT", "64", (c) => c.maxInFlight, 64],
    ["maxEventLoopLag", "KEYWARD_MAX_EVENT_LOOP_LAG", "250", (c) => c.maxEventLoopLag, 250],
    ["bodyReadTimeout", "KEYWARD_BODY_READ_TIMEOUT", "3", (c) => c.bodyReadTimeout, 3],
    ["maxBlocksPerAppend", "KEYWARD_MAX_BLOCKS_PER_APPEND", "7", (c) => c.maxBlocksPerAppend, 7],
    ["maxOperationsPerBlock", "KEYWARD_MAX_OPERATIONS_PER_BLOCK", "9", (c) => c.maxOperationsPerBlock, 9],
    ["maxKeysPerEntity", "KEYWARD_MAX_KEYS_PER_ENTITY", "3", (c) => c.maxKeysPerEntity, 3],
    ["maxSignatureChecksPerAppend", "KEYWARD_MAX_SIGNATURE_CHECKS_PER_APPEND", "5", (c) => c.maxSignatureChecksPerAppend, 5],
    ["clockSkew", "KEYWARD_CLOCK_SKEW", "0", (c) => c.clockSkew, 0],
    ["workers", "KEYWARD_WORKERS", "8", (c) => c.workers, 8],
    ["logLevel", "KEYWARD_LOG_LEVEL", "trace", (c) => c.logLevel, "trace"],
    ["masterKeyFile", "KEYWARD_MASTER_KEY_FILE", "/etc/keyward/master.key", (c) => c.masterKeyFile, "/etc/keyward/master.key"],
    ["staticKeyFile", "KEYWARD_STATIC_KEY_FILE", "keys/static.json", (c) => c.staticKeyFile, "<dir>/keys/static.json"],
    ["xmppService", "KEYWARD_XMPP_SERVICE", "xmpp://[::1]:5347", (c) => [c.xmpp?.service, c.xmpp?.host, c.xmpp?.port], ["xmpp://[::1]:5347", "::1", 5347]],
    ["xmppDomain", "KEYWARD_XMPP_DOMAIN", "KMS.Other.Org", (c) => c.xmpp?.domain, "kms.other.org"],
    ["xmppSecret", "KEYWARD_XMPP_SECRET", "env-secret", (c) => c.xmpp?.secret, "env-secret"],
    ["xmppMaxStanzaBytes", "KEYWARD_XMPP_MAX_STANZA_BYTES", "65536", (c) => c.xmpp?.maxStanzaBytes, 65536],
    ["federation", "KEYWARD_FEDERATION", '{"webfinger":{"B.Example":"https://b.example/"}}', (c) => c.federation, { peers: [], webfinger: { "b.example": "https://b.example" } }],
    ["devIdp", "KEYWARD_DEV_IDP_LISTEN", "[::1]:9999", (c) => c.devIdp, { listen: "[::1]:9999", listenHost: "::1", listenPort: 9999 }],
  ];

  it("covers every key", () => {
    expect(new Set(cases.map((c) => c[0]))).toEqual(new Set(Object.keys(CONFIG_KEYS)));
  });

  it.each(cases)("%s is overridden by %s", (key, env, raw, get, expected) => {
    // Client credentials in the file: an introspection URL requires them.
    // The XMPP keys come as a set of three: the other two in the file.
    writeRaw(
      key === "oauthIntrospectionUrl"
        ? { ...BASE, oauthClientId: "kms", oauthClientSecret: "s3cret" }
        : key.startsWith("xmpp")
          ? { ...BASE, xmppService: "xmpp://127.0.0.1:5347", xmppDomain: "kms.example.com", xmppSecret: "file-secret" }
          : BASE,
    );
    expect(envNameOf(key)).toBe(env);
    const c = loadConfig(dir, { [env]: raw });
    const want = JSON.parse(JSON.stringify(expected).replaceAll("<dir>", dir)) as unknown;
    expect(get(c)).toEqual(want);
  });

  it("the environment wins over the file", () => {
    writeRaw({ ...BASE, listen: "127.0.0.1:1", policy: 3, devIdp: { listen: "127.0.0.1:2" } });
    const c = loadConfig(dir, { KEYWARD_LISTEN: "127.0.0.1:3", KEYWARD_POLICY: "1", KEYWARD_DEV_IDP_LISTEN: "127.0.0.1:4" });
    expect(c.listenPort).toBe(3);
    expect(c.policy).toBe(1);
    expect(c.devIdp?.listenPort).toBe(4);
  });

  it("required keys can come from the environment alone", () => {
    writeRaw({});
    const c = loadConfig(dir, {
      KEYWARD_AUTHORITY: BASE.authority,
      KEYWARD_OAUTH_ISSUER: BASE.oauthIssuer,
      KEYWARD_OAUTH_JWKS_URI: BASE.oauthJwksUri,
    });
    expect(c.authority).toBe(BASE.authority);
  });

  it("an empty variable counts as unset", () => {
    writeRaw({ ...BASE, policy: 2 });
    expect(loadConfig(dir, { KEYWARD_POLICY: "", KEYWARD_WORKERS: "" }).policy).toBe(2);
  });

  it("exposes KEYWARD_MASTER_KEY as masterKeyFromEnv", () => {
    writeRaw(BASE);
    expect(loadConfig(dir, { KEYWARD_MASTER_KEY: "bWFzdGVy" }).masterKeyFromEnv).toBe("bWFzdGVy");
    expect(loadConfig(dir, {}).masterKeyFromEnv).toBeUndefined();
  });
});

describe("bad values", () => {
  it.each([
    ["12abc"],
    ["1.5"],
    ["0x10"],
    [" 5"],
    ["+5"],
    ["1e3"],
    ["99999999999999999999"],
  ])("integers from the environment are parsed strictly: %j", (raw) => {
    writeRaw(BASE);
    const e = configError(() => loadConfig(dir, { KEYWARD_MAX_BATCH_MESSAGES: raw }));
    expect(e.key).toBe("KEYWARD_MAX_BATCH_MESSAGES");
    expect(e.message).toBe(`config: KEYWARD_MAX_BATCH_MESSAGES: must be an integer (got ${JSON.stringify(raw)})`);
  });

  it.each([
    ["oauthLeeway", 301, "KEYWARD_OAUTH_LEEWAY", "-1", /between 0 and 300/],
    ["ephemeralKeyLifetime", 0, "KEYWARD_EPHEMERAL_KEY_LIFETIME", "0", /at least 1/],
    ["maxMessageBytes", 0, "KEYWARD_MAX_MESSAGE_BYTES", "0", /at least 1/],
    ["maxBatchMessages", 2.5, "KEYWARD_MAX_BATCH_MESSAGES", "0", /./],
    ["maxBlocksPerAppend", "100", "KEYWARD_MAX_BLOCKS_PER_APPEND", "-3", /./],
    ["maxOperationsPerBlock", -1, "KEYWARD_MAX_OPERATIONS_PER_BLOCK", "0", /at least 1/],
    ["clockSkew", -1, "KEYWARD_CLOCK_SKEW", "-1", /at least 0/],
    ["workers", 0, "KEYWARD_WORKERS", "0", /at least 1/],
    ["logLevel", "loud", "KEYWARD_LOG_LEVEL", "verbose", /must be one of/],
    ["gmbcReaders", "everyone", "KEYWARD_GMBC_READERS", "all", /members-and-former/],
    ["authority", "kms://kms.example.com", "KEYWARD_AUTHORITY", "under_score.example.com", /DNS host name/],
    ["publicUrl", "https://kms.example.com/path", "KEYWARD_PUBLIC_URL", "ftp://kms.example.com", /origin/],
    ["domain", "example.com:443", "KEYWARD_DOMAIN", "-bad.example", /domain/],
    ["oauthIssuer", "not a url", "KEYWARD_OAUTH_ISSUER", "ftp://idp", /URL/],
    ["oauthJwksUri", 42, "KEYWARD_OAUTH_JWKS_URI", "jwks.json", /./],
    ["oauthIntrospectionUrl", "nope", "KEYWARD_OAUTH_INTROSPECTION_URL", "nope", /URL/],
    ["storeUrl", "mysql://db/keyward", "KEYWARD_STORE_URL", "sqlite://host/db", /sqlite/],
    ["listen", "8484", "KEYWARD_LISTEN", "localhost:65536", /./],
    ["corsOrigins", "https://app.example.com/path", "KEYWARD_CORS_ORIGINS", "*,https://app.example.com", /./],
  ] as const)("%s: file and environment variants name the key", (key, fileValue, env, envValue, reason) => {
    writeRaw({ ...BASE, [key]: fileValue });
    const fromFile = configError(() => loadConfig(dir, {}));
    expect(fromFile.key).toBe(key);
    expect(fromFile.message).toMatch(new RegExp(`^config\\.json: '${key}': `));
    expect(fromFile.message).toMatch(reason);

    writeRaw(BASE);
    const fromEnv = configError(() => loadConfig(dir, { [env]: envValue }));
    expect(fromEnv.key).toBe(env);
    expect(fromEnv.message).toMatch(new RegExp(`^config: ${env}: `));
  });

  it("an introspection URL requires the client id and secret, and the error names the missing keys", () => {
    writeRaw({ ...BASE, oauthIntrospectionUrl: "https://idp.example.com/introspect" });
    const both = configError(() => loadConfig(dir, {}));
    expect(both.key).toBe("oauthClientId");
    expect(both.message).toMatch(/'oauthClientId' and 'oauthClientSecret' are required when 'oauthIntrospectionUrl' is set/);
    expect(both.message).toContain("KEYWARD_OAUTH_CLIENT_SECRET");
    const one = configError(() => loadConfig(dir, { KEYWARD_OAUTH_CLIENT_ID: "kms" }));
    expect(one.key).toBe("oauthClientSecret");
    expect(one.message).toMatch(/'oauthClientSecret' is required/);
    expect(one.message).not.toMatch(/'oauthClientId'/);
    expect(loadConfig(dir, { KEYWARD_OAUTH_CLIENT_ID: "kms", KEYWARD_OAUTH_CLIENT_SECRET: "s" }).oauthClientSecret).toBe("s");
  });

  it("oauthIntrospectionCache must be between 0 and 60 seconds", () => {
    writeRaw({ ...BASE, oauthIntrospectionCache: 61 });
    expect(configError(() => loadConfig(dir, {})).message).toMatch(/'oauthIntrospectionCache': must be between 0 and 60/);
    writeRaw(BASE);
    expect(configError(() => loadConfig(dir, { KEYWARD_OAUTH_INTROSPECTION_CACHE: "-1" })).key).toBe("KEYWARD_OAUTH_INTROSPECTION_CACHE");
  });

  it("bodyReadTimeout must be a whole number of seconds between 1 and 300", () => {
    for (const bad of [0, 301, 2.5, "10"]) {
      writeRaw({ ...BASE, bodyReadTimeout: bad });
      const e = configError(() => loadConfig(dir, {}));
      expect(e.key).toBe("bodyReadTimeout");
      expect(e.message).toMatch(/^config\.json: 'bodyReadTimeout': must (be between 1 and 300|be an integer)/);
    }
    writeRaw(BASE);
    for (const bad of ["0", "301", "1.5", "ten", "-1"]) {
      const e = configError(() => loadConfig(dir, { KEYWARD_BODY_READ_TIMEOUT: bad }));
      expect(e.key).toBe("KEYWARD_BODY_READ_TIMEOUT");
      expect(e.message).toContain(`(got "${bad}")`);
    }
    writeRaw({ ...BASE, bodyReadTimeout: 300 });
    expect(loadConfig(dir, {}).bodyReadTimeout).toBe(300);
    expect(loadConfig(dir, { KEYWARD_BODY_READ_TIMEOUT: "1" }).bodyReadTimeout).toBe(1);
  });

  it("formats messages as documented", () => {
    writeRaw({ ...BASE, listen: "nonsense" });
    expect(configError(() => loadConfig(dir, {})).message).toBe(`config.json: 'listen': expected host:port (got "nonsense")`);
    writeRaw(BASE);
    expect(configError(() => loadConfig(dir, { KEYWARD_POLICY: "7" })).message).toBe(`config: KEYWARD_POLICY: must be 1, 2 or 3 (got "7")`);
  });

  it("never echoes secrets", () => {
    writeRaw({ ...BASE, oauthClientSecret: "" });
    const e = configError(() => loadConfig(dir, {}));
    expect(e.key).toBe("oauthClientSecret");
    expect(e.message).not.toContain("got");
    writeRaw(BASE);
    const e2 = configError(() => loadConfig(dir, { KEYWARD_STORE_URL: "mysql://root:hunter2@db/x" }));
    expect(e2.key).toBe("KEYWARD_STORE_URL");
    expect(e2.message).not.toContain("hunter2");
  });

  it.each(["authority", "oauthIssuer", "oauthJwksUri"] as const)("missing required key %s", (key) => {
    const values: Record<string, string> = { ...BASE };
    delete values[key];
    writeRaw(values);
    const e = configError(() => loadConfig(dir, {}));
    expect(e.key).toBe(key);
    expect(e.message).toContain("is required");
    expect(e.message).toContain(envNameOf(key));
  });

  it("rejects a devIdp that is not an object, and bad devIdp.listen", () => {
    writeRaw({ ...BASE, devIdp: "127.0.0.1:8485" });
    expect(configError(() => loadConfig(dir, {})).key).toBe("devIdp");
    writeRaw({ ...BASE, devIdp: { listen: "x" } });
    expect(configError(() => loadConfig(dir, {})).key).toBe("devIdp.listen");
    writeRaw({ ...BASE, devIdp: { port: 1 } });
    const e = configError(() => loadConfig(dir, {}));
    expect(e.key).toBe("devIdp.port");
    expect(e.message).toContain("unknown key");
    writeRaw(BASE);
    expect(configError(() => loadConfig(dir, { KEYWARD_DEV_IDP_LISTEN: "x" })).key).toBe("KEYWARD_DEV_IDP_LISTEN");
  });
});

describe("policy", () => {
  it.each([
    ["1", 1],
    ["2", 2],
    ["3", 3],
  ] as const)("env %j → %d", (raw, policy) => {
    writeRaw(BASE);
    expect(loadConfig(dir, { KEYWARD_POLICY: raw }).policy).toBe(policy);
  });

  it.each(["0", "4", "7", "01", "1.0", "one", " 1", "-1"])("env %j is an error", (raw) => {
    writeRaw(BASE);
    const e = configError(() => loadConfig(dir, { KEYWARD_POLICY: raw }));
    expect(e.key).toBe("KEYWARD_POLICY");
    expect(e.message).toBe(`config: KEYWARD_POLICY: must be 1, 2 or 3 (got ${JSON.stringify(raw)})`);
  });

  it.each([1, 2, 3])("file %d", (policy) => {
    writeRaw({ ...BASE, policy });
    expect(loadConfig(dir, {}).policy).toBe(policy);
  });

  it.each([0, 4, "2", 1.5, null])("file %j is an error", (policy) => {
    writeRaw({ ...BASE, policy });
    const e = configError(() => loadConfig(dir, {}));
    expect(e.key).toBe("policy");
    expect(e.message).toMatch(/^config\.json: 'policy': must be 1, 2 or 3/);
  });
});

describe("listen", () => {
  it.each([
    ["127.0.0.1:8484", "127.0.0.1", 8484],
    ["0.0.0.0:0", "0.0.0.0", 0],
    ["localhost:65535", "localhost", 65535],
    ["kms.example.com:443", "kms.example.com", 443],
    ["[::1]:8484", "::1", 8484],
    ["[::]:80", "::", 80],
    ["[2001:db8::1]:443", "2001:db8::1", 443],
  ])("parses %s", (listen, host, port) => {
    expect(parseListen(listen)).toEqual({ host, port });
    writeRaw({ ...BASE, listen });
    const c = loadConfig(dir, {});
    expect([c.listen, c.listenHost, c.listenPort]).toEqual([listen, host, port]);
  });

  it.each([
    "8484",
    ":8484",
    "localhost",
    "localhost:",
    "localhost:65536",
    "localhost:-1",
    "localhost:80x",
    "::1:8484",
    "[::1]8484",
    "[::1]:",
    "[127.0.0.1]:80",
    "[zz::1]:80",
    "bad_host:80",
    "",
  ])("rejects %j", (listen) => {
    expect(() => parseListen(listen)).toThrow();
    writeRaw({ ...BASE, listen });
    const e = configError(() => loadConfig(dir, {}));
    expect(e.key).toBe("listen");
  });

  it("says the port is out of range", () => {
    writeRaw(BASE);
    expect(configError(() => loadConfig(dir, { KEYWARD_LISTEN: "[::1]:70000" })).message).toContain("between 0 and 65535");
  });
});

describe("config.json handling", () => {
  it("a missing file says the data dir is not initialised and suggests keyward init", () => {
    const e = configError(() => loadConfig(dir, {}));
    expect(e.key).toBe("config.json");
    expect(e.message).toContain(join(dir, "config.json"));
    expect(e.message).toContain("not initialised");
    expect(e.message).toContain("keyward init");
  });

  it("a missing data dir gets the same advice", () => {
    expect(configError(() => loadConfig(join(dir, "nope"), {})).message).toContain("keyward init");
  });

  it("unknown keys are refused, with a suggestion for typos", () => {
    writeRaw({ ...BASE, oauthLeewy: 10 });
    const e = configError(() => loadConfig(dir, {}));
    expect(e.key).toBe("oauthLeewy");
    expect(e.message).toBe(`config.json: 'oauthLeewy': unknown key (did you mean 'oauthLeeway'?)`);

    writeRaw({ ...BASE, somethingElseEntirely: true });
    const e2 = configError(() => loadConfig(dir, {}));
    expect(e2.key).toBe("somethingElseEntirely");
    expect(e2.message).toBe(`config.json: 'somethingElseEntirely': unknown key`);
  });

  it("derived and env-only names are unknown keys in the file", () => {
    for (const key of ["dataDir", "listenHost", "masterKeyFromEnv", "masterKey"]) {
      writeRaw({ ...BASE, [key]: "x" });
      expect(configError(() => loadConfig(dir, {})).key).toBe(key);
    }
  });

  it("invalid JSON and non-objects are refused", () => {
    writeFileSync(join(dir, "config.json"), "{ nope");
    expect(configError(() => loadConfig(dir, {})).message).toMatch(/not valid JSON/);
    writeRaw([BASE]);
    expect(configError(() => loadConfig(dir, {})).message).toMatch(/JSON object/);
  });
});

describe("path resolution", () => {
  it("resolves relative paths against the data dir and keeps absolute ones", () => {
    writeRaw({
      ...BASE,
      trustRoots: "pki/roots.pem",
      masterKeyFile: "../outside/master.key",
      staticKeyFile: "/abs/static.json",
      storeUrl: "sqlite:db/keyward.sqlite",
    });
    const c = loadConfig(dir, {});
    expect(c.trustRoots).toBe(join(dir, "pki", "roots.pem"));
    expect(c.masterKeyFile).toBe(join(dir, "..", "outside", "master.key"));
    expect(c.staticKeyFile).toBe("/abs/static.json");
    expect(c.storeUrl).toBe(`sqlite:${join(dir, "db", "keyward.sqlite")}`);
    expect(c.store).toEqual({ kind: "sqlite", path: join(dir, "db", "keyward.sqlite") });
  });

  it.each([
    ["sqlite:/var/lib/kw.db", { kind: "sqlite", path: "/var/lib/kw.db" }],
    ["sqlite:///var/lib/kw.db", { kind: "sqlite", path: "/var/lib/kw.db" }],
    ["sqlite::memory:", { kind: "sqlite", path: ":memory:" }],
    ["postgresql://db.internal/keyward", { kind: "postgres", url: "postgresql://db.internal/keyward" }],
  ])("store URL %s", (storeUrl, store) => {
    writeRaw({ ...BASE, storeUrl });
    expect(loadConfig(dir, {}).store).toEqual(store);
  });

  it.each(["sqlite:", "sqlite://host/db", "postgres:///nohost", "file:/x.db", "keyward.db"])("store URL %j is refused", (storeUrl) => {
    writeRaw({ ...BASE, storeUrl });
    expect(configError(() => loadConfig(dir, {})).key).toBe("storeUrl");
  });
});

describe("writeConfigFile", () => {
  it("writes only the given keys, pretty-printed, mode 0600 (it may hold oauthClientSecret), and round-trips", () => {
    writeConfigFile(dir, { ...BASE, policy: 2, workers: undefined });
    const file = join(dir, "config.json");
    const text = readFileSync(file, "utf8");
    expect(text).toBe(JSON.stringify({ ...BASE, policy: 2 }, null, 2) + "\n");
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(loadConfig(dir, {}).policy).toBe(2);
  });

  it("a rewrite narrows an older 0644 file (and a stale temp file) to 0600", () => {
    const file = join(dir, "config.json");
    writeFileSync(file, JSON.stringify(BASE), { mode: 0o644 });
    chmodSync(file, 0o644);
    writeFileSync(`${file}.${process.pid}.tmp`, "stale", { mode: 0o666 });
    chmodSync(`${file}.${process.pid}.tmp`, 0o666);
    writeConfigFile(dir, { ...BASE, oauthIntrospectionUrl: "https://idp.example.com/introspect", oauthClientId: "kms", oauthClientSecret: "s3cret" });
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(loadConfig(dir, {}).oauthClientSecret).toBe("s3cret");
    expect(existsSync(`${file}.${process.pid}.tmp`)).toBe(false);
  });

  it("keyward init writes config.json with mode 0600", async () => {
    const data = join(dir, "data");
    const r = await runCli(["init", "--dir", data, "--authority", "kms.example.com"], { env: { KEYWARD_MASTER_KEY: "" } });
    expect(r.code, r.stderr).toBe(0);
    expect(statSync(join(data, "config.json")).mode & 0o777).toBe(0o600);
    expect(JSON.parse(readFileSync(join(data, "config.json"), "utf8"))).toEqual({ authority: "kms.example.com" });
  }, 30_000);

  it("replaces an existing file", () => {
    writeConfigFile(dir, { ...BASE, logLevel: "warn" });
    writeConfigFile(dir, BASE);
    expect(JSON.parse(readFileSync(join(dir, "config.json"), "utf8"))).toEqual(BASE);
  });

  it("refuses unknown keys (so the master key can never be written) and invalid values", () => {
    const withKey = { ...BASE, masterKeyFromEnv: "secret" } as Record<string, unknown>;
    expect(configError(() => writeConfigFile(dir, withKey)).key).toBe("masterKeyFromEnv");
    expect(configError(() => writeConfigFile(dir, { listen: "nope" })).key).toBe("listen");
    expect(configError(() => writeConfigFile(dir, { devIdp: { listen: "nope" } })).key).toBe("devIdp.listen");
    expect(() => statSync(join(dir, "config.json"))).toThrow();
  });
});

describe("reference", () => {
  it("envNameOf converts camelCase to KEYWARD_SCREAMING_SNAKE", () => {
    expect(envNameOf("oauthJwksUri")).toBe("KEYWARD_OAUTH_JWKS_URI");
    expect(envNameOf("maxOperationsPerBlock")).toBe("KEYWARD_MAX_OPERATIONS_PER_BLOCK");
    expect(envNameOf("devIdp")).toBe("KEYWARD_DEV_IDP_LISTEN");
    expect(envNameOf("devIdp.listen")).toBe("KEYWARD_DEV_IDP_LISTEN");
    expect(envNameOf("someNewKey")).toBe("KEYWARD_SOME_NEW_KEY");
  });

  it("CONFIG_KEYS matches the schema and the naming rule", () => {
    expect(Object.keys(CONFIG_KEYS).sort()).toEqual(Object.keys(configSchema.shape).sort());
    for (const [key, info] of Object.entries(CONFIG_KEYS)) {
      if (key !== "devIdp") expect(info.env).toBe(`KEYWARD_${key.replace(/([A-Z])/g, "_$1").toUpperCase()}`);
    }
  });

  it("configReferenceMarkdown has one row per key plus env-only variables", () => {
    const md = configReferenceMarkdown();
    const lines = md.trimEnd().split("\n");
    expect(lines[0]).toBe("| Key | Environment variable | Default | Description |");
    expect(lines).toHaveLength(2 + Object.keys(CONFIG_KEYS).length + 1);
    expect(md).toContain("| `listen` | `KEYWARD_LISTEN` | `127.0.0.1:8484` |");
    expect(md).toContain("| `authority` | `KEYWARD_AUTHORITY` | *required* |");
    expect(md).toContain("`KEYWARD_MASTER_KEY`");
    for (const line of lines) expect(line.split(/(?<!\\)\|/)).toHaveLength(6);
  });
});

describe("resolveConfig", () => {
  it("load shedding limits: defaults 4096 in flight and 100 ms of event-loop lag; 0 turns lag shedding off", () => {
    const d = resolveConfig(dir, BASE, {});
    expect([d.maxInFlight, d.maxEventLoopLag]).toEqual([4096, 100]);
    const c = resolveConfig(dir, BASE, { KEYWARD_MAX_IN_FLIGHT: "16", KEYWARD_MAX_EVENT_LOOP_LAG: "0" });
    expect([c.maxInFlight, c.maxEventLoopLag]).toEqual([16, 0]);
    expect(() => resolveConfig(dir, BASE, { KEYWARD_MAX_IN_FLIGHT: "0" })).toThrow(/maxInFlight|KEYWARD_MAX_IN_FLIGHT/);
  });

  it("builds a configuration without a file", () => {
    const c = resolveConfig(dir, BASE, { KEYWARD_WORKERS: "2" });
    expect(c.workers).toBe(2);
    expect(c.staticKeyFile).toBe(join(dir, "static-key.json"));
  });
});

describe("the XMPP binding's configuration (§3)", () => {
  const XMPP_ENV = { KEYWARD_XMPP_SERVICE: "xmpp://127.0.0.1:5347", KEYWARD_XMPP_DOMAIN: "kms.example.com", KEYWARD_XMPP_SECRET: "s3cret" };

  it("is absent by default", () => {
    expect(resolveConfig(dir, BASE, {}).xmpp).toBeUndefined();
  });

  it("all three variables give config.xmpp, host and port split, the domain lower-cased", () => {
    const c = resolveConfig(dir, BASE, { ...XMPP_ENV, KEYWARD_XMPP_DOMAIN: "KMS.Example.COM" });
    expect(c.xmpp).toEqual({ service: "xmpp://127.0.0.1:5347", host: "127.0.0.1", port: 5347, domain: "kms.example.com", secret: "s3cret", maxStanzaBytes: 524_288 });
    expect(resolveConfig(dir, BASE, { ...XMPP_ENV, KEYWARD_XMPP_SERVICE: "xmpp://xmpp.example.com:15347" }).xmpp).toMatchObject({ host: "xmpp.example.com", port: 15347 });
    expect(resolveConfig(dir, BASE, { ...XMPP_ENV, KEYWARD_XMPP_SERVICE: "xmpp://[::1]:5347/" }).xmpp).toMatchObject({ host: "::1", port: 5347 });
  });

  it("the keys may come from config.json too", () => {
    writeRaw({ ...BASE, xmppService: "xmpp://127.0.0.1:5347", xmppDomain: "kms.example.com", xmppSecret: "from-file" });
    expect(loadConfig(dir, {}).xmpp?.secret).toBe("from-file");
  });

  it.each([
    [["KEYWARD_XMPP_SERVICE"], "xmppDomain", /'xmppDomain' and 'xmppSecret' are missing/],
    [["KEYWARD_XMPP_DOMAIN"], "xmppService", /'xmppService' and 'xmppSecret' are missing/],
    [["KEYWARD_XMPP_SECRET"], "xmppService", /'xmppService' and 'xmppDomain' are missing/],
    [["KEYWARD_XMPP_SERVICE", "KEYWARD_XMPP_DOMAIN"], "xmppSecret", /'xmppSecret' is missing.*KEYWARD_XMPP_SECRET/],
    [["KEYWARD_XMPP_SERVICE", "KEYWARD_XMPP_SECRET"], "xmppDomain", /'xmppDomain' is missing.*KEYWARD_XMPP_DOMAIN/],
  ] as const)("all three or none: only %j is refused, naming %s", (given, key, message) => {
    const env = Object.fromEntries(given.map((k) => [k, XMPP_ENV[k]]));
    const e = configError(() => resolveConfig(dir, BASE, env));
    expect(e.key).toBe(key);
    expect(e.message).toMatch(message);
    expect(e.message).not.toContain("s3cret");
  });

  it.each(["127.0.0.1:5347", "xmpp://127.0.0.1", "http://127.0.0.1:5347", "xmpp://127.0.0.1:0", "xmpp://127.0.0.1:70000", "xmpp://user@host:5347", "xmpp://[nope]:5347", "xmpp://host:5347/path", "xmpp://-bad-:5347"])(
    "refuses the service %s",
    (service) => {
      const e = configError(() => resolveConfig(dir, BASE, { ...XMPP_ENV, KEYWARD_XMPP_SERVICE: service }));
      expect(e.key).toBe("KEYWARD_XMPP_SERVICE");
      expect(e.message).toMatch(/expected xmpp:\/\/host:port/);
    },
  );

  it("refuses a domain that is not a DNS name and an empty secret in the file", () => {
    expect(configError(() => resolveConfig(dir, BASE, { ...XMPP_ENV, KEYWARD_XMPP_DOMAIN: "kms@example.com" })).key).toBe("KEYWARD_XMPP_DOMAIN");
    expect(configError(() => resolveConfig(dir, { ...BASE, xmppSecret: "" }, { ...XMPP_ENV, KEYWARD_XMPP_SECRET: "" })).key).toBe("xmppSecret");
  });

  it("the stanza limit is an integer of at least 4096", () => {
    expect(configError(() => resolveConfig(dir, BASE, { ...XMPP_ENV, KEYWARD_XMPP_MAX_STANZA_BYTES: "100" })).key).toBe("KEYWARD_XMPP_MAX_STANZA_BYTES");
    expect(configError(() => resolveConfig(dir, BASE, { ...XMPP_ENV, KEYWARD_XMPP_MAX_STANZA_BYTES: "1e6" })).key).toBe("KEYWARD_XMPP_MAX_STANZA_BYTES");
  });

  it("never echoes the secret in an error", () => {
    const e = configError(() => resolveConfig(dir, { ...BASE, xmppSecret: 12345 }, {}));
    expect(e.key).toBe("xmppSecret");
    expect(e.message).not.toContain("12345");
  });
});

describe("corsOrigins", () => {
  it("defaults to * (every KMS message authenticates in-band); '*' alone is kept", () => {
    expect(resolveConfig(dir, BASE, {}).corsOrigins).toBe("*");
    expect(resolveConfig(dir, BASE, { KEYWARD_CORS_ORIGINS: " * " }).corsOrigins).toBe("*");
    expect(resolveConfig(dir, { ...BASE, corsOrigins: ["*"] }, {}).corsOrigins).toBe("*");
  });

  it("reads a comma list (env or file) or an array (file), normalized as browsers send Origin", () => {
    const c = resolveConfig(dir, BASE, { KEYWARD_CORS_ORIGINS: "HTTPS://App.Example.com:443, http://localhost:3000/" });
    expect(c.corsOrigins).toEqual(["https://app.example.com", "http://localhost:3000"]);
    const f = resolveConfig(dir, { ...BASE, corsOrigins: ["https://a.example", "https://b.example:8443"] }, {});
    expect(f.corsOrigins).toEqual(["https://a.example", "https://b.example:8443"]);
    // An empty array is a deliberate "no browser origin".
    expect(resolveConfig(dir, { ...BASE, corsOrigins: [] }, {}).corsOrigins).toEqual([]);
  });

  it.each([
    ["https://app.example.com/path", /no path/],
    ["https://app.example.com?x", /no path/],
    ["ftp://app.example.com", /http\(s\) origins/],
    ["app.example.com", /http\(s\) origins/],
    ["null", /http\(s\) origins/],
    ["https://user@app.example.com", /http\(s\) origins/],
    ["*, https://app.example.com", /cannot be combined/],
    ["https://a.example,,https://b.example", /empty entry/],
    ["", /must not be empty/],
  ])("refuses %j", (value, reason) => {
    const e = configError(() => resolveConfig(dir, { ...BASE, corsOrigins: value }, {}));
    expect(e.key).toBe("corsOrigins");
    expect(e.message).toMatch(reason);
  });

  it("refuses a value that is neither a string nor an array of strings", () => {
    for (const value of [42, { origin: "https://a.example" }, [1]]) {
      const e = configError(() => resolveConfig(dir, { ...BASE, corsOrigins: value }, {}));
      expect(e.key).toMatch(/^corsOrigins/);
    }
  });
});

describe("federation (§12)", () => {
  const PEERS = { peers: [{ authority: "KMS.B.example", url: "https://kms.b.example/" }], webfinger: { "B.Example": "http://127.0.0.1:8080" } };
  const ROOTS = { trustRoots: "roots.pem" };

  it("is absent unless configured; peers and webfinger default to empty", () => {
    expect(resolveConfig(dir, BASE, {}).federation).toBeUndefined();
    expect(resolveConfig(dir, { ...BASE, federation: {} }, {}).federation).toEqual({ peers: [], webfinger: {} });
  });

  it("from config.json: authorities and domains lower-cased, origins normalized", () => {
    const c = resolveConfig(dir, { ...BASE, ...ROOTS, federation: PEERS }, {});
    expect(c.federation).toEqual({ peers: [{ authority: "kms.b.example", url: "https://kms.b.example" }], webfinger: { "b.example": "http://127.0.0.1:8080" } });
  });

  it("from KEYWARD_FEDERATION (JSON), overriding the file", () => {
    const c = resolveConfig(dir, { ...BASE, ...ROOTS, federation: { peers: [] } }, { KEYWARD_FEDERATION: JSON.stringify(PEERS) });
    expect(c.federation?.peers).toEqual([{ authority: "kms.b.example", url: "https://kms.b.example" }]);
    expect(CONFIG_KEYS.federation.env).toBe("KEYWARD_FEDERATION");
  });

  it("KEYWARD_FEDERATION that is not JSON, or is invalid, names the variable (and the nested key)", () => {
    expect(configError(() => resolveConfig(dir, { ...BASE, ...ROOTS }, { KEYWARD_FEDERATION: "{nope" })).message).toMatch(/^config: KEYWARD_FEDERATION: must be JSON/);
    const e = configError(() => resolveConfig(dir, { ...BASE, ...ROOTS }, { KEYWARD_FEDERATION: '{"peers":[{"authority":"kms.b.example","url":"ftp://x"}]}' }));
    expect(e.key).toBe("KEYWARD_FEDERATION");
    expect(e.message).toMatch(/'federation\.peers\.0\.url': expected an http\(s\) origin/);
  });

  it("trustRoots is required when peers are set (not for webfinger alone or an empty peer list)", () => {
    const e = configError(() => resolveConfig(dir, { ...BASE, federation: PEERS }, {}));
    expect(e.key).toBe("trustRoots");
    expect(e.message).toMatch(/'trustRoots' is required when 'federation' names peers/);
    expect(resolveConfig(dir, { ...BASE, federation: { peers: [], webfinger: { "b.example": "https://b.example" } } }, {}).federation?.peers).toEqual([]);
    expect(resolveConfig(dir, { ...BASE, federation: PEERS }, { KEYWARD_TRUST_ROOTS: "r.pem" }).federation?.peers).toHaveLength(1);
  });

  it.each([
    [{ peers: [{ authority: "kms.b.example:8443", url: "https://kms.b.example" }] }, "federation.peers.0.authority", /DNS host name/],
    [{ peers: [{ authority: "kms://kms.b.example", url: "https://kms.b.example" }] }, "federation.peers.0.authority", /DNS host name/],
    [{ peers: [{ authority: "kms.b.example", url: "https://kms.b.example/path" }] }, "federation.peers.0.url", /http\(s\) origin/],
    [{ peers: [{ authority: "kms.b.example", url: "ftp://kms.b.example" }] }, "federation.peers.0.url", /http\(s\) origin/],
    [{ peers: [{ authority: "kms.b.example", url: "https://user:pw@kms.b.example" }] }, "federation.peers.0.url", /http\(s\) origin/],
    [{ peers: [{ authority: "kms.b.example" }] }, "federation.peers.0.url", /string/],
    [{ peers: [{ authority: "kms.b.example", url: "https://a", extra: 1 }] }, "federation.peers.0.extra", /unknown key/],
    [{ peers: [{ authority: "kms.b.example", url: "https://a" }, { authority: "KMS.B.EXAMPLE", url: "https://b" }] }, "federation.peers.1.authority", /listed twice/],
    [{ peers: "kms.b.example" }, "federation.peers", /array of peers/],
    [{ webfinger: { "b_example!": "https://b.example" } }, "federation.webfinger.b_example!", /DNS domain name/],
    [{ webfinger: { "b.example": "https://b.example/.well-known/webfinger" } }, "federation.webfinger.b.example", /http\(s\) origin/],
    [{ webfinger: ["https://b.example"] }, "federation.webfinger", /must be an object/],
    [{ peerz: [] }, "federation.peerz", /unknown key/],
    ["kms.b.example", "federation", /must be an object/],
  ])("refuses %j (%s)", (federation, key, message) => {
    const e = configError(() => resolveConfig(dir, { ...BASE, ...ROOTS, federation }, {}));
    expect(e.key).toBe(key);
    expect(e.message).toMatch(message);
  });

  it("writeConfigFile accepts a valid federation and refuses an invalid one", () => {
    writeConfigFile(dir, { ...BASE, ...ROOTS, federation: PEERS });
    expect(loadConfig(dir, {}).federation?.peers[0]?.authority).toBe("kms.b.example");
    expect(() => writeConfigFile(dir, { ...BASE, federation: { peers: [{ authority: "x", url: "nope" }] } })).toThrow(ConfigError);
  });
});
