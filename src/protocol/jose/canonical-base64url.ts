const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/**
 * True when `text` is base64url (RFC 4648 §5, no padding) in its one canonical form: decoding and
 * re-encoding gives the same text. Decoders ignore the unused low bits of the last character, so
 * "AB" and "AA" decode to the same byte; a relay could then re-spell a signed block, whose
 * signature still verifies, and give it another hash (§1 hashes the text, not the bytes). §10
 * refuses such parts.
 *
 * @example
 * isCanonicalBase64url("AA")  // true  (one byte, 0x00)
 * isCanonicalBase64url("AB")  // false (the same byte, spelled with unused bits set)
 * isCanonicalBase64url("A")   // false (no byte string has this length)
 */
export function isCanonicalBase64url(text: string): boolean {
  const rest = text.length % 4;
  if (rest === 1) return false;
  for (let i = 0; i < text.length; i++) if (ALPHABET.indexOf(text[i]!) === -1) return false;
  if (rest === 0) return true;
  const last = ALPHABET.indexOf(text[text.length - 1]!);
  // 2 characters carry 1 byte (4 unused bits), 3 carry 2 bytes (2 unused bits).
  return (last & (rest === 2 ? 0x0f : 0x03)) === 0;
}
