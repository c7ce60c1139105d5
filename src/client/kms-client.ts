import { CompactEncrypt, compactVerify, exportJWK, importJWK, type JWK } from "jose";
import { CONTENT_ENCRYPTION, STATIC_VERIFY_ALGORITHMS } from "../protocol/constants.js";
import { entityDomain } from "../protocol/entity.js";
import { decryptCommonMessage, encryptCommonMessage } from "../protocol/jose/common-message.js";
import { deriveEphemeralKey, generateEphemeralKeyPair, importEcdhPublicKey } from "../protocol/jose/ephemeral-key.js";
import type { RequestId, ResponsePayload } from "../protocol/messages.js";
import { KmsProtocolError, KmsRequestError } from "./errors.js";
import { validateKmsIdentity } from "./kms-identity.js";
import { HttpTransport, type KmsTransport } from "./transport.js";

export interface KmsClientOptions {
  /** The KMS's HTTP origin, e.g. "https://kms.example.com" (or give `transport`). */
  readonly url?: string;
  readonly transport?: KmsTransport;
  /** The user this client acts for, `user@domain`: the KMS certificate must name its domain (§2). */
  readonly user: string;
  /** An OAuth access token for the KMS, or a function returning a fresh one. */
  readonly token: string | (() => string | Promise<string>);
  /** PEM trust roots for the KMS certificate chain. */
  readonly trustRoots: readonly string[];
  /** Identifies this client among the user's clients (draft §4.5.1). Default: a random one. */
  readonly clientId?: string;
  /** Re-key this long before the channel's expirationDate (ms). Default 30 s. */
  readonly rekeyMarginMs?: number;
  readonly now?: () => Date;
}

/** The KMS as discovered and authenticated. */
export interface KmsInfo {
  readonly uri: string;
  readonly kid: string;
  readonly keyType: "EC" | "RSA";
  /** The current static key: key agreement encrypts to it. */
  readonly jwk: JWK;
  /**
   * Keys the KMS rotated out (`previousKeys` of /.well-known/kms), each authenticated exactly as
   * `jwk` is; signatures they made still verify. Entries that fail authentication are left out.
   */
  readonly previousJwks: readonly JWK[];
}

/** A key that may have signed what the KMS sends: the current one, then previous ones. */
interface VerifyKey {
  readonly jwk: JWK;
  readonly keyType: "EC" | "RSA";
  readonly imported: Map<string, Promise<CryptoKey | Uint8Array>>;
}

/** An open secure channel. */
export interface Channel {
  readonly uri: string;
  readonly expiresAt: Date;
  readonly userId: string;
}

interface ChannelState extends Channel {
  readonly key: Uint8Array;
}

/**
 * The Keyward SDK's entry point: discovers and authenticates the KMS, opens a secure channel
 * (ECDHE, §5), sends requests on it, and re-keys transparently when the channel expires or the KMS
 * refuses it with a JWS error (401/403). Isomorphic: Node and browsers.
 *
 * @example
 * const kms = new KmsClient({ url: "https://kms.example.com", user: "alice@example.com", token, trustRoots: [caPem] });
 * await kms.ping();
 * await kms.close();
 */
export class KmsClient {
  private kms?: KmsInfo;
  private verifyKeys?: VerifyKey[];
  private discovering?: Promise<KmsInfo>;
  private current?: ChannelState;
  private opening?: Promise<ChannelState>;
  private readonly transport: KmsTransport;
  private readonly clientId: string;
  private readonly now: () => Date;

  constructor(private readonly options: KmsClientOptions) {
    if (!options.transport && !options.url) throw new TypeError("KmsClient needs `url` or `transport`");
    this.transport = options.transport ?? new HttpTransport(options.url!);
    this.clientId = options.clientId ?? `keyward-sdk-${globalThis.crypto.randomUUID()}`;
    this.now = options.now ?? (() => new Date());
  }

  /** The open channel, if any. */
  get channel(): Channel | undefined {
    const c = this.current;
    return c && { uri: c.uri, expiresAt: c.expiresAt, userId: c.userId };
  }

