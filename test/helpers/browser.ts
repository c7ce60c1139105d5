import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { existsSync } from "node:fs";
import { chromium, type Browser, type Page } from "playwright-core";

/**
 * Browser tests' shared parts: where Chromium is (Debian's, no download), how it is launched, the
 * static page server and the page's own module (the SDK bundle on `window.K`, helpers on
 * `window.kw`). Suites skip with a line when there is no Chromium, except under CI=true.
 */

/** Debian's Chromium, or KEYWARD_CHROMIUM. */
export const CHROMIUM = process.env.KEYWARD_CHROMIUM ?? "/usr/bin/chromium";
/** Whether the browser suites run: a Chromium is there, or CI=true (where its absence fails). */
export const browserSuitesRun = existsSync(CHROMIUM) || process.env.CI === "true";

/** Says once, for a suite file, that it is skipped and why (nothing when it runs). */
export function announceBrowserSkip(file: string): void {
  if (!browserSuitesRun) console.warn(`${file}: SKIPPED: no Chromium at ${CHROMIUM} (set KEYWARD_CHROMIUM; under CI=true this fails)`);
}

/** Launches headless Chromium (throws under CI=true when there is none). The caller closes it. */
export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: the browser tests cannot run (CI=true)`);
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
  });
}

/** A static server on loopback (port 0) for a fixed set of files; `close()` stops it. */
export async function servePage(files: Record<string, [contentType: string, body: string | Buffer]>): Promise<{ origin: string; server: Server; close(): Promise<void> }> {
  const server = createServer((req, res) => {
    const file = files[new URL(req.url ?? "/", "http://x").pathname];
    if (!file) return res.writeHead(404).end();
    res.writeHead(200, { "content-type": file[0], "cache-control": "no-store" }).end(file[1]);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { origin, server, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

/** The page's files around a bundle: `/` loads `/app.js`, which imports `/keyward.js`. */
export function pageFiles(bundle: Buffer): Record<string, [string, string | Buffer]> {
  return { "/": ["text/html", INDEX_HTML], "/app.js": ["text/javascript", APP_JS], "/keyward.js": ["text/javascript", bundle] };
}

/**
 * The page's own module: the SDK on `window.K` and small helpers on `window.kw` (a client per
 * transport, IndexedDB get/put, errors as plain objects for page.evaluate to return).
 */
export const APP_JS = `
import * as K from "./keyward.js";
const { kmsUrl, caPem } = window.__kw;
const transports = [];
function idb() {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open("keyward-test", 1);
    open.onupgradeneeded = () => open.result.createObjectStore("devices");
    open.onsuccess = () => resolve(open.result);
    open.onerror = () => reject(open.error);
  });
}
async function tx(mode, fn) {
  const db = await idb();
  try {
    return await new Promise((resolve, reject) => {
      const t = db.transaction("devices", mode);
      const req = fn(t.objectStore("devices"));
      t.oncomplete = () => resolve(req.result);
      t.onerror = () => reject(t.error);
    });
  } finally {
    db.close();
  }
}
window.K = K;
window.kw = {
  client(user, transport, opts = {}) {
    const t = transport === "ws" ? new K.WebSocketTransport({ url: kmsUrl }) : new K.HttpTransport(kmsUrl);
    transports.push(t);
    return new K.KmsClient({ transport: t, user, token: () => window.kmsToken(user), trustRoots: [caPem], ...opts });
  },
  closeAll() {
    for (const t of transports.splice(0)) if (typeof t.close === "function") t.close();
  },
  idbPut: (key, value) => tx("readwrite", (s) => s.put(value, key)),
  idbGet: (key) => tx("readonly", (s) => s.get(key)),
  err(e) {
    return {
      name: e?.name, message: e?.message, code: e?.code, status: e?.status, reason: e?.reason,
      isIdentityError: e instanceof K.KmsIdentityError, isRequestError: e instanceof K.KmsRequestError,
    };
  },
};
window.kwReady = true;
`;

export const INDEX_HTML = `<!doctype html><meta charset="utf-8"><title>keyward in a browser</title><script type="module" src="./app.js"></script>`;

/** What the page's helpers look like to the functions page.evaluate runs (typed for tsc only). */
export interface PageErr {
  name?: string;
  message?: string;
  code?: string;
  status?: number;
  reason?: string;
  isIdentityError: boolean;
  isRequestError: boolean;
}
export type SdkModule = typeof import("../../src/client/index.js");
export interface PageWindow {
  K: SdkModule;
  kw: {
    client(user: string, transport: string, opts?: { trustRoots?: string[] }): InstanceType<SdkModule["KmsClient"]>;
    closeAll(): void;
    idbPut(key: string, value: unknown): Promise<void>;
    idbGet(key: string): Promise<unknown>;
    err(e: unknown): PageErr;
  };
}

/** Loads (or reloads) the page and waits until its module has put the SDK on window. */
export async function load(page: Page, origin: string): Promise<void> {
  await page.goto(`${origin}/`);
  await page.waitForFunction(() => (window as unknown as { kwReady?: boolean }).kwReady === true, undefined, { timeout: 20_000 });
}
