import { badRequest, forbidden, notFound } from "../../protocol/errors.js";
import { objectUri, type ResolvedUri } from "../../protocol/uri.js";
import type { Handler } from "../context.js";
import { echo } from "../../protocol/echo.js";

/** The absolute URI of the chain a `/blocks/<id>` target names. */
export function chainUriOf(authority: string, target: ResolvedUri): string {
  return objectUri(authority, "blocks", target.segments[1]!);
}

/**
 * `retrieve <chain uri>`, optional `antecedent` (§8 Get): the blocks in chain order, all or those
 * after `antecedent`. Current members only (or former members too, with gmbcReaders =
 * members-and-former); decided from the membership index.
 */
export const getChain: Handler = async ({ services, request, target, identity }) => {
  const { settings, store } = services;
  const chainUri = chainUriOf(settings.authority, target);
  const chain = await store.getChain(chainUri);
  if (!chain) throw notFound(`no chain ${echo(chainUri)}`, "ERR_UNKNOWN_CHAIN");
  const member = await store.isMemberAt(chainUri, identity.entity, chain.length - 1);
  const allowed = member || (settings.gmbcReaders === "members-and-former" && (await store.wasEverMember(chainUri, identity.entity)));
  if (!allowed) {
    throw forbidden(
      settings.gmbcReaders === "members" ? "only current members may read this chain" : "only current and former members may read this chain",
      "ERR_NOT_MEMBER",
    );
  }
  let after = -1;
  if (request.antecedent !== undefined) {
    if (typeof request.antecedent !== "string") throw badRequest("field 'antecedent' must be a block hash", "ERR_FIELD");
    // Only a block hash can name a block (and a store may not even be able to look up other text).
    const found = /^[0-9a-f]{64}$/.test(request.antecedent) ? await store.findBlock(request.antecedent) : undefined;
    if (!found || found.chainUri !== chainUri) throw notFound("field 'antecedent' names no block of this chain", "ERR_UNKNOWN_BLOCK");
    after = found.position;
  }
  const blocks = await store.getBlocks(chainUri, after);
  return { status: 200, blocks: blocks.map((b) => b.jws) };
};
