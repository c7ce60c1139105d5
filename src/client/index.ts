/** The Keyward client SDK (isomorphic: Node and browsers). */
export { KmsClient, type KmsClientOptions, type KmsInfo, type Channel } from "./kms-client.js";
export { KmsRequestError, KmsProtocolError, KmsTransportError } from "./errors.js";
export { KmsIdentityError, validateKmsIdentity, matchesDnsName } from "./kms-identity.js";
export { HttpTransport, type KmsTransport } from "./transport.js";
export {
  WebSocketTransport,
  type WebSocketTransportOptions,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./websocket-transport.js";
export {
  XmppTransport,
  xmppJsConnection,
  KMS_XMPP_NAMESPACE,
  type XmppTransportOptions,
  type XmppConnection,
  type XmppIqRequest,
  type XmppIqReply,
  type XmppJsClientLike,
  type XmppJsElementLike,
  type XmppJsXml,
} from "./xmpp-transport.js";
export {
  DeviceKey,
  type DeviceKeyType,
  type DeviceKeyAlgorithm,
  type DeviceCryptoKeyPair,
  type DeviceUnwrapAlgorithm,
  type KeyedJwk,
} from "./device-key.js";
export { GroupKeys, type GroupKey, type DeviceKeyLike } from "./group-keys.js";
export {
  Groups,
  historyOf,
  type GroupsOptions,
  type Group,
  type EntityKey,
  type HistoryEntry,
  type DeviceRegistration,
} from "./groups.js";
export {
  ChainVerificationError,
  Membership,
  type ChainErrorCode,
  type Operation,
  type OpType,
  type ParsedBlock,
  type VerifiedChain,
  type VerifyChainOptions,
} from "../primitives/gmbc/index.js";
