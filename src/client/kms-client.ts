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

  /** `update /ping`: proves the channel works end to end. */
  async ping(): Promise<void> {
    await this.request("update", "/ping");
  }

  /**
   * Sends one request on the channel and returns the reply payload; throws KmsRequestError for a
   * status ≥ 400. Re-keys once and retries when the channel is refused (JWS 401/403).
   */
  async request(method: string, uri: string, fields: Record<string, unknown> = {}): Promise<ResponsePayload> {
    for (let attempt = 0; ; attempt++) {
      const channel = await this.ensureChannel();
      const reply = await this.exchange(channel, method, uri, fields);
      if (reply.kind === "refused" && attempt === 0) {
        // The channel is gone (deleted, expired, forgotten by the KMS): open a new one and retry once.
        if (this.current === channel) this.current = undefined;
        continue;
      }
      if (reply.kind === "refused") throw new KmsRequestError(reply.payload.status, String(reply.payload.reason ?? ""), "jws");
      if (reply.payload.status >= 400) {
        throw new KmsRequestError(reply.payload.status, String(reply.payload.reason ?? ""), reply.form);
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
    if (reply.kind !== "refused" && reply.payload.status !== 204) {
      throw new KmsRequestError(reply.payload.status, String(reply.payload.reason ?? ""), reply.form);
    }
  }

  private async exchange(channel: ChannelState, method: string, uri: string, fields: Record<string, unknown>) {
    const requestId = globalThis.crypto.randomUUID();
    const payload = { ...fields, client: await this.clientInfo(), method, uri, requestId };
    const replyText = await this.transport.send(await encryptCommonMessage(channel.key, channel.uri, payload));
    if (replyText.split(".").length === 3) {
      const error = await this.verifyStatic(replyText);
      if (error.status === 401 || error.status === 403) return { kind: "refused" as const, payload: error, form: "jws" as const };
      throw new KmsRequestError(error.status, String(error.reason ?? ""), "jws");
    }
    let reply: ResponsePayload;
    try {
      reply = (await decryptCommonMessage(channel.key, replyText)).payload as ResponsePayload;
    } catch {
      throw new KmsProtocolError("ERR_REPLY_DECRYPT", "the KMS reply does not decrypt with the channel key");
    }
    // Only a refusal made before the KMS could read the request (a bad header) has no requestId.
    if (reply.requestId !== requestId && !(reply.requestId === undefined && reply.status >= 400)) {
      throw new KmsProtocolError("ERR_REQUEST_ID", "the KMS reply answers another request");
    }
    return { kind: "reply" as const, payload: reply, form: "jwe" as const };
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
    const reply = await this.verifyStatic(await this.transport.send(message));
    return { reply, requestId, pair };
  }

  private async channelFrom({ reply, requestId, pair }: Awaited<ReturnType<KmsClient["keyAgreement"]>>): Promise<ChannelState> {
    if (reply.status !== 201) throw new KmsRequestError(reply.status, String(reply.reason ?? ""), "jws");
    if (reply.requestId !== requestId) throw new KmsProtocolError("ERR_REQUEST_ID", "the ECDHE reply answers another request");
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

/** Same public key (JWK members of the key itself, kid/x5c ignored). */
function sameKey(a: JWK, b: JWK): boolean {
  return a.kty === b.kty && a.x === b.x && a.y === b.y && a.n === b.n && a.e === b.e && a.crv === b.crv;
}
