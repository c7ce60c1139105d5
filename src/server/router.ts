import type { Method } from "../protocol/constants.js";
import { methodNotAllowed, notFound } from "../protocol/errors.js";
import { objectUri, type ResolvedUri } from "../protocol/uri.js";
import type { CoreServices, Handler } from "./context.js";
import { deleteEphemeralKey } from "./handlers/delete-ephemeral-key.js";
import { listEntityKeys, registerEntityKey, revokeEntityKey } from "./handlers/entity-keys.js";
import { appendBlocks } from "./handlers/gmbc-append.js";
import { createChain } from "./handlers/gmbc-genesis.js";
import { getChain } from "./handlers/gmbc-get.js";
import { bindGk, createGk, getGk } from "./handlers/gk.js";
import { ping } from "./handlers/ping.js";
import { echo } from "../protocol/echo.js";

interface Route {
  /** Path segments; ":id" matches any one segment. */
  readonly pattern: readonly string[];
  readonly methods: Partial<Record<Method, Handler>>;
  /** For object routes: does the named object exist? (404 comes before 405, §4.) */
  readonly exists?: (services: CoreServices, target: ResolvedUri) => Promise<boolean>;
}

/**
 * Where each request goes: one handler per (path, method). A path that matches nothing, or names an
 * object that does not exist, is 404; a known object without the method is 405 (§4's order).
 * `create /ecdhe` is not here: key agreement is encrypted to the static key, not to a channel, so
 * the core handles it before routing (src/server/key-agreement.ts).
 */
const routes: readonly Route[] = [
  { pattern: ["ping"], methods: { update: ping } },
  { pattern: ["ecdhe"], methods: {} },
  {
    pattern: ["ecdhe", ":id"],
    methods: { delete: deleteEphemeralKey },
    exists: async (s, t) => (await s.store.getChannel(objectUri(s.settings.authority, "ecdhe", t.segments[1]!))) !== undefined,
  },
  { pattern: ["entities", "keys"], methods: { create: registerEntityKey } },
  { pattern: ["entities", ":id", "keys"], methods: { retrieve: listEntityKeys } },
  { pattern: ["entities", ":id", "keys", ":id"], methods: { delete: revokeEntityKey } },
  { pattern: ["blocks"], methods: { create: createChain } },
  {
    pattern: ["blocks", ":id"],
    methods: { create: appendBlocks, retrieve: getChain },
    exists: async (s, t) => (await s.store.getChain(objectUri(s.settings.authority, "blocks", t.segments[1]!))) !== undefined,
  },
  { pattern: ["gks"], methods: { create: createGk } },
  {
    pattern: ["gks", ":id"],
    methods: { update: bindGk, retrieve: getGk },
    exists: async (s, t) => (await s.store.getGk(objectUri(s.settings.authority, "gks", t.segments[1]!))) !== undefined,
  },
];

export async function route(services: CoreServices, target: ResolvedUri, method: Method): Promise<Handler> {
  if (target.foreign) throw notFound(`${echo(target.path)} names another KMS`, "ERR_FOREIGN_AUTHORITY");
  for (const { pattern, methods, exists } of routes) {
    if (pattern.length !== target.segments.length) continue;
    if (!pattern.every((p, i) => p === ":id" || p === target.segments[i])) continue;
    const handler = methods[method];
    if (handler) return handler;
    if (exists && !(await exists(services, target))) throw notFound(`nothing at ${echo(target.path)}`, "ERR_NOT_FOUND");
    throw methodNotAllowed(`'${method}' is not supported on ${echo(target.path)}`, "ERR_METHOD_NOT_ALLOWED");
  }
  throw notFound(`nothing at ${echo(target.path)}`, "ERR_NOT_FOUND");
}

/**
 * Whether the object a routed request names exists, for the routes that name objects (true for
 * collections and operations without an object). §12's peer checks come after §4's 404, so the
 * core asks this before them.
 *
 * @example
 * if (!(await targetExists(services, target))) throw notFound("nothing at /gks/1");
 */
export async function targetExists(services: CoreServices, target: ResolvedUri): Promise<boolean> {
  for (const { pattern, exists } of routes) {
    if (pattern.length !== target.segments.length) continue;
    if (!pattern.every((p, i) => p === ":id" || p === target.segments[i])) continue;
    return exists ? exists(services, target) : true;
  }
  return true;
}
