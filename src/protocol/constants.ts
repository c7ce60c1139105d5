/** Constants of the wire profile (PROTOCOL.md). One place, so that no name is spelled twice. */
export const PROTOCOL_NAME = "draft-abiggs-saag-key-management-service-03";
export const CONTENT_ENCRYPTION = "A256GCM";
export const JOSE_CONTENT_TYPE = "application/jose";
export const WELL_KNOWN_KMS_PATH = "/.well-known/kms";
export const MESSAGES_PATH = "/kms/messages";
/** §3: the WebSocket binding's upgrade path and subprotocol. */
export const WEBSOCKET_PATH = "/kms/ws";
export const WEBSOCKET_SUBPROTOCOL = "keyward.kms.v1";
/** §7: the WebFinger link relation that points at an entity's key set. */
export const REL_ENTITY_KEYS = "urn:x-keyward:rel:entity-keys";
/** §12: the WebFinger link relation naming the entity's home KMS (`href` = its KMS URI). */
export const REL_KMS = "urn:x-keyward:rel:kms";

/** §10 defaults. */
export const DEFAULT_LIMITS = {
  messageBytes: 1024 * 1024,
  batchMessages: 50,
  blocksPerAppend: 100,
  operationsPerBlock: 10_000,
  ephemeralKeyLifetimeSeconds: 3600,
  clockSkewSeconds: 300,
} as const;

/** §5: a channel refuses further requests after this many messages (forces re-keying). */
export const CHANNEL_MESSAGE_LIMIT = 2 ** 24;

/** §2: key management algorithms accepted for a request to the static key, by key type. */
export const STATIC_KEY_ALGORITHMS = {
  EC: ["ECDH-ES+A256KW", "ECDH-ES"],
  RSA: ["RSA-OAEP", "RSA-OAEP-256"],
} as const;

/** §2: signature algorithm the KMS uses with its static key. */
export const STATIC_SIGNING_ALGORITHM = { EC: "ES256", RSA: "RS256" } as const;
/** What clients accept from a KMS static key (PS256 accepted as the profile says). */
export const STATIC_VERIFY_ALGORITHMS = { EC: ["ES256"], RSA: ["RS256", "PS256"] } as const;

/** The methods of §4 and their aliases. */
export const METHODS = ["create", "retrieve", "update", "delete"] as const;
export type Method = (typeof METHODS)[number];
export const METHOD_ALIASES: Readonly<Record<string, Method>> = { post: "create", get: "retrieve" };
