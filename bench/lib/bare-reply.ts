/**
 * The fixed reply of the bare reference servers (`channel/bare-http.ts`, `transports/bare-ws.ts`,
 * `transports/bare-xmpp.ts`): about the size of a ping reply (a dir/A256GCM JWE of
 * {"status":200,"requestId":"..."}), so that the transport ceilings move the bytes a ping moves.
 */
export const PING_SIZED_REPLY =
  "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIiwia2lkIjoia21zOi8vbG9jYWxob3N0L2VjZGhlLzAwMDAwMDAwLTAwMDAtNDAwMC04MDAwLTAwMDAwMDAwMDAwMCJ9..AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA";
