import http from "node:http";
import type { AddressInfo } from "node:net";

/**
 * An UNTRUSTED file-sharing service: the "resource server" of draft §3.1. It stores whatever bytes
 * it is given and hands them to whoever asks. It never sees a key: the clients encrypt before
 * they upload and decrypt after they download, with Group Keys from the KMS. Everything is kept
 * in memory.
 *
 *   PUT  /files/:id          body = the (encrypted) file; header `x-keyward-gk` = the GK URI (metadata)
 *   GET  /files/:id          → the stored bytes, the GK URI in `x-keyward-gk`
 *   POST /files/:id/share    {"user": "bob@example.com"}: the file appears in bob's share list
 *   GET  /shares/:user       → [{"id", "gk", "owner"}]
 *
 * The uploader names itself in `x-user` (the service is not trusted with confidentiality, so it
 * does no authentication in this demo).
 */
export interface StoredFile {
  readonly id: string;
  readonly owner: string;
  readonly gk: string;
  readonly bytes: Buffer;
}

export interface FileServer {
  readonly url: string;
  /** What the server holds, as it holds it (for the demo's "the server cannot read" check). */
  files(): readonly StoredFile[];
  close(): Promise<void>;
}

const MAX_BODY = 16 * 1024 * 1024;

export async function startFileServer(opts: { log?: (line: string) => void } = {}): Promise<FileServer> {
  const log = opts.log ?? (() => undefined);
  const files = new Map<string, StoredFile>();
  const shares = new Map<string, string[]>();

  const server = http.createServer((req, res) => {
    const send = (status: number, body: string | Buffer, headers: Record<string, string> = {}) => {
      res.writeHead(status, { "cache-control": "no-store", ...headers });
      res.end(body);
    };
    const json = (status: number, body: unknown) => send(status, JSON.stringify(body), { "content-type": "application/json" });
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) return req.destroy();
      chunks.push(c);
    });
    req.on("end", () => {
      const path = decodeURIComponent((req.url ?? "/").split("?")[0]!);
      const body = Buffer.concat(chunks);
      const file = /^\/files\/([^/]+)$/.exec(path);
      const share = /^\/files\/([^/]+)\/share$/.exec(path);
      const list = /^\/shares\/([^/]+)$/.exec(path);

      if (req.method === "PUT" && file) {
        const id = file[1]!;
        const gk = String(req.headers["x-keyward-gk"] ?? "");
        const owner = String(req.headers["x-user"] ?? "anonymous");
        files.set(id, { id, owner, gk, bytes: body });
        log(`[file-server] PUT /files/${id} from ${owner}: stored ${body.length} bytes, metadata gk=${gk || "(none)"}; it starts ${preview(body)}`);
        return json(201, { id });
      }
      if (req.method === "GET" && file) {
        const stored = files.get(file[1]!);
        if (!stored) return json(404, { error: "no such file" });
        log(`[file-server] GET /files/${stored.id}: served ${stored.bytes.length} opaque bytes`);
        return send(200, stored.bytes, { "content-type": "application/octet-stream", "x-keyward-gk": stored.gk });
      }
      if (req.method === "POST" && share) {
        const stored = files.get(share[1]!);
        if (!stored) return json(404, { error: "no such file" });
        let user: unknown;
        try {
          user = (JSON.parse(body.toString("utf8")) as { user?: unknown }).user;
        } catch {
          user = undefined;
        }
        if (typeof user !== "string" || !user.includes("@")) return json(400, { error: 'body must be {"user": "user@domain"}' });
        const ids = shares.get(user) ?? [];
        if (!ids.includes(stored.id)) ids.push(stored.id);
        shares.set(user, ids);
        log(`[file-server] POST /files/${stored.id}/share: shared with ${user}`);
        return json(200, { id: stored.id, user });
      }
      if (req.method === "GET" && list) {
        const entries = (shares.get(list[1]!) ?? []).map((id) => files.get(id)!).map(({ id, gk, owner }) => ({ id, gk, owner }));
        return json(200, entries);
      }
      return json(404, { error: "not found" });
    });
  });
  await new Promise<void>((ready) => server.listen(0, "127.0.0.1", ready));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    files: () => [...files.values()],
    close: () =>
      new Promise<void>((done, fail) => {
        server.closeAllConnections();
        server.close((e) => (e ? fail(e) : done()));
      }),
  };
}

/** The first bytes of a body, printable ones as text, others as \xNN. */
export function preview(bytes: Uint8Array, n = 48): string {
  let s = "";
  for (const b of bytes.subarray(0, n)) s += b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, "0")}`;
  return `"${s}${bytes.length > n ? "…" : ""}"`;
}
