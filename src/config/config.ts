/**
 * Keyward configuration: `<dataDir>/config.json`, validated with zod, every key overridable from
 * the environment (`KEYWARD_<KEY_IN_SCREAMING_SNAKE_CASE>`). Server-only.
 *
 * Precedence, highest first: environment variable, `config.json`, built-in default. An environment
 * variable set to the empty string counts as unset.
 *
 * @example
 * const config = loadConfig("/var/lib/keyward");
 * server.listen(config.listenPort, config.listenHost);
 */
import { chmodSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { isIPv4, isIPv6 } from "node:net";
import { isAbsolute, join, resolve } from "node:path";
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

/** Splits an authority `host[:port]`; undefined when it is not a DNS host name with an optional port. */
function parseAuthority(value: string): { host: string; port?: number } | undefined {
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
 */
function parseXmppService(value: string): { host: string; port: number } | undefined {
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
 */
function parseCorsOrigins(value: string | readonly string[]): { origins: "*" | string[] } | { error: string } {
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

/** A store location, parsed from `storeUrl`. */
type ParsedStoreUrl = { kind: "sqlite"; path: string } | { kind: "postgres"; url: string };

function parseStoreUrl(value: string): ParsedStoreUrl | string {
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

function resolveFederation(v: z.output<typeof federationSchema>): FederationConfig {
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
 * {@link resolveConfig}. Unknown keys are refused.
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
 * The values as written in `config.json` (before defaults): what {@link writeConfigFile} accepts.
 *
 * @example
 * const values: ConfigFileValues = { authority: "kms.example.com", oauthIssuer: "https://idp", oauthJwksUri: "https://idp/jwks" };
 */
export type ConfigFileValues = z.input<typeof configSchema>;

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
 * README configuration reference ({@link configReferenceMarkdown}).
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

/** Environment variables read by Keyward that are not configuration keys (documented in the reference). */
const ENV_ONLY = [
  { env: "KEYWARD_MASTER_KEY", description: "The master key itself, supplied through the environment instead of `masterKeyFile`. Never written to files." },
] as const;

const CONFIG_KEY_NAMES = Object.keys(CONFIG_KEYS) as ConfigKey[];

function isConfigKey(key: string): key is ConfigKey {
  return Object.hasOwn(CONFIG_KEYS, key);
}

/**
 * The environment variable overriding a configuration key: the table's name for known keys
 * (`devIdp` → `KEYWARD_DEV_IDP_LISTEN`), otherwise `KEYWARD_` + the key in SCREAMING_SNAKE_CASE
 * (a dotted path's dots become underscores).
 *
 * @example
 * envNameOf("oauthJwksUri")  // "KEYWARD_OAUTH_JWKS_URI"
 * envNameOf("devIdp.listen") // "KEYWARD_DEV_IDP_LISTEN"
 */
export function envNameOf(key: string): string {
  if (isConfigKey(key)) return CONFIG_KEYS[key].env;
  const snake = key
    .replace(/\./g, "_")
    .replace(/([a-z0-9])([A-Z])/g, "$1_$2")
    .toUpperCase();
  return `KEYWARD_${snake}`;
}

/**
 * The configuration reference as a markdown table (key, environment variable, default, description),
 * generated from {@link CONFIG_KEYS}, for the README.
 *
 * @example
 * const md = configReferenceMarkdown();
 * md.split("\n")[0] // "| Key | Environment variable | Default | Description |"
 */
export function configReferenceMarkdown(): string {
  const cell = (s: string) => s.replace(/\|/g, "\\|").replace(/\n/g, " ");
  const lines = ["| Key | Environment variable | Default | Description |", "| --- | --- | --- | --- |"];
  for (const key of CONFIG_KEY_NAMES) {
    const info: ConfigKeyInfo = CONFIG_KEYS[key];
    const dflt = info.required ? "*required*" : info.default === undefined ? "—" : `\`${info.default}\``;
    lines.push(`| \`${key}\` | \`${info.env}\` | ${cell(dflt)} | ${cell(info.description)} |`);
  }
  for (const v of ENV_ONLY) lines.push(`| — | \`${v.env}\` | — | ${cell(v.description)} |`);
  return lines.join("\n") + "\n";
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/**
 * A configuration problem. `key` names what is wrong: a config key (`"policy"`, `"devIdp.listen"`)
 * when the value came from `config.json`, the environment variable (`"KEYWARD_POLICY"`) when it
 * came from the environment, or `"config.json"` when the file itself is missing or unreadable.
 *
 * @example
 * try { loadConfig(dir, { KEYWARD_POLICY: "7" }); }
 * catch (e) { if (e instanceof ConfigError) console.error(e.message); } // config: KEYWARD_POLICY: must be 1, 2 or 3 (got "7")
 */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
  constructor(
    readonly key: string,
    message: string,
  ) {
    super(message);
  }
}

function shown(value: unknown, secret: boolean): string {
  if (secret || value === undefined) return "";
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  if (text.length > 80) text = text.slice(0, 77) + "...";
  return ` (got ${text})`;
}

function isSecret(path: string): boolean {
  return isConfigKey(path) && (CONFIG_KEYS[path] as ConfigKeyInfo).secret === true;
}

function fileError(path: string, reason: string, value: unknown): ConfigError {
  return new ConfigError(path, `config.json: '${path}': ${reason}${shown(value, isSecret(path))}`);
}

function envError(envName: string, path: string, reason: string, raw: string): ConfigError {
  return new ConfigError(envName, `config: ${envName}: ${reason}${shown(raw, isSecret(path))}`);
}

// ---------------------------------------------------------------------------------------------
// Resolved configuration
// ---------------------------------------------------------------------------------------------

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

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Levenshtein distance, for "did you mean" hints on misspelt keys. */
function distance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j]!;
      prev[j] = Math.min(up + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = up;
    }
  }
  return prev[b.length]!;
}

function unknownKeyError(key: string): ConfigError {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const k of CONFIG_KEY_NAMES) {
    const d = distance(key.toLowerCase(), k.toLowerCase());
    if (d < bestDistance) [best, bestDistance] = [k, d];
  }
  const hint = best !== undefined && bestDistance <= Math.max(2, Math.floor(key.length / 4)) ? ` (did you mean '${best}'?)` : "";
  return new ConfigError(key, `config.json: '${key}': unknown key${hint}`);
}

function parseEnvValue(key: ConfigKey, info: ConfigKeyInfo, raw: string): unknown {
  switch (info.envType) {
    case "string":
      return raw;
    case "integer": {
      const n = Number(raw);
      if (!/^-?\d+$/.test(raw) || !Number.isSafeInteger(n)) throw envError(info.env, key, "must be an integer", raw);
      return n;
    }
    case "policy":
      if (raw !== "1" && raw !== "2" && raw !== "3") throw envError(info.env, key, "must be 1, 2 or 3", raw);
      return Number(raw);
    case "json":
      try {
        return JSON.parse(raw) as unknown;
      } catch {
        throw envError(info.env, key, "must be JSON", raw);
      }
  }
}

function resolvePath(dataDir: string, p: string): string {
  return isAbsolute(p) ? resolve(p) : resolve(dataDir, p);
}

/**
 * Validates configuration values (as read from `config.json`), applies environment overrides and
 * defaults, and resolves them against the data directory. {@link loadConfig} is this plus reading the
 * file; use it directly to build a configuration without a file (tests, embedding).
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

  // Environment overrides; remember which (dotted) paths came from where, for error messages.
  const merged: Record<string, unknown> = { ...values };
  const fromEnv = new Map<string, { env: string; raw: string }>();
  for (const key of CONFIG_KEY_NAMES) {
    const info: ConfigKeyInfo = CONFIG_KEYS[key];
    const raw = env[info.env];
    if (raw === undefined || raw === "") continue;
    const value = parseEnvValue(key, info, raw);
    if (key === "devIdp") {
      merged.devIdp = { ...(isPlainObject(merged.devIdp) ? merged.devIdp : {}), listen: value };
      fromEnv.set("devIdp.listen", { env: info.env, raw });
    } else {
      merged[key] = value;
      fromEnv.set(key, { env: info.env, raw });
    }
  }

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
  const masterKeyFromEnv = env.KEYWARD_MASTER_KEY;

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
    ...(masterKeyFromEnv !== undefined && masterKeyFromEnv !== "" && { masterKeyFromEnv }),
  };
}

/** The file name of the configuration inside the data directory. */
const CONFIG_FILE = "config.json";

/**
 * Loads `<dataDir>/config.json`, refuses unknown keys, applies environment overrides (`KEYWARD_*`;
 * integers parsed strictly), validates, applies defaults and resolves paths against the data
 * directory. Every problem is a {@link ConfigError} naming the key (or environment variable).
 *
 * @example
 * const config = loadConfig("/var/lib/keyward");                      // uses process.env
 * const other = loadConfig("./data", { KEYWARD_LISTEN: "[::1]:9000" }); // explicit environment
 */
export function loadConfig(dataDir: string, env: Record<string, string | undefined> = process.env): KeywardConfig {
  const dir = resolve(dataDir);
  const file = join(dir, CONFIG_FILE);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === "ENOENT") {
      throw new ConfigError(
        CONFIG_FILE,
        `config: ${file} not found: the data directory ${dir} is not initialised (run \`keyward init\` to create it)`,
      );
    }
    throw new ConfigError(CONFIG_FILE, `config: cannot read ${file}: ${err.message}`);
  }
  let values: unknown;
  try {
    values = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(CONFIG_FILE, `config.json: not valid JSON (${file}): ${(e as Error).message}`);
  }
  if (!isPlainObject(values)) throw new ConfigError(CONFIG_FILE, `config.json: must contain a JSON object (${file})`);
  return resolveConfig(dir, values, env);
}

