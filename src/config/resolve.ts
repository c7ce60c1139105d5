/**
 * Resolving configuration values into a {@link KeywardConfig}: environment overrides merged over
 * the values from `config.json`, validation against the schema (and the rules between keys),
 * derived defaults, paths made absolute against the data directory, addresses split. No file I/O:
 * reading and writing `config.json` is in `file.ts`. Server-only.
 *
 * @example
 * const config = resolveConfig("/tmp/kw", { authority: "kms.example.com", oauthIssuer: "https://idp", oauthJwksUri: "https://idp/jwks" }, {});
 */
import { isAbsolute, join, resolve } from "node:path";
import { applyEnvOverrides, envNameOf, readMasterKeyFromEnv } from "./env.js";
import { ConfigError, envError, fileError, unknownKeyError } from "./errors.js";
import {
  CONFIG_KEYS,
  configSchema,
  isConfigKey,
  isPlainObject,
  parseAuthority,
  parseCorsOrigins,
  parseListen,
  parseStoreUrl,
  parseXmppService,
  resolveFederation,
  type FederationConfig,
  type LOG_LEVELS,
  type ParsedStoreUrl,
} from "./schema.js";

/**
 * Where the store lives, parsed from `storeUrl`: a SQLite file (absolute path, or `:memory:`) or a
 * PostgreSQL connection URL.
 *
 * @example
 * if (config.store.kind === "sqlite") openSqlite(config.store.path);
 */
export type StoreLocation = { readonly kind: "sqlite"; readonly path: string } | { readonly kind: "postgres"; readonly url: string };

/**
 * The configuration after defaults, environment overrides, validation and resolution: paths are
 * absolute, derived defaults are filled in, and the listening addresses are split.
 *
 * @example
 * const config: KeywardConfig = loadConfig("/var/lib/keyward");
 * config.oauthAudience // "kms://kms.example.com" unless configured
 */
export interface KeywardConfig {
  /** Absolute path of the data directory. */
  readonly dataDir: string;
  readonly listen: string;
  /** The listening host; an IPv6 address without brackets (`::1`). */
  readonly listenHost: string;
  readonly listenPort: number;
  readonly authority: string;
  /** The `http(s)` origin, normalised (no trailing slash). */
  readonly publicUrl?: string;
  /** Lower-cased. */
  readonly domain: string;
  readonly oauthIssuer: string;
  readonly oauthJwksUri: string;
  readonly oauthAudience: string;
  readonly oauthEntityClaim: string;
  readonly oauthIntrospectionUrl?: string;
  readonly oauthClientId?: string;
  readonly oauthClientSecret?: string;
  /** Seconds an active introspection result is remembered, 0–60. */
  readonly oauthIntrospectionCache: number;
  readonly oauthLeeway: number;
  readonly policy: 1 | 2 | 3;
  /** `sqlite:<absolute path>` (or `sqlite::memory:`), or the PostgreSQL URL as given. */
  readonly storeUrl: string;
  readonly store: StoreLocation;
  readonly ephemeralKeyLifetime: number;
  readonly gmbcReaders: "members" | "members-and-former";
  /** Absolute path. */
  readonly trustRoots?: string;
  /** `*`, or the allowed browser origins, normalized (`https://app.example.com`). */
  readonly corsOrigins: "*" | readonly string[];
  readonly maxMessageBytes: number;
  readonly maxBatchMessages: number;
  readonly maxInFlight: number;
  readonly maxEventLoopLag: number;
  /** Seconds, 1–300. */
  readonly bodyReadTimeout: number;
  readonly maxBlocksPerAppend: number;
  readonly maxOperationsPerBlock: number;
  readonly maxKeysPerEntity: number;
  readonly maxSignatureChecksPerAppend: number;
  readonly clockSkew: number;
  readonly workers?: number;
  readonly logLevel: (typeof LOG_LEVELS)[number];
  /** Absolute path. */
  readonly masterKeyFile: string;
  /** Absolute path. */
  readonly staticKeyFile: string;
  readonly devIdp?: { readonly listen: string; readonly listenHost: string; readonly listenPort: number };
  /** The XMPP binding (§3), when `xmppService`, `xmppDomain` and `xmppSecret` are all set. */
  readonly xmpp?: XmppConfig;
  /** KMS-to-KMS federation (§12), when configured. */
  readonly federation?: FederationConfig;
  /** The master key from `KEYWARD_MASTER_KEY`, when set. Never written to files. */
  readonly masterKeyFromEnv?: string;
}

