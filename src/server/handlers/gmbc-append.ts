import { auditOf } from "../audit.js";
import { parseBlock } from "../../primitives/gmbc/parse-block.js";
import { verifyAppendedBlockSignature } from "../../primitives/gmbc/verify-chain.js";
import type { AppendedPayload, ParsedBlock } from "../../primitives/gmbc/types.js";
import { badRequest, conflict, forbidden, notFound } from "../../protocol/errors.js";
import { kmsUri } from "../../protocol/uri.js";
import type { MembershipChange, NewBlock } from "../../store/store.js";
import type { Handler } from "../context.js";
import { chainUriOf } from "./gmbc-get.js";
import { blockHashSync, verifyBlockSignature } from "../gmbc/node-crypto.js";
import { echo } from "../../protocol/echo.js";

/**
 * `create <chain uri>` with `blocks` (§8 Append): every check, all or nothing, in the profile's
 * order: limits and parsing, `created`, signatures and in-request links (400); the tail (409);
 * then block by block the creator's membership (403) and its operations (400). Membership is read
 * from the index at the tail's position, never by replaying the chain; the store re-checks the
 * tail in the same transaction as the insert, so two appends on one tail cannot both land.
 */
export const appendBlocks: Handler = async (ctx) => {
  const { services, request, target } = ctx;
  const { settings, store } = services;
  const chainUri = chainUriOf(settings.authority, target);
  const chain = await store.getChain(chainUri);
  if (!chain) throw notFound(`no chain ${echo(chainUri)}`, "ERR_UNKNOWN_CHAIN");

  const input = request.blocks;
  if (!Array.isArray(input) || input.length === 0) throw badRequest("field 'blocks' must be a non-empty array of JWS strings", "ERR_FIELD");
  if (input.length > settings.maxBlocksPerAppend) {
    throw badRequest(`field 'blocks' holds ${input.length} blocks; at most ${settings.maxBlocksPerAppend} per append`, "ERR_LIMIT");
  }
  const curator = kmsUri(settings.authority);
  const blocks: ParsedBlock[] = [];
  for (const [i, jws] of input.entries()) {
    if (typeof jws !== "string") throw badRequest(`blocks[${i}] must be a JWS compact string`, "ERR_BLOCK");
    const block = await parseBlock(jws, { maxOperations: settings.maxOperationsPerBlock, curator, deferOperationChecks: true, hash: blockHashSync }).catch((e: Error & { reason?: string }) => {
      throw badRequest(`blocks[${i}]: ${e.reason ?? e.message}`, "ERR_BLOCK");
    });
    if (block.genesis) throw badRequest(`blocks[${i}] is a genesis block; only appended blocks can be appended`, "ERR_BLOCK");
    blocks.push(block);
  }
  const latest = services.now().getTime() + settings.clockSkewSeconds * 1000;
  for (const [i, b] of blocks.entries()) {
    if (Date.parse((b.payload as AppendedPayload).created) > latest) {
      throw badRequest(`blocks[${i}]: 'created' is more than ${settings.clockSkewSeconds} s in the future`, "ERR_BLOCK_CREATED");
    }
  }
  // §10: the request's whole signature cost is bounded before any signature is checked. A block
  // with `kid` costs one verification; one without costs one per key of its creator.
  const keysOf = new Map<string, Record<string, unknown>[]>();
  let cost = 0;
  for (const b of blocks) {
    const creator = (b.payload as AppendedPayload).creator;
    if (!keysOf.has(creator)) keysOf.set(creator, (await store.listEntityKeys(creator)).map((k) => k.jwk));
    cost += b.header.kid !== undefined ? 1 : keysOf.get(creator)!.length;
  }
  if (cost > settings.maxSignatureChecksPerAppend) {
    throw badRequest(
      `these blocks would cost ${cost} signature verifications, more than the ${settings.maxSignatureChecksPerAppend} one append may: put the signing key's 'kid' in each block's header`,
      "ERR_TOO_MANY_SIGNATURE_CHECKS",
    );
  }
  for (const [i, b] of blocks.entries()) {
    const keys = keysOf.get((b.payload as AppendedPayload).creator)!;
    await verifyAppendedBlockSignature(b, keys as never, verifyBlockSignature).catch((e: Error & { reason?: string }) => {
      throw badRequest(`blocks[${i}]: ${e.reason ?? e.message}`, "ERR_BLOCK_SIGNATURE");
    });
    if (i > 0 && (b.payload as AppendedPayload).antecedent !== blocks[i - 1]!.hash) {
      throw badRequest(`blocks[${i}]: 'antecedent' is not the hash of blocks[${i - 1}]`, "ERR_BLOCK_LINK");
    }
  }
  if ((blocks[0]!.payload as AppendedPayload).antecedent !== chain.tailHash) {
    throw conflict("the first block's antecedent is not the chain's tail: fetch the new blocks and retry", "ERR_STALE_TAIL");
  }

  // Membership as of each block, from the index at the tail plus this request's own changes.
  const tailPosition = chain.length - 1;
  const overlay = new Map<string, boolean>();
  const isMember = async (entity: string) => overlay.get(entity) ?? (await store.isMemberAt(chainUri, entity, tailPosition));
  const changes: MembershipChange[] = [];
  const newBlocks: NewBlock[] = [];
  for (const [i, b] of blocks.entries()) {
    const p = b.payload as AppendedPayload;
    const position = chain.length + i;
    if (!(await isMember(p.creator))) {
      throw forbidden(`blocks[${i}]: its creator ${echo(p.creator)} is not a member of the group as of the block before it`, "ERR_NOT_MEMBER");
    }
    if (p.operations.length === 0) throw badRequest(`blocks[${i}]: field 'operations' is empty: a block changes the membership`, "ERR_OPERATION");
    for (const op of p.operations) {
      if (op.entity === curator) {
        throw badRequest(`blocks[${i}]: an operation names the curator ${curator}, a permanent member that cannot be added or removed`, "ERR_OPERATION");
      }
      const member = await isMember(op.entity);
      if (op.optype === "add" && member) throw badRequest(`blocks[${i}]: 'add' of ${echo(op.entity)}, who is already a member`, "ERR_OPERATION");
      if (op.optype === "remove" && !member) throw badRequest(`blocks[${i}]: 'remove' of ${echo(op.entity)}, who is not a member`, "ERR_OPERATION");
      overlay.set(op.entity, op.optype === "add");
      changes.push({ entity: op.entity, optype: op.optype, position });
    }
    newBlocks.push({ position, hash: b.hash, jws: b.jws, creator: p.creator, created: new Date(p.created) });
  }

  const outcome = await store.appendBlocks(chainUri, chain.tailHash, newBlocks, changes, auditOf(ctx, { operation: "gmbc.append", object: chainUri, status: 200 }));
  if (outcome === "conflict") {
    throw conflict("another append landed on this tail first: fetch the new blocks and retry", "ERR_STALE_TAIL");
  }
  if (outcome === "unknown") throw notFound(`no chain ${echo(chainUri)}`, "ERR_UNKNOWN_CHAIN");
  return { status: 200, tail: newBlocks[newBlocks.length - 1]!.hash };
};
