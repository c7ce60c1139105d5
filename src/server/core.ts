import { CONTENT_ENCRYPTION } from "../protocol/constants.js";
import { badRequest, conflict, forbidden, KmsError, notFound, storeUnavailable, unauthorized } from "../protocol/errors.js";
import { echo } from "../protocol/echo.js";
import { checkCommonHeaderRules, inspectCompact } from "../protocol/jose/compact.js";
import { openCommonMessage, sealCommonMessage } from "./channel-codec.js";
import { parseCredential, parseRequest, requestIdOf, type RequestId } from "../protocol/messages.js";
import { resolveUri } from "../protocol/uri.js";
import { StoreUnavailableError, type ChannelRecord } from "../store/store.js";
import type { CoreServices, RequestContext } from "./context.js";
import { createEphemeralKey, KeyAgreementError } from "./key-agreement.js";
import { route, targetExists } from "./router.js";
import { ActingForChecks } from "./federation/acting-for.js";

/** The collections an operation label may name; any other path is "other". */
const LABELLED_COLLECTIONS = new Set(["ping", "ecdhe", "entities", "blocks", "gks"]);

/**
 * The operation as metrics and logs name it: the method and the first path segment, but only from
 * a fixed set, since the path is the requester's choice (an unbounded label would grow the metrics
 * registry without end, and a long one would be written into every log line).
 */
function operationLabel(method: string, collection: string | undefined): string {
  return `${method} ${collection !== undefined && LABELLED_COLLECTIONS.has(collection) ? collection : "other"}`;
}

/** Who and what a refusal's audit record names (§13): as much as is known when it is refused. */
interface RefusalSubject {
  actor?: string;
  entity?: string;
  object?: string;
}

/** A reply to send on a live channel: a common message on that channel's key. */
class ChannelReply extends Error {
  constructor(readonly error: KmsError, readonly requestId?: RequestId) {
    super(error.reason);
  }
}

/** Per-operation outcome, for metrics and logs (never payloads). */
export interface RequestOutcome {
  readonly op: string;
  readonly status: number;
  readonly form: "jws" | "jwe";
  /** The refusal's reason (never contains request data beyond field names). */
  readonly reason?: string;
}

/**
 * The server core: one compact JOSE string in, one out, whatever the transport (§3). The form of
 * every error follows §4: it depends only on the key the message names.
 *
 *   message ── not JOSE ───────────────────────────────► JWS 400
 *      │ kid = static kid ── key agreement ─────────────► JWS (reply or error)
 *      │ kid = ephemeral uri ── unknown/deleted ────────► JWS 401
 *      │                    └─ expired/exhausted ───────► JWS 403
 *      │                    └─ bad header ──────────────► common 400
 *      │                    └─ does not decrypt ────────► JWS 401
 *      └─ decrypted: authenticate → identity → fields → replay → route → handler ► common message
 *
 * @example
 * const reply = await core.handle(compactJwe);
 */
export class KmsCore {
  /** §12: the curator's checks for requests on a KMS's certificate channel (holds the WebFinger cache). */
  private readonly actingFor: ActingForChecks;

  constructor(
    readonly services: CoreServices,
    private readonly observe: (outcome: RequestOutcome) => void = () => {},
  ) {
    this.actingFor = new ActingForChecks({ settings: services.settings });
  }

  async handle(message: string): Promise<string> {
    let info;
    try {
      info = inspectCompact(message);
      if (info.kind === "jws") throw badRequest("a request must be a JWE (a JWS is not a request)", "ERR_NOT_JWE");
    } catch (e) {
      return this.jwsError(e, undefined, "invalid");
    }
    const kid = info.header.kid;
    if (kid === this.services.staticKey.kid) {
      try {
        const reply = await createEphemeralKey(this.services, message, info.header);
        this.observe({ op: "ecdhe.create", status: 201, form: "jws" });
        return this.services.staticKey.sign(reply);
      } catch (e) {
        return e instanceof KeyAgreementError ? this.jwsError(e.error, e.requestId, "ecdhe.create") : this.jwsError(e, undefined, "ecdhe.create");
      }
    }
    return this.handleOnChannel(message, info.header, kid);
  }

