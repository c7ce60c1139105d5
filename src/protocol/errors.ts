/**
 * A refusal the KMS (or the SDK) can explain: an HTTP-like `status`, a human `reason`, and a
 * stable machine `code` that never changes between releases.
 *
 * @example
 * throw new KmsError(400, "ERR_FIELD", "field 'uri' must be a string");
 */
export class KmsError extends Error {
  override readonly name = "KmsError";
  constructor(
    readonly status: number,
    readonly code: string,
    readonly reason: string,
  ) {
    super(reason);
  }
}

/** Shorthands, one per status the profile uses, so that call sites read as the profile does. */
export const badRequest = (reason: string, code = "ERR_BAD_REQUEST") => new KmsError(400, code, reason);
export const unauthorized = (reason: string, code = "ERR_UNAUTHORIZED") => new KmsError(401, code, reason);
export const forbidden = (reason: string, code = "ERR_FORBIDDEN") => new KmsError(403, code, reason);
export const notFound = (reason: string, code = "ERR_NOT_FOUND") => new KmsError(404, code, reason);
export const methodNotAllowed = (reason: string, code = "ERR_METHOD_NOT_ALLOWED") => new KmsError(405, code, reason);
export const conflict = (reason: string, code = "ERR_CONFLICT") => new KmsError(409, code, reason);
/**
 * §3 (`/readyz`: store reachable): the store cannot be reached or cannot write right now. A
 * condition of the deployment, not of the request: the client may retry later.
 *
 * @example
 * throw storeUnavailable(); // status 503, reason "store unavailable"
 */
export const storeUnavailable = () => new KmsError(503, "ERR_STORE_UNAVAILABLE", "store unavailable");
