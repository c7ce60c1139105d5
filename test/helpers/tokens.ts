import { readFileSync } from "node:fs";
import { join } from "node:path";
import { base64url, generateKeyPair, importJWK, SignJWT, type JWK, type JWTPayload } from "jose";
import { DEV_IDP_KEY_FILE } from "../../src/identity/dev-idp.js";
import type { TestKms } from "./harness.js";

const now = () => Math.floor(Date.now() / 1000);

/** Claims of a good token for `user`, as the test KMS expects. */
export function goodClaims(kms: TestKms, user = "alice@example.com"): JWTPayload {
  return { iss: kms.config.oauthIssuer, aud: kms.config.oauthAudience, sub: user, email: user, iat: now(), exp: now() + 600 };
}

/** Signs a token with the identity provider's real key, any claims and header. */
export async function signWithProviderKey(kms: TestKms, claims: JWTPayload, header: Record<string, unknown> = {}): Promise<string> {
  const jwk = JSON.parse(readFileSync(join(kms.dataDir, DEV_IDP_KEY_FILE), "utf8")) as JWK;
  return new SignJWT(claims).setProtectedHeader({ alg: "ES256", typ: "at+jwt", kid: jwk.kid!, ...header } as never).sign(await importJWK(jwk, "ES256"));
}

/** Signs a token with a key the provider never published (same kid, so only the signature differs). */
export async function signWithForeignKey(kms: TestKms, claims: JWTPayload): Promise<string> {
  const jwk = JSON.parse(readFileSync(join(kms.dataDir, DEV_IDP_KEY_FILE), "utf8")) as JWK;
  const { privateKey } = await generateKeyPair("ES256");
  return new SignJWT(claims).setProtectedHeader({ alg: "ES256", typ: "at+jwt", kid: jwk.kid! }).sign(privateKey);
}

/** An unsecured token (`alg: none`). */
export function unsecuredToken(claims: JWTPayload): string {
  const enc = (o: unknown) => base64url.encode(JSON.stringify(o));
  return `${enc({ alg: "none", typ: "at+jwt" })}.${enc(claims)}.`;
}

/** HS256 signed with the provider's public key bytes as the HMAC secret (the classic confusion attack). */
export async function hmacWithPublicKey(kms: TestKms, claims: JWTPayload): Promise<string> {
  const jwk = JSON.parse(readFileSync(join(kms.dataDir, DEV_IDP_KEY_FILE), "utf8")) as JWK;
  const { d: _d, ...pub } = jwk;
  return new SignJWT(claims).setProtectedHeader({ alg: "HS256", typ: "at+jwt", kid: jwk.kid! }).sign(new TextEncoder().encode(JSON.stringify(pub)));
}
