/**
 * Two `keyward serve` processes ("node A" and "node B") on one data dir (same master key, static
 * key and configuration) sharing one PostgreSQL schema (`KEYWARD_STORE_URL=postgres://…?schema=…`),
 * plus the clients that send the messages of one channel to either node:
 *  - {@link RoutingTransport}: an SDK transport whose destination can be switched between requests;
 *  - {@link RawChannel}: a hand-driven channel (ECDHE and common messages) to replay or inspect
 *    exact messages on any node.
 */
import { CompactEncrypt, compactVerify, exportJWK, importJWK, type JWK } from "jose";
import { decryptCommonMessage, encryptCommonMessage } from "../../src/protocol/jose/common-message.js";
import { deriveEphemeralKey, generateEphemeralKeyPair, importEcdhPublicKey } from "../../src/protocol/jose/ephemeral-key.js";
import type { KmsTransport } from "../../src/client/index.js";
import { adminQuery, freshSchema, TEST_POSTGRES_URL } from "./postgres.js";
import { FreshConnectionTransport, initTestDataDir, killServe, spawnServe, type ServeProcess, type TestDataDir } from "./spawn-kms.js";

export interface TwoNodes {
  readonly data: TestDataDir;
  readonly schema: string;
  /** The `KEYWARD_STORE_URL` both nodes use. */
  readonly storeUrl: string;
  readonly a: ServeProcess;
  readonly b: ServeProcess;
  /** Rows of a query on the shared schema (`{schema}` in `sql` is replaced by the quoted schema name). */
  query<R extends Record<string, unknown>>(sql: string, values?: unknown[]): Promise<R[]>;
  /** Stops both nodes (by PID), removes the data dir and drops the schema. Idempotent. */
  close(): Promise<void>;
}

/** Starts node A and node B together (they migrate the fresh schema concurrently). */
export async function startTwoNodes(opts: { workers?: number } = {}): Promise<TwoNodes> {
  const { schema, dropSchema } = freshSchema();
  const u = new URL(TEST_POSTGRES_URL);
  u.searchParams.set("schema", schema);
  const storeUrl = u.toString();
  const data = await initTestDataDir();
  const env = { KEYWARD_STORE_URL: storeUrl };
  const started = await Promise.allSettled([0, 1].map(() => spawnServe(data, { workers: opts.workers ?? 1, env })));
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    for (const s of started) if (s.status === "fulfilled") await killServe(s.value);
    await data.close();
    await dropSchema();
  };
  const failed = started.find((s): s is PromiseRejectedResult => s.status === "rejected");
  if (failed) {
    await close();
    throw failed.reason;
  }
  const [a, b] = started.map((s) => (s as PromiseFulfilledResult<ServeProcess>).value) as [ServeProcess, ServeProcess];
  return {
    data,
    schema,
    storeUrl,
    a,
    b,
    query: async <R extends Record<string, unknown>>(sql: string, values: unknown[] = []) =>
      (await adminQuery<R>(sql.replaceAll("{schema}", `"${schema}"`), values)).rows,
    close,
  };
}

/** The protected header of a compact JOSE message. */
export function protectedHeader(compact: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(compact.split(".")[0]!, "base64url").toString("utf8")) as Record<string, unknown>;
}

/**
 * An SDK transport sending each message to the current `target` origin (one fresh TCP connection
 * per request), logging where every message went and whether it was key agreement (kid = the KMS
 * static key) or a common message on a channel.
 */
export class RoutingTransport implements KmsTransport {
  readonly log: { origin: string; kind: "ecdhe" | "channel"; kid: string }[] = [];
  private readonly transports = new Map<string, FreshConnectionTransport>();
  constructor(
    public target: string,
    private readonly staticKid: string,
  ) {}

  private to(origin: string): FreshConnectionTransport {
    let t = this.transports.get(origin);
    if (!t) this.transports.set(origin, (t = new FreshConnectionTransport(origin)));
    return t;
  }

  send(message: string): Promise<string> {
    const kid = String(protectedHeader(message).kid);
    this.log.push({ origin: this.target, kind: kid === this.staticKid ? "ecdhe" : "channel", kid });
    return this.to(this.target).send(message);
  }

