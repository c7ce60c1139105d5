import { randomBytes, randomUUID } from "node:crypto";
import { badRequest, conflict, forbidden, notFound } from "../../protocol/errors.js";
import { normalizeEntity } from "../../protocol/entity.js";
import { kmsUri, objectUri, type ResolvedUri } from "../../protocol/uri.js";
import type { BlockRef, GkRecord } from "../../store/store.js";
import type { CoreServices, Handler } from "../context.js";
import { describePolicy, isEntitled } from "../gk/policy.js";
import { wrapGroupKey } from "../gk/wrap-group-key.js";
import { rfc3339 } from "../key-agreement.js";

/** The block a request names by hash, with the requester's membership at it checked (§9). */
async function requireBlock(services: CoreServices, hash: unknown, entity: string): Promise<BlockRef> {
  if (typeof hash !== "string" || !/^[0-9a-f]{64}$/.test(hash)) throw badRequest("field 'block' must be a block hash (64 lower-case hex digits)", "ERR_FIELD");
  const found = await services.store.findBlock(hash);
  if (!found) throw notFound("field 'block' names no block of this KMS", "ERR_UNKNOWN_BLOCK");
  if (!(await services.store.isMemberAt(found.chainUri, entity, found.position))) {
    throw forbidden(`${entity} is not a member of the group at that block`, "ERR_NOT_MEMBER");
  }
  return { hash, ...found };
}

/** The signed GK object: the key wrapped to `entity`'s registered keys (409 when it has none). */
async function signedGk(services: CoreServices, gk: GkRecord, entity: string): Promise<string> {
  const keys = await services.store.listEntityKeys(entity);
  if (keys.length === 0) {
    throw conflict(`${entity} has no registered key to wrap the group key to: register one with 'create /entities/keys'`, "ERR_NO_ENTITY_KEY");
  }
  const keyBytes = services.barrier.open(`gk:${gk.uri}`, gk.sealedKey);
  const key = wrapGroupKey(keyBytes, gk.uri, keys.map((k) => k.jwk));
  keyBytes.fill(0);
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
export const createGk: Handler = async ({ services, request, identity }) => {
  const block = request.block === undefined ? undefined : await requireBlock(services, request.block, identity.entity);
  if ((await services.store.listEntityKeys(identity.entity)).length === 0) {
    throw conflict(`${identity.entity} has no registered key to wrap the group key to: register one with 'create /entities/keys'`, "ERR_NO_ENTITY_KEY");
  }
  const uri = objectUri(services.settings.authority, "gks", randomUUID());
  const keyBytes = randomBytes(32);
  const gk: GkRecord = {
    uri,
    requester: identity.entity,
    created: new Date(Math.floor(services.now().getTime() / 1000) * 1000),
    sealedKey: services.barrier.seal(`gk:${uri}`, keyBytes),
    ...(block ? { block } : {}),
  };
  keyBytes.fill(0);
  const signed = await signedGk(services, gk, identity.entity);
  await services.store.createGk(gk); // after signing: a failed request stores nothing
  return { status: 201, gk: signed };
};

/** `update <gk uri>` with `block` (§9 Bind): the requester binds its unbound GK to a block it is a member at. */
export const bindGk: Handler = async ({ services, request, identity, target }) => {
  const gk = await services.store.getGk(gkUriOf(services, target));
  if (!gk) throw notFound(`no group key ${gkUriOf(services, target)}`, "ERR_UNKNOWN_GK");
  if (gk.requester !== identity.entity) throw forbidden("only the entity that created a group key may bind it", "ERR_NOT_YOUR_GK");
  if (gk.block) throw conflict(`the group key is already bound to block ${gk.block.hash}`, "ERR_GK_BOUND");
  const block = await requireBlock(services, request.block, identity.entity);
  const bound = { ...gk, block };
  const signed = await signedGk(services, bound, identity.entity);
  if (!(await services.store.bindGk(gk.uri, block))) throw conflict("the group key was bound by a concurrent request", "ERR_GK_BOUND");
  return { status: 200, gk: signed };
};

/** `retrieve <gk uri>` with `entity` (§9 Get): the policy decides, from the membership index. */
export const getGk: Handler = async ({ services, request, identity, target }) => {
  const gk = await services.store.getGk(gkUriOf(services, target));
  if (!gk) throw notFound(`no group key ${gkUriOf(services, target)}`, "ERR_UNKNOWN_GK");
  if (typeof request.entity !== "string") throw badRequest("field 'entity' is required (the entity to wrap the key to)", "ERR_FIELD");
  if (normalizeEntity(request.entity) !== identity.entity) {
    throw forbidden("field 'entity' must be the authenticated entity", "ERR_ENTITY_MISMATCH");
  }
  if (!gk.block) {
    if (gk.requester !== identity.entity) throw forbidden("this group key is not bound to a group yet: only its creator may fetch it", "ERR_GK_UNBOUND");
  } else if (!(await isEntitled(services.store, gk.block, identity.entity, services.settings.policy))) {
    throw forbidden(`policy ${services.settings.policy}: ${describePolicy(services.settings.policy)}`, "ERR_POLICY");
  }
  return { status: 200, gk: await signedGk(services, gk, identity.entity) };
};
