import { component, xml, type Component, type IncomingContext } from "@xmpp/component";
import type { Element } from "@xmpp/xml";
import type { Logger } from "pino";
import { Gauge, type Registry } from "prom-client";

/** The namespace of the KMS payloads (§3). */
export const KMS_XMPP_NS = "urn:x-keyward:kms:1";
const DISCO_INFO_NS = "http://jabber.org/protocol/disco#info";
const STANZA_ERROR_NS = "urn:ietf:params:xml:ns:xmpp-stanzas";

/** What the XMPP binding needs from the rest of the server; it knows nothing else of it. */
export interface XmppBindingOptions {
  /** `xmpp://host:port`: the XMPP server's component port (XEP-0114). */
  readonly service: string;
  /** The component's JID (`kms.example.com`). */
  readonly domain: string;
  /** The component's shared secret. */
  readonly secret: string;
  /** The server core: one compact JOSE string in, one out (the same function the HTTP binding calls). */
  handle(message: string): Promise<string>;
  /** The `/.well-known/kms` document. */
  wellKnown(): unknown;
  /** A JWS error signed by the static key, for a message the KMS refuses before the core sees it (too large). */
  refuse(status: number, reason: string): Promise<string>;
  readonly maxMessageBytes: number;
  /**
   * The XMPP server's stanza size limit on the component stream (Prosody: `component_stanza_size_limit`,
   * 512 KiB by default). A reply that would exceed it is answered with a JWS 413 instead: the server
   * would otherwise close the whole component link (Prosody: `not-well-formed`). Default 512 KiB.
   */
  readonly maxStanzaBytes?: number;
  /** Messages in progress above which new ones are answered with a JWS 429 (as HTTP sheds with 429). */
  readonly maxInFlight: number;
  readonly logger: Logger;
  /** Where the `keyward_xmpp_connected` gauge is registered. */
  readonly registry?: Registry;
  /** Reconnect backoff: first delay and ceiling in ms (default 500 ms doubling to 30 s, with jitter). */
  readonly backoff?: { readonly initialMs: number; readonly maxMs: number };
  /** How long one connection attempt (TCP, stream, handshake) may take (default 10 s). */
  readonly attemptTimeoutMs?: number;
}

/** Messages of one sender (full JID) in the core at once; more wait their turn (§3's 50 per WebSocket connection). */
export const PER_SENDER_CONCURRENCY = 50;

/** Prosody's default `component_stanza_size_limit` (= its `s2s_stanza_size_limit`). */
const DEFAULT_MAX_STANZA_BYTES = 512 * 1024;

const encoder = new TextEncoder();
function utf8Length(s: string): number {
  return encoder.encode(s).length;
}

/** The bytes of `<iq type='result' to=… from=… id=…><kms xmlns=…>…</kms></iq>` around the reply text (over-estimated). */
function envelopeBytes(ctx: IncomingContext): number {
  const a = ctx.stanza.attrs;
  return utf8Length(`${a.from ?? ""}${a.to ?? ""}${a.id ?? ""}`) * 2 + 256;
}

function stanzaError(type: "modify" | "cancel", condition: string): Element {
  return xml("error", { type }, xml(condition, { xmlns: STANZA_ERROR_NS }));
}

/**
 * The XMPP binding of §3 (draft use case 3.2): the KMS connects to an XMPP server as an external
 * component (XEP-0114) and answers `kms` IQs with the core's reply, KMS errors included, as IQ
 * results to the sender's full JID. Stanza errors only for what is not a KMS message: `bad-request`
 * for a `kms` element without text, `service-unavailable` for any other payload. It also answers the
 * discovery IQ (the `/.well-known/kms` document) and XEP-0030 disco#info. The sender's JID is never
 * an identity: only the credential inside each message is, so the JID is not even passed on.
 *
 * The link is kept up with an exponential backoff; {@link XmppBinding.connected} (and the
 * `keyward_xmpp_connected` gauge) say whether it is up, for `/readyz`.
 *
 * @example
 * const xmpp = XmppBinding.start({ service: "xmpp://127.0.0.1:5347", domain: "kms.example.com", secret,
 *   handle: (m) => core.handle(m), wellKnown: () => kms.wellKnown(), refuse, maxMessageBytes: 1 << 20,
 *   maxInFlight: 4096, logger });
 * await xmpp.online();
 * await xmpp.close();
 */
