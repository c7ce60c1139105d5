/**
 * What a valid `config.json` is: the value parsers (listening address, authority, URLs, store URL,
 * CORS origins, XMPP service), the zod schema built on them, and the table of configuration keys
 * (environment variable, default, description) that the environment mapping and the README
 * reference are generated from. No I/O. Server-only.
 *
 * @example
 * const values = configSchema.parse({ authority: "kms.example.com", oauthIssuer: "https://idp", oauthJwksUri: "https://idp/jwks" });
 * CONFIG_KEYS.listen.env // "KEYWARD_LISTEN"
 */
import { isIPv4, isIPv6 } from "node:net";
import { z } from "zod";

// ---------------------------------------------------------------------------------------------
// Value checks shared by the schema and the resolver
// ---------------------------------------------------------------------------------------------

const HOSTNAME_RE = /^(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*$/;

function isHostname(s: string): boolean {
  return HOSTNAME_RE.test(s);
}

/** A port number given as decimal digits, or undefined when it is not one in `min..65535`. */
function parsePort(s: string, min: number): number | undefined {
  if (!/^\d{1,5}$/.test(s)) return undefined;
  const n = Number(s);
  return n >= min && n <= 65535 ? n : undefined;
}

/**
 * A listening address: `host:port`, the host a DNS name or an IPv4 address, or `[ipv6]:port`.
 * The returned host carries no brackets (`::1`), ready for `server.listen(port, host)`.
 * Throws an `Error` whose message says what is wrong (without the value).
 *
 * @example
 * parseListen("127.0.0.1:8484") // { host: "127.0.0.1", port: 8484 }
 * parseListen("[::1]:8484")     // { host: "::1", port: 8484 }
 * parseListen("8484")           // throws Error("expected host:port")
 */
export function parseListen(value: string): { host: string; port: number } {
  let host: string;
  let portText: string;
  if (value.startsWith("[")) {
    const close = value.indexOf("]");
    if (close === -1 || value[close + 1] !== ":") throw new Error("expected host:port, e.g. [::1]:8484");
    host = value.slice(1, close);
    portText = value.slice(close + 2);
    if (!isIPv6(host)) throw new Error("expected host:port: the host in brackets must be an IPv6 address");
  } else {
    const colon = value.lastIndexOf(":");
    if (colon <= 0) throw new Error("expected host:port");
    host = value.slice(0, colon);
    portText = value.slice(colon + 1);
    if (host.includes(":")) throw new Error("expected host:port: write an IPv6 host in brackets, e.g. [::1]:8484");
    if (!isIPv4(host) && !isHostname(host)) throw new Error("expected host:port: the host is not a valid host name or IP address");
  }
  if (!/^\d{1,5}$/.test(portText)) throw new Error("expected host:port: the port must be a number");
  const port = parsePort(portText, 0);
  if (port === undefined) throw new Error("the port must be between 0 and 65535");
  return { host, port };
}

/**
 * Splits an authority `host[:port]`; undefined when it is not a DNS host name with an optional port.
 *
 * @example
 * parseAuthority("kms.example.com:8443") // { host: "kms.example.com", port: 8443 }
 * parseAuthority("kms.example.com:0")    // undefined (the port must be 1–65535)
 */
export function parseAuthority(value: string): { host: string; port?: number } | undefined {
  const colon = value.indexOf(":");
  const host = colon === -1 ? value : value.slice(0, colon);
  if (!isHostname(host)) return undefined;
  if (colon === -1) return { host };
  const port = parsePort(value.slice(colon + 1), 1);
  return port === undefined ? undefined : { host, port };
}

function parseHttpUrl(value: string): URL | undefined {
  try {
    const url = new URL(value);
    return url.protocol === "http:" || url.protocol === "https:" ? url : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The XMPP server's component port as `xmpp://host:port` (host a DNS name, an IPv4 address or
 * `[ipv6]`; the port is required: XEP-0114 has no registered default). Undefined when it is not one.
 *
 * @example
 * parseXmppService("xmpp://127.0.0.1:5347") // { host: "127.0.0.1", port: 5347 }
 * parseXmppService("xmpp://127.0.0.1")      // undefined
 */
export function parseXmppService(value: string): { host: string; port: number } | undefined {
  const m = /^xmpp:\/\/(\[[^\]]+\]|[^:/?#[\]@]+):(\d{1,5})\/?$/.exec(value);
  if (!m) return undefined;
  const host = m[1]!.startsWith("[") ? m[1]!.slice(1, -1) : m[1]!;
  if (m[1]!.startsWith("[") ? !isIPv6(host) : !isIPv4(host) && !isHostname(host)) return undefined;
  const port = parsePort(m[2]!, 1);
  return port === undefined ? undefined : { host, port };
}

/**
 * `corsOrigins` (§3): `*`, or the browser origins allowed, as a comma-separated string or (in
 * config.json) an array; each an http(s) origin, normalized as browsers send it (`URL.origin`).
 * An empty array allows no browser origin. Returns the reason when the value is wrong.
 *
 * @example
 * parseCorsOrigins("https://app.example.com/, *") // { error: '"*" cannot be combined with origins' }
 * parseCorsOrigins(["https://app.example.com/"])  // { origins: ["https://app.example.com"] }
 */
export function parseCorsOrigins(value: string | readonly string[]): { origins: "*" | string[] } | { error: string } {
  const items = (typeof value === "string" ? value.split(",") : value).map((s) => s.trim());
  if (typeof value === "string" && items.length === 1 && items[0] === "") return { error: 'must not be empty (use "*", or an array in config.json; [] allows no browser origin)' };
  if (items.includes("*")) return items.length === 1 ? { origins: "*" } : { error: '"*" cannot be combined with origins' };
  const origins: string[] = [];
  for (const item of items) {
    if (item === "") return { error: "the list has an empty entry" };
    const url = parseHttpUrl(item);
    const isOrigin = url !== undefined && url.username === "" && url.password === "" && url.pathname === "/" && url.search === "" && url.hash === "" && !item.endsWith("?") && !item.endsWith("#");
    if (!isOrigin) return { error: 'expected "*" or http(s) origins such as https://app.example.com (no path)' };
    origins.push(url.origin);
  }
  return { origins };
}

/**
 * A store location, parsed from `storeUrl` (a relative SQLite path is still relative here).
 *
 * @example
 * const store = parseStoreUrl("sqlite:keyward.db") as ParsedStoreUrl; // { kind: "sqlite", path: "keyward.db" }
 */
export type ParsedStoreUrl = { kind: "sqlite"; path: string } | { kind: "postgres"; url: string };

/**
 * Parses `storeUrl`: `sqlite:<path>`, `sqlite:///<absolute path>`, or a `postgres://` /
 * `postgresql://` URL with a host. Returns the reason (a string) when it is none of these.
 *
 * @example
 * parseStoreUrl("sqlite:///var/lib/keyward/kw.db") // { kind: "sqlite", path: "/var/lib/keyward/kw.db" }
 * parseStoreUrl("mysql://db/kw")                   // "expected sqlite:<path>, postgres://… or postgresql://…"
 */
export function parseStoreUrl(value: string): ParsedStoreUrl | string {
  if (value.startsWith("sqlite:")) {
    let path = value.slice("sqlite:".length);
    if (path.startsWith("//")) {
      // sqlite:///abs/path (URL form, empty host) is accepted; sqlite://host/... is not.
      if (!path.startsWith("///")) return "expected sqlite:<path> or sqlite:///<absolute path>";
      path = path.slice(2);
    }
    if (path.length === 0) return "expected sqlite:<path>: the path is empty";
    return { kind: "sqlite", path };
  }
  if (value.startsWith("postgres://") || value.startsWith("postgresql://")) {
    try {
      const url = new URL(value);
      if (url.hostname === "") return "expected postgres://[user[:password]@]host[:port]/database";
    } catch {
      return "expected postgres://[user[:password]@]host[:port]/database";
    }
    return { kind: "postgres", url: value };
  }
  return "expected sqlite:<path>, postgres://… or postgresql://…";
}

// ---------------------------------------------------------------------------------------------
// Federation (§12): one block, so that it moves as a whole
// ---------------------------------------------------------------------------------------------

/** An http(s) origin (no path, query, fragment or credentials), or undefined when it is not one. */
function parseHttpOrigin(s: string): string | undefined {
  const url = parseHttpUrl(s);
  const isOrigin = url !== undefined && url.username === "" && url.password === "" && url.pathname === "/" && url.search === "" && url.hash === "" && !s.endsWith("?") && !s.endsWith("#");
  return isOrigin ? url.origin : undefined;
}

const federationOrigin = (what: string) =>
  z.string({ error: "must be a string" }).superRefine((s, ctx) => {
    if (parseHttpOrigin(s) === undefined) ctx.addIssue({ code: "custom", message: `expected an http(s) origin such as https://${what} (no path)` });
  });
const federationHost = (what: string) =>
  z.string({ error: "must be a string" }).superRefine((s, ctx) => {
    if (!isHostname(s)) ctx.addIssue({ code: "custom", message: `expected a DNS host name (${what})` });
  });

/**
 * `federation` (§12): the peers this KMS federates with (authority = host name, url = the origin of
 * its HTTP binding) and, per domain, the origin asked about that domain's users (WebFinger).
 */
const federationSchema = z.strictObject(
  {
    peers: z
      .array(z.strictObject({ authority: federationHost("e.g. kms.b.example"), url: federationOrigin("kms.b.example") }, { error: 'each peer must be an object { "authority", "url" }' }), { error: "must be an array of peers" })
      .superRefine((peers, ctx) => {
        const seen = new Set<string>();
        for (const [i, p] of peers.entries()) {
          const authority = p.authority.toLowerCase();
          if (seen.has(authority)) ctx.addIssue({ code: "custom", path: [i, "authority"], message: `peer authority '${authority}' is listed twice` });
          seen.add(authority);
        }
      })
      .default([]),
    webfinger: z
      .record(z.string(), federationOrigin("b.example"), { error: 'must be an object { "<domain>": "<origin>" }' })
      .superRefine((map, ctx) => {
        for (const domain of Object.keys(map)) {
          if (!isHostname(domain)) ctx.addIssue({ code: "custom", path: [domain], message: "expected a DNS domain name as the key (e.g. b.example)" });
        }
      })
      .default({}),
  },
  { error: 'must be an object { "peers": [...], "webfinger": {...} }' },
);

/**
 * The federation configuration after validation (§12): authorities and domains lower-cased, origins
 * normalized (`https://kms.b.example`).
 *
 * @example
 * const peer = config.federation?.peers.find((p) => p.authority === "kms.b.example");
 * const origin = config.federation?.webfinger["b.example"] ?? "https://b.example";
 */
export interface FederationConfig {
  readonly peers: readonly { readonly authority: string; readonly url: string }[];
  readonly webfinger: Readonly<Record<string, string>>;
}

export function resolveFederation(v: z.output<typeof federationSchema>): FederationConfig {
  return {
    peers: v.peers.map((p) => ({ authority: p.authority.toLowerCase(), url: parseHttpOrigin(p.url)! })),
    webfinger: Object.fromEntries(Object.entries(v.webfinger).map(([domain, origin]) => [domain.toLowerCase(), parseHttpOrigin(origin)!])),
  };
}

// ---------------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------------

/** A string checked by `check`, which returns the reason it is wrong or undefined when it is fine. */
function checkedString(check: (s: string) => string | undefined) {
  return z.string({ error: "must be a string" }).superRefine((s, ctx) => {
    const reason = check(s);
    if (reason !== undefined) ctx.addIssue({ code: "custom", message: reason });
  });
}

function intIn(min: number, max?: number) {
  const range = max === undefined ? `must be at least ${min}` : `must be between ${min} and ${max}`;
  const base = z.int({ error: "must be an integer" }).min(min, { error: range });
  return max === undefined ? base : base.max(max, { error: range });
}

const nonEmpty = () => z.string({ error: "must be a string" }).min(1, { error: "must not be empty" });

const listenString = checkedString((s) => {
  try {
    parseListen(s);
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
});

const httpUrl = (what: string) =>
  checkedString((s) => (parseHttpUrl(s) === undefined ? `expected an http(s) URL (${what})` : undefined));

/**
 * The accepted `logLevel` values: pino's levels, plus `silent`.
 *
 * @example
 * LOG_LEVELS.includes("debug") // true
 */
export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;

const DEFAULT_LISTEN = "127.0.0.1:8484";
/**
 * The listening address of `keyward dev`'s built-in identity provider when `devIdp.listen` is not given.
 *
 * @example
 * const { host, port } = parseListen(config.devIdp?.listen ?? DEFAULT_DEV_IDP_LISTEN);
 */
export const DEFAULT_DEV_IDP_LISTEN = "127.0.0.1:8485";

/**
 * The schema of the configuration values: the contents of `config.json` after environment overrides.
 * Static defaults are applied by the schema; defaults derived from other keys or from the data
 * directory (`domain`, `oauthAudience`, `storeUrl`) and path resolution are applied by
 * `resolveConfig` (resolve.ts). Unknown keys are refused.
 *
 * @example
 * const values = configSchema.parse({
 *   authority: "kms.example.com",
 *   oauthIssuer: "https://idp.example.com",
 *   oauthJwksUri: "https://idp.example.com/jwks",
 * });
 * values.listen // "127.0.0.1:8484"
 */
export const configSchema = z.strictObject({
  listen: listenString.default(DEFAULT_LISTEN),
  authority: checkedString((s) =>
    parseAuthority(s) === undefined ? "expected a DNS host name, optionally with :port (e.g. kms.example.com)" : undefined,
  ),
  publicUrl: checkedString((s) => {
    const url = parseHttpUrl(s);
    const isOrigin = url !== undefined && url.username === "" && url.password === "" && url.pathname === "/" && url.search === "" && url.hash === "" && !s.endsWith("?") && !s.endsWith("#");
    return isOrigin ? undefined : "expected an http(s) origin such as https://kms.example.com";
  }).optional(),
  domain: checkedString((s) => (isHostname(s) ? undefined : "expected a DNS domain name (e.g. example.com)")).optional(),
  oauthIssuer: httpUrl("the issuer identifier"),
  oauthJwksUri: httpUrl("the issuer's JWKS"),
  oauthAudience: nonEmpty().optional(),
  oauthEntityClaim: nonEmpty().default("email"),
  oauthIntrospectionUrl: httpUrl("the token introspection endpoint").optional(),
  oauthClientId: nonEmpty().optional(),
  oauthClientSecret: nonEmpty().optional(),
  oauthIntrospectionCache: intIn(0, 60).default(60),
  oauthLeeway: intIn(0, 300).default(30),
  policy: z.literal([1, 2, 3], { error: "must be 1, 2 or 3" }).default(1),
  storeUrl: checkedString((s) => {
    const r = parseStoreUrl(s);
    return typeof r === "string" ? r : undefined;
  }).optional(),
  ephemeralKeyLifetime: intIn(1).default(3600),
  gmbcReaders: z.enum(["members", "members-and-former"], { error: 'must be "members" or "members-and-former"' }).default("members"),
  trustRoots: nonEmpty().optional(),
  corsOrigins: z
    .union([z.string(), z.array(z.string())], { error: 'must be "*", a comma-separated list of origins, or an array of origins' })
    .superRefine((v, ctx) => {
      const r = parseCorsOrigins(v);
      if ("error" in r) ctx.addIssue({ code: "custom", message: r.error });
    })
    .default("*"),
  maxMessageBytes: intIn(1).default(1_048_576),
  maxBatchMessages: intIn(1).default(50),
  maxInFlight: intIn(1).default(4096),
  maxEventLoopLag: intIn(0, 60_000).default(100),
  bodyReadTimeout: intIn(1, 300).default(10),
  maxBlocksPerAppend: intIn(1).default(100),
  maxOperationsPerBlock: intIn(1).default(10_000),
  maxKeysPerEntity: intIn(1).default(16),
  maxSignatureChecksPerAppend: intIn(1).default(200),
  clockSkew: intIn(0).default(300),
  workers: intIn(1).optional(),
  logLevel: z.enum(LOG_LEVELS, { error: `must be one of ${LOG_LEVELS.join(", ")}` }).default("info"),
  masterKeyFile: nonEmpty().default("master.key"),
  staticKeyFile: nonEmpty().default("static-key.json"),
  xmppService: checkedString((s) =>
    parseXmppService(s) === undefined ? "expected xmpp://host:port, the XMPP server's component port (e.g. xmpp://127.0.0.1:5347)" : undefined,
  ).optional(),
  xmppDomain: checkedString((s) => (isHostname(s) ? undefined : "expected the component's JID, a DNS domain name (e.g. kms.example.com)")).optional(),
  xmppSecret: nonEmpty().optional(),
  xmppMaxStanzaBytes: intIn(4096).default(524_288),
  federation: federationSchema.optional(),
  devIdp: z
    .strictObject({ listen: listenString.default(DEFAULT_DEV_IDP_LISTEN) }, { error: 'must be an object such as { "listen": "127.0.0.1:8485" }' })
    .optional(),
});

/**
 * A configuration key: a top-level key of `config.json`.
 *
 * @example
 * const key: ConfigKey = "oauthLeeway";
 */
export type ConfigKey = keyof typeof configSchema.shape;

/**
 * The values as written in `config.json` (before defaults): what `writeConfigFile` (file.ts) accepts.
 *
 * @example
 * const values: ConfigFileValues = { authority: "kms.example.com", oauthIssuer: "https://idp", oauthJwksUri: "https://idp/jwks" };
 */
export type ConfigFileValues = z.input<typeof configSchema>;

/**
 * True for a JSON object (not an array, not null): what `config.json` and `devIdp` must be.
 *
 * @example
 * isPlainObject({ listen: "127.0.0.1:8485" }) // true
 * isPlainObject([])                           // false
 */
export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

// ---------------------------------------------------------------------------------------------
// The key table (README reference) and environment names
// ---------------------------------------------------------------------------------------------

/**
 * One row of {@link CONFIG_KEYS}.
 *
 * @example
 * const row: ConfigKeyInfo = CONFIG_KEYS.policy;
 * row.env // "KEYWARD_POLICY"
 */
export interface ConfigKeyInfo {
  /** The environment variable that overrides the key. */
  readonly env: string;
  /** How the environment variable's text is read: as is, as a strict decimal integer, as a policy number, or as JSON. */
  readonly envType: "string" | "integer" | "policy" | "json";
  /** Human-readable description for the configuration reference. */
  readonly description: string;
  /** Human-readable default, or undefined when the key has none (required keys, optional keys). */
  readonly default: string | undefined;
  /** True when the key must be given (in config.json or the environment). */
  readonly required: boolean;
  /** True when the value must never be echoed in error messages. */
  readonly secret?: boolean;
}

/**
 * The configuration keys: key → environment variable → description → default. Source of the
 * README configuration reference (`configReferenceMarkdown`, reference.ts).
 *
 * @example
 * CONFIG_KEYS.oauthJwksUri.env // "KEYWARD_OAUTH_JWKS_URI"
 * CONFIG_KEYS.listen.default   // "127.0.0.1:8484"
 */
export const CONFIG_KEYS = {
  listen: { env: "KEYWARD_LISTEN", envType: "string", required: false, default: DEFAULT_LISTEN, description: "Address the HTTP server listens on, `host:port` (IPv6 as `[::1]:8484`)." },
  authority: { env: "KEYWARD_AUTHORITY", envType: "string", required: true, default: undefined, description: "DNS host name (optionally `:port`) of this KMS; its URI is `kms://<authority>`." },
  publicUrl: { env: "KEYWARD_PUBLIC_URL", envType: "string", required: false, default: undefined, description: "Public http(s) origin clients reach the server at, when it differs from the listening address." },
  domain: { env: "KEYWARD_DOMAIN", envType: "string", required: false, default: "<authority's host>", description: "Domain this KMS serves (lower-cased)." },
  oauthIssuer: { env: "KEYWARD_OAUTH_ISSUER", envType: "string", required: true, default: undefined, description: "Issuer identifier (`iss`) of the OAuth 2.0 / OpenID authorization server." },
  oauthJwksUri: { env: "KEYWARD_OAUTH_JWKS_URI", envType: "string", required: true, default: undefined, description: "URL of the issuer's JSON Web Key Set, used to verify access tokens." },
  oauthAudience: { env: "KEYWARD_OAUTH_AUDIENCE", envType: "string", required: false, default: "kms://<authority>", description: "Audience (`aud`) access tokens must carry." },
  oauthEntityClaim: { env: "KEYWARD_OAUTH_ENTITY_CLAIM", envType: "string", required: false, default: "email", description: "Access-token claim naming the authenticated entity." },
  oauthIntrospectionUrl: { env: "KEYWARD_OAUTH_INTROSPECTION_URL", envType: "string", required: false, default: undefined, description: "Token introspection endpoint (RFC 7662), for opaque access tokens." },
  oauthClientId: { env: "KEYWARD_OAUTH_CLIENT_ID", envType: "string", required: false, default: undefined, description: "Client id used to authenticate to the introspection endpoint." },
  oauthClientSecret: { env: "KEYWARD_OAUTH_CLIENT_SECRET", envType: "string", required: false, default: undefined, secret: true, description: "Client secret used to authenticate to the introspection endpoint." },
  oauthIntrospectionCache: { env: "KEYWARD_OAUTH_INTROSPECTION_CACHE", envType: "integer", required: false, default: "60", description: "Seconds an active introspection result is remembered (0–60; never beyond the token's `exp`). A revoked opaque token is refused within this time." },
  oauthLeeway: { env: "KEYWARD_OAUTH_LEEWAY", envType: "integer", required: false, default: "30", description: "Clock leeway in seconds when checking token `exp`/`nbf`/`iat` (0–300)." },
  policy: { env: "KEYWARD_POLICY", envType: "policy", required: false, default: "1", description: "Authorization policy: 1, 2 or 3." },
  storeUrl: { env: "KEYWARD_STORE_URL", envType: "string", required: false, default: "sqlite:<dataDir>/keyward.db", secret: true, description: "Store: `sqlite:<path>` (relative to the data directory) or `postgres://…`/`postgresql://…`." },
  ephemeralKeyLifetime: { env: "KEYWARD_EPHEMERAL_KEY_LIFETIME", envType: "integer", required: false, default: "3600", description: "Lifetime in seconds of ephemeral (ECDHE) keys, at least 1." },
  gmbcReaders: { env: "KEYWARD_GMBC_READERS", envType: "string", required: false, default: "members", description: "Who may read a group's membership chain: `members` or `members-and-former`." },
  trustRoots: { env: "KEYWARD_TRUST_ROOTS", envType: "string", required: false, default: undefined, description: "PEM bundle of trust roots (path relative to the data directory)." },
  corsOrigins: { env: "KEYWARD_CORS_ORIGINS", envType: "string", required: false, default: "*", description: "Browser origins allowed by CORS and at the WebSocket upgrade: `*`, or a comma-separated list of http(s) origins (an array in config.json; `[]` allows none). Every KMS message authenticates in-band, so this only restricts which web pages may call the KMS." },
  maxMessageBytes: { env: "KEYWARD_MAX_MESSAGE_BYTES", envType: "integer", required: false, default: "1048576", description: "Largest request message accepted, in bytes." },
  maxBatchMessages: { env: "KEYWARD_MAX_BATCH_MESSAGES", envType: "integer", required: false, default: "50", description: "Most messages accepted in one batch." },
  maxInFlight: { env: "KEYWARD_MAX_IN_FLIGHT", envType: "integer", required: false, default: "4096", description: "Requests in progress (per process; counted once their body has arrived) above which new ones are shed with HTTP 429." },
  maxEventLoopLag: { env: "KEYWARD_MAX_EVENT_LOOP_LAG", envType: "integer", required: false, default: "100", description: "Event-loop lag in milliseconds above which new messages are shed with HTTP 429 (0 = never)." },
  bodyReadTimeout: { env: "KEYWARD_BODY_READ_TIMEOUT", envType: "integer", required: false, default: "10", description: "Seconds a client may take to send a request body (1–300); then HTTP 408 and the connection is closed. Request headers get the same time, at most 10 s." },
  maxBlocksPerAppend: { env: "KEYWARD_MAX_BLOCKS_PER_APPEND", envType: "integer", required: false, default: "100", description: "Most blocks accepted in one append." },
  maxOperationsPerBlock: { env: "KEYWARD_MAX_OPERATIONS_PER_BLOCK", envType: "integer", required: false, default: "10000", description: "Most operations accepted in one block." },
  maxKeysPerEntity: { env: "KEYWARD_MAX_KEYS_PER_ENTITY", envType: "integer", required: false, default: "16", description: "Most unrevoked device keys one entity may register (§10)." },
  maxSignatureChecksPerAppend: { env: "KEYWARD_MAX_SIGNATURE_CHECKS_PER_APPEND", envType: "integer", required: false, default: "200", description: "Most signature verifications one append may cost; blocks without 'kid' cost one per key of their creator (§10)." },
  clockSkew: { env: "KEYWARD_CLOCK_SKEW", envType: "integer", required: false, default: "300", description: "Tolerated clock skew in seconds for client-supplied timestamps." },
  workers: { env: "KEYWARD_WORKERS", envType: "integer", required: false, default: undefined, description: "Number of worker processes (positive integer); unset lets the server choose." },
  logLevel: { env: "KEYWARD_LOG_LEVEL", envType: "string", required: false, default: "info", description: `Log level: ${LOG_LEVELS.join(", ")}.` },
  masterKeyFile: { env: "KEYWARD_MASTER_KEY_FILE", envType: "string", required: false, default: "master.key", description: "File holding the master key (relative to the data directory); see also `KEYWARD_MASTER_KEY`." },
  staticKeyFile: { env: "KEYWARD_STATIC_KEY_FILE", envType: "string", required: false, default: "static-key.json", description: "File holding the KMS static key (relative to the data directory)." },
  xmppService: { env: "KEYWARD_XMPP_SERVICE", envType: "string", required: false, default: undefined, description: "XMPP binding (§3): the XMPP server's component port, `xmpp://host:port`; the KMS connects there as an external component (XEP-0114). Set `xmppService`, `xmppDomain` and `xmppSecret` together or not at all." },
  xmppDomain: { env: "KEYWARD_XMPP_DOMAIN", envType: "string", required: false, default: undefined, description: "XMPP binding: the component's JID (e.g. `kms.example.com`), as configured on the XMPP server." },
  xmppSecret: { env: "KEYWARD_XMPP_SECRET", envType: "string", required: false, default: undefined, secret: true, description: "XMPP binding: the component's shared secret (XEP-0114 handshake)." },
  xmppMaxStanzaBytes: { env: "KEYWARD_XMPP_MAX_STANZA_BYTES", envType: "integer", required: false, default: "524288", description: "XMPP binding: the XMPP server's stanza size limit on the component stream (Prosody's `component_stanza_size_limit`, 512 KiB by default); a reply that would exceed it is answered with a JWS 413 instead of breaking the link." },
  federation: { env: "KEYWARD_FEDERATION", envType: "json", required: false, default: undefined, description: "KMS-to-KMS federation (§12), JSON: `{\"peers\": [{\"authority\": \"kms.b.example\", \"url\": \"https://kms.b.example\"}], \"webfinger\": {\"b.example\": \"https://b.example\"}}`; needs `trustRoots` when peers are set. See docs/federation.md." },
  devIdp: { env: "KEYWARD_DEV_IDP_LISTEN", envType: "string", required: false, default: undefined, description: `\`keyward dev\` only: built-in identity provider, \`{ "listen": "host:port" }\` (listen defaults to ${DEFAULT_DEV_IDP_LISTEN}).` },
} as const satisfies Record<ConfigKey, ConfigKeyInfo>;

/**
 * The configuration keys, in table order (the order of the README reference and of env overrides).
 *
 * @example
 * CONFIG_KEY_NAMES[0] // "listen"
 */
export const CONFIG_KEY_NAMES = Object.keys(CONFIG_KEYS) as ConfigKey[];

/**
 * True when `key` is a top-level configuration key (own keys of the table only: never `toString`).
 *
 * @example
 * isConfigKey("policy") // true
 * isConfigKey("polciy") // false
 */
export function isConfigKey(key: string): key is ConfigKey {
  return Object.hasOwn(CONFIG_KEYS, key);
}
