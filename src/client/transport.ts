import { JOSE_CONTENT_TYPE, MESSAGES_PATH, WELL_KNOWN_KMS_PATH } from "../protocol/constants.js";
import { KmsProtocolError, KmsTransportError } from "./errors.js";

/** How the SDK reaches a KMS: one compact JOSE string out, one back. HTTP here; WebSocket later. */
export interface KmsTransport {
  send(message: string): Promise<string>;
  /** The KMS's `/.well-known/kms` document. */
  discover(): Promise<unknown>;
}

/**
 * The HTTP binding (§3) over `fetch`: runs in Node ≥ 18 and in browsers.
 *
 * @example
 * const transport = new HttpTransport("https://kms.example.com");
 */
export class HttpTransport implements KmsTransport {
  private readonly origin: string;

  constructor(origin: string, private readonly fetchImpl: typeof fetch = globalThis.fetch.bind(globalThis)) {
    this.origin = origin.replace(/\/+$/, "");
  }

  async send(message: string): Promise<string> {
    const res = await this.fetch(this.origin + MESSAGES_PATH, {
      method: "POST",
      headers: { "content-type": JOSE_CONTENT_TYPE },
      body: message,
    });
    const body = await res.text();
    // 200 carries any KMS reply; 400 carries a JWS error for an unusable body. Others are transport errors.
    if (res.status !== 200 && res.status !== 400) {
      throw new KmsProtocolError("ERR_TRANSPORT", `KMS transport answered HTTP ${res.status}`);
    }
    return body;
  }

  async discover(): Promise<unknown> {
    const res = await this.fetch(this.origin + WELL_KNOWN_KMS_PATH);
    if (res.status !== 200) throw new KmsProtocolError("ERR_DISCOVERY", `${WELL_KNOWN_KMS_PATH} answered HTTP ${res.status}`);
    return res.json();
  }

  /**
   * fetch, with a rejection (no connection, or a cross-origin request the browser blocked: it
   * gives the page only a bare "Failed to fetch") as KmsTransportError `ERR_TRANSPORT`, like the
   * other transports' failures to reach the KMS, rather than a bare TypeError.
   */
  private async fetch(url: string, init?: RequestInit): Promise<Response> {
    try {
      return await this.fetchImpl(url, init);
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      throw new KmsTransportError(
        "ERR_TRANSPORT",
        `could not reach the KMS at ${url}: ${why} (in a browser this is also how a cross-origin request the KMS does not allow fails: is the page's origin in the KMS's corsOrigins?)`,
      );
    }
  }
}
