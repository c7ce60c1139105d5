import type { JWK } from "jose";
import type { AuthenticatedIdentity } from "../../identity/authenticator.js";
import { REL_KMS } from "../../protocol/constants.js";
import { echo } from "../../protocol/echo.js";
import { normalizeEntity } from "../../protocol/entity.js";
import { badRequest, forbidden, KmsError } from "../../protocol/errors.js";
import type { Credential, RequestPayload } from "../../protocol/messages.js";
import { kmsUri, type ResolvedUri } from "../../protocol/uri.js";
import type { CoreSettings } from "../context.js";

/** §12: a WebFinger answer must come within this time, or the request is refused 502. */
export const WEBFINGER_TIMEOUT_MS = 5000;
/** §12: a positive WebFinger answer may be remembered at most this long. */
export const WEBFINGER_CACHE_SECONDS = 300;
const WEBFINGER_CACHE_MAX_ENTRIES = 10_000;
/** A JRD is small; a larger body is not one we read to the end (a hostile web server). */
const WEBFINGER_MAX_BODY_BYTES = 64 * 1024;

/** The peer KMS a request came through (§12): its KMS URI and the static key it presented. */
export interface PeerContext {
  /** `kms://<peer authority>`. */
  readonly uri: string;
  /** The peer's static public key (the channel's certificate credential), without x5c: GKs are wrapped to it only. */
  readonly jwk: JWK;
}

/**
 * What an operation is, for the rules of a KMS on a certificate channel (§12). Derived from the
 * same (path, method) pairs the router serves.
 */
export type PeerOperation =
  | "ping"
  | "channel.delete"
  | "keys.list"
  | "keys.register"
  | "keys.revoke"
  | "gmbc.genesis"
  | "gmbc.append"
  | "gmbc.get"
  | "gk.create"
  | "gk.bind"
  | "gk.get";

/** The (method, path) pairs of the router (src/server/router.ts), by what they are; ":id" matches any one segment. */
const OPERATIONS: readonly (readonly [string, readonly string[], PeerOperation])[] = [
  ["update", ["ping"], "ping"],
  ["delete", ["ecdhe", ":id"], "channel.delete"],
  ["retrieve", ["entities", ":id", "keys"], "keys.list"],
  ["create", ["entities", "keys"], "keys.register"],
  ["delete", ["entities", ":id", "keys", ":id"], "keys.revoke"],
  ["create", ["blocks"], "gmbc.genesis"],
  ["create", ["blocks", ":id"], "gmbc.append"],
  ["retrieve", ["blocks", ":id"], "gmbc.get"],
  ["create", ["gks"], "gk.create"],
  ["update", ["gks", ":id"], "gk.bind"],
  ["retrieve", ["gks", ":id"], "gk.get"],
];

/**
 * The operation a routed request is, or undefined for one the router does not serve (it has
 * answered 404/405 before this is asked).
 *
 * @example
 * peerOperationOf(resolveUri("/gks/1", "kms.a.example"), "retrieve") // "gk.get"
 */
export function peerOperationOf(target: ResolvedUri, method: string): PeerOperation | undefined {
  const s = target.segments;
  for (const [m, pattern, op] of OPERATIONS) {
    if (m === method && pattern.length === s.length && pattern.every((p, i) => p === ":id" || p === s[i])) return op;
  }
  return undefined;
}

/** Operations a KMS performs as itself, without `entity` (§12). */
const AS_ITSELF: ReadonlySet<PeerOperation> = new Set(["ping", "channel.delete", "keys.list", "gmbc.append"]);
/** Operations that need a user: without `entity`, 400 naming the field (§12). */
const NEEDS_USER: ReadonlySet<PeerOperation> = new Set(["gk.get", "gk.create", "gk.bind", "gmbc.get"]);
/** Operations with no user (ping, channel deletion): `entity`, if any, is an unknown field and ignored. */
const NO_USER: ReadonlySet<PeerOperation> = new Set(["ping", "channel.delete"]);
/** Operations no KMS performs at a peer, as itself or for a user: it has no groups or device keys there (§12). */
const NEVER: ReadonlySet<PeerOperation> = new Set(["gmbc.genesis", "keys.register", "keys.revoke"]);

