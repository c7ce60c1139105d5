/**
 * The SDK in a real browser (headless Chromium through playwright-core): the bundle of
 * scripts/build-browser-sdk.ts, imported by a page served from another loopback origin than the
 * KMS's (so every fetch and WebSocket is cross-origin: CORS and the WebSocket Origin check are
 * exercised), driven with page.evaluate, results checked here. One browser, one KMS, one static
 * server for the file; each stopped in afterAll.
 *
 * No Chromium (KEYWARD_CHROMIUM, default /usr/bin/chromium): skipped with a line saying so,
 * except under CI=true, where that is a failure.
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
import { createCa } from "../helpers/test-pki.js";

const ALICE = "alice@example.com";
const BOB = "bob@example.com";

announceBrowserSkip("test/browser/sdk.browser.test.ts");

describe.skipIf(!browserSuitesRun)("the SDK in headless Chromium (bundle, cross-origin page)", () => {
  let kms: TestKms;
  let browser: Browser;
  let page: Page;
  let pageServer: Awaited<ReturnType<typeof servePage>>;
  let pageOrigin: string;
  let otherCaPem: string;
  // Made in beforeAll: a skipped suite runs no afterAll, so it must leave nothing behind.
  let dir = "";
  const pageErrors: string[] = [];

  beforeAll(async () => {
    browser = await launchChromium();
    dir = mkdtempSync(join(tmpdir(), "keyward-browser-"));
    const bundle = await buildBrowserBundle({ outFile: join(dir, "keyward.js") });
    kms = await startTestKms();
    otherCaPem = (await createCa({ name: "Not The KMS Root" })).pem;
    pageServer = await servePage(pageFiles(readFileSync(bundle.file)));
    pageOrigin = pageServer.origin;
    expect(new URL(pageOrigin).origin).not.toBe(new URL(kms.url).origin);
    page = await browser.newPage();
    page.on("pageerror", (e) => pageErrors.push(e.message));
    await page.exposeFunction("kmsToken", (user: string) => kms.token(user));
    await page.addInitScript((cfg) => Object.assign(window, { __kw: cfg }), { kmsUrl: kms.url, caPem: kms.caPem });
    await load(page, pageOrigin);
  });

  afterAll(async () => {
    await page?.evaluate(() => (window as unknown as PageWindow).kw.closeAll()).catch(() => undefined);
    await browser?.close();
    await pageServer?.close();
    await kms?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("the page is a secure context on another origin than the KMS, with WebCrypto and IndexedDB", async () => {
    const env = await page.evaluate(() => ({
      origin: location.origin,
      secure: window.isSecureContext,
      subtle: typeof crypto.subtle?.sign,
      idb: typeof indexedDB,
      sdk: Object.keys((window as unknown as PageWindow).K).length,
    }));
    expect(env).toMatchObject({ origin: pageOrigin, secure: true, subtle: "function", idb: "object" });
    expect(env.sdk).toBeGreaterThan(10);
  });

  for (const transport of ["http", "ws"] as const) {
    describe(`over ${transport === "http" ? "HTTP (fetch)" : "WebSocket (the browser's WebSocket)"}`, () => {
      it("discovers the KMS and validates its identity; a wrong trust root is refused (KmsIdentityError ERR_KMS_CERT_CHAIN) before any channel", async () => {
        const channelsBefore = kms.channelCount();
        const r = await page.evaluate(
          async ({ transport, user, otherCaPem }) => {
            const { kw } = window as unknown as PageWindow;
            const info = await kw.client(user, transport).discover();
            const wrong = kw.client(user, transport, { trustRoots: [otherCaPem] });
            const discoverErr = await wrong.discover().then(() => null, kw.err);
            const pingErr = await wrong.ping().then(() => null, kw.err);
            kw.closeAll();
            return { info: { uri: info.uri, kid: info.kid, keyType: info.keyType, x5c: Array.isArray((info.jwk as { x5c?: unknown }).x5c) }, discoverErr, pingErr };
          },
          { transport, user: ALICE, otherCaPem },
        );
        expect(r.info).toEqual({ uri: kms.kid, kid: kms.kid, keyType: "EC", x5c: true });
        for (const err of [r.discoverErr, r.pingErr]) {
          expect(err).toMatchObject({ name: "KmsIdentityError", code: "ERR_KMS_CERT_CHAIN", isIdentityError: true });
        }
        // The refused client opened no channel: it never sent its token to an unauthenticated KMS.
        expect(kms.channelCount()).toBe(channelsBefore);
      });

      it("a cold client opens an ECDHE channel and pings (discovery + certificate validation + ECDHE + ping, timed); the KMS sees the page's Origin", async () => {
        const channelsBefore = kms.channelCount();
        const seen: { method: string; url: string; origin?: string }[] = [];
        const onRequest = (req: IncomingMessage) => seen.push({ method: req.method ?? "", url: req.url ?? "", ...(req.headers.origin ? { origin: req.headers.origin } : {}) });
        kms.kms.httpServer().on("request", onRequest).on("upgrade", onRequest);
        const r = await page.evaluate(
          async ({ transport, user }) => {
            const { kw } = window as unknown as PageWindow;
            // Cold: each a new client (discovery, x5c chain validation, ECDHE, then the ping itself).
            const cold: number[] = [];
            let client = kw.client(user, transport);
            for (let i = 0; i < 4; i++) {
              if (i > 0) client = kw.client(user, transport);
              const t0 = performance.now();
              await client.ping();
              cold.push(performance.now() - t0);
            }
            const warm: number[] = [];
            for (let i = 0; i < 5; i++) {
              const t0 = performance.now();
              await client.ping();
              warm.push(performance.now() - t0);
            }
            const channel = client.channel!;
            kw.closeAll();
            return { cold, warm, channel: { uri: channel.uri, userId: channel.userId, expiresAt: channel.expiresAt.toISOString() } };
          },
          { transport, user: ALICE },
        );
        kms.kms.httpServer().off("request", onRequest).off("upgrade", onRequest);
        const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
        const ms = (x: number) => `${x.toFixed(1)} ms`;
        const preflights = seen.filter((q) => q.method === "OPTIONS").length;
        console.log(
          `browser (${transport}): cold first ping ${ms(r.cold[0]!)} (first in the page), then ${r.cold.slice(1).map(ms).join(", ")} ` +
            `(new client each: discovery, certificate chain, ECDHE, ping); warm ping median ${ms(median(r.warm))}; ` +
            `KMS saw ${seen.length} HTTP requests/upgrades (${preflights} CORS preflights)`,
        );
        expect(r.channel.uri).toMatch(/^kms:\/\/kms\.example\.com\//);
        expect(r.channel.userId).toBe(ALICE);
        expect(Date.parse(r.channel.expiresAt)).toBeGreaterThan(Date.now());
        expect(kms.channelCount()).toBe(channelsBefore + 4);
        // Every request and upgrade came cross-origin from the page, and the KMS let it through.
        expect(seen.length).toBeGreaterThan(0);
        for (const q of seen) expect(q.origin).toBe(pageOrigin);
        if (transport === "ws") expect(seen.filter((q) => q.url.startsWith("/kms/ws")).length).toBe(4);
      });

      it("registers a device whose non-extractable key lives in IndexedDB and is the same key after a page reload", async () => {
        const kid = `alice-browser-${transport}`;
        const first = await page.evaluate(
          async ({ transport, user, kid }) => {
            const { K, kw } = window as unknown as PageWindow;
            const device = await K.DeviceKey.generate({ kid, extractable: false });
            const registered = await new K.Groups(kw.client(user, transport), { user, device }).registerDevice();
            await kw.idbPut(kid, device.cryptoKeys);
            kw.closeAll();
            return { registered, publicJwk: device.publicJwk, extractable: device.extractable };
          },
          { transport, user: ALICE, kid },
        );
        expect(first).toMatchObject({ registered: "registered", extractable: false, publicJwk: { kty: "EC", crv: "P-256", kid } });
        expect(first.publicJwk).not.toHaveProperty("d");

        await load(page, pageOrigin);
        const after = await page.evaluate(
          async ({ transport, user, kid }) => {
            const { K, kw } = window as unknown as PageWindow;
            const stored = (await kw.idbGet(kid)) as { privateKey: CryptoKey; unwrappingKey: CryptoKey };
            const raw = {
              isCryptoKey: stored.privateKey instanceof CryptoKey,
              signExtractable: stored.privateKey.extractable,
              unwrapExtractable: stored.unwrappingKey.extractable,
              signExportRefused: await crypto.subtle.exportKey("jwk", stored.privateKey).then(() => false, () => true),
              unwrapExportRefused: await crypto.subtle.exportKey("pkcs8", stored.unwrappingKey).then(() => false, () => true),
            };
            const device = await K.DeviceKey.fromCryptoKeyPair(stored as never);
            const noJwk = kw.err((() => { try { return device.privateJwk; } catch (e) { return e; } })());
            const groups = new K.Groups(kw.client(user, transport), { user, device });
            const registered = await groups.registerDevice();
            const listed = (await groups.keysOf(user)).map((k) => k.kid);
            kw.closeAll();
            return { raw, publicJwk: device.publicJwk, registered, listed, noJwk: noJwk.message };
          },
          { transport, user: ALICE, kid },
        );
        expect(after.raw).toEqual({ isCryptoKey: true, signExtractable: false, unwrapExtractable: false, signExportRefused: true, unwrapExportRefused: true });
        expect(after.publicJwk).toEqual(first.publicJwk);
        expect(after.registered).toBe("already-registered");
        expect(after.listed).toContain(kid);
        expect(after.noJwk).toMatch(/non-extractable/);
      });

      it("groups (create, add, remove, verify) and GKs (encrypt, decrypt; EC and RSA devices) with the reloaded key; a removed member's GK get is a 403 with its reason", async () => {
        const r = await page.evaluate(
          async ({ transport, alice, bob }) => {
            const { K, kw } = window as unknown as PageWindow;
            const stored = await kw.idbGet(`alice-browser-${transport}`);
            const aliceDevice = stored ? await K.DeviceKey.fromCryptoKeyPair(stored as never) : await K.DeviceKey.generate({ extractable: false });
            const aliceClient = kw.client(alice, transport);
            const aliceGroups = new K.Groups(aliceClient, { user: alice, device: aliceDevice });
            await aliceGroups.registerDevice();
            const aliceGks = new K.GroupKeys(aliceClient, { user: alice, device: aliceDevice, chains: aliceGroups });

            // Bob's key is RSA: his GKs unwrap with RSA-OAEP-256 in the browser, Alice's with ECDH-ES+A256KW.
            const bobDevice = await K.DeviceKey.generate({ type: "rsa", kid: `bob-browser-${transport}`, extractable: false });
            const bobClient = kw.client(bob, transport);
            await new K.Groups(bobClient, { user: bob, device: bobDevice }).registerDevice();
            const bobGks = () => new K.GroupKeys(bobClient, { user: bob, device: bobDevice });

            const text = (b: Uint8Array) => new TextDecoder().decode(b);
            const group = await aliceGroups.create([alice]);
            await aliceGroups.add(group.uri, [bob]);
            const before = await aliceGks.encryptFor(group.uri, new TextEncoder().encode("for alice and bob"));
            const bobReads = text((await bobGks().decrypt(before)).plaintext);
            await aliceGroups.remove(group.uri, [bob]);
            const verified = await aliceGroups.verify(group.uri);
            const after = await aliceGks.encryptFor(group.uri, new TextEncoder().encode("for alice only"));
            const aliceReads = text((await new K.GroupKeys(aliceClient, { user: alice, device: aliceDevice }).decrypt(after)).plaintext);
            const bobRefused = await bobGks().decrypt(after).then(() => null, kw.err);
            const kidOf = (jwe: string) => JSON.parse(atob(jwe.split(".")[0]!.replace(/-/g, "+").replace(/_/g, "/"))).kid as string;
            kw.closeAll();
            return {
              group: group.uri,
              blocks: verified.blocks.length,
              members: verified.members.members(),
              bobReads,
              aliceReads,
              rotated: kidOf(before) !== kidOf(after),
              bobRefused,
            };
          },
          { transport, alice: ALICE, bob: BOB },
        );
        expect(r.group).toMatch(/^kms:\/\/kms\.example\.com\/blocks\//);
        expect(r.blocks).toBe(3);
        expect(r.members).toEqual([ALICE]);
        expect(r.bobReads).toBe("for alice and bob");
        expect(r.aliceReads).toBe("for alice only");
        expect(r.rotated).toBe(true);
        expect(r.bobRefused).toMatchObject({ name: "KmsRequestError", isRequestError: true, status: 403 });
        expect(r.bobRefused!.reason).toEqual(expect.any(String));
        expect(r.bobRefused!.reason!.length).toBeGreaterThan(0);
        console.log(`browser (${transport}): a removed member's GK get: ${r.bobRefused!.status} "${r.bobRefused!.reason}"`);
      });
    });
  }

  it("the page raised no uncaught error", () => {
    expect(pageErrors).toEqual([]);
  });
});
