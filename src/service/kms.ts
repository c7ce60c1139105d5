import type http from "node:http";
import type { AddressInfo } from "node:net";
import type { Logger } from "pino";
import { Counter, Registry, collectDefaultMetrics } from "prom-client";
import type { Authenticator } from "../identity/authenticator.js";
import type { Store } from "../store/store.js";
import { CorsPolicy, type CorsOrigins } from "../transport/http/cors.js";
import { createHttpHandler, DEFAULT_BODY_READ_TIMEOUT_MS } from "../transport/http/http-binding.js";
import { createHttpServer, defaultHttpServerLimits } from "../transport/http/http-server.js";
import { WsBinding } from "../transport/ws/ws-binding.js";
import { EventLoopLag } from "../transport/http/event-loop-lag.js";
import { Barrier } from "../server/barrier/barrier.js";
import type { CoreSettings } from "../server/context.js";
import { KmsCore } from "../server/core.js";
import { discoveryRoutes, kmsDiscoveryDocument } from "../server/discovery.js";
import type { StaticKey } from "../server/static-key.js";

/** Expired channels are kept this long (§4: remembered ≥ 24 h, so late requests get 403, not 401). */
const EXPIRED_CHANNEL_RETENTION_MS = 24 * 3600 * 1000;
/**
 * Shedding threshold: a request that waits 100 ms for the loop is already far beyond a healthy
 * p99 (a few ms), while GC pauses and bursts stay well below it.
 */
const DEFAULT_MAX_EVENT_LOOP_LAG_MS = 100;

export interface KmsOptions {
  readonly settings: CoreSettings & {
    readonly maxMessageBytes: number;
    readonly maxBatchMessages: number;
    readonly maxInFlight?: number;
    /** Event-loop lag (ms) above which new messages are shed with 429; 0 = never (default 100). */
    readonly maxEventLoopLagMs?: number;
    /** Seconds a client may take to send a request body (then HTTP 408); default 10. */
    readonly bodyReadTimeoutSeconds?: number;
    /** The public HTTP origin, for absolute URLs (§3); default: the origin a request came to. */
    readonly publicUrl?: string;
    /** Browser origins allowed (CORS and the WebSocket Origin check, §3); default `*`. */
    readonly corsOrigins?: CorsOrigins;
  };
  readonly store: Store;
  readonly masterKey: Uint8Array;
  readonly staticKey: StaticKey;
  readonly authenticator: Authenticator;
  readonly logger: Logger;
  readonly now?: () => Date;
}

/**
 * A connection the KMS holds open to a transport that it dials itself (the XMPP component link,
 * §3): `/readyz` fails while one is down, and `close()` closes them.
 *
 * @example
 * kms.attach(XmppBinding.start(options));
 */
export interface KmsLink {
  /** Throws while the link is down. */
  assertReady(): void;
  close(): Promise<void>;
}

/**
 * A KMS assembled from its parts: store behind the barrier, static key, authenticator, core, and
 * the HTTP binding. `keyward serve` builds one from a data dir (src/service/start.ts); tests build
 * one directly.
 *
 * @example
 * const kms = await Kms.create({ settings, store, masterKey, staticKey, authenticator, logger });
 * const { url } = await kms.listen("127.0.0.1", 0);
 */
export class Kms {
  private server?: http.Server;
  private purgeTimer?: NodeJS.Timeout;
  private lag?: EventLoopLag;
  private ws?: WsBinding;
  private readonly links: KmsLink[] = [];
  /** One origin policy for both bindings (CORS on HTTP, the Origin check on WebSocket upgrades). */
  private readonly cors: CorsPolicy;

  private constructor(
    readonly core: KmsCore,
    private readonly options: KmsOptions,
    readonly registry: Registry,
  ) {
    this.cors = new CorsPolicy(options.settings.corsOrigins ?? "*");
  }

  static async create(options: KmsOptions): Promise<Kms> {
    await options.store.migrate();
    const barrier = await Barrier.open(options.store, options.masterKey);
    const registry = new Registry();
    const requests = new Counter({
      name: "keyward_kms_requests_total",
      help: "KMS requests by operation, status and reply form",
      labelNames: ["op", "status", "form"],
      registers: [registry],
    });
    collectDefaultMetrics({ register: registry });
    const core = new KmsCore(
      {
        settings: options.settings,
        store: options.store,
        barrier,
        staticKey: options.staticKey,
        authenticator: options.authenticator,
        logger: options.logger,
        now: options.now ?? (() => new Date()),
      },
      ({ op, status, form, reason }) => {
        requests.inc({ op, status: String(status), form });
        // One line per refusal, so an operator can see why a client was turned away (never payloads).
        if (status >= 400) options.logger.info({ op, status, form, reason }, "request refused");
        else options.logger.debug({ op, status }, "request served");
      },
    );
    return new Kms(core, options, registry);
  }

