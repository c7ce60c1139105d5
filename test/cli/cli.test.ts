import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { CLI_MAIN, cleanEnv, freePort, REPO_ROOT, runCli as runCliAs } from "../helpers/cli.js";

/** The `keyward` CLI run as a user runs it: `node --import tsx src/cli/main.ts ...` from the repo root. */
const TIMEOUT = 30_000;
const runCli = (args: string[], opts: { env?: Record<string, string>; cwd?: string; timeoutMs?: number } = {}) =>
  runCliAs(args, { timeoutMs: TIMEOUT - 5_000, ...opts });

const tempRoots: string[] = [];
/** A path inside a fresh temp directory that does not exist yet (init creates it). */
function newDataDir(): string {
  const root = mkdtempSync(join(tmpdir(), "keyward-cli-"));
  tempRoots.push(root);
  return join(root, "data");
}
afterAll(() => {
  for (const root of tempRoots.splice(0)) rmSync(root, { recursive: true, force: true });
});

const mode = (path: string) => statSync(path).mode & 0o777;

function leafCertificate(dir: string): { leaf: x509.X509Certificate; chain: x509.X509Certificate[] } {
  const pem = readFileSync(join(dir, "kms-cert.pem"), "utf8");
  const chain = x509.PemConverter.decode(pem).map((der) => new x509.X509Certificate(der));
  return { leaf: chain[0]!, chain };
}

function dnsSans(cert: x509.X509Certificate): string[] {
  const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
  expect(san, "the leaf has a SubjectAlternativeName extension").toBeTruthy();
  return san!.names.items.filter((n) => n.type === "dns").map((n) => n.value);
}

const DATA_FILE_NAMES = ["config.json", "ca.pem", "kms-cert.pem", "static-key.json", "master.key", "ca-key.sealed"];

