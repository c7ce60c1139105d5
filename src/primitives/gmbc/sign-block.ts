import { CompactSign } from "jose";
import { normalizeEntity } from "../../protocol/entity.js";
import { badRequest } from "../../protocol/errors.js";
import type { AppendedPayload, Operation } from "./types.js";

/** The signature algorithms an entity may sign blocks with (§2): PS256/RS256 with RSA, ES256 with EC P-256. */
export type BlockSigningAlgorithm = "PS256" | "RS256" | "ES256";

/** What `buildAppendedPayload` needs; `created` defaults to now. */
export interface AppendedPayloadInput {
  antecedent: string;
  creator: string;
  operations: readonly Operation[];
  created?: string;
}

/**
 * The current time as the profile writes timestamps (§1): RFC 3339 UTC without milliseconds.
 *
 * @example
 * rfc3339Now() // "2015-11-02T19:02:15Z"
 */
export function rfc3339Now(now: Date = new Date()): string {
  return now.toISOString().replace(/\.\d{3}Z$/, "Z");
}

/**
 * Builds the payload of a block to append to a chain (§8), members in the profile's order.
 * `creator` and every operation's entity are normalized (`acct:` removed, domain lower-cased);
 * an invalid one is a `KmsError` 400. Membership rules are not checked here: the KMS (and
 * `verifyChain`) do that.
 *
 * @example
 * const payload = buildAppendedPayload({
 *   antecedent: tailHash,
 *   creator: "acct:alice@Example.com",
 *   operations: [{ entity: "bob@example.com", optype: "add" }],
 * });
 * // { antecedent: tailHash, creator: "alice@example.com", created: "2025-...Z", operations: [...] }
 */
export function buildAppendedPayload(input: AppendedPayloadInput): AppendedPayload {
  const creator = normalizeEntity(input.creator);
  if (creator === undefined) throw badRequest(`block field 'creator' must be an acct entity (user@domain)`, "ERR_BLOCK");
  const operations = input.operations.map((op, i): Operation => {
    const entity = normalizeEntity(op.entity);
    if (entity === undefined) throw badRequest(`block field 'operations[${i}].entity' must be an acct entity`, "ERR_BLOCK");
    if (op.optype !== "add" && op.optype !== "remove") {
      throw badRequest(`block field 'operations[${i}].optype' must be 'add' or 'remove'`, "ERR_BLOCK");
    }
    return { entity, optype: op.optype };
  });
  return { antecedent: input.antecedent, creator, created: input.created ?? rfc3339Now(), operations };
}

/**
 * Signs an appended block as its creator (§8): a JWS compact serialization with protected
 * header `{alg, kid}`, where `kid` names the creator's registered entity key. The payload is
 * serialized with exactly the four members of `AppendedPayload`. `key` is the private key
 * (WebCrypto `CryptoKey`) whose algorithm fits `alg` (RSA-PSS for PS256, RSASSA-PKCS1-v1_5 for
 * RS256, ECDSA P-256 for ES256).
 *
 * @example
 * const { privateKey } = await generateKeyPair("ES256");
 * const jws = await signAppendedBlock(payload, privateKey, { alg: "ES256", kid: "alice-phone" });
 */
export async function signAppendedBlock(
  payload: AppendedPayload,
  key: CryptoKey,
  opts: { alg: BlockSigningAlgorithm; kid: string },
): Promise<string> {
  const body: AppendedPayload = {
    antecedent: payload.antecedent,
    creator: payload.creator,
    created: payload.created,
    operations: payload.operations.map(({ entity, optype }) => ({ entity, optype })),
  };
  return new CompactSign(new TextEncoder().encode(JSON.stringify(body)))
    .setProtectedHeader({ alg: opts.alg, kid: opts.kid })
    .sign(key);
}
