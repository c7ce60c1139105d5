/**
 * Block hash (§1): lower-case hex SHA-256 of the ASCII bytes of a block's JWS compact serialization.
 *
 * @example
 * await blockHash("eyJhbGciOiJQUzI1NiJ9.eyJ...") // "335c570a..."
 */
export async function blockHash(compactJws: string): Promise<string> {
  const digest = await globalThis.crypto.subtle.digest("SHA-256", new TextEncoder().encode(compactJws));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}
