/**
 * Group Membership Block Chain (GMBC) primitives (PROTOCOL.md §8): parse, sign, replay and verify
 * blocks. Isomorphic: WebCrypto through `jose` only, no Node APIs.
 *
 * @example
 * import { verifyChain, signAppendedBlock, buildAppendedPayload } from "./primitives/gmbc/index.js";
 */
export type { AppendedPayload, GenesisPayload, Operation, OpType, ParsedBlock } from "./types.js";
export { parseBlock, parseGenesisOperations, type ParseBlockOptions } from "./parse-block.js";
export { Membership, applyOperations, membershipAt, samePrincipal } from "./membership.js";
export {
  buildAppendedPayload,
  rfc3339Now,
  signAppendedBlock,
  type AppendedPayloadInput,
  type BlockSigningAlgorithm,
} from "./sign-block.js";
export {
  ChainVerificationError,
  signatureAlgorithmsFor,
  verifyAppendedBlockSignature,
  type SignatureVerifier,
  verifyChain,
  type ChainErrorCode,
  type VerifiedChain,
  type VerifyChainOptions,
} from "./verify-chain.js";
