import net from "node:net";
import http from "node:http";

/** One HTTP response as the load generator needs it. */
export interface SimpleResponse {
  readonly status: number;
  readonly body: Buffer;
}

/** A client that POSTs a body on one of its keep-alive connections and resolves with the response. */
export interface PostClient {
  /** POST on connection `slot` (0 <= slot < connections). One request in flight per slot. */
  post(slot: number, body: string): Promise<SimpleResponse>;
  /** Closes the connections (the WebSocket and XMPP clients of `transports.ts` may take a moment: await it). */
  close(): void | Promise<void>;
}

const HEADER_END = Buffer.from("\r\n\r\n");

/**
 * One keep-alive HTTP/1.1 connection written to and parsed by hand (no http.Agent, no parser
 * objects per request): the cheapest client Node can be, so that on one core it can drive a
 * server on another core without becoming the bottleneck. Understands responses with a
 * Content-Length (what Node's http server sends when the handler sets it, as both servers here do).
 */
class RawConnection {
  private readonly socket: net.Socket;
  private buf: Buffer = Buffer.alloc(0);
  private pending?: { resolve: (r: SimpleResponse) => void; reject: (e: Error) => void };
  private headerLen = -1;
  private bodyLen = -1;
  private status = 0;
  private readonly ready: Promise<void>;

  constructor(host: string, port: number, private readonly head: string) {
    this.socket = net.connect({ host, port, noDelay: true });
    this.ready = new Promise((resolve, reject) => {
      this.socket.once("connect", () => resolve());
      this.socket.once("error", reject);
    });
    this.socket.on("data", (chunk: Buffer) => this.onData(chunk));
    this.socket.on("error", (e) => this.fail(e));
    this.socket.on("close", () => this.fail(new Error("connection closed by the server")));
  }

  async post(body: string): Promise<SimpleResponse> {
    await this.ready;
    if (this.pending) throw new Error("one request at a time per connection");
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject };
      this.socket.write(`${this.head}${Buffer.byteLength(body)}\r\n\r\n${body}`, "latin1");
    });
  }

  private onData(chunk: Buffer): void {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    if (this.headerLen < 0) {
      const end = this.buf.indexOf(HEADER_END);
      if (end < 0) return;
      const head = this.buf.toString("latin1", 0, end);
      this.status = Number(head.slice(9, 12));
      const m = /\r\ncontent-length:[ \t]*(\d+)/i.exec(head);
      if (!m) return this.fail(new Error(`response without Content-Length: ${head.split("\r\n")[0]}`));
      this.headerLen = end + 4;
      this.bodyLen = Number(m[1]);
    }
    if (this.buf.length < this.headerLen + this.bodyLen) return;
    const body = this.buf.subarray(this.headerLen, this.headerLen + this.bodyLen);
    const rest = this.buf.subarray(this.headerLen + this.bodyLen);
    this.buf = rest.length ? Buffer.from(rest) : Buffer.alloc(0);
    this.headerLen = -1;
    const p = this.pending;
    this.pending = undefined;
    p?.resolve({ status: this.status, body });
  }

  private fail(e: Error): void {
    const p = this.pending;
    this.pending = undefined;
    p?.reject(e);
  }

  close(): void {
    this.socket.removeAllListeners("close");
    this.socket.destroy();
  }
}

/** `connections` hand-parsed keep-alive connections to host:port, POSTing to `path`. */
export function rawClient(host: string, port: number, path: string, contentType: string, connections: number): PostClient {
  const head = `POST ${path} HTTP/1.1\r\nHost: ${host}:${port}\r\nContent-Type: ${contentType}\r\nContent-Length: `;
  const conns = Array.from({ length: connections }, () => new RawConnection(host, port, head));
  return {
    post: (slot, body) => conns[slot]!.post(body),
    close: () => conns.forEach((c) => c.close()),
  };
}

/** The same load through Node's own client: http.request on a keep-alive http.Agent. */
export function agentClient(host: string, port: number, path: string, contentType: string, connections: number): PostClient {
  const agent = new http.Agent({ keepAlive: true, maxSockets: connections, maxFreeSockets: connections });
  return {
    post: (_slot, body) =>
      new Promise((resolve, reject) => {
        const req = http.request(
          { host, port, path, method: "POST", agent, headers: { "content-type": contentType, "content-length": Buffer.byteLength(body) } },
          (res) => {
            const chunks: Buffer[] = [];
            res.on("data", (c: Buffer) => chunks.push(c));
            res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
            res.on("error", reject);
          },
        );
        req.on("error", reject);
        req.end(body);
      }),
    close: () => agent.destroy(),
  };
}
