import { base64url, CompactEncrypt, compactDecrypt, decodeProtectedHeader, generalDecrypt, importJWK, type GeneralJWE, type JWK } from "jose";
import { CONTENT_ENCRYPTION } from "../protocol/constants.js";
import { KmsProtocolError } from "./errors.js";
import type { KmsClient } from "./kms-client.js";
import { isCanonicalBase64url } from "../protocol/jose/canonical-base64url.js";
import type { DeviceUnwrapAlgorithm } from "./device-key.js";

/**
 * What GroupKeys needs of a device key: its kid, and a way to unwrap GKs: `unwrappingKey(alg)`
 * (a DeviceKey has it; used when present, so a non-extractable key works) or its private JWK.
 */
export type DeviceKeyLike =
  | { readonly kid: string; unwrappingKey(alg: DeviceUnwrapAlgorithm): Promise<CryptoKey> }
  | { readonly kid: string; readonly privateJwk: JWK };

/** A Group Key (§9) as the SDK holds it after verifying and unwrapping it. */
export interface GroupKey {
  readonly uri: string;
  /** The block hash the GK is bound to, when bound. */
  readonly block?: string;
  readonly created: string;
  /** The 256-bit content key (A256GCM). Secret: never log or persist it unencrypted. */
  readonly key: Uint8Array;
}

interface SignedGk {
  uri?: unknown;
  creator?: unknown;
  created?: unknown;
  key?: unknown;
  block?: unknown;
}

/**
 * Group Keys on the client (§9): create, bind and fetch them, check the KMS's signature and that
 * each GK is the one asked for, unwrap it with this device's key, and encrypt or decrypt resources
 * with it (JWE compact, `dir`/A256GCM, `kid` = the GK's uri, so a recipient knows which GK to
 * fetch). Fetched GKs are cached in memory.
 *
 * @example
 * const gks = new GroupKeys(kms, { user: "alice@example.com", device, chains: groups });
 * const jwe = await gks.encryptFor(groupUri, new TextEncoder().encode("hello"));
 * const { plaintext } = await gks.decrypt(jwe); // by any entitled member
 */
export class GroupKeys {
  private readonly cache = new Map<string, GroupKey>();
  private readonly current = new Map<string, GroupKey>();
  private readonly rotating = new Map<string, Promise<GroupKey>>();

  constructor(
    private readonly kms: KmsClient,
    private readonly opts: {
      readonly user: string;
      readonly device: DeviceKeyLike;
      /** For encryptFor: the group's blocks as this client knows them (fetched incrementally). */
      readonly chains?: { fetch(groupUri: string): Promise<readonly { hash: string }[]> };
    },
  ) {}

  /** `create /gks` (optionally bound at `block`, a hash where the user is a member). */
  async create(options: { block?: string } = {}): Promise<GroupKey> {
    const reply = await this.kms.request("create", "/gks", options.block ? { block: options.block } : {}, { expect: 201 });
    const gk = await this.open(reply.gk, { block: options.block ?? null });
    this.cache.set(gk.uri, gk);
    return gk;
  }

  /** `update <gk uri>` with `block`: binds an unbound GK this user created. */
  async bind(gkUri: string, block: string): Promise<GroupKey> {
    const reply = await this.kms.request("update", gkUri, { block }, { expect: 200 });
    const gk = await this.open(reply.gk, { uri: gkUri, block });
    this.cache.set(gk.uri, gk);
    return gk;
  }

  /** `retrieve <gk uri>` for this user (cached after the first fetch). */
  async fetch(gkUri: string): Promise<GroupKey> {
    const cached = this.cache.get(gkUri);
    if (cached) return cached;
    const reply = await this.kms.request("retrieve", gkUri, { entity: this.opts.user }, { expect: 200 });
    const gk = await this.open(reply.gk, { uri: gkUri });
    this.cache.set(gk.uri, gk);
    return gk;
  }

  /** Encrypts a resource with a GK: compact JWE, `dir`/A256GCM, `kid` = the GK uri. */
  async encrypt(gk: GroupKey, plaintext: Uint8Array, contentType?: string): Promise<string> {
    return new CompactEncrypt(plaintext)
      .setProtectedHeader({ alg: "dir", enc: CONTENT_ENCRYPTION, kid: gk.uri, ...(contentType ? { cty: contentType } : {}) })
      .encrypt(gk.key);
  }

  /** Decrypts a resource: fetches (or reuses) the GK its `kid` names. */
  async decrypt(jwe: string): Promise<{ plaintext: Uint8Array; gk: GroupKey; contentType?: string }> {
    const header = decodeProtectedHeader(jwe);
    if (typeof header.kid !== "string") throw new KmsProtocolError("ERR_NO_KID", "the encrypted resource names no group key (no 'kid')");
    const gk = await this.fetch(header.kid);
    const { plaintext } = await compactDecrypt(jwe, gk.key, { keyManagementAlgorithms: ["dir"], contentEncryptionAlgorithms: [CONTENT_ENCRYPTION] });
    return { plaintext, gk, ...(typeof header.cty === "string" ? { contentType: header.cty } : {}) };
  }

  /**
   * Encrypts for a group with the GK bound to the group's current tail, creating one when the
   * membership changed since the last use: removed members cannot read what is encrypted after
   * their removal (rotation).
   */
  async encryptFor(groupUri: string, plaintext: Uint8Array, contentType?: string): Promise<string> {
    return this.encrypt(await this.currentKey(groupUri), plaintext, contentType);
  }