  /**
   * Fetches `/.well-known/kms` and validates the KMS identity (§2): x5c chain to the trust roots,
   * a DNS SAN for the user's domain, the JWK equal to the leaf key. Throws KmsIdentityError.
   */
  async discover(): Promise<KmsInfo> {
    if (this.kms) return this.kms;
    if (!this.discovering) {
      this.discovering = this.fetchKmsInfo()
        .then((info) => {
          this.kms = info;
          this.verifyKeys = undefined;
          return info;
        })
        .finally(() => {
          this.discovering = undefined;
        });
    }
    return this.discovering;
  }

  /**
   * Discovers the KMS again (after a static key rotation) and says whether its current key changed.
   * On failure the previous discovery stays in place and the error is thrown.
   */
  private async rediscover(): Promise<boolean> {
    const before = this.kms;
    if (this.discovering) {
      const after = await this.discovering;
      return !before || !sameKey(before.jwk, after.jwk);
    }
    this.kms = undefined;
    try {
      const after = await this.discover();
      return !before || !sameKey(before.jwk, after.jwk) || after.previousJwks.length !== before.previousJwks.length;
    } catch (e) {
      if (!this.kms) this.kms = before;
      throw e;
    }
  }

  private async fetchKmsInfo(): Promise<KmsInfo> {
    const doc = (await this.transport.discover()) as { uri?: unknown; jwk?: JWK & { x5c?: string[] }; previousKeys?: unknown };
    if (typeof doc?.uri !== "string" || typeof doc.jwk !== "object" || doc.jwk === null) {
      throw new KmsProtocolError("ERR_DISCOVERY", "/.well-known/kms has no 'uri' or 'jwk'");
    }
    const domain = entityDomain(this.options.user);
    if (!domain) throw new TypeError(`user '${this.options.user}' is not user@domain`);
    const uri = doc.uri;
    const authenticate = async (jwk: JWK & { x5c?: string[] }): Promise<"EC" | "RSA"> => {
      await validateKmsIdentity({ jwk, trustRoots: [...this.options.trustRoots], userDomain: domain, now: this.now() });
      const keyType = jwk.kty === "EC" ? "EC" : jwk.kty === "RSA" ? "RSA" : undefined;
      if (!keyType) throw new KmsProtocolError("ERR_DISCOVERY", `unsupported KMS key type '${jwk.kty}'`);
      if (jwk.kid !== uri) throw new KmsProtocolError("ERR_DISCOVERY", "the KMS key's kid is not the KMS URI");
      return keyType;
    };
    const keyType = await authenticate(doc.jwk);
    const previousJwks: JWK[] = [];
    if (Array.isArray(doc.previousKeys)) {
      for (const jwk of doc.previousKeys as unknown[]) {
        if (typeof jwk !== "object" || jwk === null) continue;
        try {
          // Exactly the checks of the current key; one that fails (e.g. its certificate expired) is not trusted.
          await authenticate(jwk as JWK);
          previousJwks.push(jwk as JWK);
        } catch {
          /* left out: signatures by it will not verify */
        }
      }
    }
    return { uri, kid: uri, keyType, jwk: doc.jwk, previousJwks };
  }

  /** Opens a new secure channel now (normally implicit). */
  async connect(): Promise<Channel> {
    this.current = undefined;
    return this.ensureChannel();
  }

  /**
   * `update /ping` (200): proves the channel works end to end.
   *
   * @example
   * await kms.ping();
   */
  async ping(): Promise<void> {
    await this.request("update", "/ping", {}, { expect: 200 });
  }

