/** The Keyward client SDK (isomorphic: Node and browsers). */
export { KmsClient, type KmsClientOptions, type KmsInfo, type Channel } from "./kms-client.js";
export { KmsRequestError, KmsProtocolError } from "./errors.js";
export { KmsIdentityError, validateKmsIdentity, matchesDnsName } from "./kms-identity.js";
export { HttpTransport, type KmsTransport } from "./transport.js";
