import net from "node:net";

/** A raw TCP client for HTTP tests that need what `fetch` will not send (partial bodies, bad framing, stalls). */
export interface RawSocket {
  readonly socket: net.Socket;
  /** Everything received so far, as latin1 text. */
  received(): string;
  /** The HTTP status of the first response received, or undefined before one arrives. */
  status(): number | undefined;
  /** True once the server closed (or reset) the connection. */
  isClosed(): boolean;
  /** Resolves when the connection is closed (by either side). */
  readonly closed: Promise<void>;
  /** Waits until the received text matches `re` (or the socket closes, or `timeoutMs` passes). */
  waitFor(re: RegExp, timeoutMs?: number): Promise<boolean>;
  write(data: string | Buffer): Promise<void>;
  destroy(): void;
}

/** Connects to 127.0.0.1:`port` and resolves once connected. */
export function openRaw(port: number): Promise<RawSocket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    let text = "";
    let closed = false;
    const waiters = new Set<() => void>();
    const poke = () => waiters.forEach((w) => w());
    socket.on("data", (d: Buffer) => {
      text += d.toString("latin1");
      poke();
    });
    socket.on("error", () => {}); // a reset is a close, for these tests
    const closedPromise = new Promise<void>((r) =>
      socket.once("close", () => {
        closed = true;
        poke();
        r();
      }),
    );
    socket.once("connect", () =>
      resolve({
        socket,
        received: () => text,
        status: () => {
          const m = /^HTTP\/1\.1 (\d{3})/.exec(text);
          return m ? Number(m[1]) : undefined;
        },
        isClosed: () => closed,
        closed: closedPromise,
        waitFor: (re, timeoutMs = 5000) =>
          new Promise((r) => {
            const check = () => {
              if (re.test(text) || closed) {
                clearTimeout(timer);
                waiters.delete(check);
                r(re.test(text));
              }
            };
            const timer = setTimeout(() => {
              waiters.delete(check);
              r(re.test(text));
            }, timeoutMs);
            waiters.add(check);
            check();
          }),
        write: (data) => new Promise<void>((r) => socket.write(data, () => r())),
        destroy: () => socket.destroy(),
      }),
    );
    socket.once("error", reject);
  });
}

/** The port of an `http://127.0.0.1:<port>` URL. */
export function portOf(url: string): number {
  return Number(new URL(url).port);
}