/**
 * The XMPP binding's configuration (§3): where the XMPP server's component port is, the component's
 * JID and its shared secret.
 *
 * @example
 * if (config.xmpp) connectXmpp({ service: config.xmpp.service, domain: config.xmpp.domain, secret: config.xmpp.secret });
 */
export interface XmppConfig {
  /** `xmpp://host:port`, as configured. */
  readonly service: string;
  readonly host: string;
  readonly port: number;
  /** The component's JID, lower-cased. */
  readonly domain: string;
  readonly secret: string;
  /** The XMPP server's stanza size limit on the component stream, in bytes. */
  readonly maxStanzaBytes: number;
}

function resolvePath(dataDir: string, p: string): string {
  return isAbsolute(p) ? resolve(p) : resolve(dataDir, p);
}

/**
 * Validates configuration values (as read from `config.json`), applies environment overrides and
 * defaults, and resolves them against the data directory. `loadConfig` (file.ts) is this plus
 * reading the file; use it directly to build a configuration without a file (tests, embedding).
 *
 * @example
 * const config = resolveConfig("/tmp/kw", {
 *   authority: "kms.example.com",
 *   oauthIssuer: "https://idp.example.com",
 *   oauthJwksUri: "https://idp.example.com/jwks",
 * }, {});
 * config.storeUrl // "sqlite:/tmp/kw/keyward.db"
 */
