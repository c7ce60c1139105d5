import { exportJWK, generateKeyPair, importJWK, type JWK } from "jose";

/** The kinds of device key: EC P-256 (signs ES256) or RSA-2048 (signs PS256). */
export type DeviceKeyType = "ec" | "rsa";

/** The block-signing algorithm of a device key: ES256 for EC P-256, PS256 for RSA. */
export type DeviceKeyAlgorithm = "ES256" | "PS256";

/** A JWK that names its key (`kid` is required). */
export type KeyedJwk = JWK & { kid: string };

/** The key-wrapping algorithms a KMS may wrap a GK to a device key with (§9). */
export type DeviceUnwrapAlgorithm = "ECDH-ES+A256KW" | "RSA-OAEP" | "RSA-OAEP-256";

/**
 * A device key held as WebCrypto `CryptoKey`s, private halves non-extractable: what a browser
 * keeps in IndexedDB (a structured clone of a `CryptoKey` stays a `CryptoKey`, and a
 * non-extractable one can be used but never read out, not even by script on the page).
 * WebCrypto binds a key to one algorithm, so one key pair appears twice: `privateKey` signs
 * blocks (ECDSA P-256 / RSA-PSS SHA-256), `unwrappingKey` unwraps GKs (ECDH P-256 /
 * RSA-OAEP SHA-256) and is the same private key.
 */
export interface DeviceCryptoKeyPair {
  readonly kid: string;
  /** ECDSA P-256 or RSA-PSS (SHA-256, ≥ 2048 bits) public key (public keys are always extractable). */
  readonly publicKey: CryptoKey;
  /** The matching private key, usage `sign`. */
  readonly privateKey: CryptoKey;
  /** The same private key for GK unwrapping: ECDH P-256 (`deriveBits`) or RSA-OAEP SHA-256 (`decrypt`). Without it, GKs do not unwrap. */
  readonly unwrappingKey?: CryptoKey;
}

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
 *
 * In a browser, hold it as non-extractable CryptoKeys instead (script on the page can use the
 * key but never read it out), persisted in IndexedDB:
 * const web = await DeviceKey.generate({ extractable: false });
 * await idbPut("device", web.cryptoKeys);
 * const reloaded = await DeviceKey.fromCryptoKeyPair(await idbGet("device"));
 */
export class DeviceKey {
  /** The key's id, unique among its entity's keys: the `kid` of every block it signs. */
  readonly kid: string;
  /** The algorithm blocks are signed with. */
  readonly alg: DeviceKeyAlgorithm;
  /** The public members and `kid`: what the KMS registers and others verify with. */
  readonly publicJwk: Readonly<KeyedJwk>;
  /**
   * Whether the private key can be read out: `true` for a key held as a JWK (`privateJwk`,
   * `toJSON()`), `false` for one held as non-extractable CryptoKeys (`cryptoKeys`).
   */
  readonly extractable: boolean;
  readonly #privateJwk?: Readonly<KeyedJwk>;
  readonly #cryptoKeys?: DeviceCryptoKeyPair;
  #signingKey?: Promise<CryptoKey>;
  readonly #unwrappingKeys = new Map<DeviceUnwrapAlgorithm, Promise<CryptoKey>>();

  private constructor(key: { privateJwk: KeyedJwk } | { publicJwk: KeyedJwk; cryptoKeys: DeviceCryptoKeyPair }) {
    const jwk = "privateJwk" in key ? key.privateJwk : key.publicJwk;
    this.kid = jwk.kid;
    if ("privateJwk" in key) {
      this.#privateJwk = Object.freeze({ ...key.privateJwk });
      this.extractable = true;
    } else {
      this.#cryptoKeys = Object.freeze({ ...key.cryptoKeys });
      this.#signingKey = Promise.resolve(key.cryptoKeys.privateKey);
      this.extractable = false;
    }
    if (jwk.kty === "RSA") {
      this.alg = "PS256";
      this.publicJwk = Object.freeze({ kty: "RSA", n: jwk.n, e: jwk.e, kid: jwk.kid });
    } else {
      this.alg = "ES256";
      this.publicJwk = Object.freeze({ kty: "EC", crv: "P-256", x: jwk.x, y: jwk.y, kid: jwk.kid });
    }
  }