  /**
   * Sends one request on the channel and returns the reply payload; throws KmsRequestError for a
   * status ≥ 400. Re-keys once and retries when the channel is refused (JWS 401/403).
   *
   * A reply is accepted only when it answers this request (§4): a decrypted reply without an
   * integer `status`, or whose `requestId` is not this request's (compared as JSON values), is a
   * KmsProtocolError `ERR_REPLY_MISMATCH`, never a success and never retried. Requests and
   * replies share the channel key and header form, so an untrusted transport could otherwise hand
   * the client its own request (bearer token included) back as the "reply". A success status
   * other than `opts.expect` (default: any 2xx) is a KmsProtocolError `ERR_REPLY_STATUS`.
   *
   * A JWS error that carries a `requestId` must carry this request's (else `ERR_REPLY_MISMATCH`).
   * A JWS error without one cannot be bound to a request (the KMS sends those when it cannot read
   * the request: unknown or expired channel, a message that does not decrypt), so a transport can
   * replay any such error it has seen. That residual limit is accepted: the SDK's reaction to an
   * unbound 401/403 is to re-key and retry once, and to any other unbound error (or a second
   * refusal) to fail the operation; an attacker who can replay can equally drop messages, which
   * fails the operation too. An unbound JWS is never a success.
   *
   * @example
   * const reply = await kms.request("retrieve", "/entities/bob%40example.com/keys", {}, { expect: 200 });
   */
  async request(method: string, uri: string, fields: Record<string, unknown> = {}, opts: { expect?: number } = {}): Promise<ResponsePayload> {
    for (let attempt = 0; ; attempt++) {
      const channel = await this.ensureChannel();
      const reply = await this.exchange(channel, method, uri, fields);
      if (reply.kind === "refused" && attempt === 0) {
        // The channel is gone (deleted, expired, forgotten by the KMS): open a new one and retry once.
        if (this.current === channel) this.current = undefined;
        continue;
      }
      if (reply.kind === "refused") throw new KmsRequestError(reply.payload.status, String(reply.payload.reason ?? ""), "jws");
      const { status } = reply.payload;
      if (status >= 400) {
        throw new KmsRequestError(status, String(reply.payload.reason ?? ""), reply.form);
      }
      if (opts.expect !== undefined ? status !== opts.expect : status < 200 || status > 299) {
        throw new KmsProtocolError(
          "ERR_REPLY_STATUS",
          `${method} ${uri}: the KMS answered status ${status}, not ${opts.expect ?? "a 2xx success"}`,
        );
      }
      return reply.payload;
    }
  }

  /** Deletes the channel's ephemeral key on the KMS (§5). */
  async close(): Promise<void> {
    const channel = this.current;
    if (!channel) return;
    this.current = undefined;
    const reply = await this.exchange(channel, "delete", channel.uri, {});
    if (reply.kind === "refused") return;
    if (reply.payload.status >= 400) throw new KmsRequestError(reply.payload.status, String(reply.payload.reason ?? ""), reply.form);
    if (reply.payload.status !== 204) {
      throw new KmsProtocolError("ERR_REPLY_STATUS", `delete ${channel.uri}: the KMS answered status ${reply.payload.status}, not 204`);
    }
  }

  private async exchange(channel: ChannelState, method: string, uri: string, fields: Record<string, unknown>) {
    const requestId = globalThis.crypto.randomUUID();
    const payload = { ...fields, client: await this.clientInfo(), method, uri, requestId };
    const replyText: unknown = await this.transport.send(await encryptCommonMessage(channel.key, channel.uri, payload));
    if (typeof replyText !== "string") throw new KmsProtocolError("ERR_REPLY_MISMATCH", "the transport returned no JOSE text as the KMS reply");
    if (replyText.split(".").length === 3) {
      // A JWS on a channel is only ever an error the KMS signed (§4); see `request` on unbound ones.
      const error = jwsErrorFor(await this.verifyStatic(replyText), requestId);
      if (error.status === 401 || error.status === 403) return { kind: "refused" as const, payload: error, form: "jws" as const };
      throw new KmsRequestError(error.status, String(error.reason ?? ""), "jws");
    }
    let decrypted: unknown;
    try {
      decrypted = (await decryptCommonMessage(channel.key, replyText)).payload;
    } catch {
      throw new KmsProtocolError("ERR_REPLY_DECRYPT", "the KMS reply does not decrypt with the channel key");
    }
    return { kind: "reply" as const, payload: replyFor(decrypted, requestId, "the KMS reply"), form: "jwe" as const };
  }

  private async ensureChannel(): Promise<ChannelState> {
    const margin = this.options.rekeyMarginMs ?? 30_000;
    const c = this.current;
    if (c && c.expiresAt.getTime() - margin > this.now().getTime()) return c;
    if (!this.opening) {
      this.opening = this.openChannel().finally(() => {
        this.opening = undefined;
      });
    }
    return this.opening;
  }

