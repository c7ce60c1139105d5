import { exportJWK, generateKeyPair, importJWK, type JWK } from "jose";

/** The kinds of device key: EC P-256 (signs ES256) or RSA-2048 (signs PS256). */
export type DeviceKeyType = "ec" | "rsa";

/** The block-signing algorithm of a device key: ES256 for EC P-256, PS256 for RSA. */
export type DeviceKeyAlgorithm = "ES256" | "PS256";

/** A JWK that names its key (`kid` is required). */
export type KeyedJwk = JWK & { kid: string };

const RSA_PRIVATE = ["n", "e", "d", "p", "q", "dp", "dq", "qi"] as const;
const EC_PRIVATE = ["crv", "x", "y", "d"] as const;

/**
 * One device's entity key (PROTOCOL.md §7): the key pair a user's device signs GMBC blocks with
 * (and, later, unwraps group keys with). EC P-256 keys sign ES256, RSA keys sign PS256.
 *
 * `publicJwk` is what the KMS registers (`create /entities/keys`); `privateJwk` (also what
 * `toJSON()` returns) holds the private key and is SECRET: persist it only where the device's
 * secrets live (a 0600 file, an encrypted store), never send it anywhere. It carries no `alg`,
 * `use` or `key_ops`, so the same JWK can later be imported for ECDH-ES+A256KW or RSA-OAEP.
 *
 * @example
 * const device = await DeviceKey.generate({ type: "ec", kid: "alice-laptop" });
 * device.publicJwk   // { kty: "EC", crv: "P-256", x, y, kid: "alice-laptop" }
 * const saved = JSON.stringify(device); // the private JWK: keep it secret
 * const again = await DeviceKey.fromJwk(JSON.parse(saved));
 */
export class DeviceKey {
  /** The key's id, unique among its entity's keys: the `kid` of every block it signs. */
  readonly kid: string;
  /** The algorithm blocks are signed with. */
  readonly alg: DeviceKeyAlgorithm;
  /** The public members and `kid`: what the KMS registers and others verify with. */
  readonly publicJwk: Readonly<KeyedJwk>;
  /** The private key with `kid` (SECRET): for persistence and later key unwrapping. */
  readonly privateJwk: Readonly<KeyedJwk>;
  #signingKey?: Promise<CryptoKey>;

  private constructor(privateJwk: KeyedJwk) {
    this.kid = privateJwk.kid;
    this.privateJwk = Object.freeze({ ...privateJwk });
    if (privateJwk.kty === "RSA") {
      this.alg = "PS256";
      this.publicJwk = Object.freeze({ kty: "RSA", n: privateJwk.n, e: privateJwk.e, kid: privateJwk.kid });
    } else {
      this.alg = "ES256";
      this.publicJwk = Object.freeze({ kty: "EC", crv: "P-256", x: privateJwk.x, y: privateJwk.y, kid: privateJwk.kid });
    }
  }

  /**
   * Generates a new device key: EC P-256 (default) or RSA-2048. `kid` defaults to a random UUID.
   *
   * @example
   * const laptop = await DeviceKey.generate();                     // EC P-256, ES256
   * const phone = await DeviceKey.generate({ type: "rsa", kid: "bob-phone" }); // RSA-2048, PS256
   */
  static async generate(opts: { type?: DeviceKeyType; kid?: string } = {}): Promise<DeviceKey> {
    const type = opts.type ?? "ec";
    if (type !== "ec" && type !== "rsa") throw new TypeError(`device key type must be "ec" or "rsa", not '${String(type)}'`);
    const kid = opts.kid ?? globalThis.crypto.randomUUID();
    checkKid(kid);
    const { privateKey } =
      type === "ec"
        ? await generateKeyPair("ES256", { extractable: true })
        : await generateKeyPair("PS256", { modulusLength: 2048, extractable: true });
    const jwk = await exportJWK(privateKey);
    const members = type === "ec" ? (["kty", ...EC_PRIVATE] as const) : (["kty", ...RSA_PRIVATE] as const);
    const privateJwk: KeyedJwk = { kid };
    for (const m of members) if (jwk[m] !== undefined) (privateJwk as Record<string, unknown>)[m] = jwk[m];
    return new DeviceKey(privateJwk);
  }

