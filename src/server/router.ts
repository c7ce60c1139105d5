import type { Method } from "../protocol/constants.js";
import { methodNotAllowed, notFound } from "../protocol/errors.js";
import type { ResolvedUri } from "../protocol/uri.js";
import type { Handler } from "./context.js";
import { deleteEphemeralKey } from "./handlers/delete-ephemeral-key.js";
import { ping } from "./handlers/ping.js";

/**
 * Where each request goes: a path pattern (":id" matches one segment) and one handler per method.
 * A path that matches nothing is 404; a known path without the method is 405 (§4's order).
 * `create /ecdhe` is not here: key agreement is encrypted to the static key, not to a channel,
 * so the core handles it before routing (src/server/key-agreement.ts).
 */
const routes: readonly { pattern: readonly string[]; methods: Partial<Record<Method, Handler>> }[] = [
  { pattern: ["ping"], methods: { update: ping } },
  { pattern: ["ecdhe"], methods: {} },
  { pattern: ["ecdhe", ":id"], methods: { delete: deleteEphemeralKey } },
];

export function route(target: ResolvedUri, method: Method): Handler {
  if (target.foreign) throw notFound(`${target.path} names another KMS`, "ERR_FOREIGN_AUTHORITY");
  for (const { pattern, methods } of routes) {
    if (pattern.length !== target.segments.length) continue;
    if (!pattern.every((p, i) => p === ":id" || p === target.segments[i])) continue;
    const handler = methods[method];
    if (!handler) throw methodNotAllowed(`'${method}' is not supported on ${target.path}`, "ERR_METHOD_NOT_ALLOWED");
    return handler;
  }
  throw notFound(`nothing at ${target.path}`, "ERR_NOT_FOUND");
}