  /**
   * ECDHE (§5): JWE to the static key, signed reply, K_ephemeral = HKDF(ECDH). A 401 when the KMS
   * has a new static key (rotated: it no longer decrypts what was encrypted to the key this client
   * discovered) is cured by discovering the KMS again and retrying, once.
   */
  private async openChannel(): Promise<ChannelState> {
    for (let attempt = 0; ; attempt++) {
      const kms = await this.discover();
      const result = await this.keyAgreement(kms);
      if (result.reply.status === 401 && attempt === 0) {
        // verifyStatic may already have re-discovered (the refusal was signed by a key this client did not know).
        const changed = this.kms !== kms ? !sameKey(kms.jwk, this.kms!.jwk) : await this.rediscover();
        if (changed) continue;
      }
      return this.channelFrom(result);
    }
  }

  private async keyAgreement(kms: KmsInfo) {
    const pair = await generateEphemeralKeyPair();
    const { kty, crv, x, y } = await exportJWK(pair.publicKey);
    const requestId: RequestId = globalThis.crypto.randomUUID();
    const payload = { client: await this.clientInfo(), method: "create", uri: "/ecdhe", requestId, jwk: { kty, crv, x, y } };
    const alg = kms.keyType === "EC" ? "ECDH-ES+A256KW" : "RSA-OAEP-256";
    const { x5c: _x5c, ...bareJwk } = kms.jwk;
    const encryptKey = await importJWK(bareJwk, alg);
    const message = await new CompactEncrypt(new TextEncoder().encode(JSON.stringify(payload)))
      .setProtectedHeader({ alg, enc: CONTENT_ENCRYPTION, kid: kms.kid })
      .encrypt(encryptKey);
    const replyText: unknown = await this.transport.send(message);
    if (typeof replyText !== "string") throw new KmsProtocolError("ERR_REPLY_MISMATCH", "the transport returned no JOSE text as the ECDHE reply");
    // Bound before anything acts on it: a replayed refusal of another key agreement is no refusal of this one.
    const reply = jwsErrorOrReplyFor(await this.verifyStatic(replyText), requestId);
    return { reply, requestId, pair };
  }

  private async channelFrom({ reply, pair }: Awaited<ReturnType<KmsClient["keyAgreement"]>>): Promise<ChannelState> {
    if (reply.status >= 400) throw new KmsRequestError(reply.status, String(reply.reason ?? ""), "jws");
    if (reply.status !== 201) throw new KmsProtocolError("ERR_REPLY_STATUS", `the ECDHE reply has status ${reply.status}, not 201`);
    const ek = (reply.key ?? reply["ephemeral-key"]) as { uri?: unknown; jwk?: unknown; expirationDate?: unknown; userId?: unknown } | undefined;
    if (!ek || typeof ek.uri !== "string" || typeof ek.expirationDate !== "string") {
      throw new KmsProtocolError("ERR_ECDHE_REPLY", "the ECDHE reply has no usable ephemeral key");
    }
    const expiresAt = new Date(ek.expirationDate);
    if (Number.isNaN(expiresAt.getTime())) throw new KmsProtocolError("ERR_ECDHE_REPLY", "bad expirationDate in the ECDHE reply");
    const key = await deriveEphemeralKey(pair.privateKey, await importEcdhPublicKey(ek.jwk));
    this.current = { uri: ek.uri, expiresAt, userId: String(ek.userId ?? ""), key };
    return this.current;
  }

  /**
   * Verifies an object the KMS signed with its static key (a genesis block, a GK) and returns its
   * payload. Throws KmsProtocolError when the signature is not the KMS's.
   *
   * @example
   * const gk = await kms.verifyKmsSignature(reply.gk) as { uri: string; key: GeneralJWE };
   */
  async verifyKmsSignature(jws: string): Promise<unknown> {
    return this.verifyStatic(jws);
  }

  /**
   * Verifies a JWS from the KMS static key (ECDHE replies, JWS errors, GKs, genesis blocks): with
   * the current key, then each authenticated previous key. When none verifies, the KMS may have
   * rotated to a key this client has not seen: it discovers the KMS again, once, and retries.
   * Fails closed (ERR_KMS_SIGNATURE) when still no key verifies.
   */
  private async verifyStatic(jws: string): Promise<ResponsePayload> {
    let payload = await this.tryVerify(jws, await this.discover());
    if (payload === undefined && (await this.rediscover().catch(() => false))) payload = await this.tryVerify(jws, await this.discover());
    if (payload === undefined) throw new KmsProtocolError("ERR_KMS_SIGNATURE", "a KMS reply is not signed by the KMS static key (nor by any of its authenticated previous keys)");
    return JSON.parse(new TextDecoder().decode(payload)) as ResponsePayload;
  }

