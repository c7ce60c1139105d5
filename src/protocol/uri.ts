import { KmsError } from "./errors.js";
import { isSafeIdentifierText } from "./text.js";

/**
 * Object and collection URIs (§1). A request may name `/gks/8ed7` or `kms://kms.example.com/gks/8ed7`;
 * both resolve to the same path. An absolute URI naming another KMS resolves to `foreign`.
 *
 * @example
 * resolveUri("kms://kms.example.com/ecdhe/1", "kms.example.com") // { path: "/ecdhe/1", segments: ["ecdhe","1"] }
 */
export interface ResolvedUri {
  readonly path: string;
  readonly segments: readonly string[];
  /** true when the URI is absolute and names another authority. */
  readonly foreign: boolean;
}

export function resolveUri(uri: string, authority: string): ResolvedUri {
  if (!isSafeIdentifierText(uri)) {
    // No URI holds a control character or a lone surrogate (RFC 3986), and no store could look one up.
    throw new KmsError(400, "ERR_FIELD", "field 'uri' must not contain control characters or lone surrogates");
  }
  let path: string;
  let foreign = false;
  if (uri.startsWith("kms://")) {
    const rest = uri.slice("kms://".length);
    const slash = rest.indexOf("/");
    const host = slash === -1 ? rest : rest.slice(0, slash);
    path = slash === -1 ? "/" : rest.slice(slash);
    foreign = host.toLowerCase() !== authority.toLowerCase();
  } else if (uri.startsWith("/")) {
    path = uri;
  } else {
    throw new KmsError(400, "ERR_FIELD", `field 'uri' must be an absolute kms:// URI or a path starting with '/'`);
  }
  // Query strings and fragments are not part of the profile: drop them rather than match on them.
  path = path.replace(/[?#].*$/, "");
  const segments = path.split("/").filter((s) => s.length > 0);
  return { path: "/" + segments.join("/"), segments, foreign };
}

/** The absolute URI of an object of this KMS, e.g. `kms://kms.example.com/ecdhe/<id>`. */
export function objectUri(authority: string, collection: string, id: string): string {
  return `kms://${authority}/${collection}/${id}`;
}

/** The KMS URI, `kms://<authority>`: also the static key's kid. */
export function kmsUri(authority: string): string {
  return `kms://${authority}`;
}