  /**
   * Holds `link` for the KMS's lifetime: it counts for `/readyz` and is closed by `close()`.
   *
   * @example
   * kms.attach(XmppBinding.start({ ...config.xmpp, handle: (m) => kms.core.handle(m), ... }));
   */
  attach(link: KmsLink): void {
    this.links.push(link);
  }

  /** The `/.well-known/kms` document (§3). */
  wellKnown(): unknown {
    return kmsDiscoveryDocument(this.options.settings.authority, this.options.staticKey);
  }

  /** The Node request listener of the HTTP binding. */
  httpListener(): http.RequestListener {
    const { settings, store } = this.options;
    const overloaded = this.overloadSignal();
    return createHttpHandler({
      handle: (m) => this.core.handle(m),
      wellKnown: () => this.wellKnown(),
      ready: async () => {
        await store.ping();
        for (const link of this.links) link.assertReady();
      },
      metrics: async () => ({ contentType: this.registry.contentType, body: await this.registry.metrics() }),
      maxMessageBytes: settings.maxMessageBytes,
      maxBatchMessages: settings.maxBatchMessages,
      maxInFlight: settings.maxInFlight ?? 4096,
      bodyReadTimeoutMs: this.bodyReadTimeoutMs(),
      ...(overloaded ? { overloaded } : {}),
      cors: this.cors,
      extraRoutes: discoveryRoutes({ store, domain: settings.domain, authority: settings.authority, ...(settings.publicUrl ? { publicUrl: settings.publicUrl } : {}) }),
    });
  }

  private bodyReadTimeoutMs(): number {
    const seconds = this.options.settings.bodyReadTimeoutSeconds;
    return seconds === undefined ? DEFAULT_BODY_READ_TIMEOUT_MS : seconds * 1000;
  }

  /**
   * The HTTP server of this KMS, built once (not listening until {@link listen}): the one place
   * with its connection limits, where other bindings on the same listener attach (`upgrade`).
   */
  httpServer(): http.Server {
    this.server ??= createHttpServer(this.httpListener(), defaultHttpServerLimits(this.bodyReadTimeoutMs()));
    return this.server;
  }

  /**
   * The WebSocket binding (§3), for the HTTP server's `upgrade` event. One per KMS; listen()
   * attaches it, close() closes its connections.
   *
   * @example
   * server.on("upgrade", (req, socket, head) => kms.wsBinding().handleUpgrade(req, socket, head));
   */
  wsBinding(): WsBinding {
    const { settings } = this.options;
    const overloaded = this.overloadSignal();
    this.ws ??= new WsBinding({
      handle: (m) => this.core.handle(m),
      cors: this.cors,
      maxMessageBytes: settings.maxMessageBytes,
      ...(overloaded ? { overloaded } : {}),
      registry: this.registry,
      logger: this.options.logger,
    });
    return this.ws;
  }

  /** True while the event loop lags past `maxEventLoopLagMs` (shared by the bindings); undefined when shedding is off. */
  private overloadSignal(): (() => boolean) | undefined {
    const maxLag = this.options.settings.maxEventLoopLagMs ?? DEFAULT_MAX_EVENT_LOOP_LAG_MS;
    if (maxLag <= 0) return undefined;
    this.lag ??= new EventLoopLag().start();
    const lag = this.lag;
    return () => lag.currentMs() > maxLag;
  }

  async listen(host: string, port: number): Promise<{ url: string; port: number }> {
    const server = this.httpServer();
    const ws = this.wsBinding();
    server.on("upgrade", (req, socket, head) => ws.handleUpgrade(req, socket, head));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => resolve());
    });
    // A store that is down at purge time must not turn into an unhandled rejection (a crash).
    this.purgeTimer = setInterval(() => {
      this.purgeExpiredChannels().catch((e: unknown) =>
        this.options.logger.warn({ err: e instanceof Error ? { name: e.name, message: e.message } : String(e) }, "purging expired channels failed"),
      );
    }, 10 * 60 * 1000);
    this.purgeTimer.unref();
    const address = server.address() as AddressInfo;
    const h = address.family === "IPv6" ? `[${address.address}]` : address.address;
    return { url: `http://${h}:${address.port}`, port: address.port };
  }

  async purgeExpiredChannels(): Promise<number> {
    const now = (this.options.now ?? (() => new Date()))();
    return this.options.store.purgeChannels(new Date(now.getTime() - EXPIRED_CHANNEL_RETENTION_MS));
  }

  /** Stops accepting connections, lets in-flight requests finish, closes the store. */
  async close(): Promise<void> {
    for (const link of this.links.splice(0)) await link.close();
    if (this.purgeTimer) clearInterval(this.purgeTimer);
    this.lag?.stop();
    // Upgraded sockets hold server.close() open: the WebSocket binding closes them first.
    await this.ws?.close();
    const server = this.server;
    if (server) {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      });
    }
    await this.options.store.close();
  }
}
