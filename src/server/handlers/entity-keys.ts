import { conflict, forbidden, notFound } from "../../protocol/errors.js";
import { normalizeEntity } from "../../protocol/entity.js";
import { validateEntityPublicJwk } from "../../protocol/jwk.js";
import { isSafeIdentifierText } from "../../protocol/text.js";
import { rfc3339 } from "../key-agreement.js";
import type { Handler, RequestContext } from "../context.js";
import { echo } from "../../protocol/echo.js";
import { objectUri } from "../../protocol/uri.js";
import { auditOf } from "../audit.js";

/** The URI an entity key is named by (its delete URI), for the audit log. */
function keyUri(authority: string, entity: string, kid: string): string {
  return `${objectUri(authority, "entities", encodeURIComponent(entity))}/keys/${encodeURIComponent(kid)}`;
}

/** `create /entities/keys` with `{jwk}` (§7): registers a device key of the authenticated entity. */
export const registerEntityKey: Handler = async (ctx) => {
  const { services, request, identity } = ctx;
  const jwk = await validateEntityPublicJwk(request.jwk);
  const created = services.now();
  const max = services.settings.maxKeysPerEntity;
  const audit = auditOf(ctx, { operation: "entity-key.register", object: keyUri(services.settings.authority, identity.entity, jwk.kid), status: 201 });
  const outcome = await services.store.registerEntityKey({ entity: identity.entity, kid: jwk.kid, jwk, created }, max, audit);
  if (outcome === "duplicate") throw conflict(`${echo(identity.entity)} already has a key with kid '${echo(jwk.kid)}'`, "ERR_DUPLICATE_KID");
  // §10: the bound keeps every "try each key" loop (append without kid, GK wrapping) small.
  if (outcome === "limit") throw conflict(`${echo(identity.entity)} already has ${max} unrevoked keys, the most an entity may register: revoke one first`, "ERR_TOO_MANY_KEYS");
  return { status: 201, key: { entity: identity.entity, jwk, created: rfc3339(created) } };
};

/**
 * `retrieve /entities/<acct>/keys` (§7): any authenticated caller; an entity without keys has an
 * empty list. With `includeRevoked: true` (a Keyward extension), revoked keys come too, each with
 * its `revoked` date, so that a client can verify blocks signed before a revocation.
 */
export const listEntityKeys: Handler = async (ctx) => {
  const entity = entityOf(ctx);
  const includeRevoked = ctx.request.includeRevoked === true;
  const keys = await ctx.services.store.listEntityKeys(entity, { includeRevoked });
  return {
    status: 200,
    keys: keys.map((k) => (includeRevoked ? { ...k.jwk, created: rfc3339(k.created), ...(k.revoked ? { revoked: rfc3339(k.revoked) } : {}) } : k.jwk)),
  };
};

/** `delete /entities/<acct>/keys/<kid>` (§7): only by that entity; the key stops verifying new blocks. */
export const revokeEntityKey: Handler = async (ctx) => {
  const entity = entityOf(ctx);
  if (entity !== ctx.identity.entity) throw forbidden("only an entity can delete its own keys", "ERR_NOT_YOUR_KEY");
  const kid = decodeSegment(ctx.target.segments[3]!);
  const audit = auditOf(ctx, { operation: "entity-key.revoke", object: keyUri(ctx.services.settings.authority, entity, kid), status: 204 });
  // A kid with control characters or lone surrogates was never registered (and a store may not look it up).
  if (!isSafeIdentifierText(kid) || !(await ctx.services.store.revokeEntityKey(entity, kid, ctx.services.now(), audit))) {
    throw notFound(`${echo(entity)} has no key '${echo(kid)}'`, "ERR_UNKNOWN_KEY");
  }
  return { status: 204 };
};

function entityOf(ctx: RequestContext): string {
  const entity = normalizeEntity(decodeSegment(ctx.target.segments[1]!));
  if (!entity) throw notFound(`'${echo(ctx.target.segments[1])}' is not an entity`, "ERR_NOT_FOUND");
  return entity;
}

export function decodeSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}