  private async handleOnChannel(message: string, header: Readonly<Record<string, unknown>>, kid: unknown): Promise<string> {
    const { store, barrier, settings } = this.services;
    let channel: ChannelRecord | undefined;
    try {
      channel = await this.lookupChannel(kid);
    } catch (e) {
      return this.jwsError(e, undefined, "channel");
    }

    let key: Uint8Array;
    try {
      key = barrier.open(`ecdhe:${channel.uri}`, channel.sealedKey);
    } catch (e) {
      this.services.logger.error({ channel: channel.uri }, "a stored ephemeral key does not open: store tampered or wrong keyring");
      return this.jwsError(unauthorized("unknown ephemeral key", "ERR_UNKNOWN_EPHEMERAL_KEY"), undefined, "channel");
    }

    let op = "channel";
    let counted = false;
    // Filled in as the request is understood, for the audit record of a refusal.
    const subject: RefusalSubject = { object: channel.uri };
    try {
      try {
        checkCommonHeaderRules(header);
        if (header.alg !== "dir") throw badRequest("common messages use 'alg: dir'", "ERR_ALG");
        if (header.enc !== CONTENT_ENCRYPTION) throw badRequest(`content encryption must be ${CONTENT_ENCRYPTION}`, "ERR_ENC");
      } catch (e) {
        throw new ChannelReply(e as KmsError); // §4: on that key, without decrypting, no requestId
      }

      let plaintext: Buffer;
      try {
        plaintext = openCommonMessage(key, message);
      } catch {
        return this.jwsError(unauthorized("the message does not decrypt with its ephemeral key", "ERR_DECRYPT"), undefined, op, subject);
      }
      let payload: unknown;
      try {
        payload = JSON.parse(plaintext.toString("utf8"));
      } catch {
        throw new ChannelReply(badRequest("the request payload is not JSON", "ERR_PAYLOAD"));
      }
      const requestId = requestIdOf(payload);
      try {
        const credential = parseCredential(payload);
        const identity = await this.services.authenticator.authenticate(credential, { keyAgreement: false });
        subject.actor = identity.entity;
        if (identity.entity !== channel.entity || identity.kind !== channel.credentialKind ||
            identity.thumbprint !== channel.credentialThumbprint) {
          throw forbidden("the credential names another identity than the one this channel was opened for", "ERR_CHANNEL_IDENTITY");
        }
        const request = parseRequest(payload);
        const target = resolveUri(request.uri, settings.authority);
        op = operationLabel(request.method, target.foreign ? undefined : target.segments[0]);
        if (!target.foreign) subject.object = `kms://${settings.authority}${target.path}`;
        const recorded = await store.recordChannelMessage(channel.uri, JSON.stringify(request.requestId), settings.channelMessageLimit);
        if (recorded === "replay") throw conflict("requestId already used on this channel: replay refused", "ERR_REPLAY");
        if (recorded === "exhausted") return this.jwsError(forbidden("ephemeral key exhausted", "ERR_EPHEMERAL_KEY_EXHAUSTED"), requestId, op, subject);
        if (recorded === "unknown") return this.jwsError(unauthorized("unknown ephemeral key", "ERR_UNKNOWN_EPHEMERAL_KEY"), requestId, op, subject);
        counted = recorded === "recorded";

        const handler = await route(this.services, target, request.method);
        // §12: a KMS on a certificate channel acts as itself or, if a configured peer, for a user
        // (after §4's 404, before the operation's own checks).
        let acting: { identity: typeof identity; peer?: RequestContext["peer"] } = { identity };
        if (identity.kind === "certificate") {
          if (!(await targetExists(this.services, target))) throw notFound(`nothing at ${echo(target.path)}`, "ERR_NOT_FOUND");
          acting = await this.actingFor.decide({ identity, credential, request, target });
          if (acting.peer) Object.assign(subject, { actor: acting.peer.uri, entity: acting.identity.entity });
        }
        const result = await handler({ services: this.services, request, identity: acting.identity, target, channel, ...(acting.peer ? { peer: acting.peer } : {}) });
        this.observe({ op, status: result.status, form: "jwe" });
        return sealCommonMessage(key, channel.uri, { ...result, requestId: request.requestId });
      } catch (e) {
        throw new ChannelReply(e instanceof KmsError ? e : this.internal(e, op), requestId);
      }
    } catch (e) {
      if (!(e instanceof ChannelReply)) throw e;
      // Every reply encrypted under the channel's key counts toward its limit (§5), refusals
      // included: whoever has seen the kid could otherwise obtain encryptions under it without end.
      // A refusal caused by the store itself (503) is not counted: the store just failed, and
      // asking it again would double the wait of every request during an outage.
      if (!counted && e.error.code !== "ERR_STORE_UNAVAILABLE") {
        let outcome;
        try {
          outcome = await store.countChannelMessage(channel.uri, settings.channelMessageLimit);
        } catch (err) {
          // The store cannot count (it is unreachable, and the refusal is most likely its 503):
          // answer on the channel all the same, uncounted. The bound is a safety margin far below
          // GCM's random-IV limit, and an outage is not something a requester can cause at will.
          // (The outage itself was logged with the refusal, if it caused it: one line per request.)
          this.services.logger.debug({ op, err: err instanceof Error ? { name: err.name, message: err.message } : String(err) }, "refusal not counted: the store could not count it");
        }
        if (outcome === "exhausted") return this.jwsError(forbidden("ephemeral key exhausted", "ERR_EPHEMERAL_KEY_EXHAUSTED"), e.requestId, op, subject);
        if (outcome === "unknown") return this.jwsError(unauthorized("unknown ephemeral key", "ERR_UNKNOWN_EPHEMERAL_KEY"), e.requestId, op, subject);
      }
      const error = await this.auditRefusal(e.error, op, subject);
      this.observe({ op, status: error.status, form: "jwe", reason: error.reason });
      const body = { status: error.status, reason: error.reason, ...(e.requestId !== undefined ? { requestId: e.requestId } : {}) };
      return sealCommonMessage(key, channel.uri, body);
    }
  }