  private async tryVerify(jws: string, kms: KmsInfo): Promise<Uint8Array | undefined> {
    if (!this.verifyKeys || this.kms !== kms) {
      this.verifyKeys = [kms.jwk, ...kms.previousJwks].map((jwk) => ({ jwk, keyType: jwk.kty === "RSA" ? "RSA" : "EC", imported: new Map() }));
    }
    for (const key of this.verifyKeys) {
      try {
        const { payload } = await compactVerify(
          jws,
          async (header) => {
            if (header.kid !== kms.kid) throw new Error("kid");
            const alg = header.alg!;
            let imported = key.imported.get(alg);
            if (!imported) {
              const { x5c: _x5c, ...bareJwk } = key.jwk;
              imported = importJWK(bareJwk, alg);
              key.imported.set(alg, imported);
            }
            return imported;
          },
          { algorithms: [...STATIC_VERIFY_ALGORITHMS[key.keyType]] },
        );
        return payload;
      } catch {
        /* the next key */
      }
    }
    return undefined;
  }

  private async clientInfo() {
    const token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
    return { clientId: this.clientId, credential: { userId: this.options.user, bearer: token } };
  }
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** An HTTP-like status: an integer from 100 to 599. */
const isStatus = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 100 && (v as number) <= 599;

/**
 * A decrypted common-message reply that answers the request `requestId` (§4): an object with an
 * integer `status` that echoes `requestId` (compared as JSON values: `7` and `"7"` differ; both
 * are primitives, so `===` is that comparison) and carries no `client` member (a reply never
 * echoes the credential; a request always has one). Else KmsProtocolError ERR_REPLY_MISMATCH.
 * A reply without requestId answers only a request with a bad header, which this client never
 * sends, so it is refused too. The messages never quote the payload: it may be the request itself.
 */
function replyFor(payload: unknown, requestId: RequestId, what: string): ResponsePayload {
  if (!isObject(payload) || !isStatus(payload.status)) {
    throw new KmsProtocolError("ERR_REPLY_MISMATCH", `${what} has no integer 'status': it is not a KMS reply (a transport may have sent the request back)`);
  }
  if (payload.requestId !== requestId) {
    throw new KmsProtocolError("ERR_REPLY_MISMATCH", `${what} does not echo this request's requestId: it answers another request, or none`);
  }
  if ("client" in payload) {
    throw new KmsProtocolError("ERR_REPLY_MISMATCH", `${what} carries a 'client' member: it is a request, not a KMS reply`);
  }
  return payload as ResponsePayload;
}

/**
 * A JWS the KMS signed, received for a key agreement: either its reply (bound to `requestId`) or
 * a JWS error, bound when it carries a requestId (it must be this one), unbound otherwise (see
 * `KmsClient.request` on that residual limit).
 */
function jwsErrorOrReplyFor(payload: unknown, requestId: RequestId): ResponsePayload {
  if (isObject(payload) && isStatus(payload.status) && payload.status >= 400 && payload.requestId === undefined) {
    return payload as ResponsePayload;
  }
  return replyFor(payload, requestId, "the KMS's signed reply");
}

/** A JWS received for a common message: only ever an error (status ≥ 400), bound or unbound as above. */
function jwsErrorFor(payload: unknown, requestId: RequestId): ResponsePayload {
  const reply = jwsErrorOrReplyFor(payload, requestId);
  if (reply.status < 400) {
    throw new KmsProtocolError("ERR_REPLY_MISMATCH", `a signed KMS message with status ${reply.status} came back for a channel request: only errors are signed there`);
  }
  return reply;
}

/** Same public key (JWK members of the key itself, kid/x5c ignored). */
function sameKey(a: JWK, b: JWK): boolean {
  return a.kty === b.kty && a.x === b.x && a.y === b.y && a.n === b.n && a.e === b.e && a.crv === b.crv;
}