/** The outcome of the curator's checks: who the handlers see, and the peer it came through. */
export interface ActingForDecision {
  readonly identity: AuthenticatedIdentity;
  readonly peer?: PeerContext;
}

/** Fetches a URL (global fetch by default): the seam tests use only to count requests. */
export type WebFingerFetch = (url: string, init: { redirect: "manual"; signal: AbortSignal; headers: Record<string, string> }) => Promise<Response>;

/**
 * The curator's checks for a request on a KMS's certificate channel (§12 "Acting for a user"):
 *
 *   no `entity` → the KMS acts as itself: ping, key lists, GMBC append; GK get/create/bind and
 *                 GMBC get 400 (naming `entity`); genesis and key registration/revocation 403.
 *   `entity`    → 1. the credential's entity is kms://<authority> of a configured peer, else 403;
 *                 2. `entity` is not of this KMS's own domain, else 403;
 *                 3. WebFinger of the entity's domain names that peer (`urn:x-keyward:rel:kms`):
 *                    no such link or 404 → 403 naming the domain; anything else → 502 (fail closed);
 *                    only positive answers cached, per entity, ≤ 300 s, bounded;
 *                 4. the request is then authorized as if `entity` had made it (the handlers see
 *                    `entity` as the identity, and the peer it came through).
 *
 * @example
 * const checks = new ActingForChecks({ settings });
 * const { identity, peer } = await checks.decide({ identity, credential, request, target });
 */
export class ActingForChecks {
  private readonly cache = new Map<string, number>();
  private readonly fetchImpl: WebFingerFetch;
  private readonly now: () => number;
  private readonly timeoutMs: number;
  private readonly cacheMs: number;
  private readonly maxEntries: number;

  constructor(
    private readonly opts: {
      settings: CoreSettings;
      fetch?: WebFingerFetch;
      now?: () => number;
      timeoutMs?: number;
      cacheSeconds?: number;
      maxCacheEntries?: number;
    },
  ) {
    this.fetchImpl = opts.fetch ?? ((url, init) => fetch(url, init));
    this.now = opts.now ?? Date.now;
    this.timeoutMs = opts.timeoutMs ?? WEBFINGER_TIMEOUT_MS;
    this.cacheMs = Math.min(opts.cacheSeconds ?? WEBFINGER_CACHE_SECONDS, WEBFINGER_CACHE_SECONDS) * 1000;
    this.maxEntries = opts.maxCacheEntries ?? WEBFINGER_CACHE_MAX_ENTRIES;
  }

  /** Applies §12's rules to a routed request on a certificate channel; throws the refusal. */
  async decide(ctx: { identity: AuthenticatedIdentity; credential: Credential; request: RequestPayload; target: ResolvedUri }): Promise<ActingForDecision> {
    const { identity, credential, request, target } = ctx;
    const op = peerOperationOf(target, request.method);
    if (op === undefined || NO_USER.has(op)) return { identity };
    if (NEVER.has(op)) throw forbidden(`a KMS has no groups or device keys of its own at another KMS: '${request.method} ${echo(target.path)}' is not open to ${echo(identity.entity)}`, "ERR_PEER_OPERATION");
    if (request.entity === undefined) {
      if (AS_ITSELF.has(op)) return { identity };
      if (NEEDS_USER.has(op)) throw badRequest("field 'entity' is required: a KMS acting for a user names that user (§12)", "ERR_FIELD");
      return { identity };
    }
    if (typeof request.entity !== "string") throw badRequest("field 'entity' must be a string (the user the KMS acts for)", "ERR_FIELD");
    const entity = normalizeEntity(request.entity);
    if (entity === undefined) throw badRequest("field 'entity' must be an entity (user@domain)", "ERR_FIELD");

    // 1. Only a configured peer acts for users.
    const peer = (this.opts.settings.federation?.peers ?? []).find((p) => kmsUri(p.authority) === identity.entity);
    if (!peer) throw forbidden(`${echo(identity.entity)} is not a federation peer of this KMS: it may act only as itself`, "ERR_NOT_A_PEER");
    // 2. A peer never acts for this KMS's own users: they talk to this KMS themselves.
    const domain = entity.slice(entity.lastIndexOf("@") + 1);
    if (domain === this.opts.settings.domain) throw forbidden(`${echo(entity)} is of this KMS's own domain: a peer cannot act for it`, "ERR_OWN_DOMAIN");
    // 3. The user's domain names that peer as its KMS.
    await this.requireHomeKms(entity, domain, peer.authority);
    // 4. Authorized as if `entity` had made it.
    if (!("jwk" in credential)) throw forbidden("a peer acts for users only on a certificate channel", "ERR_NOT_A_PEER");
    return { identity: { ...identity, entity }, peer: { uri: kmsUri(peer.authority), jwk: bareJwk(credential.jwk, kmsUri(peer.authority)) } };
  }

