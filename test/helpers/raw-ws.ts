import type { IncomingMessage } from "node:http";
import { WebSocket } from "ws";

/** A reply frame as the KMS sends it (§3). */
export interface ReplyFrame {
  readonly id: string | null;
  readonly kmsMessage: string;
}

/**
 * A hand-driven WebSocket client for the binding's rules: raw frames out, reply frames in order
 * of arrival, the close code, or the HTTP status of a refused upgrade.
 */
export class RawSocket {
  readonly ws: WebSocket;
  /** Resolves when the upgrade succeeded; rejects with the HTTP status when it was refused. */
  readonly opened: Promise<void>;
  readonly closed: Promise<{ code: number; reason: string }>;
  /** The refused upgrade's response, when refused. */
  refusal?: IncomingMessage;
  pings = 0;
  private readonly frames: string[] = [];
  private waiters: (() => void)[] = [];

  constructor(url: string, opts: { protocols?: string[]; origin?: string; path?: string; autoPong?: boolean } = {}) {
    const target = url.replace(/^http/, "ws") + (opts.path ?? "/kms/ws");
    this.ws = new WebSocket(target, opts.protocols ?? [], {
      ...(opts.origin !== undefined ? { origin: opts.origin } : {}),
      autoPong: opts.autoPong ?? true,
    });
    this.opened = new Promise<void>((resolve, reject) => {
      this.ws.once("open", () => resolve());
      this.ws.once("unexpected-response", (_req, res) => {
        this.refusal = res;
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (body += d));
        res.once("end", () => {
          reject(Object.assign(new Error(`upgrade refused: HTTP ${res.statusCode}`), { status: res.statusCode, body }));
          this.ws.terminate();
        });
      });
      this.ws.once("error", reject);
    });
    this.opened.catch(() => undefined);
    this.closed = new Promise((resolve) => this.ws.once("close", (code, reason) => resolve({ code, reason: reason.toString() })));
    this.ws.on("error", () => undefined);
    this.ws.on("ping", () => this.pings++);
    this.ws.on("message", (data, isBinary) => {
      if (isBinary) return;
      this.frames.push(data.toString());
      const waiters = this.waiters;
      this.waiters = [];
      for (const w of waiters) w();
    });
  }

  /** Sends a text frame (a string as is, anything else as JSON). */
  send(frame: unknown): void {
    this.ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }

  /** The next reply frame (raw text), waiting up to `timeoutMs`. */
  async nextText(timeoutMs = 10_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (this.frames.length === 0) {
      if (Date.now() > deadline) throw new Error("no reply frame in time");
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(1, deadline - Date.now()));
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return this.frames.shift()!;
  }

  /** The next reply frame, parsed. */
  async next(timeoutMs?: number): Promise<ReplyFrame> {
    return JSON.parse(await this.nextText(timeoutMs)) as ReplyFrame;
  }

  /** Reply frames received and not yet taken. */
  get buffered(): number {
    return this.frames.length;
  }

  close(): void {
    this.ws.terminate();
  }
}
