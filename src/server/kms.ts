import http from "node:http";
import type { AddressInfo } from "node:net";
import type { Logger } from "pino";
import { Counter, Registry, collectDefaultMetrics } from "prom-client";
import type { Authenticator } from "../identity/authenticator.js";
import type { Store } from "../store/store.js";
import { createHttpHandler } from "../transport/http/http-binding.js";
import { EventLoopLag } from "../transport/http/event-loop-lag.js";
import { Barrier } from "./barrier/barrier.js";
import type { CoreSettings } from "./context.js";
import { KmsCore } from "./core.js";
import { discoveryRoutes, kmsDiscoveryDocument } from "./discovery.js";
import type { StaticKey } from "./static-key.js";

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
    /** The public HTTP origin, for absolute URLs (§3); default: the origin a request came to. */
    readonly publicUrl?: string;
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
 * the HTTP binding. `keyward serve` builds one from a data dir (src/server/start.ts); tests build
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
  private readonly links: KmsLink[] = [];

  private constructor(
    readonly core: KmsCore,
    private readonly options: KmsOptions,
    readonly registry: Registry,
  ) {}

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
    const maxLag = settings.maxEventLoopLagMs ?? DEFAULT_MAX_EVENT_LOOP_LAG_MS;
    if (maxLag > 0 && !this.lag) this.lag = new EventLoopLag().start();
    const lag = this.lag;
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
      ...(lag ? { overloaded: () => lag.currentMs() > maxLag } : {}),
      extraRoutes: discoveryRoutes({ store, domain: settings.domain, ...(settings.publicUrl ? { publicUrl: settings.publicUrl } : {}) }),
    });
  }

  async listen(host: string, port: number): Promise<{ url: string; port: number }> {
    const server = http.createServer({ keepAliveTimeout: 65_000 }, this.httpListener());
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => resolve());
    });
    this.purgeTimer = setInterval(() => void this.purgeExpiredChannels(), 10 * 60 * 1000);
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
