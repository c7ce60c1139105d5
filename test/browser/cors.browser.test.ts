/**
 * A KMS that allows one browser origin (`corsOrigins`, §3), seen from real pages in headless
 * Chromium: the allowed page works over HTTP and WebSocket; a page on another origin is refused
 * by the browser (CORS on fetch: the preflight of the POST fails, so the message is never sent)
 * and by the KMS (the WebSocket upgrade's Origin), and the SDK reports both as KmsTransportError.
 * One browser, one KMS, two static servers (the two origins); all stopped in afterAll.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import type { IncomingMessage } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Browser, Page } from "playwright-core";
import { buildBrowserBundle } from "../../scripts/build-browser-sdk.js";
import { announceBrowserSkip, browserSuitesRun, launchChromium, load, pageFiles, servePage, type PageWindow } from "../helpers/browser.js";
import { startTestKms, type TestKms } from "../helpers/harness.js";

announceBrowserSkip("test/browser/cors.browser.test.ts");

describe.skipIf(!browserSuitesRun)("corsOrigins from a browser: the allowed page works, another origin is refused", () => {
  let kms: TestKms;
  let browser: Browser;
  const servers: Awaited<ReturnType<typeof servePage>>[] = [];
  const pages: Record<"allowed" | "refused", Page> = {} as never;
  const origins: Record<"allowed" | "refused", string> = {} as never;
  // Made in beforeAll: a skipped suite runs no afterAll, so it must leave nothing behind.
  let dir = "";
  const seen: { method: string; url: string; origin?: string }[] = [];
  const onRequest = (req: IncomingMessage) => seen.push({ method: req.method ?? "", url: req.url ?? "", ...(req.headers.origin ? { origin: req.headers.origin } : {}) });

  beforeAll(async () => {
    browser = await launchChromium();
    dir = mkdtempSync(join(tmpdir(), "keyward-browser-cors-"));
    const bundle = readFileSync((await buildBrowserBundle({ outFile: join(dir, "keyward.js") })).file);
    for (const which of ["allowed", "refused"] as const) {
      const server = await servePage(pageFiles(bundle));
      servers.push(server);
      origins[which] = server.origin;
    }
    kms = await startTestKms({ env: { KEYWARD_CORS_ORIGINS: origins.allowed } });
    kms.kms.httpServer().on("request", onRequest).on("upgrade", onRequest);
    for (const which of ["allowed", "refused"] as const) {
      const page = await browser.newPage();
      await page.exposeFunction("kmsToken", (user: string) => kms.token(user));
      await page.addInitScript((cfg) => Object.assign(window, { __kw: cfg }), { kmsUrl: kms.url, caPem: kms.caPem });
      await load(page, origins[which]);
      pages[which] = page;
    }
  });

  afterAll(async () => {
    kms?.kms.httpServer().off("request", onRequest).off("upgrade", onRequest);
    for (const page of Object.values(pages)) await page.evaluate(() => (window as unknown as PageWindow).kw.closeAll()).catch(() => undefined);
    await browser?.close();
    for (const s of servers) await s.close();
    await kms?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("the allowed origin pings over HTTP and over WebSocket", async () => {
    const r = await pages.allowed.evaluate(async () => {
      const { kw } = window as unknown as PageWindow;
      const out: string[] = [];
      for (const transport of ["http", "ws"]) {
        await kw.client("alice@example.com", transport).ping();
        out.push(transport);
      }
      kw.closeAll();
      return out;
    });
    expect(r).toEqual(["http", "ws"]);
  });

  it("another origin: discovery and messages over HTTP fail as KmsTransportError ERR_TRANSPORT; the POST is never sent (its preflight is refused); no channel", async () => {
    const channelsBefore = kms.channelCount();
    seen.length = 0;
    const r = await pages.refused.evaluate(async () => {
      const { K, kw } = window as unknown as PageWindow;
      const kmsUrl = (window as unknown as { __kw: { kmsUrl: string } }).__kw.kmsUrl;
      const ping = await kw.client("alice@example.com", "http").ping().then(() => null, kw.err);
      const send = await new K.HttpTransport(kmsUrl).send("a.b.c.d.e").then(() => null, kw.err);
      return { ping, send };
    });
    for (const err of [r.ping, r.send]) {
      expect(err).toMatchObject({ name: "KmsTransportError", code: "ERR_TRANSPORT" });
      expect(err!.message).toMatch(/could not reach the KMS .*Failed to fetch.*corsOrigins/);
    }
    const fromRefused = seen.filter((q) => q.origin === origins.refused);
    // The discovery GET is a simple request: the KMS answers it (without Access-Control-Allow-Origin)
    // and the browser hides the answer. The POST needs a preflight, which the KMS does not allow.
    expect(fromRefused.some((q) => q.method === "GET" && q.url === "/.well-known/kms")).toBe(true);
    expect(fromRefused.some((q) => q.method === "OPTIONS" && q.url === "/kms/messages")).toBe(true);
    expect(fromRefused.some((q) => q.method === "POST")).toBe(false);
    expect(kms.channelCount()).toBe(channelsBefore);
  });

  it("another origin: the WebSocket upgrade is refused by the KMS's Origin check (KmsTransportError ERR_TRANSPORT in the SDK, close 1006 in the page)", async () => {
    seen.length = 0;
    const r = await pages.refused.evaluate(async () => {
      const { K, kw } = window as unknown as PageWindow;
      const kmsUrl = (window as unknown as { __kw: { kmsUrl: string } }).__kw.kmsUrl;
      const transport = new K.WebSocketTransport({ url: kmsUrl });
      const send = await transport.send("a.b.c.d.e").then(() => null, kw.err);
      transport.close();
      const raw = await new Promise<{ opened: boolean; code: number }>((resolve) => {
        const ws = new WebSocket(kmsUrl.replace(/^http/, "ws") + "/kms/ws", "keyward.kms.v1");
        let opened = false;
        ws.onopen = () => (opened = true);
        ws.onclose = (e) => resolve({ opened, code: e.code });
      });
      return { send, raw };
    });
    expect(r.send).toMatchObject({ name: "KmsTransportError", code: "ERR_TRANSPORT" });
    expect(r.send!.message).toMatch(/could not open the WebSocket/);
    expect(r.raw).toEqual({ opened: false, code: 1006 });
    const upgrades = seen.filter((q) => q.url.startsWith("/kms/ws"));
    expect(upgrades.length).toBe(2);
    for (const u of upgrades) expect(u.origin).toBe(origins.refused);
  });
});
