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
  override readonly name = "KmsProtocolError";
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}
