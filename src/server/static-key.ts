import { exportJWK, calculateJwkThumbprint, type JWK } from "jose";
import { constants, createPrivateKey, createPublicKey, sign, type KeyObject } from "node:crypto";
import { STATIC_KEY_ALGORITHMS, STATIC_SIGNING_ALGORITHM } from "../protocol/constants.js";
import { decryptCompactJwe } from "./jwe/decrypt-compact.js";

export type StaticKeyType = "EC" | "RSA";

/**
 * How long after its rotation a previous static key still decrypts key-agreement requests
 * (clients that discovered the KMS before the rotation). Signatures are not affected: previous
 * public keys stay published in `previousKeys` until the operator retires them. A constant, not a
 * config key, on purpose (issue #5): promote it to config.ts if operators need to tune it.
 */
export const PREVIOUS_KEY_DECRYPTION_GRACE_MS = 24 * 3600 * 1000;

/** A static key that was rotated out, with the time it was (src/server/data-dir.ts archives them). */
export interface PreviousStaticKey {
  readonly key: StaticKey;
  readonly retiredAt: Date;
}

/**
 * The KMS static key (§2): decrypts key-agreement requests, signs key-agreement replies, JWS
 * errors and (later) blocks and GKs. Its public JWK carries `kid` = the KMS URI and the `x5c`
 * chain, with no `alg` and no `use`.
 *
 * @example
 * const key = await StaticKey.fromPkcs8(pkcs8Der, "kms://kms.example.com", [leafB64, caB64]);
 * const jws = await key.sign({ status: 401, reason: "unknown ephemeral key" });
 */
export class StaticKey {
  private previous: readonly PreviousStaticKey[] = [];
  private now: () => number = Date.now;

  private constructor(
    readonly kid: string,
    readonly type: StaticKeyType,
    readonly publicJwk: JWK,
    private readonly signingKey: KeyObject,
  ) {}

  /**
   * Attaches the keys this one replaced (static key rotation, docs/static-key-rotation.md), newest
   * first. They never sign; they are published for verification (`previousPublicJwks`) and decrypt
   * key agreement for {@link PREVIOUS_KEY_DECRYPTION_GRACE_MS} after their rotation. Keys equal to
   * this one (a rotation that crashed after archiving) are dropped. Call once, at start-up.
   */
  async setPreviousKeys(previous: readonly PreviousStaticKey[], now: () => number = Date.now): Promise<void> {
    const self = await calculateJwkThumbprint(this.publicJwk);
    const seen = new Set([self]);
    const kept: PreviousStaticKey[] = [];
    for (const p of [...previous].sort((a, b) => b.retiredAt.getTime() - a.retiredAt.getTime())) {
      if (p.key.kid !== this.kid) throw new Error(`a previous static key is for ${p.key.kid}, not ${this.kid}`);
      const t = await calculateJwkThumbprint(p.key.publicJwk);
      if (seen.has(t)) continue;
      seen.add(t);
      kept.push(p);
    }
    this.previous = kept;
    this.now = now;
  }

  /** Public JWKs (kid and x5c included) of the previous keys, newest first: discovery's `previousKeys`. */
  get previousPublicJwks(): JWK[] {
    return this.previous.map((p) => p.key.publicJwk);
  }

  /**
   * Decrypts a key-agreement request (a compact JWE to the static key, §5) with this key, then
   * with previous keys of a fitting type still in their grace period: every generation has the
   * same kid, so the request cannot say which one it was made for. undefined when none decrypts.
   *
   * @example
   * const plaintext = staticKey.decryptKeyAgreement(message, header); // Buffer | undefined
   */
  decryptKeyAgreement(jwe: string, header: Readonly<Record<string, unknown>>): Buffer | undefined {
    const alg = header.alg as string;
    for (const key of this.decryptingKeys()) {
      if (!key.keyManagementAlgorithms.includes(alg)) continue;
      try {
        return decryptCompactJwe(jwe, header, key.signingKey);
      } catch {
        // not this key: try the next
      }
    }
    return undefined;
  }

  /**
   * Key-management algorithms a key-agreement request may use now: this key's, plus those of
   * previous keys still in their grace period (after an EC → RSA rotation, clients that still
   * hold the EC certificate send ECDH-ES+A256KW for a while).
   */
  get acceptedKeyManagementAlgorithms(): readonly string[] {
    return [...new Set(this.decryptingKeys().flatMap((k) => k.keyManagementAlgorithms))];
  }

  /** This key, then previous keys still within their decryption grace period. */
  private decryptingKeys(): StaticKey[] {
    const now = this.now();
    return [this, ...this.previous.filter((p) => now - p.retiredAt.getTime() < PREVIOUS_KEY_DECRYPTION_GRACE_MS).map((p) => p.key)];
  }

  static async fromPkcs8(pkcs8Der: Uint8Array, kid: string, x5c: string[]): Promise<StaticKey> {
    const keyObject = createPrivateKey({ key: Buffer.from(pkcs8Der), format: "der", type: "pkcs8" });
    const kind = keyObject.asymmetricKeyType;
    const type: StaticKeyType = kind === "ec" ? "EC" : kind === "rsa" ? "RSA" : unsupported(kind);
    if (type === "EC" && keyObject.asymmetricKeyDetails?.namedCurve !== "prime256v1") {
      throw new Error("the EC static key must be on P-256");
    }
    if (type === "RSA" && (keyObject.asymmetricKeyDetails?.modulusLength ?? 0) < 2048) {
      throw new Error("the RSA static key must be at least 2048 bits");
    }
    const pub = await exportJWK(createPublicKey(keyObject));
    const publicJwk: JWK = { ...pub, kid, x5c };
    return new StaticKey(kid, type, publicJwk, keyObject);
  }

  /** The key-management algorithms a request to this key may use (§2). */
  get keyManagementAlgorithms(): readonly string[] {
    return STATIC_KEY_ALGORITHMS[this.type];
  }

  get signingAlgorithm(): string {
    return STATIC_SIGNING_ALGORITHM[this.type];
  }

  /**
   * Signs a JSON payload as a compact JWS with header `{alg, kid}` (ES256 or RS256). On node:crypto
   * with the key object held once: every ECDHE reply, JWS error, genesis block and GK is signed
   * here, and jose's WebCrypto path cost twice as much per signature (bench/RESULTS.md).
   * test/server/static-key.test.ts checks that jose verifies what this signs.
   */
  async sign(payload: unknown): Promise<string> {
    const input = `${this.protectedHeader}.${Buffer.from(JSON.stringify(payload)).toString("base64url")}`;
    const signature =
      this.type === "EC"
        ? sign("sha256", Buffer.from(input, "ascii"), { key: this.signingKey, dsaEncoding: "ieee-p1363" })
        : sign("sha256", Buffer.from(input, "ascii"), { key: this.signingKey, padding: constants.RSA_PKCS1_PADDING });
    return `${input}.${signature.toString("base64url")}`;
  }

  private get protectedHeader(): string {
    return Buffer.from(JSON.stringify({ alg: this.signingAlgorithm, kid: this.kid })).toString("base64url");
  }
}

function unsupported(kind: string | undefined): never {
  throw new Error(`unsupported static key type '${kind}': EC P-256 or RSA >= 2048`);
}