  /** The GK encryptFor uses for a group now (a new one after any membership change). */
  async currentKey(groupUri: string): Promise<GroupKey> {
    if (!this.opts.chains) throw new TypeError("GroupKeys needs `chains` (a Groups instance) for encryptFor");
    const blocks = await this.opts.chains.fetch(groupUri);
    const tail = blocks[blocks.length - 1]?.hash;
    if (!tail) throw new KmsProtocolError("ERR_EMPTY_CHAIN", `no blocks known for ${groupUri}`);
    const current = this.current.get(groupUri);
    if (current?.block === tail) return current;
    // Concurrent encryptFor calls for one group share one new GK rather than each making one.
    const key = `${groupUri} ${tail}`;
    let pending = this.rotating.get(key);
    if (!pending) {
      pending = this.create({ block: tail })
        .then((gk) => {
          this.current.set(groupUri, gk);
          return gk;
        })
        .finally(() => this.rotating.delete(key));
      this.rotating.set(key, pending);
    }
    return pending;
  }

  /** Verifies the KMS signature, checks uri/block/creator, unwraps with this device's key. */
  /** `expected.block`: a hash it must be bound to, `null` for "must be unbound", undefined for "either". */
  private async open(jws: unknown, expected: { uri?: string; block?: string | null }): Promise<GroupKey> {
    if (typeof jws !== "string") throw new KmsProtocolError("ERR_GK_REPLY", "the KMS reply has no 'gk'");
    // §10: one spelling per signed GK, as for blocks (a relay must not re-spell what the KMS signed).
    if (!jws.split(".").every(isCanonicalBase64url)) {
      throw new KmsProtocolError("ERR_GK_NOT_CANONICAL", "the GK's base64url is not canonical (decoding and re-encoding gives other text)");
    }
    const kms = await this.kms.discover();
    const gk = (await this.kms.verifyKmsSignature(jws)) as SignedGk;
    if (typeof gk.uri !== "string" || gk.creator !== kms.uri || typeof gk.created !== "string") {
      throw new KmsProtocolError("ERR_GK_INVALID", "the GK lacks uri, creator or created, or its creator is not this KMS");
    }
    if (expected.uri !== undefined && gk.uri !== expected.uri) {
      throw new KmsProtocolError("ERR_GK_MISMATCH", `asked for ${expected.uri} but the KMS returned ${gk.uri}`);
    }
    if (expected.block !== undefined && (gk.block ?? null) !== expected.block) {
      throw new KmsProtocolError("ERR_GK_MISMATCH", `the GK is bound to ${String(gk.block)} but ${expected.block} was asked for`);
    }
    const key = await this.unwrap(gk.key, gk.uri);
    return { uri: gk.uri, created: gk.created, key, ...(typeof gk.block === "string" ? { block: gk.block } : {}) };
  }

  private async unwrap(wrapped: unknown, gkUri: string): Promise<Uint8Array> {
    const jwe = wrapped as GeneralJWE;
    const mine = Array.isArray(jwe?.recipients) ? jwe.recipients.filter((r) => r.header?.kid === this.opts.device.kid) : [];
    if (mine.length === 0) {
      throw new KmsProtocolError("ERR_GK_NOT_FOR_DEVICE", `the GK is not wrapped to this device (kid '${this.opts.device.kid}'): is the device registered?`);
    }
    const alg = mine[0]!.header!.alg!;
    if (!["ECDH-ES+A256KW", "RSA-OAEP", "RSA-OAEP-256"].includes(alg)) {
      throw new KmsProtocolError("ERR_GK_ALG", `unexpected key wrapping algorithm '${alg}'`);
    }
    const device = this.opts.device;
    let unwrapping: CryptoKey | Uint8Array;
    try {
      if ("unwrappingKey" in device && typeof device.unwrappingKey === "function") {
        unwrapping = await device.unwrappingKey(alg as DeviceUnwrapAlgorithm);
      } else {
        const { kid: _k, alg: _a, key_ops: _o, use: _u, ...jwk } = (device as { privateJwk: JWK }).privateJwk;
        unwrapping = await importJWK(jwk, alg);
      }
    } catch (e) {
      throw new KmsProtocolError("ERR_GK_UNWRAP", `this device's key cannot unwrap '${alg}': ${e instanceof Error ? e.message : String(e)}`);
    }
    let plaintext: Uint8Array;
    try {
      ({ plaintext } = await generalDecrypt({ ...jwe, recipients: mine }, unwrapping, {
        keyManagementAlgorithms: [alg],
        contentEncryptionAlgorithms: [CONTENT_ENCRYPTION],
      }));
    } catch {
      throw new KmsProtocolError("ERR_GK_UNWRAP", "the GK does not unwrap with this device's key");
    }
    let k: { kty?: unknown; alg?: unknown; kid?: unknown; k?: unknown };
    try {
      k = JSON.parse(new TextDecoder().decode(plaintext)) as typeof k;
    } catch {
      throw new KmsProtocolError("ERR_GK_INVALID", "the unwrapped GK is not a JWK");
    }
    if (k.kty !== "oct" || k.alg !== CONTENT_ENCRYPTION || k.kid !== gkUri || typeof k.k !== "string") {
      throw new KmsProtocolError("ERR_GK_INVALID", "the unwrapped GK is not an A256GCM oct key for this GK uri");
    }
    const bytes = base64url.decode(k.k);
    if (bytes.length !== 32) throw new KmsProtocolError("ERR_GK_INVALID", "the unwrapped GK is not 256 bits");
    return bytes;
  }
}
