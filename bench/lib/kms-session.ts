/**
 * A minimal KMS client for benches: ECDHE against an EC static key, then common messages
 * (dir/A256GCM) sealed and opened with node:crypto one-shot calls (a few microseconds each, so the
 * load generator spends its core on HTTP, not on JOSE). Setup requests go through fetch; hot loops
 * seal bodies with `seal` and post them with bench/lib/raw-http.ts.
 */
import { createCipheriv, createDecipheriv, randomBytes, randomUUID } from "node:crypto";
import { CompactEncrypt, compactVerify, exportJWK, importJWK, type JWK } from "jose";
import { deriveEphemeralKey, generateEphemeralKeyPair, importEcdhPublicKey } from "../../src/protocol/jose/ephemeral-key.js";

export const JOSE_TYPE = "application/jose";
export const MESSAGES_PATH = "/kms/messages";

export interface KmsChannel {
  readonly uri: string;
  readonly key: Buffer;
  /** base64url of the protected header; its ASCII bytes are the AAD. */
  readonly h: string;
  readonly aad: Buffer;
}

/** A KMS reply payload (common message or JWS error). */
export interface KmsReply {
  readonly status: number;
  readonly reason?: string;
  readonly requestId?: unknown;
  readonly [field: string]: unknown;
}

export class KmsSession {
  private seq = 0;
  private readonly prefix = randomUUID().slice(0, 8);

  private constructor(
    /** Sends one compact JOSE message, resolves with the reply body. */
    readonly post: (body: string) => Promise<string>,
    readonly token: string,
    readonly kid: string,
    private readonly staticKey: CryptoKey,
    private readonly verifyKey: CryptoKey,
    readonly clientId: string,
  ) {}

  /** Reads /.well-known/kms; the static key must be EC (ECDH-ES+A256KW / ES256). */
  static async connect(url: string, token: string, clientId = "keyward-bench"): Promise<KmsSession> {
    const wk = (await (await fetch(`${url}/.well-known/kms`)).json()) as { jwk: JWK };
    const post = async (body: string) => (await postRetrying429(`${url}${MESSAGES_PATH}`, body)).text();
    return KmsSession.over(post, wk.jwk, token, clientId);
  }

  /** A session over any transport (e.g. a KmsCore in this process), given the static public JWK. */
  static async over(post: (body: string) => Promise<string>, staticJwk: JWK, token: string, clientId = "keyward-bench"): Promise<KmsSession> {
    const { x5c: _x5c, ...bare } = staticJwk;
    if (bare.kty !== "EC") throw new Error(`the bench expects an EC static key, the KMS has ${bare.kty}`);
    const staticKey = (await importJWK(bare, "ECDH-ES+A256KW")) as CryptoKey;
    const verifyKey = (await importJWK(bare, "ES256")) as CryptoKey;
    return new KmsSession(post, token, bare.kid!, staticKey, verifyKey, clientId);
  }

  credential(): { clientId: string; credential: { bearer: string } } {
    return { clientId: this.clientId, credential: { bearer: this.token } };
  }

  /** A fresh requestId, unique to this session. */
  requestId(): string {
    return `${this.prefix}-${this.seq++}`;
  }

  /** Opens one channel the way a client does: ECDHE, verify the signed reply, derive K_ephemeral. */
  async openChannel(): Promise<KmsChannel> {
    const pair = await generateEphemeralKeyPair();
    const { kty, crv, x, y } = await exportJWK(pair.publicKey);
    const payload = { client: this.credential(), method: "create", uri: "/ecdhe", requestId: this.requestId(), jwk: { kty, crv, x, y } };
    const message = await new CompactEncrypt(new TextEncoder().encode(JSON.stringify(payload)))
      .setProtectedHeader({ alg: "ECDH-ES+A256KW", enc: "A256GCM", kid: this.kid })
      .encrypt(this.staticKey);
    const { payload: signed } = await compactVerify(await this.post(message), this.verifyKey, { algorithms: ["ES256"] });
    const reply = JSON.parse(new TextDecoder().decode(signed)) as { status: number; reason?: string; key?: { uri: string; jwk: JWK } };
    if (reply.status !== 201 || !reply.key) throw new Error(`ECDHE refused: ${reply.status} ${reply.reason ?? ""}`);
    const key = Buffer.from(await deriveEphemeralKey(pair.privateKey, await importEcdhPublicKey(reply.key.jwk)));
    const h = Buffer.from(JSON.stringify({ alg: "dir", enc: "A256GCM", kid: reply.key.uri })).toString("base64url");
    return { uri: reply.key.uri, key, h, aad: Buffer.from(h, "ascii") };
  }

  /** The request payload of `method uri` with extra fields, credential and a fresh requestId. */
  payload(method: string, uri: string, fields: Record<string, unknown> = {}): Record<string, unknown> {
    return { client: this.credential(), method, uri, requestId: this.requestId(), ...fields };
  }

  /** One request on a channel through the session's transport; throws unless the reply status is 2xx. */
  async request(ch: KmsChannel, method: string, uri: string, fields: Record<string, unknown> = {}): Promise<KmsReply> {
    const reply = openReply(ch, await this.post(seal(ch, this.payload(method, uri, fields))));
    if (reply.status < 200 || reply.status > 299) throw new Error(`${method} ${uri}: ${reply.status} ${reply.reason ?? ""}`);
    return reply;
  }
}

/**
 * POSTs one KMS message for setup work (not hot loops), retrying while the KMS sheds it with HTTP 429
 * (a KMS just started on a loaded machine sheds on event-loop lag): up to `tries` times, 250 ms apart.
 *
 * @example
 * const reply = await (await postRetrying429(`${url}/kms/messages`, jwe)).text();
 */
export async function postRetrying429(url: string, body: string, tries = 40): Promise<Response> {
  for (let i = 1; ; i++) {
    const res = await fetch(url, { method: "POST", headers: { "content-type": JOSE_TYPE }, body });
    if (res.status !== 429 || i >= tries) return res;
    await res.arrayBuffer();
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** A common message (dir/A256GCM compact JWE) with node:crypto. */
export function seal(ch: KmsChannel, payload: unknown): string {
  const iv = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", ch.key, iv);
  cipher.setAAD(ch.aad);
  const ct = Buffer.concat([cipher.update(JSON.stringify(payload), "utf8"), cipher.final()]);
  return `${ch.h}..${iv.toString("base64url")}.${ct.toString("base64url")}.${cipher.getAuthTag().toString("base64url")}`;
}

/** Opens a common message on `ch`; throws when it does not decrypt. */
export function open(ch: KmsChannel, jwe: string): unknown {
  const [h, , iv, ct, tag] = jwe.split(".");
  const decipher = createDecipheriv("aes-256-gcm", ch.key, Buffer.from(iv!, "base64url"));
  decipher.setAAD(Buffer.from(h!, "ascii"));
  decipher.setAuthTag(Buffer.from(tag!, "base64url"));
  const pt = Buffer.concat([decipher.update(Buffer.from(ct!, "base64url")), decipher.final()]);
  return JSON.parse(pt.toString("utf8"));
}

/** The payload of a JWS, unverified (tells a JWS error apart in a hot loop). */
export function jwsPayload(jws: string): KmsReply {
  return JSON.parse(Buffer.from(jws.split(".")[1] ?? "", "base64url").toString("utf8")) as KmsReply;
}

/** A reply body: a common message on `ch` (5 parts) or a JWS error (3 parts, unverified). */
export function openReply(ch: KmsChannel, body: string): KmsReply {
  return (body.split(".").length === 5 ? open(ch, body) : jwsPayload(body)) as KmsReply;
}
