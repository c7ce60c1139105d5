/**
 * A KMS refusal as the SDK reports it: the KMS's status and reason, and whether it came as a JWS
 * error (unencrypted, signed by the static key) or as a common message on the channel.
 *
 * @example
 * try { await client.request("retrieve", "/gks/1"); }
 * catch (e) { if (e instanceof KmsRequestError && e.status === 404) ... }
 */
export class KmsRequestError extends Error {
  override readonly name = "KmsRequestError";
  constructor(
    readonly status: number,
    readonly reason: string,
    readonly form: "jws" | "jwe",
  ) {
    super(`KMS refused the request: ${status} ${reason}`);
  }
}

/** The KMS answered something the SDK cannot trust or use (bad signature, wrong requestId, ...). */
export class KmsProtocolError extends Error {
  override readonly name: string = "KmsProtocolError";
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/**
 * The transport could not deliver a request or its reply: the connection closed with the request
 * in flight, no reply came within the timeout, or the transport itself refused. Nothing is known
 * of whether the KMS ran the request; the channel itself stays usable.
 *
 * Codes: `ERR_TRANSPORT` (an unusable transport answer, e.g. an HTTP status other than 200/400; or
 * the KMS could not be reached, which in a browser includes a cross-origin request it refused),
 * `ERR_TRANSPORT_CLOSED`, `ERR_TRANSPORT_TIMEOUT`.
 *
 * @example
 * try { await client.ping(); }
 * catch (e) { if (e instanceof KmsTransportError && e.code === "ERR_TRANSPORT_TIMEOUT") retryLater(); }
 */
export class KmsTransportError extends KmsProtocolError {
  override readonly name = "KmsTransportError";
}