  discover(): Promise<unknown> {
    return this.to(this.target).discover();
  }
}

/** A reply: a common message (JWE, decrypted with the channel key) or a JWS (verified with the static key). */
export interface RawReply {
  readonly form: "jwe" | "jws";
  readonly payload: Record<string, unknown>;
}

/**
 * A channel driven by hand: ECDHE to one node, then common messages built here and sent to any
 * node, the exact bytes kept so that they can be replayed elsewhere.
 */
export class RawChannel {
  key?: Uint8Array;
  uri?: string;
  private jwk?: JWK;
  readonly clientId = `two-nodes-${crypto.randomUUID()}`;

  constructor(
    private readonly token: () => Promise<string>,
    readonly user: string,
  ) {}

  private async staticJwk(origin: string): Promise<JWK> {
    if (!this.jwk) this.jwk = ((await (await fetch(`${origin}/.well-known/kms`)).json()) as { jwk: JWK }).jwk;
    return this.jwk;
  }

  private async credential() {
    return { clientId: this.clientId, credential: { userId: this.user, bearer: await this.token() } };
  }

  /** Opens the channel with ECDHE on `origin`; returns the verified reply. */
  async open(origin: string): Promise<Record<string, unknown>> {
    const jwk = await this.staticJwk(origin);
    const { x5c: _x, ...bare } = jwk;
    const pair = await generateEphemeralKeyPair();
    const { kty, crv, x, y } = await exportJWK(pair.publicKey);
    const payload = { client: await this.credential(), method: "create", uri: "/ecdhe", requestId: crypto.randomUUID(), jwk: { kty, crv, x, y } };
    const alg = jwk.kty === "EC" ? "ECDH-ES+A256KW" : "RSA-OAEP-256";
    const message = await new CompactEncrypt(new TextEncoder().encode(JSON.stringify(payload)))
      .setProtectedHeader({ alg, enc: "A256GCM", kid: jwk.kid! })
      .encrypt(await importJWK(bare, alg));
    const reply = await this.send(origin, message);
    if (reply.form !== "jws") throw new Error("the ECDHE reply is not a JWS");
    if (reply.payload.status === 201) {
      const key = reply.payload.key as { uri: string; jwk: JWK };
      this.uri = key.uri;
      this.key = await deriveEphemeralKey(pair.privateKey, await importEcdhPublicKey(key.jwk));
    }
    return reply.payload;
  }

  /** A common message on this channel (a fresh requestId unless given in `fields`). */
  async seal(fields: Record<string, unknown>): Promise<{ message: string; requestId: unknown }> {
    if (!this.key || !this.uri) throw new Error("no channel: open() first");
    const payload = { client: await this.credential(), requestId: crypto.randomUUID(), ...fields };
    return { message: await encryptCommonMessage(this.key, this.uri, payload), requestId: payload.requestId };
  }

  /** POSTs `message` to `origin`; decrypts a JWE reply with the channel key, verifies a JWS one. */
  async send(origin: string, message: string): Promise<RawReply> {
    const res = await fetch(`${origin}/kms/messages`, { method: "POST", headers: { "content-type": "application/jose" }, body: message });
    const body = await res.text();
    if (res.status !== 200 && res.status !== 400) throw new Error(`HTTP ${res.status} from ${origin}: ${body.slice(0, 200)}`);
    if (body.split(".").length === 3) {
      const jwk = await this.staticJwk(origin);
      const { x5c: _x, ...bare } = jwk;
      const { payload } = await compactVerify(body, await importJWK(bare, jwk.kty === "EC" ? "ES256" : "RS256"));
      return { form: "jws", payload: JSON.parse(new TextDecoder().decode(payload)) as Record<string, unknown> };
    }
    return { form: "jwe", payload: (await decryptCommonMessage(this.key!, body)).payload as Record<string, unknown> };
  }

  /** Seals `fields` and sends them to `origin`. */
  async request(origin: string, fields: Record<string, unknown>): Promise<RawReply & { message: string }> {
    const { message } = await this.seal(fields);
    return { ...(await this.send(origin, message)), message };
  }
}
