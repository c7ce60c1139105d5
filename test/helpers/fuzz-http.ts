import net from "node:net";

/**
 * Raw HTTP/1.1 over TCP for the byte-level fuzzer: sends exact bytes (lies, bad chunking and
 * truncations included) and reads every response the server writes until it closes.
 */

export interface RawResponse {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Buffer;
}

export interface RawExchange {
  /** Responses, in order (pipelined requests may get several). */
  readonly responses: RawResponse[];
  /** Bytes received that are not a complete response (a response cut off, or garbage). */
  readonly trailing: Buffer;
  /** The server closed the connection (rather than the client timing out). */
  readonly closedByServer: boolean;
}

/**
 * Connects to `port`, writes `bytes` and collects what comes back until the server closes.
 *
 * When to half-close matters: Node's HTTP server treats a client's FIN as an abort of the
 * requests still in progress. So a request the server can complete is left open until its first
 * response has arrived (then a short grace for pipelined ones), and only then half-closed; a
 * request known to be incomplete (`halfClose: "now"`: truncated, a Content-Length that promises
 * more) is half-closed at once, so that the server sees the end of the stream instead of waiting
 * for its timeouts. If nothing comes within `idleMs`, the client half-closes anyway. Resolves
 * after `timeoutMs` at the latest: a server that neither answers nor closes is a finding.
 *
 * @example
 * const { responses } = await rawHttp(port, Buffer.from("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
 */
export function rawHttp(
  port: number,
  bytes: Buffer,
  opts: { timeoutMs?: number; idleMs?: number; head?: boolean; halfClose?: "now" | "after-response" } = {},
): Promise<RawExchange & { timedOut: boolean }> {
  const head = opts.head ?? false;
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    const chunks: Buffer[] = [];
    let closedByServer = false;
    let done = false;
    let ended = false;
    let timedOut = false;
    const halfClose = () => {
      if (!ended && !done) {
        ended = true;
        socket.end();
      }
    };
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      clearTimeout(idle);
      socket.destroy();
      resolve({ ...parseResponses(Buffer.concat(chunks), closedByServer, head), timedOut });
    };
    const timer = setTimeout(() => {
      timedOut = true;
      finish();
    }, opts.timeoutMs ?? 10_000);
    let idle: NodeJS.Timeout | undefined;
    socket.on("data", (d: Buffer) => {
      chunks.push(d);
      if (ended) return;
      if (parseResponses(Buffer.concat(chunks), false, head).responses.length > 0) {
        clearTimeout(idle);
        idle = setTimeout(halfClose, 50);
      }
    });
    socket.on("end", () => {
      closedByServer = true;
      finish();
    });
    socket.on("close", () => {
      closedByServer = true;
      finish();
    });
    // A reset by the server is a close too (e.g. after a 413 it may drop the rest of the upload).
    socket.on("error", () => {});
    socket.on("connect", () => {
      socket.write(bytes, () => {
        if (opts.halfClose === "now") halfClose();
        else idle = setTimeout(halfClose, opts.idleMs ?? 3_000);
      });
    });
  });
}

/** Splits a byte stream into HTTP/1.x responses (Content-Length or chunked bodies; 1xx/204/HEAD without body). */
export function parseResponses(data: Buffer, closed: boolean, head: boolean): RawExchange {
  const responses: RawResponse[] = [];
  let at = 0;
  while (at < data.length) {
    const end = data.indexOf("\r\n\r\n", at, "latin1");
    if (end === -1) break;
    const lines = data.subarray(at, end).toString("latin1").split("\r\n");
    const m = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(lines[0]!);
    if (!m) break;
    const status = Number(m[1]);
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const i = line.indexOf(":");
      if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
    }
    let pos = end + 4;
    let body: Buffer = Buffer.alloc(0);
    const noBody = (status >= 100 && status < 200) || status === 204 || status === 304 || head;
    if (!noBody) {
      if (headers["transfer-encoding"]?.toLowerCase().includes("chunked")) {
        const parts: Buffer[] = [];
        let complete = false;
        for (;;) {
          const lineEnd = data.indexOf("\r\n", pos, "latin1");
          if (lineEnd === -1) break;
          const size = parseInt(data.subarray(pos, lineEnd).toString("latin1"), 16);
          if (!Number.isFinite(size)) break;
          pos = lineEnd + 2;
          if (size === 0) {
            const trailerEnd = data.indexOf("\r\n", pos, "latin1");
            if (trailerEnd === -1) break;
            pos = trailerEnd + 2;
            complete = true;
            break;
          }
          if (pos + size + 2 > data.length) break;
          parts.push(data.subarray(pos, pos + size));
          pos += size + 2;
        }
        if (!complete) break;
        body = Buffer.concat(parts);
      } else if (headers["content-length"] !== undefined) {
        const n = Number(headers["content-length"]);
        if (!Number.isInteger(n) || pos + n > data.length) break;
        body = data.subarray(pos, pos + n);
        pos += n;
      } else if (closed) {
        body = data.subarray(pos);
        pos = data.length;
      } else {
        break;
      }
    }
    responses.push({ status, headers, body });
    at = pos;
  }
  return { responses, trailing: data.subarray(at), closedByServer: closed };
}
