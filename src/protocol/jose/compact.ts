import { base64url } from "jose";
import { badRequest } from "../errors.js";
import { echo } from "../echo.js";

/** What a compact serialization is: a JWS (3 parts) or a JWE (5 parts), with its protected header. */
export interface CompactInfo {
  readonly kind: "jws" | "jwe";
  readonly header: Readonly<Record<string, unknown>>;
}

const B64URL = /^[A-Za-z0-9_-]*$/;
const decoder = new TextDecoder("utf-8", { fatal: true });

/**
 * Classifies a compact JOSE string and decodes its protected header, without verifying anything.
 * Anything that is not a compact serialization is a 400 (§4: "not JOSE at all").
 *
 * @example
 * inspectCompact("eyJhbGciOiJkaXIi...") // { kind: "jwe", header: { alg: "dir", ... } }
 */
export function inspectCompact(message: string): CompactInfo {
  const parts = message.split(".");
  if (parts.length !== 3 && parts.length !== 5) {
    throw badRequest("message is not a JOSE compact serialization", "ERR_NOT_JOSE");
  }
  if (!parts.every((p) => B64URL.test(p)) || parts[0] === "") {
    throw badRequest("message is not a JOSE compact serialization", "ERR_NOT_JOSE");
  }
  let header: unknown;
  try {
    header = JSON.parse(decoder.decode(base64url.decode(parts[0]!)));
  } catch {
    throw badRequest("the protected header is not base64url-encoded JSON", "ERR_NOT_JOSE");
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    throw badRequest("the protected header is not a JSON object", "ERR_NOT_JOSE");
  }
  return { kind: parts.length === 3 ? "jws" : "jwe", header: header as Record<string, unknown> };
}

/** §2: header checks shared by every message: no `none`, no HMAC, no unknown `crit`. */
export function checkCommonHeaderRules(header: Readonly<Record<string, unknown>>): void {
  const alg = header.alg;
  if (typeof alg !== "string") throw badRequest("protected header has no 'alg'", "ERR_ALG");
  if (alg === "none") throw badRequest("'alg: none' is refused", "ERR_ALG");
  if (/^HS\d+$/.test(alg)) throw badRequest(`HMAC algorithm '${echo(alg)}' is refused on a public-key object`, "ERR_ALG");
  if (header.zip !== undefined) throw badRequest("compressed payloads ('zip') are not accepted", "ERR_ZIP");
  if (header.crit !== undefined) {
    // Keyward understands no critical header extension; §2 refuses unknown ones.
    throw badRequest("unknown 'crit' header parameter", "ERR_CRIT");
  }
}
