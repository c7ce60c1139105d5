import { importPKCS8, exportJWK, type JWK } from "jose";
import { constants, createPrivateKey, createPublicKey, sign, type KeyObject } from "node:crypto";
import { STATIC_KEY_ALGORITHMS, STATIC_SIGNING_ALGORITHM } from "../protocol/constants.js";

export type StaticKeyType = "EC" | "RSA";

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
  private readonly importedKeys = new Map<string, Promise<CryptoKey>>();

  private constructor(
    readonly kid: string,
    readonly type: StaticKeyType,
    readonly publicJwk: JWK,
    private readonly pkcs8Pem: string,
    private readonly signingKey: KeyObject,
  ) {}

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
    const pem = keyObject.export({ format: "pem", type: "pkcs8" }).toString();
    return new StaticKey(kid, type, publicJwk, pem, keyObject);
  }

  /** The key-management algorithms a request to this key may use (§2). */
  get keyManagementAlgorithms(): readonly string[] {
    return STATIC_KEY_ALGORITHMS[this.type];
  }

  get signingAlgorithm(): string {
    return STATIC_SIGNING_ALGORITHM[this.type];
  }

  /** A CryptoKey for one algorithm (WebCrypto keys are bound to theirs), imported once. */
  keyFor(alg: string): Promise<CryptoKey> {
    let key = this.importedKeys.get(alg);
    if (!key) {
      key = importPKCS8(this.pkcs8Pem, alg);
      this.importedKeys.set(alg, key);
    }
    return key;
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
