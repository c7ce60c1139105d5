import net from "node:net";

/** What the proxy does with connections: forward them, or one of two ways a store goes away. */
export type ProxyMode = "forwarding" | "cut" | "blackhole";

/**
 * A TCP proxy on loopback between a client (the KMS) and a server (PostgreSQL), for fault
 * injection. It forwards bytes both ways until told otherwise:
 *  - {@link TcpProxy.cut}: the server is down. Every open connection is reset (the client sees
 *    ECONNRESET) and the port stops listening (new connections get ECONNREFUSED).
 *  - {@link TcpProxy.blackhole}: the network silently drops everything. Open connections stay
 *    open but nothing is read or forwarded in either direction; new connections are accepted
 *    (as a SYN queue would) and never answered. Only the client's own timeouts end its waits.
 *  - {@link TcpProxy.restore}: forwarding again on the same port. After a blackhole, the held
 *    bytes flow as on a healed network path; after a cut, new connections are accepted.
 *
 * @example
 * const proxy = await TcpProxy.start({ host: "127.0.0.1", port: 5432 });
 * // connect to proxy.port ... then:
 * proxy.blackhole(); await sleep(1000); await proxy.restore(); await proxy.close();
 */
export class TcpProxy {
  private server: net.Server;
  private mode: ProxyMode = "forwarding";
  private readonly pairs = new Set<{ client: net.Socket; upstream: net.Socket }>();
  /** Connections accepted while blackholed: no upstream connection until restore (the SYN went nowhere). */
  private readonly waiting = new Set<net.Socket>();
  /** Connections accepted (all modes), for tests that check the client really reconnected. */
  accepted = 0;

  private constructor(
    private readonly target: { host: string; port: number },
    readonly port: number,
    server: net.Server,
  ) {
    this.server = server;
  }

  /** Listens on 127.0.0.1 (`port`, default a free one) and forwards to `target`. */
  static async start(target: { host: string; port: number }, port = 0): Promise<TcpProxy> {
    let proxy: TcpProxy | undefined;
    const server = net.createServer((socket) => proxy!.accept(socket));
    await listen(server, port);
    proxy = new TcpProxy(target, (server.address() as net.AddressInfo).port, server);
    return proxy;
  }

  get state(): ProxyMode {
    return this.mode;
  }

  /** Connections currently open through the proxy. */
  get openConnections(): number {
    return this.pairs.size;
  }

  private accept(client: net.Socket): void {
    this.accepted++;
    if (this.mode === "blackhole") {
      client.pause();
      this.waiting.add(client);
      const forget = () => {
        this.waiting.delete(client);
        client.destroy();
      };
      client.on("error", forget).on("close", forget);
      return;
    }
    this.connectUpstream(client);
  }

  private connectUpstream(client: net.Socket): void {
    const upstream = net.connect(this.target.port, this.target.host);
    const pair = { client, upstream };
    this.pairs.add(pair);
    const drop = () => {
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", drop).on("close", drop);
    upstream.on("error", drop).on("close", drop);
    client.pipe(upstream);
    upstream.pipe(client);
    client.resume();
  }

  private hold(pair: { client: net.Socket; upstream: net.Socket }): void {
    // Unpiping stops the flow; pausing stops reading, so the bytes wait in the kernel's buffers.
    pair.client.unpipe(pair.upstream);
    pair.upstream.unpipe(pair.client);
    pair.client.pause();
    pair.upstream.pause();
  }

  /** The server goes down: open connections are reset, the port refuses new ones. */
  async cut(): Promise<void> {
    this.mode = "cut";
    for (const { client, upstream } of [...this.pairs]) {
      client.resetAndDestroy();
      upstream.destroy();
    }
    for (const client of [...this.waiting]) client.resetAndDestroy();
    this.pairs.clear();
    this.waiting.clear();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** The network drops everything without closing anything. */
  blackhole(): void {
    this.mode = "blackhole";
    for (const pair of this.pairs) this.hold(pair);
  }

  /** Forwarding again, on the same port. */
  async restore(): Promise<void> {
    if (this.mode === "cut") {
      const server = net.createServer((socket) => this.accept(socket));
      await listen(server, this.port);
      this.server = server;
    } else if (this.mode === "blackhole") {
      for (const { client, upstream } of this.pairs) {
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
        upstream.resume();
      }
      this.mode = "forwarding";
      for (const client of [...this.waiting]) {
        this.waiting.delete(client);
        client.removeAllListeners("error").removeAllListeners("close");
        if (!client.destroyed) this.connectUpstream(client);
      }
    }
    this.mode = "forwarding";
  }

  /** Stops listening and destroys every connection. */
  async close(): Promise<void> {
    for (const { client, upstream } of [...this.pairs]) {
      client.destroy();
      upstream.destroy();
    }
    for (const client of [...this.waiting]) client.destroy();
    this.pairs.clear();
    this.waiting.clear();
    if (this.server.listening) await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

async function listen(server: net.Server, port: number): Promise<void> {
  // The port of a cut proxy is free for a moment: retry a few times if something raced for it.
  for (let attempt = 1; ; attempt++) {
    try {
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(port, "127.0.0.1", () => {
          server.off("error", reject);
          resolve();
        });
      });
      return;
    } catch (e) {
      if (attempt >= 20 || (e as NodeJS.ErrnoException).code !== "EADDRINUSE") throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}
