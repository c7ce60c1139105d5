import { createHash, createPublicKey, randomUUID } from "node:crypto";
import { base64url } from "jose";
import { CONTENT_ENCRYPTION } from "../protocol/constants.js";
import { badRequest, conflict, KmsError, methodNotAllowed, notFound, storeUnavailable, unauthorized } from "../protocol/errors.js";
import { checkCommonHeaderRules } from "../protocol/jose/compact.js";
import { importClientEcdhKey, serverEcdhe } from "./ecdhe-node-crypto.js";
import { parseCredential, parseRequest, requestIdOf, type RequestId, type RequestPayload } from "../protocol/messages.js";
import type { AuthenticatedIdentity } from "../identity/authenticator.js";
import { objectUri, resolveUri } from "../protocol/uri.js";
import type { CoreServices } from "./context.js";
import { echo } from "../protocol/echo.js";
import { StoreUnavailableError } from "../store/store.js";

/** Thrown inside key agreement: every error there is a JWS error (§4), with the requestId once known. */
export class KeyAgreementError extends Error {
  constructor(readonly error: KmsError, readonly requestId?: RequestId) {
    super(error.reason);
  }
}

/**
 * Create ephemeral key (§5, draft §4.6.1): a JWE to the static key whose plaintext is the request.
 * Authenticates the credential before anything else, then creates the channel and returns the
 * payload of the signed reply. Every refusal is a KeyAgreementError (a JWS error on the wire).
 */
export async function createEphemeralKey(services: CoreServices, message: string, header: Readonly<Record<string, unknown>>): Promise<Record<string, unknown>> {
  const { staticKey, settings } = services;
  checkStaticHeader(header, staticKey.acceptedKeyManagementAlgorithms);
  await checkEphemeralPublicKey(header);

  // The current key, then previous keys still in their grace period (static key rotation).
  const plaintext = staticKey.decryptKeyAgreement(message, header);
  if (!plaintext) throw new KeyAgreementError(unauthorized("the request does not decrypt with the KMS static key", "ERR_DECRYPT"));

  const text = new TextDecoder().decode(plaintext);
  // JWE(K_kms_pub, JWS(K_client_priv, request)): a certificate credential with proof of possession
  // (§6). The JWS payload is read here WITHOUT trusting it: the authenticator verifies the
  // signature with the credential's key before anything is created. (An empty signature part is
  // let through so that `alg: none` is refused as a failed proof, 401, not as a malformed payload.)
  const signed = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*$/.test(text);
  let payload: unknown;
  try {
    payload = JSON.parse(signed ? new TextDecoder().decode(base64url.decode(text.split(".")[1]!)) : text);
  } catch {
    throw new KeyAgreementError(badRequest(signed ? "the signed request's JWS payload is not JSON" : "the request payload is not JSON", "ERR_PAYLOAD"));
  }
  const requestId = requestIdOf(payload);
  const fail = (e: unknown): never => {
    if (e instanceof StoreUnavailableError) {
      // Not the client's fault: 503, not "authentication failed". Logged here, once, without the request.
      services.logger.warn({ op: "ecdhe.create", store: e.logFields() }, "store unavailable");
      throw new KeyAgreementError(storeUnavailable(), requestId);
    }
    throw new KeyAgreementError(e instanceof KmsError ? e : unauthorized("authentication failed"), requestId);
  };

  let identity: AuthenticatedIdentity;
  let request: RequestPayload;
  try {
    // §5: the credential is authenticated before anything else; a failure creates nothing.
    const credential = parseCredential(payload);
    if (signed && !("jwk" in credential)) {
      // A signature nobody would verify: refused rather than silently ignored.
      throw unauthorized("a signed (JWS) key-agreement request must carry a 'jwk' certificate credential; send a bearer credential as a plain JSON request", "ERR_PROOF_UNEXPECTED");
    }
    identity = await services.authenticator.authenticate(credential, { keyAgreement: true, ...(signed ? { proofOfPossession: text } : {}) });
    if (identity.kind === "certificate" && !signed) {
      // Belt and braces: whatever the verifier does, a certificate credential never opens a channel without proof.
      throw unauthorized("certificate credential without proof of possession: the request plaintext must be a JWS signed with the credential's key", "ERR_NO_PROOF_OF_POSSESSION");
    }
    request = parseRequest(payload);
  } catch (e) {
    return fail(e);
  }

  try {
    const target = resolveUri(request.uri, settings.authority);
    if (target.foreign) throw notFound(`${echo(request.uri)} names another KMS`, "ERR_FOREIGN_AUTHORITY");
    if (target.path !== "/ecdhe") {
      throw badRequest("only 'create /ecdhe' may be encrypted to the KMS static key; other requests go on a channel", "ERR_STATIC_KEY_MISUSE");
    }
    if (request.method !== "create") throw methodNotAllowed(`'${echo(request.method)}' is not supported on /ecdhe`);
    const client = importClientEcdhKey(request.jwk, "jwk");
    const clientKeyThumbprint = jwkThumbprintEcP256(client.jwk.x, client.jwk.y);

    const { kEphemeral, publicJwk } = serverEcdhe(client.point);
    const uri = objectUri(settings.authority, "ecdhe", randomUUID());
    const createdAt = new Date(Math.floor(services.now().getTime() / 1000) * 1000);
    const expiresAt = new Date(createdAt.getTime() + settings.ephemeralKeyLifetimeSeconds * 1000);
    const created = await services.store.createChannel({
      uri,
      entity: identity.entity,
      clientId: request.client.clientId,
      credentialKind: identity.kind,
      ...(identity.thumbprint ? { credentialThumbprint: identity.thumbprint } : {}),
      clientKeyThumbprint,
      sealedKey: services.barrier.seal(`ecdhe:${uri}`, kEphemeral),
      createdAt,
      expiresAt,
      messageCount: 0,
    }, { time: services.now(), operation: "ecdhe.create", actor: identity.entity, object: uri, status: 201 });
    if (!created) {
      throw conflict("this ECDHE public key was used before: a client must use a fresh key pair for every key agreement", "ERR_ECDHE_KEY_REUSED");
    }
    const { kty, crv, x, y } = publicJwk;
    const ephemeralKey = {
      uri,
      jwk: { kty, crv, x, y },
      userId: identity.entity,
      clientId: request.client.clientId,
      createDate: rfc3339(createdAt),
      expirationDate: rfc3339(expiresAt),
    };
    services.logger.debug({ op: "ecdhe.create", channel: uri, entity: identity.entity }, "channel created");
    // Deployed clients read `key`; the draft's example shows `ephemeral-key` (§5): send both.
    return { status: 201, requestId: request.requestId, key: ephemeralKey, "ephemeral-key": ephemeralKey };
  } catch (e) {
    return fail(e);
  }
}

