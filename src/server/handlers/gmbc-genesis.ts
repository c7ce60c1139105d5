import { randomUUID } from "node:crypto";
import { parseGenesisOperations } from "../../primitives/gmbc/parse-block.js";
import { badRequest } from "../../protocol/errors.js";
import { isObject } from "../../protocol/messages.js";
import { kmsUri, objectUri } from "../../protocol/uri.js";
import type { Handler } from "../context.js";
import { rfc3339 } from "../key-agreement.js";
import { blockHashSync } from "../gmbc/node-crypto.js";
import { auditOf } from "../audit.js";

/**
 * `create /blocks` with `blockPayload` (§8 Genesis): the KMS builds, signs and stores the genesis
 * block; `creator`/`created` given by the client are ignored (the KMS is the creator). The
 * requester is recorded for audit, not in the block.
 */
export const createChain: Handler = async (ctx) => {
  const { services, request, identity } = ctx;
  const { settings, staticKey, store } = services;
  if (!isObject(request.blockPayload)) throw badRequest("field 'blockPayload' is required and must be an object", "ERR_FIELD");
  const operations = parseGenesisOperations(request.blockPayload.operations, settings.maxOperationsPerBlock);
  const kms = kmsUri(settings.authority);
  const now = services.now();
  const created = rfc3339(now);
  const uri = objectUri(settings.authority, "blocks", randomUUID());
  // Exactly the six members of §8, in this order.
  const jws = await staticKey.sign({ uri, nonce: randomUUID(), curator: kms, creator: kms, created, operations });
  const hash = blockHashSync(jws);
  await store.createChain(
    { uri, requester: identity.entity, created: now },
    { position: 0, hash, jws, creator: kms, created: new Date(created) },
    operations.map((o) => o.entity),
    auditOf(ctx, { operation: "gmbc.genesis", object: uri, status: 201 }),
  );
  services.logger.info({ op: "gmbc.genesis", chain: uri, requester: identity.entity, members: operations.length }, "chain created");
  return { status: 201, block: jws };
};
