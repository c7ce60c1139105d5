import { badRequest, unauthorized } from "./errors.js";
import { METHOD_ALIASES, METHODS, type Method } from "./constants.js";
import type { JWK } from "jose";
import { echo } from "./echo.js";
import { isSafeIdentifierText } from "./text.js";

/** A requestId is echoed verbatim and compared as a JSON value: 7 and "7" differ (§4). */
export type RequestId = string | number;

export type Credential =
  | { readonly userId?: string; readonly bearer: string }
  | { readonly userId?: string; readonly jwk: JWK };

export interface ClientInfo {
  readonly clientId: string;
  readonly credential: Credential;
}

/** A decrypted request payload (§4), operation fields included. */
export interface RequestPayload {
  readonly client: ClientInfo;
  readonly method: Method;
  readonly uri: string;
  readonly requestId: RequestId;
  readonly [field: string]: unknown;
}

/** A response payload (§4). */
export interface ResponsePayload {
  readonly status: number;
  readonly reason?: string;
  readonly requestId?: RequestId;
  readonly [field: string]: unknown;
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

/** §10: the longest requestId and clientId accepted, in characters (code points). */
export const MAX_ID_CHARS = 256;

/** At most `max` characters, counted as code points (so 256 emoji pass, 257 do not). */
function withinChars(text: string, max: number): boolean {
  if (text.length <= max) return true;
  if (text.length > 2 * max) return false;
  let count = 0;
  for (const _ of text) if (++count > max) return false;
  return true;
}

/**
 * The requestId of a payload when it has a usable one (§10: a string of at most 256 characters or
 * a safe integer): used to echo it even in refusals. Anything else is `undefined`, so a refused
 * requestId is never echoed, nor kept as a replay record.
 */
export function requestIdOf(payload: unknown): RequestId | undefined {
  if (!isObject(payload)) return undefined;
  const id = payload.requestId;
  if (typeof id === "string") return withinChars(id, MAX_ID_CHARS) ? id : undefined;
  return Number.isSafeInteger(id) ? (id as number) : undefined;
}

/**
 * Checks the basic request shape of §4 in the profile's order: the credential first (a missing
 * `client` or `credential` is an authentication failure, 401), then requestId, method (unknown
 * method: 400), uri. Reasons name the field.
 *
 * @example
 * const req = parseRequest(JSON.parse(plaintext)); // throws KmsError
 */
export function parseRequest(payload: unknown): RequestPayload {
  parseCredential(payload);
  const p = payload as Record<string, unknown>;
  const client = p.client as Record<string, unknown>;
  if (typeof client.clientId !== "string") {
    throw badRequest("field 'client.clientId' is required and must be a string", "ERR_FIELD");
  }
  if (!withinChars(client.clientId, MAX_ID_CHARS)) {
    throw badRequest(`field 'client.clientId' is longer than ${MAX_ID_CHARS} characters`, "ERR_FIELD");
  }
  if (!isSafeIdentifierText(client.clientId)) {
    throw badRequest("field 'client.clientId' must not contain control characters or lone surrogates", "ERR_FIELD");
  }
  if (requestIdOf(p) === undefined) {
    throw badRequest(`field 'requestId' is required and must be a string of at most ${MAX_ID_CHARS} characters or a safe integer`, "ERR_FIELD");
  }
  if (typeof p.method !== "string") throw badRequest("field 'method' is required and must be a string", "ERR_FIELD");
  const method = normalizeMethod(p.method);
  if (method === undefined) throw badRequest(`field 'method' has an unknown value '${echo(p.method)}'`, "ERR_METHOD");
  if (typeof p.uri !== "string" || p.uri.length === 0) {
    throw badRequest("field 'uri' is required and must be a string", "ERR_FIELD");
  }
  return { ...p, method } as RequestPayload;
}

/**
 * The credential of a request (§4, §6): a missing `client` or `credential` is an authentication
 * failure (401), not a field error. Checked before anything else so that authentication comes first.
 */
export function parseCredential(payload: unknown): Credential {
  if (!isObject(payload)) throw badRequest("request payload must be a JSON object", "ERR_PAYLOAD");
  const client = payload.client;
  if (!isObject(client)) throw unauthorized("missing 'client' in request: no credential", "ERR_NO_CREDENTIAL");
  const credential = client.credential;
  if (!isObject(credential)) throw unauthorized("missing 'client.credential' in request", "ERR_NO_CREDENTIAL");
  const hasBearer = typeof credential.bearer === "string" && credential.bearer.length > 0;
  const hasJwk = isObject(credential.jwk);
  if (!hasBearer && !hasJwk) {
    throw unauthorized("'client.credential' must carry a 'bearer' token or a 'jwk'", "ERR_NO_CREDENTIAL");
  }
  // userId is ignored whenever the credential yields an identity (§6), so its type is not checked.
  return hasBearer ? { bearer: credential.bearer as string } : { jwk: credential.jwk as JWK };
}

/** `post` means `create` and `get` means `retrieve` (§4); anything else unknown is `undefined`. */
export function normalizeMethod(method: string): Method | undefined {
  // Exact spelling: the profile names lower-case methods only.
  if ((METHODS as readonly string[]).includes(method)) return method as Method;
  return Object.hasOwn(METHOD_ALIASES, method) ? METHOD_ALIASES[method] : undefined;
}

export { isObject };
