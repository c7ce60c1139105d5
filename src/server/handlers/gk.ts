import { randomBytes, randomUUID } from "node:crypto";
import type { JWK } from "jose";
import { badRequest, conflict, forbidden, notFound } from "../../protocol/errors.js";
import { normalizeEntity } from "../../protocol/entity.js";
import { kmsUri, objectUri, type ResolvedUri } from "../../protocol/uri.js";
import type { BlockRef, GkRecord } from "../../store/store.js";
import type { CoreServices, Handler, RequestContext } from "../context.js";
import { describePolicy, isEntitled } from "../gk/policy.js";
import { wrapGroupKey } from "../gk/wrap-group-key.js";
import { rfc3339 } from "../key-agreement.js";
import { echo } from "../../protocol/echo.js";
import { auditOf } from "../audit.js";

/** The block a request names by hash, with the requester's membership at it checked (§9). */
async function requireBlock(services: CoreServices, hash: unknown, entity: string): Promise<BlockRef> {
  if (typeof hash !== "string" || !/^[0-9a-f]{64}$/.test(hash)) throw badRequest("field 'block' must be a block hash (64 lower-case hex digits)", "ERR_FIELD");
  const found = await services.store.findBlock(hash);
  if (!found) throw notFound("field 'block' names no block of this KMS", "ERR_UNKNOWN_BLOCK");
  if (!(await services.store.isMemberAt(found.chainUri, entity, found.position))) {
    throw forbidden(`${echo(entity)} is not a member of the group at that block`, "ERR_NOT_MEMBER");
  }
  return { hash, ...found };
}

/** The device keys a GK is wrapped to (409 when the entity has none). */
async function deviceKeysOf(services: CoreServices, entity: string): Promise<JWK[]> {
  const keys = await services.store.listEntityKeys(entity);
  if (keys.length === 0) {
    throw conflict(`${echo(entity)} has no registered key to wrap the group key to: register one with 'create /entities/keys'`, "ERR_NO_ENTITY_KEY");
  }
  return keys.map((k) => k.jwk as JWK);
}

/**
 * Who a GK is wrapped to: the requester's device keys, or, when a federation peer acts for its
 * user, the peer's static key only (§12 "GKs across KMSs": the user's keys are at its home KMS,
 * which re-wraps; so no 409 for the user's lack of keys here).
 */
async function recipientsFor(ctx: RequestContext): Promise<JWK[]> {
  return ctx.peer ? [ctx.peer.jwk] : deviceKeysOf(ctx.services, ctx.identity.entity);
}

/** The signed GK object: `keyBytes` (the GK's key, opened or just made) wrapped to `recipients`. */
async function signedGk(services: CoreServices, gk: GkRecord, keyBytes: Uint8Array, recipients: readonly JWK[]): Promise<string> {
  const key = wrapGroupKey(keyBytes, gk.uri, recipients);
  return services.staticKey.sign({
    uri: gk.uri,
    creator: kmsUri(services.settings.authority),
    created: rfc3339(gk.created),
    key,
    ...(gk.block ? { block: gk.block.hash } : {}),
  });
}

function gkUriOf(services: CoreServices, target: ResolvedUri): string {
  return objectUri(services.settings.authority, "gks", target.segments[1]!);
}

/** `create /gks`, optional `block` (§9 Create): 256 random bits, stored sealed, returned wrapped and signed. */
export const createGk: Handler = async (ctx) => {
  const { services, request, identity } = ctx;
  const block = request.block === undefined ? undefined : await requireBlock(services, request.block, identity.entity);
  const recipients = await recipientsFor(ctx);
  const uri = objectUri(services.settings.authority, "gks", randomUUID());
  const keyBytes = randomBytes(32);
  const gk: GkRecord = {
    uri,
    requester: identity.entity,
    created: new Date(Math.floor(services.now().getTime() / 1000) * 1000),
    sealedKey: services.barrier.seal(`gk:${uri}`, keyBytes),
    ...(block ? { block } : {}),
  };
  let signed: string;
  try {
    signed = await signedGk(services, gk, keyBytes, recipients);
  } finally {
    keyBytes.fill(0);
  }
  // After signing: a failed request stores nothing. The release is recorded with the GK (§13).
  const decision = block ? `requester, member at block ${block.hash}` : "requester (unbound)";
  await services.store.createGk(gk, auditOf(ctx, { operation: "gk.create", object: uri, status: 201, recipients, decision }));
  return { status: 201, gk: signed };
};

