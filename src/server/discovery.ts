import type { IncomingMessage, ServerResponse } from "node:http";
import { PROTOCOL_NAME, REL_ENTITY_KEYS, REL_KMS } from "../protocol/constants.js";
import { normalizeEntity } from "../protocol/entity.js";
import { kmsUri } from "../protocol/uri.js";
import type { Store } from "../store/store.js";
import type { StaticKey } from "./static-key.js";

/**
 * The `GET /.well-known/kms` document (§3): `uri`, `jwk` (the current static key, kid and x5c)
 * and `protocol`, plus, after a static key rotation, `previousKeys`: the public JWKs (kid and x5c)
 * of the keys rotated out and not yet retired, newest first, so that clients verify signatures
 * the KMS made before the rotation (GKs, genesis blocks). Absent when there are none, so the
 * document of a KMS that never rotated is exactly the profile's.
 *
 * @example
 * kmsDiscoveryDocument("kms.example.com", staticKey)
 * // { uri: "kms://kms.example.com", jwk: {...}, protocol: "draft-...-03", previousKeys: [{...}] }
 */
export function kmsDiscoveryDocument(authority: string, staticKey: StaticKey): Record<string, unknown> {
  const previousKeys = staticKey.previousPublicJwks;
  return {
    uri: kmsUri(authority),
    jwk: staticKey.publicJwk,
    protocol: PROTOCOL_NAME,
    ...(previousKeys.length > 0 ? { previousKeys } : {}),
  };
}

/** A Host header value: a DNS name, IPv4 address or bracketed IPv6 address, with an optional port. */
const HOST_HEADER_RE = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*)(?::\d{1,5})?$/;

/**
 * The origin a request came to (§3's default when `publicUrl` is unset): `http://` + its Host
 * header when that is a well-formed `host[:port]`, else the local address of the connection. A
 * Host header cannot thus put a path, credentials or markup into an absolute URL; it can still name
 * any host, which is why `keyward serve` warns when `publicUrl` is unset.
 *
 * @example
 * requestOrigin(req) // "http://kms.example.com:8484"
 */
export function requestOrigin(req: IncomingMessage): string {
  const host = req.headers.host;
  if (host !== undefined && HOST_HEADER_RE.test(host)) return `http://${host.toLowerCase()}`;
  const address = req.socket.localAddress ?? "127.0.0.1";
  return `http://${address.includes(":") ? `[${address}]` : address}:${req.socket.localPort ?? 80}`;
}

/**
 * Unauthenticated key discovery for other domains (§7): WebFinger (RFC 7033) pointing at an
 * entity's JWKS on this KMS's HTTP origin, and naming this KMS as the entity's home KMS (§12,
 * `urn:x-keyward:rel:kms`, href `kms://<authority>`). Only entities of this KMS's domain, and only
 * those with keys: anything else is 404, so the endpoints say nothing about who exists without
 * keys. One or more `rel` parameters keep only the links of those relations (RFC 7033 §4.3).
 *
 * @example
 * GET /.well-known/webfinger?resource=acct:alice@example.com → { subject, links: [{ rel, type, href }, { rel, href }] }
 * GET /.well-known/webfinger?resource=acct:alice@example.com&rel=urn:x-keyward:rel:kms → { subject, links: [{ rel, href: "kms://…" }] }
 */
export function discoveryRoutes(opts: { store: Store; domain: string; authority: string; publicUrl?: string }) {
  const activeKeys = async (acct: string | null) => {
    const entity = acct ? normalizeEntity(acct) : undefined;
    if (!entity || entity.slice(entity.lastIndexOf("@") + 1) !== opts.domain) return undefined;
    const keys = await opts.store.listEntityKeys(entity);
    return keys.length > 0 ? { entity, keys: keys.map((k) => k.jwk) } : undefined;
  };
  const send = (res: ServerResponse, status: number, type: string, body: unknown) => {
    const text = JSON.stringify(body);
    // no-store: without publicUrl the WebFinger href comes from the request's Host header, so a
    // shared cache must never hand one client's answer to another (cache poisoning). CORS headers
    // are the HTTP binding's (corsOrigins, §3), set before this route runs.
    res.writeHead(status, { "content-type": type, "content-length": Buffer.byteLength(text), "cache-control": "no-store" });
    res.end(text);
  };

  return async (req: IncomingMessage, res: ServerResponse): Promise<boolean> => {
    if (req.method !== "GET") return false;
    let url: URL;
    try {
      url = new URL(req.url ?? "/", "http://placeholder");
    } catch {
      // A request target that is no URL (e.g. "//", an empty authority) names no discovery resource: 404, not 500.
      return false;
    }
    if (url.pathname === "/.well-known/webfinger") {
      const found = await activeKeys(url.searchParams.get("resource"));
      if (!found) {
        send(res, 404, "application/json", { error: "no such entity with keys here" });
        return true;
      }
      const origin = opts.publicUrl ?? requestOrigin(req);
      const links = [
        { rel: REL_ENTITY_KEYS, type: "application/jwk-set+json", href: `${origin}/entities/${encodeURIComponent(found.entity)}/jwks` },
        { rel: REL_KMS, href: kmsUri(opts.authority) },
      ];
      const rels = url.searchParams.getAll("rel");
      send(res, 200, "application/jrd+json", {
        subject: `acct:${found.entity}`,
        links: rels.length === 0 ? links : links.filter((l) => rels.includes(l.rel)),
      });
      return true;
    }
    const m = /^\/entities\/([^/]+)\/jwks$/.exec(url.pathname);
    if (m) {
      let acct: string | null = null;
      try {
        acct = decodeURIComponent(m[1]!);
      } catch {
        acct = null;
      }
      const found = await activeKeys(acct);
      if (!found) send(res, 404, "application/json", { error: "no such entity with keys here" });
      else send(res, 200, "application/jwk-set+json", { keys: found.keys });
      return true;
    }
    return false;
  };
}