/** §2 and §4: what a key-agreement header must be; every violation is a 400. */
function checkStaticHeader(header: Readonly<Record<string, unknown>>, allowed: readonly string[]): void {
  try {
    checkCommonHeaderRules(header);
    const alg = header.alg as string;
    if (alg === "dir") throw badRequest("'dir' is only for common messages on a channel", "ERR_ALG");
    if (!allowed.includes(alg)) {
      throw badRequest(`algorithm '${echo(alg)}' does not match the KMS static key (accepted: ${allowed.join(", ")})`, "ERR_ALG");
    }
    if (header.enc !== CONTENT_ENCRYPTION) throw badRequest(`content encryption must be ${CONTENT_ENCRYPTION}`, "ERR_ENC");
  } catch (e) {
    throw new KeyAgreementError(e as KmsError);
  }
}

/** Validates a JWE `epk` before any ECDH with the static key: the invalid-curve attack (§2). */
async function checkEphemeralPublicKey(header: Readonly<Record<string, unknown>>): Promise<void> {
  if (header.epk === undefined) return;
  const { kty, crv, x, y } = (typeof header.epk === "object" && header.epk !== null ? header.epk : {}) as Record<string, unknown>;
  if (kty !== "EC" || crv !== "P-256" || typeof x !== "string" || typeof y !== "string") {
    throw new KeyAgreementError(badRequest("header 'epk' must be an EC P-256 public key", "ERR_FIELD"));
  }
  try {
    // node:crypto refuses a point that is not on the curve (OpenSSL checks it on import).
    createPublicKey({ key: { kty, crv, x, y }, format: "jwk" });
  } catch {
    throw new KeyAgreementError(badRequest("header 'epk' is not a valid point on P-256", "ERR_INVALID_POINT"));
  }
}

/** RFC 7638 thumbprint of an EC P-256 public key (members in lexicographic order, no spaces). */
function jwkThumbprintEcP256(x: string, y: string): string {
  return createHash("sha256").update(`{"crv":"P-256","kty":"EC","x":"${x}","y":"${y}"}`).digest("base64url");
}

export function rfc3339(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, "Z");
}
