import { forbidden, notFound } from "../../protocol/errors.js";
import { objectUri } from "../../protocol/uri.js";
import type { Handler } from "../context.js";
import { echo } from "../../protocol/echo.js";
import { auditOf } from "../audit.js";

/**
 * `delete <ephemeral key uri>` (§5): only on that same channel (another channel's key: 403); the
 * reply (204) is still encrypted under the deleted key, after which the key is unknown (JWS 401).
 */
export const deleteEphemeralKey: Handler = async (ctx) => {
  const { services, target, channel } = ctx;
  const uri = objectUri(services.settings.authority, "ecdhe", target.segments[1]!);
  if (channel?.uri !== uri) {
    const other = await services.store.getChannel(uri);
    if (!other) throw notFound(`no ephemeral key ${echo(uri)}`, "ERR_UNKNOWN_EPHEMERAL_KEY");
    throw forbidden("an ephemeral key can only be deleted on its own channel", "ERR_NOT_YOUR_CHANNEL");
  }
  await services.store.deleteChannel(uri, auditOf(ctx, { operation: "ecdhe.delete", object: uri, status: 204 }));
  return { status: 204 };
};
