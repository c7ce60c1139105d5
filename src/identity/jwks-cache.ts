import { createLocalJWKSet, errors as joseErrors, type FlattenedJWSInput, type JSONWebKeySet, type JWSHeaderParameters, type JWTVerifyGetKey } from "jose";

/** The identity provider's JWKS could not be fetched (network, timeout, HTTP status, malformed set). */
export class JwksUnavailableError extends Error {
  override readonly name = "JwksUnavailableError";
}

export interface JwksCacheOptions {
  /** The issuer's `jwks_uri`. */
  readonly url: string;
  /** Minimum time between two fetches, ms (default 5 s): an unknown `kid` waits for the rest of it. */
  readonly minRefetchIntervalMs?: number;
  /** A fetched set is refreshed on the next use after this age, ms (default 10 min). */
  readonly maxAgeMs?: number;
  /** Timeout of one fetch, ms (default 5 s). */
  readonly timeoutMs?: number;
  /** For tests: fetches the set (default: `fetch(url)` with the timeout, 200 + JSON `{keys: [...]}` required). */
  readonly fetchJwks?: (url: string, signal: AbortSignal) => Promise<unknown>;
  /** For tests: the clock (ms) and a sleep that follows it. */
  readonly now?: () => number;
  readonly sleep?: (ms: number) => Promise<void>;
}

/** One fetch, scheduled or running; `index` is set when its HTTP request starts (0, 1, 2, …). */
interface Fetch {
  index?: number;
  done: Promise<void>;
}

/**
 * The identity provider's signing keys (§6), cached so that JWT validation needs no network on the
 * hot path, and refreshed so that a provider key rotation causes no failed request:
 *
 * - The set is fetched on first use and again on the first use after `maxAgeMs` (a failed periodic
 *   refresh keeps the previous set and is retried after `minRefetchIntervalMs`).
 * - A token whose `kid` (or alg/kty) matches no cached key triggers ONE refetch, unless the cached set
 *   was itself fetched after that token arrived. Fetches are at least `minRefetchIntervalMs` apart: a
 *   refetch that comes too early waits for the rest of the interval; every concurrent waiter shares
 *   that one fetch. A key still unknown afterwards → jose `JWKSNoMatchingKey`.
 * - A refetch that fails → {@link JwksUnavailableError} (the request is refused, fail closed).
 *
 * @example
 * const jwks = new JwksCache({ url: "https://idp.example.com/jwks" });
 * const { payload } = await jwtVerify(token, jwks.getKey, { issuer, audience });
 */
export class JwksCache {
  private readonly minInterval: number;
  private readonly maxAge: number;
  private readonly timeout: number;
  private readonly now: () => number;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly fetchJwks: (url: string, signal: AbortSignal) => Promise<unknown>;
  private local?: ReturnType<typeof createLocalJWKSet>;
  /** Clock time at which the last fetch started (successful or not): fetches are rate-limited on it. */
  private lastStart = -Infinity;
  /** Clock time and index of the fetch the current key set came from. */
  private keysAt = -Infinity;
  private keysIndex = -1;
  private pending?: Fetch;
  /** Number of fetches started (the next fetch's index). */
  fetchCount = 0;

  constructor(private readonly options: JwksCacheOptions) {
    this.minInterval = options.minRefetchIntervalMs ?? 5_000;
    this.maxAge = options.maxAgeMs ?? 600_000;
    this.timeout = options.timeoutMs ?? 5_000;
    this.now = options.now ?? Date.now;
    this.sleep = options.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
    this.fetchJwks = options.fetchJwks ?? defaultFetchJwks;
  }

  /** A jose key resolver (`jwtVerify(token, cache.getKey, ...)`). */
  readonly getKey: JWTVerifyGetKey = async (header: JWSHeaderParameters, token: FlattenedJWSInput) => {
    // Fetches with an index >= arrival started after this token arrived.
    const arrival = this.fetchCount;
    const now = this.now();
    if (this.local === undefined) {
      await this.fetchFrom(0, true);
    } else if (now - this.keysAt >= this.maxAge && now - this.lastStart >= this.minInterval) {
      // Periodic refresh; on failure keep the previous set (an IdP outage must not stop the KMS).
      await this.fetchFrom(0, false);
    }
    try {
      return await this.local!(header, token);
    } catch (e) {
      if (!(e instanceof joseErrors.JWKSNoMatchingKey)) throw e;
      // The set already postdates this token's arrival: refetching cannot help.
      if (this.keysIndex >= arrival) throw e;
    }
    await this.fetchFrom(arrival, true);
    return this.local!(header, token);
  };

  /**
   * Waits for a fetch whose index is at least `minIndex`: joins the scheduled or running one when it
   * qualifies, else (after letting a running one finish) schedules one no sooner than `minInterval`
   * after the previous start.
   * @param mustSucceed throw {@link JwksUnavailableError} unless the key set now comes from such a fetch.
   */
  private async fetchFrom(minIndex: number, mustSucceed: boolean): Promise<void> {
    for (;;) {
      const pending = this.pending;
      if (pending !== undefined && (pending.index === undefined || pending.index >= minIndex)) {
        await pending.done;
        break;
      }
      if (pending !== undefined) {
        await pending.done;
        continue;
      }
      const fetch: Fetch = { done: Promise.resolve() };
      this.pending = fetch;
      fetch.done = this.run(fetch);
      await fetch.done;
      break;
    }
    if (mustSucceed && (this.local === undefined || this.keysIndex < minIndex)) {
      throw new JwksUnavailableError("the identity provider's keys could not be fetched");
    }
  }

  /** Runs one fetch (after the rate-limit wait); never rejects: callers look at keysIndex. */
  private async run(fetch: Fetch): Promise<void> {
    try {
      const wait = this.lastStart + this.minInterval - this.now();
      if (wait > 0) await this.sleep(wait);
      const index = this.fetchCount++;
      fetch.index = index;
      const started = this.now();
      this.lastStart = started;
      const set = await this.fetchJwks(this.options.url, AbortSignal.timeout(this.timeout));
      if (!isKeySet(set)) throw new JwksUnavailableError("the identity provider's JWKS is not a JSON Web Key Set");
      this.local = createLocalJWKSet(set);
      this.keysAt = started;
      this.keysIndex = index;
    } catch {
      // Reported through keysIndex (fail closed where a fresh set is required).
    } finally {
      if (this.pending === fetch) this.pending = undefined;
    }
  }
}

function isKeySet(v: unknown): v is JSONWebKeySet {
  return typeof v === "object" && v !== null && Array.isArray((v as { keys?: unknown }).keys);
}

async function defaultFetchJwks(url: string, signal: AbortSignal): Promise<unknown> {
  const res = await fetch(url, { signal, headers: { accept: "application/json, application/jwk-set+json" }, redirect: "manual" });
  if (res.status !== 200) throw new JwksUnavailableError(`the identity provider's JWKS endpoint answered HTTP ${res.status}`);
  return res.json();
}