export function resolveConfig(
  dataDir: string,
  values: Record<string, unknown>,
  env: Record<string, string | undefined> = process.env,
): KeywardConfig {
  const dir = resolve(dataDir);
  for (const key of Object.keys(values)) if (!isConfigKey(key)) throw unknownKeyError(key);

  // Environment over file; `fromEnv` remembers which (dotted) paths came from a variable, for error messages.
  const { merged, fromEnv } = applyEnvOverrides(values, env);

  const result = configSchema.safeParse(merged);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    const segments = issue.path.map(String);
    if (issue.code === "unrecognized_keys") {
      const nested = [...segments, issue.keys[0] ?? "?"].join(".");
      throw new ConfigError(nested, `config.json: '${nested}': unknown key`);
    }
    const path = segments.join(".");
    const value = issue.path.reduce<unknown>((v, k) => (typeof v === "object" && v !== null ? (v as Record<string, unknown>)[String(k)] : undefined), merged);
    const source = fromEnv.get(path) ?? fromEnv.get(segments[0] ?? "");
    if (source !== undefined) throw envError(source.env, path, source === fromEnv.get(path) ? issue.message : `'${path}': ${issue.message}`, source.raw);
    if (value === undefined && segments.length === 1) {
      throw new ConfigError(path, `config: '${path}' is required: set it in config.json or ${envNameOf(path)}`);
    }
    throw fileError(path, issue.message, value);
  }
  const v = result.data;
  if (v.oauthIntrospectionUrl !== undefined) {
    const missing = (["oauthClientId", "oauthClientSecret"] as const).filter((k) => v[k] === undefined);
    if (missing.length > 0) {
      const names = missing.map((k) => `'${k}'`).join(" and ");
      const envs = missing.map((k) => CONFIG_KEYS[k].env).join(" / ");
      throw new ConfigError(
        missing[0]!,
        `config: ${names} ${missing.length > 1 ? "are" : "is"} required when 'oauthIntrospectionUrl' is set (the KMS authenticates to the introspection endpoint): set ${missing.length > 1 ? "them" : "it"} in config.json or ${envs}`,
      );
    }
  }

  const xmppKeys = ["xmppService", "xmppDomain", "xmppSecret"] as const;
  const xmppSet = xmppKeys.filter((k) => v[k] !== undefined);
  if (xmppSet.length > 0 && xmppSet.length < xmppKeys.length) {
    const missing = xmppKeys.filter((k) => v[k] === undefined);
    const names = missing.map((k) => `'${k}'`).join(" and ");
    const envs = missing.map((k) => CONFIG_KEYS[k].env).join(" / ");
    throw new ConfigError(
      missing[0]!,
      `config: the XMPP binding needs all of 'xmppService', 'xmppDomain' and 'xmppSecret' or none: ${names} ${missing.length > 1 ? "are" : "is"} missing (set ${missing.length > 1 ? "them" : "it"} in config.json or ${envs})`,
    );
  }
  const xmppService = v.xmppService === undefined ? undefined : parseXmppService(v.xmppService)!;
  // §12: peers' certificates are validated against trustRoots; without them no peer could be trusted.
  if (v.federation !== undefined && v.federation.peers.length > 0 && v.trustRoots === undefined) {
    throw new ConfigError("trustRoots", `config: 'trustRoots' is required when 'federation' names peers (their certificates are validated against it): set it in config.json or ${CONFIG_KEYS.trustRoots.env}`);
  }

  const listen = parseListen(v.listen);
  const authority = parseAuthority(v.authority)!;
  const store = parseStoreUrl(v.storeUrl ?? `sqlite:${join(dir, "keyward.db")}`) as ParsedStoreUrl;
  const resolvedStore: StoreLocation =
    store.kind === "sqlite" && store.path !== ":memory:" ? { kind: "sqlite", path: resolvePath(dir, store.path) } : store;
  const devIdpListen = v.devIdp === undefined ? undefined : parseListen(v.devIdp.listen);
  const masterKeyFromEnv = readMasterKeyFromEnv(env);

  return {
    dataDir: dir,
    listen: v.listen,
    listenHost: listen.host,
    listenPort: listen.port,
    authority: v.authority,
    ...(v.publicUrl !== undefined && { publicUrl: new URL(v.publicUrl).origin }),
    domain: (v.domain ?? authority.host).toLowerCase(),
    oauthIssuer: v.oauthIssuer,
    oauthJwksUri: v.oauthJwksUri,
    oauthAudience: v.oauthAudience ?? `kms://${v.authority}`,
    oauthEntityClaim: v.oauthEntityClaim,
    ...(v.oauthIntrospectionUrl !== undefined && { oauthIntrospectionUrl: v.oauthIntrospectionUrl }),
    ...(v.oauthClientId !== undefined && { oauthClientId: v.oauthClientId }),
    ...(v.oauthClientSecret !== undefined && { oauthClientSecret: v.oauthClientSecret }),
    oauthIntrospectionCache: v.oauthIntrospectionCache,
    oauthLeeway: v.oauthLeeway,
    policy: v.policy,
    storeUrl: resolvedStore.kind === "sqlite" ? `sqlite:${resolvedStore.path}` : resolvedStore.url,
    store: resolvedStore,
    ephemeralKeyLifetime: v.ephemeralKeyLifetime,
    gmbcReaders: v.gmbcReaders,
    ...(v.trustRoots !== undefined && { trustRoots: resolvePath(dir, v.trustRoots) }),
    corsOrigins: (parseCorsOrigins(v.corsOrigins) as { origins: "*" | string[] }).origins,
    maxMessageBytes: v.maxMessageBytes,
    maxBatchMessages: v.maxBatchMessages,
    maxInFlight: v.maxInFlight,
    maxEventLoopLag: v.maxEventLoopLag,
    bodyReadTimeout: v.bodyReadTimeout,
    maxBlocksPerAppend: v.maxBlocksPerAppend,
    maxOperationsPerBlock: v.maxOperationsPerBlock,
    maxKeysPerEntity: v.maxKeysPerEntity,
    maxSignatureChecksPerAppend: v.maxSignatureChecksPerAppend,
    clockSkew: v.clockSkew,
    ...(v.workers !== undefined && { workers: v.workers }),
    logLevel: v.logLevel,
    masterKeyFile: resolvePath(dir, v.masterKeyFile),
    staticKeyFile: resolvePath(dir, v.staticKeyFile),
    ...(v.devIdp !== undefined &&
      devIdpListen !== undefined && { devIdp: { listen: v.devIdp.listen, listenHost: devIdpListen.host, listenPort: devIdpListen.port } }),
    ...(xmppService !== undefined &&
      v.xmppService !== undefined && v.xmppDomain !== undefined && v.xmppSecret !== undefined && {
        xmpp: { service: v.xmppService, host: xmppService.host, port: xmppService.port, domain: v.xmppDomain.toLowerCase(), secret: v.xmppSecret, maxStanzaBytes: v.xmppMaxStanzaBytes },
      }),
    ...(v.federation !== undefined && { federation: resolveFederation(v.federation) }),
    ...(masterKeyFromEnv !== undefined && { masterKeyFromEnv }),
  };
}
