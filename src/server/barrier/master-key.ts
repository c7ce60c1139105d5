import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";

/**
 * AES-256-GCM sealing with additional authenticated data. The AAD binds a ciphertext to what it
 * is (e.g. "ecdhe:kms://.../ecdhe/<id>"), so that a sealed value copied to another row or file
 * does not open there.
 *
 * Format: "kw1." + base64url(iv[12] || ciphertext || tag[16]).
 */
export class SealingKey {
  private readonly key: Buffer;

  constructor(key: Uint8Array) {
    if (key.length !== 32) throw new Error("a sealing key is 32 bytes");
    this.key = Buffer.from(key);
  }

  /** @example const sealed = key.seal("static-key", pkcs8); */
  seal(aad: string, plaintext: Uint8Array): string {
    const iv = randomBytes(12);
    const cipher = createCipheriv("aes-256-gcm", this.key, iv);
    cipher.setAAD(Buffer.from(aad, "utf8"));
    const ct = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    return "kw1." + Buffer.concat([iv, ct, cipher.getAuthTag()]).toString("base64url");
  }

  /** Throws when the value was not sealed by this key for this `aad`. @example key.open("static-key", sealed) */
  open(aad: string, sealed: string): Uint8Array {
    if (!sealed.startsWith("kw1.")) throw new Error("unknown sealed-value format");
    const raw = Buffer.from(sealed.slice(4), "base64url");
    if (raw.length < 28) throw new Error("sealed value too short");
    const decipher = createDecipheriv("aes-256-gcm", this.key, raw.subarray(0, 12));
    decipher.setAAD(Buffer.from(aad, "utf8"));
    decipher.setAuthTag(raw.subarray(raw.length - 16));
    return new Uint8Array(Buffer.concat([decipher.update(raw.subarray(12, raw.length - 16)), decipher.final()]));
  }
}

/**
 * Reads the master key: KEYWARD_MASTER_KEY (base64url or hex of 32 bytes) wins over the key file.
 * The master key never reaches a store; it opens the keyring (the barrier's data key) and the
 * static private key file.
 */
export function parseMasterKey(text: string): Uint8Array {
  const t = text.trim();
  const bytes = /^[0-9a-fA-F]{64}$/.test(t) ? Buffer.from(t, "hex") : Buffer.from(t, "base64url");
  if (bytes.length !== 32) throw new Error("the master key must be 32 bytes (64 hex digits or 43 base64url characters)");
  return new Uint8Array(bytes);
}

export function generateMasterKey(): string {
  return randomBytes(32).toString("base64url");
}