  private async requireHomeKms(entity: string, domain: string, peerAuthority: string): Promise<void> {
    const cacheKey = `${peerAuthority} ${entity}`;
    const until = this.cache.get(cacheKey);
    if (until !== undefined) {
      if (until > this.now()) return;
      this.cache.delete(cacheKey);
    }
    const names = await this.webFingerNamesPeer(entity, domain, peerAuthority);
    if (!names) throw forbidden(`the domain ${echo(domain)} does not name kms://${peerAuthority} as the KMS of ${echo(entity)} (WebFinger ${REL_KMS})`, "ERR_NOT_HOME_KMS");
    if (this.cache.size >= this.maxEntries) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(cacheKey, this.now() + this.cacheMs);
  }

  /** True when the domain's WebFinger names the peer; false for 404 or a JRD without that link; 502 otherwise. */
  private async webFingerNamesPeer(entity: string, domain: string, peerAuthority: string): Promise<boolean> {
    const origin = this.opts.settings.federation?.webfinger[domain] ?? `https://${domain}`;
    const url = `${origin}/.well-known/webfinger?resource=${encodeURIComponent(`acct:${entity}`)}&rel=${encodeURIComponent(REL_KMS)}`;
    const unavailable = (why: string) => new KmsError(502, "ERR_WEBFINGER", `WebFinger of ${echo(domain)} ${why}: cannot tell whether ${echo(entity)} is a user of this peer`);
    let body: unknown;
    try {
      const signal = AbortSignal.timeout(this.timeoutMs);
      const res = await this.fetchImpl(url, { redirect: "manual", signal, headers: { accept: "application/jrd+json" } });
      if (res.status === 404) {
        await res.body?.cancel();
        return false;
      }
      if (res.status !== 200) {
        await res.body?.cancel();
        throw unavailable(`answered HTTP ${res.status}`);
      }
      const text = await readLimited(res, WEBFINGER_MAX_BODY_BYTES);
      if (text === undefined) throw unavailable("sent a body too large for a JRD");
      body = JSON.parse(text);
    } catch (e) {
      if (e instanceof KmsError) throw e;
      if (e instanceof SyntaxError) throw unavailable("answered 200 with a body that is not JSON");
      const timedOut = e instanceof Error && (e.name === "TimeoutError" || e.name === "AbortError");
      throw unavailable(timedOut ? `did not answer within ${this.timeoutMs / 1000} s` : "could not be reached");
    }
    if (typeof body !== "object" || body === null || Array.isArray(body) || !Array.isArray((body as { links?: unknown }).links)) {
      throw unavailable("answered 200 with something that is not a JRD (an object with a 'links' array)");
    }
    const want = kmsUri(peerAuthority);
    return ((body as { links: unknown[] }).links).some(
      (l) => typeof l === "object" && l !== null && (l as { rel?: unknown }).rel === REL_KMS && typeof (l as { href?: unknown }).href === "string" && ((l as { href: string }).href.toLowerCase() === want),
    );
  }
}

/**
 * The public members of the peer's credential JWK (no x5c, alg or use), with kid = the peer's KMS
 * URI: the kid of the one recipient of every GK the curator returns to it (§12).
 */
function bareJwk(jwk: JWK, peerUri: string): JWK {
  const members = jwk.kty === "RSA" ? { kty: "RSA", n: jwk.n, e: jwk.e } : { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y };
  return { ...members, kid: peerUri } as JWK;
}

/** The body as text, or undefined when it is longer than `max` bytes (then the rest is not read). */
async function readLimited(res: Response, max: number): Promise<string | undefined> {
  if (!res.body) return "";
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > max) {
      await reader.cancel();
      return undefined;
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString("utf8");
}