export class XmppBinding {
  private readonly entity: Component;
  private readonly gauge?: Gauge;
  private isConnected = false;
  private closing = false;
  private attempting = false;
  private failures = 0;
  private timer?: NodeJS.Timeout;
  private inFlight = 0;
  /** Per sender (full JID): messages in the core, and those waiting for a turn. */
  private readonly senders = new Map<string, { running: number; waiting: Array<() => void> }>();
  private waiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];

  private constructor(private readonly opts: XmppBindingOptions) {
    this.entity = component({ service: opts.service, domain: opts.domain, password: opts.secret });
    // Our own reconnect loop (backoff, attempt timeout) instead of @xmpp/reconnect's fixed 1 s retry
    // that only starts after a first successful connection.
    this.entity.reconnect.stop();
    if (opts.registry) {
      this.gauge =
        (opts.registry.getSingleMetric("keyward_xmpp_connected") as Gauge | undefined) ??
        new Gauge({ name: "keyward_xmpp_connected", help: "1 while the XMPP component link (§3) is up, else 0", registers: [opts.registry] });
      this.gauge.set(0);
    }
    this.entity.on("error", (e) => {
      // Socket errors, stream errors (e.g. not-authorized: wrong secret; conflict: another KMS holds the JID).
      if (!this.closing) opts.logger.warn({ err: { name: e.name, message: e.message, condition: e.condition } }, "xmpp link error");
    });
    this.entity.on("online", () => {
      if (this.closing) {
        // An attempt that was under way when close() ran: do not leave a link behind.
        void withTimeout(this.entity.stop(), 3_000).catch(() => {});
        return;
      }
      this.isConnected = true;
      this.failures = 0;
      this.gauge?.set(1);
      opts.logger.info({ service: opts.service, domain: opts.domain }, "xmpp link up");
      for (const w of this.waiters.splice(0)) w.resolve();
    });
    this.entity.on("disconnect", () => {
      const was = this.isConnected;
      this.isConnected = false;
      this.gauge?.set(0);
      if (this.closing) return;
      if (was) opts.logger.warn({ service: opts.service }, "xmpp link down; reconnecting");
      if (!this.attempting) this.schedule();
    });
    this.entity.middleware.use((ctx, next) => this.onIq(ctx, next));
  }

  /**
   * Creates the binding and starts connecting in the background (a KMS whose XMPP server is down
   * still starts; it keeps trying, and `/readyz` says so).
   *
   * @example
   * const xmpp = XmppBinding.start(options);
   */
  static start(opts: XmppBindingOptions): XmppBinding {
    const binding = new XmppBinding(opts);
    void binding.attempt();
    return binding;
  }

  /** True while the component link is up (authenticated). */
  get connected(): boolean {
    return this.isConnected;
  }

  /**
   * Resolves once the link is up; rejects after `timeoutMs`.
   *
   * @example
   * await xmpp.online(10_000);
   */
  online(timeoutMs = 15_000): Promise<void> {
    if (this.isConnected) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`the XMPP link to ${this.opts.service} did not come up within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  /** Throws while the link is down (for `/readyz`). */
  assertReady(): void {
    if (!this.isConnected) throw new Error("the XMPP component link is down");
  }

  /** Closes the stream and the socket, and stops reconnecting. */
  async close(): Promise<void> {
    this.closing = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const wasConnected = this.isConnected;
    this.isConnected = false;
    this.gauge?.set(0);
    try {
      if (wasConnected) await withTimeout(this.entity.stop(), 3_000);
      else if (this.entity.status !== "offline" && this.entity.status !== "disconnect") await withTimeout(this.entity.disconnect(), 3_000);
    } catch {
      // closing anyway
    }
    for (const w of this.waiters.splice(0)) w.reject(new Error("the XMPP binding was closed"));
  }

  private schedule(): void {
    if (this.closing || this.timer) return;
    const { initialMs, maxMs } = this.opts.backoff ?? { initialMs: 500, maxMs: 30_000 };
    const base = Math.min(maxMs, initialMs * 2 ** Math.min(this.failures, 30));
    // Jitter (50–100 %): many KMS nodes losing one XMPP server do not come back in lockstep.
    const delay = Math.round(base * (0.5 + Math.random() / 2));
    this.failures++;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.attempt();
    }, delay);
    this.timer.unref();
  }

  private async attempt(): Promise<void> {
    if (this.closing || this.attempting || this.isConnected) return;
    this.attempting = true;
    let onOnline: (() => void) | undefined;
    try {
      const online = new Promise<void>((resolve) => {
        onOnline = resolve;
        this.entity.once("online", onOnline);
      });
      await withTimeout(
        (async () => {
          await this.entity.connect(this.opts.service);
          await this.entity.open({ domain: this.opts.domain });
          await online;
        })(),
        this.opts.attemptTimeoutMs ?? 10_000,
      );
    } catch (e) {
      if (!this.closing) this.opts.logger.debug({ err: { message: (e as Error).message } }, "xmpp connection attempt failed");
      if (this.entity.status !== "offline" && this.entity.status !== "disconnect") {
        await withTimeout(this.entity.disconnect(), 2_000).catch(() => {});
      }
    } finally {
      if (onOnline) this.entity.removeListener("online", onOnline);
      this.attempting = false;
      if (!this.isConnected && !this.closing) this.schedule();
    }
  }

  /**
   * Waits until `sender` has fewer than {@link PER_SENDER_CONCURRENCY} messages in the core (as the
   * WebSocket binding does per connection): one client's pipeline of thousands cannot take every
   * turn from the others. Its further IQs wait in order (none is dropped); they count towards
   * `maxInFlight`. Returns the function that gives the turn back.
   */
  private async turn(sender: string): Promise<() => void> {
    let entry = this.senders.get(sender);
    if (!entry) {
      entry = { running: 0, waiting: [] };
      this.senders.set(sender, entry);
    }
    const e = entry;
    if (e.running < PER_SENDER_CONCURRENCY) e.running++;
    else await new Promise<void>((resolve) => e.waiting.push(resolve)); // the releaser hands its turn over
    return () => {
      const next = e.waiting.shift();
      if (next) return next();
      e.running--;
      if (e.running === 0) this.senders.delete(sender);
    };
  }

  /**
   * One incoming IQ get/set with exactly one payload (xmpp.js's IQ callee answers the others with
   * `bad-request`, and replies to the sender's full JID from the address the IQ was sent to).
   * Returns the result's payload, an `<error/>` for a stanza error, or undefined for
   * `service-unavailable`.
   */
  private async onIq(ctx: IncomingContext, next: () => Promise<unknown>): Promise<unknown> {
    const el = ctx.element;
    if (ctx.name !== "iq" || !el) return next();
    // Only the component's own JID is a KMS: `someone@kms.example.com` names nothing here (RFC 6120 §10.5.3.1).
    if (ctx.to === undefined || ctx.to.local !== "" || ctx.to.domain !== this.opts.domain) return undefined;
    if (el.is("kms", KMS_XMPP_NS)) {
      // A kms payload in a get is a malformed request for a service we do offer, not an unknown one.
      if (ctx.type !== "set") return stanzaError("modify", "bad-request");
      const message = el.text().trim();
      if (message === "") return stanzaError("modify", "bad-request");
      // Shedding is a KMS answer too (§3: stanza errors only for what is not a KMS message): a JWS 429.
      if (this.inFlight >= this.opts.maxInFlight) return xml("kms", { xmlns: KMS_XMPP_NS }, await this.opts.refuse(429, "the KMS is overloaded: retry later"));
      this.inFlight++;
      const release = await this.turn(ctx.stanza.attrs.from ?? "");
      try {
        const reply =
          utf8Length(message) > this.opts.maxMessageBytes
            ? await this.opts.refuse(413, `a message is at most ${this.opts.maxMessageBytes} bytes`)
            : await this.opts.handle(message);
        const maxStanza = this.opts.maxStanzaBytes ?? DEFAULT_MAX_STANZA_BYTES;
        if (utf8Length(reply) + envelopeBytes(ctx) > maxStanza) {
          this.opts.logger.warn({ bytes: utf8Length(reply), maxStanza }, "xmpp: a reply over the XMPP server's stanza limit was replaced by a 413");
          return xml("kms", { xmlns: KMS_XMPP_NS }, await this.opts.refuse(413, `the reply is over the XMPP transport's stanza limit (${maxStanza} bytes): use the HTTP binding for this request`));
        }
        return xml("kms", { xmlns: KMS_XMPP_NS }, reply);
      } finally {
        release();
        this.inFlight--;
      }
    }
    if (el.is("discovery", KMS_XMPP_NS)) {
      if (ctx.type !== "get") return stanzaError("modify", "bad-request");
      return xml("discovery", { xmlns: KMS_XMPP_NS }, JSON.stringify(this.opts.wellKnown()));
    }
    if (el.is("query", DISCO_INFO_NS)) {
      if (ctx.type !== "get") return stanzaError("modify", "bad-request");
      // No nodes are served (XEP-0030 §3.2: item-not-found for an unknown node).
      if (el.attrs.node !== undefined) return stanzaError("cancel", "item-not-found");
      return xml(
        "query",
        { xmlns: DISCO_INFO_NS },
        xml("identity", { category: "component", type: "generic", name: "Keyward KMS" }),
        xml("feature", { var: DISCO_INFO_NS }),
        xml("feature", { var: KMS_XMPP_NS }),
      );
    }
    return undefined; // → service-unavailable
  }
}

async function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