describe("keyward init", () => {
  it("creates the data directory with its files, modes and a leaf for the authority", async () => {
    const dir = newDataDir();
    const r = await runCli(["init", "--dir", dir, "--authority", "kms.example.com"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("kms://kms.example.com");

    for (const f of DATA_FILE_NAMES) expect(existsSync(join(dir, f)), f).toBe(true);
    expect(mode(dir)).toBe(0o700);
    expect(mode(join(dir, "master.key"))).toBe(0o600);
    expect(mode(join(dir, "static-key.json"))).toBe(0o600);
    expect(mode(join(dir, "ca-key.sealed"))).toBe(0o600);

    const staticKeyText = readFileSync(join(dir, "static-key.json"), "utf8");
    expect(staticKeyText).not.toContain("PRIVATE KEY");
    expect(staticKeyText).not.toMatch(/"d"\s*:/);
    const staticKey = JSON.parse(staticKeyText) as { kid: string; type: string; sealedPrivateKey: string; x5c: string[] };
    expect(staticKey.kid).toBe("kms://kms.example.com");
    expect(staticKey.type).toBe("EC");
    expect(staticKey.sealedPrivateKey).toMatch(/^kw1\./);
    expect(readFileSync(join(dir, "ca-key.sealed"), "utf8")).not.toContain("PRIVATE KEY");

    const config = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as Record<string, unknown>;
    expect(config.authority).toBe("kms.example.com");
    expect(readFileSync(join(dir, "master.key"), "utf8").trim()).toMatch(/^[A-Za-z0-9_-]{43}$/);

    const { leaf, chain } = leafCertificate(dir);
    expect(dnsSans(leaf)).toEqual(["kms.example.com"]);
    expect(leaf.publicKey.algorithm.name).toMatch(/^EC/);
    // The chain in kms-cert.pem ends with the CA of ca.pem, which issued the leaf.
    const ca = new x509.X509Certificate(readFileSync(join(dir, "ca.pem"), "utf8"));
    expect(chain).toHaveLength(2);
    expect(chain[1]!.equal(ca)).toBe(true);
    expect(leaf.issuer).toBe(ca.subject);
    expect(await leaf.verify({ publicKey: ca.publicKey, signatureOnly: true })).toBe(true);
    // x5c in static-key.json is the same chain.
    expect(Buffer.from(staticKey.x5c[0]!, "base64").equals(Buffer.from(leaf.rawData))).toBe(true);
  }, TIMEOUT);

  it("--domain: the leaf has DNS SANs for the authority and the domain", async () => {
    const dir = newDataDir();
    const r = await runCli(["init", "--dir", dir, "--authority", "kms.example.com", "--domain", "example.com"]);
    expect(r.code, r.stderr).toBe(0);
    expect([...dnsSans(leafCertificate(dir).leaf)].sort()).toEqual(["example.com", "kms.example.com"]);
    expect(JSON.parse(readFileSync(join(dir, "config.json"), "utf8"))).toMatchObject({ authority: "kms.example.com", domain: "example.com" });
  }, TIMEOUT);

  it("--key-type rsa gives an RSA static key", async () => {
    const dir = newDataDir();
    const r = await runCli(["init", "--dir", dir, "--authority", "kms.example.com", "--key-type", "rsa"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("RSA");
    const staticKeyText = readFileSync(join(dir, "static-key.json"), "utf8");
    expect(JSON.parse(staticKeyText)).toMatchObject({ type: "RSA" });
    expect(staticKeyText).not.toContain("PRIVATE KEY");
    expect(staticKeyText).not.toMatch(/"d"\s*:/);
    expect(leafCertificate(dir).leaf.publicKey.algorithm.name).toMatch(/RSA/);
  }, TIMEOUT);

  it("refuses an existing non-empty directory and changes nothing", async () => {
    const dir = newDataDir();
    expect((await runCli(["init", "--dir", dir, "--authority", "kms.example.com"])).code).toBe(0);
    const before = new Map(readdirSync(dir).map((f) => [f, readFileSync(join(dir, f))]));

    const r = await runCli(["init", "--dir", dir, "--authority", "other.example.com", "--key-type", "rsa"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/refusing/i);
    expect(readdirSync(dir).sort()).toEqual([...before.keys()].sort());
    for (const [f, bytes] of before) expect(readFileSync(join(dir, f)).equals(bytes), f).toBe(true);
  }, TIMEOUT);

  it("refuses a non-empty directory that is not a data dir (a stray file)", async () => {
    const dir = newDataDir();
    mkdirSync(dir);
    writeFileSync(join(dir, "notes.txt"), "mine");
    const r = await runCli(["init", "--dir", dir, "--authority", "kms.example.com"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/refusing/i);
    expect(readdirSync(dir)).toEqual(["notes.txt"]);
  }, TIMEOUT);

  it("with KEYWARD_MASTER_KEY set, writes no master.key", async () => {
    const dir = newDataDir();
    const masterKey = randomBytes(32).toString("base64url");
    expect(masterKey).toHaveLength(43);
    const r = await runCli(["init", "--dir", dir, "--authority", "kms.example.com"], { env: { KEYWARD_MASTER_KEY: masterKey } });
    expect(r.code, r.stderr).toBe(0);
    expect(existsSync(join(dir, "master.key"))).toBe(false);
    for (const f of DATA_FILE_NAMES.filter((f) => f !== "master.key")) expect(existsSync(join(dir, f)), f).toBe(true);
    // The key is never written anywhere in the data dir, nor printed.
    for (const f of readdirSync(dir)) expect(readFileSync(join(dir, f), "utf8"), f).not.toContain(masterKey);
    expect(r.stdout + r.stderr).not.toContain(masterKey);
  }, TIMEOUT);

  it("rejects --key-type dsa with a helpful message and creates nothing", async () => {
    const dir = newDataDir();
    const r = await runCli(["init", "--dir", dir, "--authority", "kms.example.com", "--key-type", "dsa"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("dsa");
    expect(r.stderr).toMatch(/ec/);
    expect(r.stderr).toMatch(/rsa/);
    expect(existsSync(dir)).toBe(false);
  }, TIMEOUT);

  it.each([
    ["an invalid authority", ["--authority", "Kms_Example.com"], /authority/],
    ["an invalid domain", ["--authority", "kms.example.com", "--domain", "bad_domain"], /domain/],
  ])("rejects %s before writing anything", async (_name, args, reason) => {
    const dir = newDataDir();
    const r = await runCli(["init", "--dir", dir, ...args]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(reason);
    expect(existsSync(dir)).toBe(false);
  }, TIMEOUT);
});

describe("keyward serve", () => {
  it("fails with a message naming the missing OAuth setting", async () => {
    const dir = newDataDir();
    expect((await runCli(["init", "--dir", dir, "--authority", "kms.example.com"])).code).toBe(0);
    const r = await runCli(["serve", "--dir", dir], { env: { KEYWARD_LISTEN: "127.0.0.1:0" } });
    expect(r.code).not.toBe(0);
    expect(r.signal).toBeNull(); // it exited by itself, it was not killed by the timeout
    expect(r.stderr).toContain("oauthIssuer");
    expect(r.stderr).toContain("KEYWARD_OAUTH_ISSUER");
  }, TIMEOUT);
});

describe("keyward dev, token, ping", () => {
  let dev: ChildProcess | undefined;

  afterEach(async () => {
    // Only when a test failed before stopping it itself.
    if (dev && dev.exitCode === null && dev.signalCode === null && dev.pid !== undefined) {
      const exited = new Promise((r) => dev!.once("exit", r));
      process.kill(dev.pid, "SIGKILL");
      await exited;
    }
    dev = undefined;
  });

  it("serves a development KMS with its IdP; token prints an at+jwt; ping succeeds; SIGTERM stops it", async () => {
    const dir = newDataDir();
    const kmsPort = await freePort();
    const idpPort = await freePort();
    const issuer = `http://127.0.0.1:${idpPort}`;
    const env = {
      KEYWARD_LISTEN: `127.0.0.1:${kmsPort}`,
      KEYWARD_DEV_IDP_LISTEN: `127.0.0.1:${idpPort}`,
      KEYWARD_OAUTH_ISSUER: issuer,
      KEYWARD_OAUTH_JWKS_URI: `${issuer}/jwks`,
    };

    const child = spawn(process.execPath, ["--import", "tsx", CLI_MAIN, "dev", "--dir", dir], {
      cwd: REPO_ROOT,
      env: cleanEnv(env),
      stdio: ["ignore", "pipe", "pipe"],
    });
    dev = child;
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
      child.once("exit", (code, signal) => r({ code, signal })),
    );

    // Wait until the banner says both servers listen (it is printed after both listen()s resolved).
    const kmsUrl = `http://127.0.0.1:${kmsPort}`;
    await new Promise<void>((resolveReady, reject) => {
      const timer = setTimeout(() => reject(new Error(`dev did not start in time.\nstdout: ${stdout}\nstderr: ${stderr}`)), 25_000);
      const check = () => {
        if (stdout.includes(`on ${kmsUrl}`) && stdout.includes("Never use it in production")) {
          clearTimeout(timer);
          child.stdout.off("data", check);
          resolveReady();
        }
      };
      child.stdout.on("data", check);
      void exited.then(({ code }) => {
        clearTimeout(timer);
        reject(new Error(`dev exited (${code}) before listening.\nstdout: ${stdout}\nstderr: ${stderr}`));
      });
      check();
    });
    expect(stdout).toContain("DEVELOPMENT");
    expect(stdout).toContain("loopback");
    expect(stdout).toContain(issuer);
    expect(existsSync(join(dir, "config.json"))).toBe(true);

    const token = await runCli(["token", "alice@example.com", "--dir", dir], { env });
    expect(token.code, token.stderr).toBe(0);
    const jwt = token.stdout.trim();
    expect(jwt).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+$/);
    const [headerB64, payloadB64] = jwt.split(".");
    const header = JSON.parse(Buffer.from(headerB64!, "base64url").toString("utf8")) as Record<string, unknown>;
    const payload = JSON.parse(Buffer.from(payloadB64!, "base64url").toString("utf8")) as Record<string, unknown>;
    expect(header.typ).toBe("at+jwt");
    expect(header.alg).toBe("ES256");
    expect(payload).toMatchObject({ iss: issuer, sub: "alice@example.com", aud: "kms://localhost" });

    const ping = await runCli(["ping", "--user", "alice@example.com", "--dir", dir, "--url", kmsUrl], { env });
    expect(ping.code, `${ping.stdout}\n${ping.stderr}`).toBe(0);
    expect(ping.stdout).toContain("ping ok");
    expect(ping.stdout).toContain("alice@example.com");

    // The token printed by `keyward token` is accepted too.
    const ping2 = await runCli(["ping", "--user", "alice@example.com", "--dir", dir, "--url", kmsUrl, "--token", jwt], { env });
    expect(ping2.code, `${ping2.stdout}\n${ping2.stderr}`).toBe(0);
    expect(ping2.stdout).toContain("ping ok");

    process.kill(child.pid!, "SIGTERM");
    const { code, signal } = await exited;
    expect({ code, signal }).toEqual({ code: 0, signal: null });
  }, 60_000);
});