/** `update <gk uri>` with `block` (§9 Bind): the requester binds its unbound GK to a block it is a member at. */
export const bindGk: Handler = async (ctx) => {
  const { services, request, identity, target } = ctx;
  const gk = await services.store.getGk(gkUriOf(services, target));
  if (!gk) throw notFound(`no group key ${echo(gkUriOf(services, target))}`, "ERR_UNKNOWN_GK");
  if (gk.requester !== identity.entity) throw forbidden("only the entity that created a group key may bind it", "ERR_NOT_YOUR_GK");
  if (gk.block) throw conflict(`the group key is already bound to block ${gk.block.hash}`, "ERR_GK_BOUND");
  const block = await requireBlock(services, request.block, identity.entity);
  const recipients = await recipientsFor(ctx);
  const signed = await withKeyBytes(services, gk, async (keyBytes) => signedGk(services, { ...gk, block }, keyBytes, recipients));
  const audit = auditOf(ctx, { operation: "gk.bind", object: gk.uri, status: 200, recipients, decision: `requester, member at block ${block.hash}` });
  if (!(await services.store.bindGk(gk.uri, block, audit))) throw conflict("the group key was bound by a concurrent request", "ERR_GK_BOUND");
  return { status: 200, gk: signed };
};

/** `retrieve <gk uri>` with `entity` (§9 Get): the policy decides, from the membership index. */
export const getGk: Handler = async (ctx) => {
  const { services, request, identity, target } = ctx;
  const gk = await services.store.getGk(gkUriOf(services, target));
  if (!gk) throw notFound(`no group key ${echo(gkUriOf(services, target))}`, "ERR_UNKNOWN_GK");
  if (typeof request.entity !== "string") throw badRequest("field 'entity' is required (the entity to wrap the key to)", "ERR_FIELD");
  if (normalizeEntity(request.entity) !== identity.entity) {
    throw forbidden("field 'entity' must be the authenticated entity", "ERR_ENTITY_MISMATCH");
  }
  if (!gk.block) {
    if (gk.requester !== identity.entity) throw forbidden("this group key is not bound to a group yet: only its creator may fetch it", "ERR_GK_UNBOUND");
  } else if (!(await isEntitled(services.store, gk.block, identity.entity, services.settings.policy))) {
    throw forbidden(`policy ${services.settings.policy}: ${describePolicy(services.settings.policy)}`, "ERR_POLICY");
  }
  const recipients = await recipientsFor(ctx);
  const signed = await withKeyBytes(services, gk, (keyBytes) => signedGk(services, gk, keyBytes, recipients));
  // §13: the release is recorded, and committed, before the reply leaves; no record, no release.
  const decision = gk.block ? `policy ${services.settings.policy}: entitled` : "requester (unbound)";
  await services.store.appendAudit(auditOf(ctx, { operation: "gk.get", object: gk.uri, status: 200, recipients, decision }));
  return { status: 200, gk: signed };
};

/** Opens a stored GK's key for `use` and wipes the bytes afterwards. */
async function withKeyBytes<T>(services: CoreServices, gk: GkRecord, use: (keyBytes: Uint8Array) => Promise<T>): Promise<T> {
  const keyBytes = services.barrier.open(`gk:${gk.uri}`, gk.sealedKey);
  try {
    return await use(keyBytes);
  } finally {
    keyBytes.fill(0);
  }
}