  /**
   * The private key with `kid` (SECRET): for persistence and key unwrapping. Only for an
   * extractable key; for one held as non-extractable CryptoKeys it throws `TypeError` (there is
   * no JWK to give: persist `cryptoKeys` instead).
   *
   * @example
   * if (device.extractable) await writeFile(path, JSON.stringify(device.privateJwk), { mode: 0o600 });
   */
  get privateJwk(): Readonly<KeyedJwk> {
    if (!this.#privateJwk) throw new TypeError(`device key '${this.kid}' is non-extractable: it has no private JWK (persist device.cryptoKeys, e.g. in IndexedDB)`);
    return this.#privateJwk;
  }

  /**
   * The CryptoKeys of a non-extractable device key, to persist as they are (IndexedDB stores
   * CryptoKeys) and restore with {@link DeviceKey.fromCryptoKeyPair}. `undefined` for a key held as a JWK.
   *
   * @example
   * await idbPut("device", device.cryptoKeys);           // non-extractable CryptoKeys
   * const again = await DeviceKey.fromCryptoKeyPair(await idbGet("device"));
   */
  get cryptoKeys(): DeviceCryptoKeyPair | undefined {
    return this.#cryptoKeys;
  }

  /**
   * Generates a new device key: EC P-256 (default) or RSA-2048. `kid` defaults to a random UUID.
   *
   * With `extractable: false` the key is held as non-extractable CryptoKeys (`cryptoKeys`, for
   * IndexedDB) and has no `privateJwk`. WebCrypto cannot make one key usable for two
   * algorithms, so the pair is generated once, and its private JWK, read out once, is imported
   * twice as non-extractable (signing and unwrapping) and then dropped: the private key exists
   * in readable form only inside this call.
   *
   * @example
   * const laptop = await DeviceKey.generate();                     // EC P-256, ES256
   * const phone = await DeviceKey.generate({ type: "rsa", kid: "bob-phone" }); // RSA-2048, PS256
   * const browser = await DeviceKey.generate({ extractable: false }); // store browser.cryptoKeys in IndexedDB
   */
  static async generate(opts: { type?: DeviceKeyType; kid?: string; extractable?: boolean } = {}): Promise<DeviceKey> {
    const type = opts.type ?? "ec";
    if (type !== "ec" && type !== "rsa") throw new TypeError(`device key type must be "ec" or "rsa", not '${String(type)}'`);
    const kid = opts.kid ?? globalThis.crypto.randomUUID();
    checkKid(kid);
    const { privateKey, publicKey } =
      type === "ec"
        ? await generateKeyPair("ES256", { extractable: true })
        : await generateKeyPair("PS256", { modulusLength: 2048, extractable: true });
    const jwk = await exportJWK(privateKey);
    const members = type === "ec" ? (["kty", ...EC_PRIVATE] as const) : (["kty", ...RSA_PRIVATE] as const);
    const privateJwk: KeyedJwk = { kid };
    for (const m of members) if (jwk[m] !== undefined) (privateJwk as Record<string, unknown>)[m] = jwk[m];
    if (opts.extractable !== false) return new DeviceKey({ privateJwk });
    const { kid: _kid, ...bare } = privateJwk;
    const alg = type === "ec" ? "ES256" : "PS256";
    const cryptoKeys: DeviceCryptoKeyPair = {
      kid,
      publicKey,
      privateKey: await importPrivate(bare, alg),
      unwrappingKey: await importPrivate(bare, type === "ec" ? "ECDH-ES+A256KW" : "RSA-OAEP-256"),
    };
    return new DeviceKey({ publicJwk: publicJwkOf(privateJwk), cryptoKeys });
  }

  /**
   * Restores a device key held as WebCrypto CryptoKeys (as `cryptoKeys` gave them, or a pair the
   * application made itself, e.g. reloaded from IndexedDB). Checks, and throws `TypeError`
   * otherwise: `publicKey` is an ECDSA P-256 or RSA-PSS SHA-256 (≥ 2048 bits) public key,
   * `privateKey` a private key of the same algorithm with usage `sign`, and the two are one pair
   * (a signature by one verifies with the other); `unwrappingKey`, when given, is ECDH P-256
   * (`deriveBits`) or RSA-OAEP SHA-256 (`decrypt`) and is the same key (an agreement or
   * decryption round trip with the public key). A mixed-up or tampered store is refused here,
   * not at the first block or GK.
   *
   * @example
   * const stored = await idbGet("device");               // { kid, publicKey, privateKey, unwrappingKey }
   * const device = stored ? await DeviceKey.fromCryptoKeyPair(stored) : await DeviceKey.generate({ extractable: false });
   */
  static async fromCryptoKeyPair(keys: DeviceCryptoKeyPair): Promise<DeviceKey> {
    if (typeof keys !== "object" || keys === null) throw new TypeError("a device key pair must be an object { kid, publicKey, privateKey, unwrappingKey? }");
    const { kid, publicKey, privateKey, unwrappingKey } = keys;
    if (typeof kid !== "string") throw new TypeError("a device key pair needs a 'kid'");
    checkKid(kid);
    if (!isCryptoKey(publicKey) || publicKey.type !== "public") throw new TypeError("'publicKey' must be a public CryptoKey");
    if (!isCryptoKey(privateKey) || privateKey.type !== "private") throw new TypeError("'privateKey' must be a private CryptoKey");
    const kind = signingKind(publicKey.algorithm);
    if (!kind) throw new TypeError(`'publicKey' must be ECDSA P-256 or RSA-PSS SHA-256 (≥ 2048 bits), not ${describe(publicKey.algorithm)}`);
    if (signingKind(privateKey.algorithm) !== kind || !sameRsaModulusLength(publicKey.algorithm, privateKey.algorithm)) {
      throw new TypeError(`'privateKey' (${describe(privateKey.algorithm)}) does not match 'publicKey' (${describe(publicKey.algorithm)})`);
    }
    if (!privateKey.usages.includes("sign")) throw new TypeError("'privateKey' must allow usage 'sign'");
    const subtle = globalThis.crypto.subtle;
    const signParams = kind === "ec" ? { name: "ECDSA", hash: "SHA-256" } : { name: "RSA-PSS", saltLength: 32 };
    const challenge = globalThis.crypto.getRandomValues(new Uint8Array(32));
    let paired: boolean;
    try {
      paired = await subtle.verify(signParams, publicKey, await subtle.sign(signParams, privateKey, challenge), challenge);
    } catch (e) {
      throw new TypeError(`the device key pair does not sign: ${e instanceof Error ? e.message : String(e)}`);
    }
    if (!paired) throw new TypeError("'privateKey' and 'publicKey' are not one key pair");
    let exported: JWK;
    try {
      exported = await exportJWK(publicKey);
    } catch {
      throw new TypeError("'publicKey' does not export as a JWK");
    }
    const publicJwk = publicJwkOf({ ...exported, kid });
    if (unwrappingKey !== undefined) await checkUnwrappingKey(kind, unwrappingKey, publicJwk);
    return new DeviceKey({
      publicJwk,
      cryptoKeys: { kid, publicKey, privateKey, ...(unwrappingKey !== undefined ? { unwrappingKey } : {}) },
    });
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
    const device = new DeviceKey({ privateJwk: clean });
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
      const { kid: _kid, ...jwk } = this.privateJwk; // only reached for a JWK-held key: CryptoKeys set #signingKey
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
   * The private key as a WebCrypto `CryptoKey` for unwrapping a GK wrapped with `alg` (§9): the
   * JWK imported for it (cached), or the non-extractable `unwrappingKey`. Throws `TypeError` when
   * this device key cannot unwrap with `alg` (an EC key and an RSA algorithm, an RSA-OAEP SHA-1
   * wrap for an RSA-OAEP-256 CryptoKey, or a CryptoKey pair without `unwrappingKey`).
   *
   * @example
   * const { plaintext } = await generalDecrypt(jwe, await device.unwrappingKey("ECDH-ES+A256KW"));
   */
  unwrappingKey(alg: DeviceUnwrapAlgorithm): Promise<CryptoKey> {
    const cached = this.#unwrappingKeys.get(alg);
    if (cached) return cached;
    const wantsEc = alg === "ECDH-ES+A256KW";
    if (wantsEc !== (this.publicJwk.kty === "EC") || !["ECDH-ES+A256KW", "RSA-OAEP", "RSA-OAEP-256"].includes(alg)) {
      return Promise.reject(new TypeError(`a ${this.publicJwk.kty} device key cannot unwrap '${String(alg)}'`));
    }
    let importing: Promise<CryptoKey>;
    if (this.#privateJwk) {
      const { kid: _kid, ...jwk } = this.#privateJwk;
      importing = importPrivate(jwk, alg);
    } else {
      const key = this.#cryptoKeys?.unwrappingKey;
      if (!key) return Promise.reject(new TypeError(`device key '${this.kid}' has no unwrapping key: pass 'unwrappingKey' to fromCryptoKeyPair`));
      const hash = (key.algorithm as { hash?: { name?: string } }).hash?.name;
      if (!wantsEc && hash !== (alg === "RSA-OAEP" ? "SHA-1" : "SHA-256")) {
        return Promise.reject(new TypeError(`device key '${this.kid}' unwraps RSA-OAEP with ${String(hash)}, not '${alg}'`));
      }
      importing = Promise.resolve(key);
    }
    this.#unwrappingKeys.set(alg, importing);
    importing.catch(() => this.#unwrappingKeys.delete(alg));
    return importing;
  }

  /**
   * The private JWK (SECRET): `JSON.stringify(device)` writes it, `DeviceKey.fromJwk` reads it. A
   * non-extractable key throws `TypeError` here (it has no JSON form: persist `cryptoKeys`).
   *
   * @example
   * await writeFile(path, JSON.stringify(device), { mode: 0o600 });
   */
  toJSON(): KeyedJwk {
    return { ...this.privateJwk };
  }
}

async function importPrivate(jwk: JWK, alg: string): Promise<CryptoKey> {
  const key = await importJWK(jwk, alg, { extractable: false });
  if (key instanceof Uint8Array) throw new TypeError("the device key did not import as a CryptoKey");
  return key;
}

function publicJwkOf(jwk: JWK & { kid: string }): KeyedJwk {
  return jwk.kty === "RSA" ? { kty: "RSA", n: jwk.n, e: jwk.e, kid: jwk.kid } : { kty: "EC", crv: "P-256", x: jwk.x, y: jwk.y, kid: jwk.kid };
}

function isCryptoKey(k: unknown): k is CryptoKey {
  // The tag too: a CryptoKey from another realm (an iframe's) is not an instance of this one's class.
  return (typeof CryptoKey !== "undefined" && k instanceof CryptoKey) || Object.prototype.toString.call(k) === "[object CryptoKey]";
}

type KeyAlgorithmLike = KeyAlgorithm & { namedCurve?: string; hash?: { name?: string }; modulusLength?: number };

/** "ec" for ECDSA P-256, "rsa" for RSA-PSS SHA-256 ≥ 2048 bits, else undefined. */
function signingKind(algorithm: KeyAlgorithm): "ec" | "rsa" | undefined {
  const a = algorithm as KeyAlgorithmLike;
  if (a.name === "ECDSA" && a.namedCurve === "P-256") return "ec";
  if (a.name === "RSA-PSS" && a.hash?.name === "SHA-256" && (a.modulusLength ?? 0) >= 2048) return "rsa";
  return undefined;
}

function sameRsaModulusLength(a: KeyAlgorithm, b: KeyAlgorithm): boolean {
  return (a as KeyAlgorithmLike).modulusLength === (b as KeyAlgorithmLike).modulusLength;
}

function describe(algorithm: KeyAlgorithm): string {
  const a = algorithm as KeyAlgorithmLike;
  return [a.name, a.namedCurve, a.hash?.name, a.modulusLength].filter((v) => v !== undefined).join(" ");
}

/** That `key` unwraps what is wrapped to `publicJwk`: a key agreement (EC) or an encryption (RSA) round trip. */
async function checkUnwrappingKey(kind: "ec" | "rsa", key: unknown, publicJwk: KeyedJwk): Promise<void> {
  if (!isCryptoKey(key) || key.type !== "private") throw new TypeError("'unwrappingKey' must be a private CryptoKey");
  const a = key.algorithm as KeyAlgorithmLike;
  const subtle = globalThis.crypto.subtle;
  const { kid: _kid, ...bare } = publicJwk;
  let same: boolean;
  try {
    if (kind === "ec") {
      if (a.name !== "ECDH" || a.namedCurve !== "P-256" || !key.usages.includes("deriveBits")) {
        throw new TypeError(`'unwrappingKey' must be ECDH P-256 with usage 'deriveBits', not ${describe(key.algorithm)} [${key.usages.join(", ")}]`);
      }
      const peer = (await subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, false, ["deriveBits"])) as CryptoKeyPair;
      const devicePublic = await subtle.importKey("jwk", bare, { name: "ECDH", namedCurve: "P-256" }, true, []);
      const mine = new Uint8Array(await subtle.deriveBits({ name: "ECDH", public: peer.publicKey }, key, 256));
      const theirs = new Uint8Array(await subtle.deriveBits({ name: "ECDH", public: devicePublic }, peer.privateKey, 256));
      same = mine.every((b, i) => b === theirs[i]);
    } else {
      if (a.name !== "RSA-OAEP" || a.hash?.name !== "SHA-256" || !key.usages.includes("decrypt")) {
        throw new TypeError(`'unwrappingKey' must be RSA-OAEP SHA-256 with usage 'decrypt', not ${describe(key.algorithm)} [${key.usages.join(", ")}]`);
      }
      const devicePublic = await subtle.importKey("jwk", bare, { name: "RSA-OAEP", hash: "SHA-256" }, true, ["encrypt"]);
      const probe = globalThis.crypto.getRandomValues(new Uint8Array(32));
      const back = new Uint8Array(await subtle.decrypt({ name: "RSA-OAEP" }, key, await subtle.encrypt({ name: "RSA-OAEP" }, devicePublic, probe)));
      same = back.length === probe.length && back.every((b, i) => b === probe[i]);
    }
  } catch (e) {
    if (e instanceof TypeError) throw e;
    same = false;
  }
  if (!same) throw new TypeError("'unwrappingKey' is not the private key of 'publicKey'");
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