  /** §4 and §5: unknown or deleted key → 401; expired or exhausted → 403 (all as JWS errors). */
  private async lookupChannel(kid: unknown): Promise<ChannelRecord> {
    if (typeof kid !== "string") throw unauthorized("the message names no key ('kid' missing)", "ERR_UNKNOWN_EPHEMERAL_KEY");
    let uri: string;
    try {
      const target = resolveUri(kid, this.services.settings.authority);
      if (target.foreign || target.segments.length !== 2 || target.segments[0] !== "ecdhe") throw new Error();
      uri = `kms://${this.services.settings.authority}${target.path}`;
    } catch {
      throw unauthorized("unknown key", "ERR_UNKNOWN_EPHEMERAL_KEY");
    }
    const channel = await this.services.store.getChannel(uri);
    if (!channel) throw unauthorized("unknown ephemeral key", "ERR_UNKNOWN_EPHEMERAL_KEY");
    if (this.services.now().getTime() >= channel.expiresAt.getTime()) {
      throw forbidden("the ephemeral key used in the request has expired", "ERR_EPHEMERAL_KEY_EXPIRED");
    }
    if (channel.messageCount >= this.services.settings.channelMessageLimit) {
      throw forbidden("ephemeral key exhausted", "ERR_EPHEMERAL_KEY_EXHAUSTED");
    }
    return channel;
  }

  /**
   * §13: every 401/403 refusal is recorded before it is sent. Fails closed: when the record cannot
   * be written, the reply is that failure (500, or 503 when the store is unavailable) instead.
   * Returns the error to send.
   */
  private async auditRefusal(error: KmsError, op: string, subject: RefusalSubject = {}): Promise<KmsError> {
    if (error.status !== 401 && error.status !== 403) return error;
    try {
      await this.services.store.appendAudit({
        time: this.services.now(),
        operation: op,
        ...(subject.actor !== undefined ? { actor: subject.actor } : {}),
        ...(subject.entity !== undefined ? { entity: subject.entity } : {}),
        ...(subject.object !== undefined ? { object: subject.object } : {}),
        status: error.status,
        code: error.code,
      });
      return error;
    } catch (e) {
      return this.internal(e, op);
    }
  }

  private async jwsError(e: unknown, requestId: RequestId | undefined, op: string, subject?: RefusalSubject): Promise<string> {
    const error = await this.auditRefusal(e instanceof KmsError ? e : this.internal(e, op), op, subject);
    this.observe({ op, status: error.status, form: "jws", reason: error.reason });
    return this.services.staticKey.sign({
      status: error.status,
      reason: error.reason,
      ...(requestId !== undefined ? { requestId } : {}),
    });
  }

  private internal(e: unknown, op: string): KmsError {
    if (e instanceof StoreUnavailableError) {
      // One line per failed request: the store's code and message, never the request.
      this.services.logger.warn({ op, store: e.logFields() }, "store unavailable");
      return storeUnavailable();
    }
    // Log the failure's kind and message, never the request (it may carry tokens or keys).
    this.services.logger.error({ op, err: e instanceof Error ? { name: e.name, message: e.message } : String(e) }, "internal error");
    return new KmsError(500, "ERR_INTERNAL", "internal error");
  }
}
