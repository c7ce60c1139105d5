import type { IncomingMessage, ServerResponse } from "node:http";
import { PROTOCOL_NAME, REL_ENTITY_KEYS } from "../protocol/constants.js";
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

/**
 * Unauthenticated key discovery for other domains (§7): WebFinger (RFC 7033) pointing at an
 * entity's JWKS on this KMS's HTTP origin. Only entities of this KMS's domain, and only those with
 * keys: anything else is 404, so the endpoints say nothing about who exists without keys.
 *
 * @example
 * GET /.well-known/webfinger?resource=acct:alice@example.com → { subject, links: [{ rel, type, href }] }
 */
export function discoveryRoutes(opts: { store: Store; domain: string; publicUrl?: string }) {
  const activeKeys = async (acct: string | null) => {
    const entity = acct ? normalizeEntity(acct) : undefined;
    if (!entity || entity.slice(entity.lastIndexOf("@") + 1) !== opts.domain) return undefined;
    const keys = await opts.store.listEntityKeys(entity);
    return keys.length > 0 ? { entity, keys: keys.map((k) => k.jwk) } : undefined;
  };
  const send = (res: ServerResponse, status: number, type: string, body: unknown) => {
    const text = JSON.stringify(body);
    res.writeHead(status, { "content-type": type, "content-length": Buffer.byteLength(text), "access-control-allow-origin": "*" });
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
      const origin = opts.publicUrl ?? `http://${req.headers.host ?? "localhost"}`;
      send(res, 200, "application/jrd+json", {
        subject: `acct:${found.entity}`,
        links: [{ rel: REL_ENTITY_KEYS, type: "application/jwk-set+json", href: `${origin}/entities/${encodeURIComponent(found.entity)}/jwks` }],
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
