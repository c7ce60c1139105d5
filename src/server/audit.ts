import type { JWK } from "jose";
import type { AuditEvent } from "../store/audit.js";
import type { RequestContext } from "./context.js";

/**
 * The audit record of a routed request (§13): the authenticated entity as `actor` (for a
 * federation peer acting for a user, the peer's `kms://` URI, with the user as `entity`), the
 * object, the status, and for a GK release the recipients' kids and the policy decision.
 *
 * @example
 * await store.bindGk(uri, block, auditOf(ctx, { operation: "gk.bind", object: uri, status: 200 }));
 */
export function auditOf(
  ctx: Pick<RequestContext, "services" | "identity" | "peer">,
  fields: { operation: string; object?: string; status: number; recipients?: readonly JWK[]; decision?: string },
): AuditEvent {
  return {
    time: ctx.services.now(),
    operation: fields.operation,
    actor: ctx.peer ? ctx.peer.uri : ctx.identity.entity,
    ...(ctx.peer ? { entity: ctx.identity.entity } : {}),
    ...(fields.object !== undefined ? { object: fields.object } : {}),
    status: fields.status,
    ...(fields.recipients ? { recipients: fields.recipients.map((k) => (typeof k.kid === "string" ? k.kid : "(no kid)")) } : {}),
    ...(fields.decision !== undefined ? { decision: fields.decision } : {}),
  };
}