  /**
   * Restores a device key from its private JWK (as `toJSON()` wrote it). Checks that it is an EC
   * P-256 or RSA (≥ 2048 bits) private key with a `kid` that imports; throws `TypeError` otherwise.
   *
   * @example
   * const device = await DeviceKey.fromJwk(JSON.parse(await readSecret("device.json")));
   */
  static async fromJwk(privateJwk: JWK): Promise<DeviceKey> {
    if (typeof privateJwk !== "object" || privateJwk === null) throw new TypeError("a device key must be a JWK object");
    const { kid, kty } = privateJwk;
    if (typeof kid !== "string") throw new TypeError("a device key JWK needs a 'kid'");
    checkKid(kid);
    const members = kty === "EC" ? EC_PRIVATE : kty === "RSA" ? RSA_PRIVATE : undefined;
    if (!members) throw new TypeError(`a device key must be EC P-256 or RSA, not kty '${String(kty)}'`);
    if (kty === "EC" && privateJwk.crv !== "P-256") throw new TypeError(`an EC device key must be on P-256, not '${String(privateJwk.crv)}'`);
    if (typeof privateJwk.d !== "string") throw new TypeError("a device key JWK must hold the private key ('d')");
    const clean: KeyedJwk = { kty, kid };
    for (const m of members) {
      const v = privateJwk[m];
      if (v === undefined) continue;
      if (typeof v !== "string") throw new TypeError(`device key member '${m}' must be a string`);
      (clean as Record<string, unknown>)[m] = v;
    }
    if (kty === "RSA" && modulusBits(String(clean.n ?? "")) < 2048) throw new TypeError("an RSA device key must be at least 2048 bits");
    const device = new DeviceKey(clean);
    try {
      await device.signingKey();
    } catch (e) {
      throw new TypeError(`the device key JWK does not import: ${e instanceof Error ? e.message : String(e)}`);
    }
    return device;
  }

  /**
   * The private key as a WebCrypto `CryptoKey` for signing under `alg` (imported once, then cached).
   *
   * @example
   * const jws = await new CompactSign(bytes).setProtectedHeader({ alg: device.alg, kid: device.kid }).sign(await device.signingKey());
   */
  signingKey(): Promise<CryptoKey> {
    if (!this.#signingKey) {
      const { kid: _kid, ...jwk } = this.privateJwk;
      const importing = importJWK(jwk, this.alg).then((k) => {
        if (k instanceof Uint8Array) throw new TypeError("the device key did not import as a CryptoKey");
        return k;
      });
      this.#signingKey = importing;
      importing.catch(() => {
        if (this.#signingKey === importing) this.#signingKey = undefined;
      });
    }
    return this.#signingKey;
  }

  /**
   * The private JWK (SECRET): `JSON.stringify(device)` writes it, `DeviceKey.fromJwk` reads it.
   *
   * @example
   * await writeFile(path, JSON.stringify(device), { mode: 0o600 });
   */
  toJSON(): KeyedJwk {
    return { ...this.privateJwk };
  }
}

function checkKid(kid: string): void {
  if (kid.length === 0 || kid.length > 256) throw new TypeError("a device key 'kid' must be 1..256 characters");
}

function modulusBits(n: string): number {
  if (!/^[A-Za-z0-9_-]+$/.test(n)) return 0;
  const raw = atob(n.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (n.length % 4)) % 4));
  let i = 0;
  while (i < raw.length && raw.charCodeAt(i) === 0) i++;
  if (i === raw.length) return 0;
  return (raw.length - i - 1) * 8 + Math.floor(Math.log2(raw.charCodeAt(i))) + 1;
}
