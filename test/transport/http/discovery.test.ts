import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AUTHORITY, initTestDataDir, spawnServe, stopAllServers, type TestDataDir } from "../../helpers/spawn-kms.js";
import { startTestKms, type TestKms } from "../../helpers/harness.js";
import { channel, newDevice, registerDevice } from "../../helpers/gmbc-fixtures.js";

/** A GET with any Host header (fetch will not send a chosen one). */
function get(url: string, path: string, host?: string): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${url}${path}`, { agent: false, headers: host === undefined ? {} : { host } }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

const WEBFINGER = `/.well-known/webfinger?resource=${encodeURIComponent("acct:alice@example.com")}`;
const hrefOf = (body: string) => (JSON.parse(body) as { links: { href: string }[] }).links[0]!.href;

describe("WebFinger and JWKS replies are never cached; the href's origin (§3, §7)", () => {
  let kms: TestKms;
  let withPublicUrl: TestKms;
  beforeAll(async () => {
    [kms, withPublicUrl] = await Promise.all([startTestKms(), startTestKms({ env: { KEYWARD_PUBLIC_URL: "https://kms.example.com" } })]);
    for (const k of [kms, withPublicUrl]) await registerDevice(await channel(k, "alice@example.com"), await newDevice("alice@example.com", "alice-1"));
  });
  afterAll(async () => {
    await Promise.all([kms.close(), withPublicUrl.close()]);
  });

  it("every WebFinger and JWKS reply, found or not, carries Cache-Control: no-store", async () => {
    const paths = [WEBFINGER, "/.well-known/webfinger?resource=acct:nobody@example.com", "/entities/alice%40example.com/jwks", "/entities/nobody%40example.com/jwks"];
    const statuses: number[] = [];
    for (const path of paths) {
      const res = await get(kms.url, path);
      statuses.push(res.status);
      expect(res.headers["cache-control"], path).toBe("no-store");
    }
    expect(statuses).toEqual([200, 404, 200, 404]);
  });

  it("without publicUrl the href follows a well-formed Host header (what the serve warning is about)", async () => {
    const res = await get(kms.url, WEBFINGER, "Elsewhere.example:8443");
    expect(hrefOf(res.body)).toBe("http://elsewhere.example:8443/entities/alice%40example.com/jwks");
  });

  it("a malformed Host header never reaches the href: the connection's local address is used", async () => {
    const local = `http://127.0.0.1:${new URL(kms.url).port}`;
    let fallbacks = 0;
    for (const host of ["evil.example/steal?x=", "user@evil.example", "<b>x</b>", "evil.example:99999999", "evil.example\\@x", "a b"]) {
      const res = await get(kms.url, WEBFINGER, host);
      if (res.status === 400) continue; // refused by Node's own parser: fine as well
      expect(res.status, host).toBe(200);
      fallbacks++;
      expect(hrefOf(res.body), host).toBe(`${local}/entities/alice%40example.com/jwks`);
    }
    expect(fallbacks).toBeGreaterThan(0);
  });

  it("with publicUrl the href ignores the Host header", async () => {
    const res = await get(withPublicUrl.url, WEBFINGER, "evil.example");
    expect(hrefOf(res.body)).toBe("https://kms.example.com/entities/alice%40example.com/jwks");
  });
});

describe("keyward serve warns at start-up when publicUrl is unset", () => {
  let data: TestDataDir;
  beforeAll(async () => {
    data = await initTestDataDir();
  });
  afterAll(async () => {
    await stopAllServers();
    await data.close();
  });

  /** The structured (pino JSON) log lines of a serve process's stdout. */
  const logLines = (stdout: string) =>
    stdout
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Record<string, unknown>);

  it("one warning line naming publicUrl and the Host header; none when publicUrl is set", async () => {
    const bare = await spawnServe(data, { workers: 1 });
    const warning = logLines(bare.stdout()).filter((l) => l.setting === "publicUrl");
    expect(warning).toHaveLength(1);
    expect(warning[0]).toMatchObject({ level: 40, service: "keyward", setting: "publicUrl", env: "KEYWARD_PUBLIC_URL" });
    expect(String(warning[0]!.msg)).toMatch(/Host header/);
    const configured = await spawnServe(data, { workers: 1, env: { KEYWARD_PUBLIC_URL: `https://${AUTHORITY}` } });
    expect(logLines(configured.stdout()).filter((l) => l.setting === "publicUrl")).toHaveLength(0);
  }, 60_000);
});
