/**
 * Shapes of the Group Membership Block Chain (GMBC, PROTOCOL.md §8 and spec/primitives-summary.md).
 * Every entity in these types is written as the profile writes it (§1, §7): `user@domain`, no
 * `acct:` prefix, domain in lower case. The KMS itself (curator, and creator of the genesis block)
 * is named by its KMS URI, `kms://<authority>`.
 */

/**
 * What an operation does to the membership: `add` an entity that is not a member, or `remove`
 * one that is.
 *
 * @example
 * const optype: OpType = "add";
 */
export type OpType = "add" | "remove";

/**
 * One membership change inside a block.
 *
 * @example
 * const op: Operation = { entity: "bob@example.com", optype: "add" };
 */
export interface Operation {
  entity: string;
  optype: OpType;
}

/**
 * The payload of a chain's first block, as the KMS builds and signs it (§8): exactly these six
 * members. `curator` and `creator` are both the KMS URI; every operation is an `add`.
 *
 * @example
 * const genesis: GenesisPayload = {
 *   uri: "kms://kms.example.com/blocks/7f3a",
 *   nonce: "0b9a6a2e-4ad4-4c43-9d0e-0d4c1f3a8e52",
 *   curator: "kms://kms.example.com",
 *   creator: "kms://kms.example.com",
 *   created: "2015-11-02T19:02:15Z",
 *   operations: [{ entity: "alice@example.com", optype: "add" }],
 * };
 */
export interface GenesisPayload {
  uri: string;
  nonce: string;
  curator: string;
  creator: string;
  created: string;
  operations: Operation[];
}

/**
 * The payload of every later block: signed by its `creator` (a member), linked to the block
 * before it by `antecedent` (that block's hash, lower-case hex SHA-256 of its compact JWS).
 *
 * @example
 * const appended: AppendedPayload = {
 *   antecedent: "335c570a7bd2fd92b2db01216bc166803cde20858b353102d67d632f839bb6f1",
 *   creator: "alice@example.com",
 *   created: "2015-11-02T19:13:15Z",
 *   operations: [{ entity: "charlie@example.com", optype: "add" }],
 * };
 */
export interface AppendedPayload {
  antecedent: string;
  creator: string;
  created: string;
  operations: Operation[];
}

/**
 * A block decoded by `parseBlock`: its compact JWS as given, its hash, its protected header and
 * its validated, normalized payload. Decoding proves nothing about who signed it.
 *
 * @example
 * const block = await parseBlock(jws, { maxOperations: 10_000 });
 * if (!block.genesis) console.log((block.payload as AppendedPayload).antecedent);
 */
export interface ParsedBlock {
  jws: string;
  hash: string;
  header: { alg: string; kid?: string };
  payload: GenesisPayload | AppendedPayload;
  genesis: boolean;
}