/**
 * Writes `<dataDir>/config.json` (pretty-printed, mode 0600: it may hold `oauthClientSecret` and a
 * `storeUrl` with a password) with exactly the given keys, replacing the file atomically, so a
 * rewrite also narrows the mode of an older 0644 file. Keys whose value is `undefined` are left out. Unknown keys and invalid values
 * are refused with a {@link ConfigError}; the master key is not a configuration key and so can never
 * be written. The data directory must exist.
 *
 * @example
 * writeConfigFile("/var/lib/keyward", {
 *   authority: "kms.example.com",
 *   oauthIssuer: "https://idp.example.com",
 *   oauthJwksUri: "https://idp.example.com/jwks",
 * });
 */
export function writeConfigFile(dataDir: string, values: Partial<ConfigFileValues>): void {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(values)) {
    if (!isConfigKey(key)) throw unknownKeyError(key);
    if (value === undefined) continue;
    const result = configSchema.shape[key].safeParse(value);
    if (!result.success) {
      const issue = result.error.issues[0]!;
      const path = [key, ...issue.path.map(String)].join(".");
      if (issue.code === "unrecognized_keys") throw new ConfigError(`${path}.${issue.keys[0] ?? "?"}`, `config.json: '${path}.${issue.keys[0] ?? "?"}': unknown key`);
      throw fileError(path, issue.message, value);
    }
    out[key] = value;
  }
  const file = join(resolve(dataDir), CONFIG_FILE);
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    // A fresh file ("wx"), created 0600: a stale temp file of another mode is never reused.
    rmSync(tmp, { force: true });
    writeFileSync(tmp, JSON.stringify(out, null, 2) + "\n", { mode: 0o600, flag: "wx" });
    chmodSync(tmp, 0o600);
    renameSync(tmp, file);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}
