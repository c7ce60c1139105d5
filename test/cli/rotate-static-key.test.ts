import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import http from "node:http";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CompactEncrypt, exportJWK, importJWK, type JWK } from "jose";
import { DeviceKey, Groups, GroupKeys, KmsClient, KmsProtocolError } from "../../src/client/index.js";
import { HttpTransport } from "../../src/client/transport.js";
import { createDevCa, generateStaticKeyPair, issueKmsCertificate } from "../../src/pki/dev-ca.js";
import { DATA_FILES, loadMasterKey, loadStaticKey } from "../../src/server/data-dir.js";
import { createLogger } from "../../src/server/logger.js";
import { kmsFromConfig } from "../../src/service/start.js";
import type { Kms } from "../../src/service/kms.js";
import { generateEphemeralKeyPair } from "../../src/protocol/jose/ephemeral-key.js";
import { runCli } from "../helpers/cli.js";
import { openJws, post, startTestKms, type TestKms } from "../helpers/harness.js";

const ALICE = "alice@example.com";
const mode = (p: string) => statSync(p).mode & 0o777;
const leafOfPem = (pem: string) => new x509.X509Certificate(x509.PemConverter.decode(pem)[0]!);

/** A KmsTransport over HTTP that counts discoveries. */
class CountingTransport extends HttpTransport {
  discoveries = 0;
  override async discover(): Promise<unknown> {
    this.discoveries++;
    return super.discover();
  }
}

interface WellKnown {
  uri: string;
  jwk: JWK & { x5c: string[] };
  protocol: string;
  previousKeys?: (JWK & { x5c: string[] })[];
}

const wellKnown = async (url: string) => (await (await fetch(`${url}/.well-known/kms`)).json()) as WellKnown;

describe("keyward rotate-static-key, then a restart from the same data dir", () => {
  let tk: TestKms;
  let restarted: Kms;
  let server: http.Server;
  const clients: KmsClient[] = [];
  // State from before the rotation.
  let oldDoc: WellKnown;
  let oldKmsCertPem: string;
  let oldChannel: string;
  let oldGkJws: string;
  let oldGkUri: string;
  let staleTransport: CountingTransport;
  let channelClient: KmsClient;
  let staleClient: KmsClient;
  let staleDevice: DeviceKey;
  let rotateOut: string;
  let oldGroupUri: string;

  const sdk = (transport = new CountingTransport(tk.url)) => {
    const c = new KmsClient({ transport, user: ALICE, token: () => tk.token(ALICE), trustRoots: [tk.caPem] });
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    tk = await startTestKms();
    oldDoc = await wellKnown(tk.url);
    oldKmsCertPem = readFileSync(join(tk.dataDir, DATA_FILES.kmsCert), "utf8");

    // A channel, a GK signed by the old key, and a client that discovered the old key.
    channelClient = sdk();
    await channelClient.ping();
    oldChannel = channelClient.channel!.uri;
    staleDevice = await DeviceKey.generate({ kid: "alice-phone" });
    await new Groups(channelClient, { user: ALICE, device: staleDevice }).registerDevice();
    // A group whose genesis block the old key signed.
    oldGroupUri = (await new Groups(channelClient, { user: ALICE, device: staleDevice }).create([ALICE])).uri;
    const created = await channelClient.request("create", "/gks");
    oldGkJws = created.gk as string;
    oldGkUri = ((await channelClient.verifyKmsSignature(oldGkJws)) as { uri: string }).uri;
    staleTransport = new CountingTransport(tk.url);
    staleClient = sdk(staleTransport);
    await staleClient.discover();

    const r = await runCli(["rotate-static-key", "--dir", tk.dataDir]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    rotateOut = r.stdout;

    // Restart from the same data dir (and so the same store) on the same port.
    const port = Number(new URL(tk.url).port);
    await tk.kms.close();
    const logger = createLogger("silent", new Writable({ write: (_c, _e, cb) => cb() }));
    restarted = await kmsFromConfig(tk.config, { logger });
    server = http.createServer(restarted.httpListener());
    await new Promise<void>((ok) => server.listen(port, "127.0.0.1", ok));
  }, 60_000);

  afterAll(async () => {
    for (const c of clients) await c.close().catch(() => undefined);
    await new Promise((ok) => {
      server?.close(ok);
      server?.closeAllConnections();
    });
    await restarted?.close();
    await tk?.close();
  });

  it("prints what it did and what to do next", () => {
    expect(rotateOut).toContain("rotated the static key of kms://kms.example.com");
    expect(rotateOut).toMatch(/previous key archived: .*previous-static-keys\/.*\.json/);
    expect(rotateOut).toContain("restart every KMS node");
  });

  it("discovery publishes the new key as `jwk` and the old one in `previousKeys`; the other fields are unchanged", async () => {
    const doc = await wellKnown(tk.url);
    expect(doc.uri).toBe(oldDoc.uri);
    expect(doc.protocol).toBe(oldDoc.protocol);
    expect(doc.jwk.kid).toBe("kms://kms.example.com");
    expect(doc.jwk.x).not.toBe(oldDoc.jwk.x);
    expect(doc.jwk).not.toHaveProperty("alg");
    expect(doc.jwk).not.toHaveProperty("use");
    const file = JSON.parse(readFileSync(join(tk.dataDir, DATA_FILES.staticKey), "utf8")) as { x5c: string[] };
    expect(doc.jwk.x5c).toEqual(file.x5c);
    expect(doc.previousKeys).toEqual([oldDoc.jwk]);
    // The new leaf keeps the SANs of the old one and comes from the same CA.
    const oldLeaf = new x509.X509Certificate(oldDoc.jwk.x5c[0]!);
    const newLeaf = new x509.X509Certificate(doc.jwk.x5c[0]!);
    const sans = (c: x509.X509Certificate) => c.getExtension(x509.SubjectAlternativeNameExtension)!.names.items.map((n) => n.value);
    expect(sans(newLeaf)).toEqual(sans(oldLeaf));
    expect(newLeaf.issuer).toBe(oldLeaf.issuer);
  });

  it("a channel opened before the rotation still works (channel keys do not depend on the static key)", async () => {
    await channelClient.ping();
    expect(channelClient.channel!.uri).toBe(oldChannel);
  });

  it("a fresh client verifies a GK signed before the rotation (via previousKeys) and fetches it", async () => {
    const transport = new CountingTransport(tk.url);
    const fresh = sdk(transport);
    const info = await fresh.discover();
    expect(info.previousJwks).toHaveLength(1);
    const gk = (await fresh.verifyKmsSignature(oldGkJws)) as { uri: string; creator: string };
    expect(gk).toMatchObject({ uri: oldGkUri, creator: "kms://kms.example.com" });
    const fetched = await new GroupKeys(fresh, { user: ALICE, device: staleDevice }).fetch(oldGkUri);
    expect(fetched.uri).toBe(oldGkUri);
    expect(transport.discoveries).toBe(1);
  });

  it("a fresh client verifies a chain whose genesis block the old key signed (via previousKeys)", async () => {
    const fresh = sdk();
    const chain = await new Groups(fresh, { user: ALICE, device: staleDevice }).verify(oldGroupUri);
    expect(chain.members.has(ALICE)).toBe(true);
  });

  it("a client holding only the OLD certificate verifies the old signature without asking the KMS", async () => {
    const before = staleTransport.discoveries;
    await staleClient.verifyKmsSignature(oldGkJws);
    expect(staleTransport.discoveries).toBe(before);
  });

  it("that client learns the new key when it meets it: re-discovers once and opens a channel", async () => {
    const before = staleTransport.discoveries;
    await staleClient.ping();
    expect(staleTransport.discoveries - before).toBe(1);
    const info = await staleClient.discover();
    expect(info.jwk.x).toBe((await wellKnown(tk.url)).jwk.x);
    // And still verifies the old signature afterwards (now through previousKeys), without discovering again.
    await staleClient.verifyKmsSignature(oldGkJws);
    expect(staleTransport.discoveries - before).toBe(1);
  });

  it("fails closed on a signature by no key of this KMS, after one re-discovery", async () => {
    const transport = new CountingTransport(tk.url);
    const client = sdk(transport);
    await client.discover();
    const forged = generateStaticKeyPair("ec").then(async (p) => {
      const { StaticKey } = await import("../../src/server/static-key.js");
      return (await StaticKey.fromPkcs8(p.pkcs8Der, "kms://kms.example.com", [])).sign({ uri: oldGkUri });
    });
    const e = await client.verifyKmsSignature(await forged).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(KmsProtocolError);
    expect((e as KmsProtocolError).code).toBe("ERR_KMS_SIGNATURE");
    expect(transport.discoveries).toBe(2);
  });

  it("an ECDHE encrypted to the OLD key still works during the grace period", async () => {
    const pair = await generateEphemeralKeyPair();
    const { kty, crv, x, y } = await exportJWK(pair.publicKey);
    const payload = {
      client: { clientId: "rotation-test", credential: { bearer: await tk.token(ALICE) } },
      method: "create",
      uri: "/ecdhe",
      requestId: "old-key-1",
      jwk: { kty, crv, x, y },
    };
    const { x5c: _x, ...oldBare } = oldDoc.jwk;
    const jwe = await new CompactEncrypt(new TextEncoder().encode(JSON.stringify(payload)))
      .setProtectedHeader({ alg: "ECDH-ES+A256KW", enc: "A256GCM", kid: "kms://kms.example.com" })
      .encrypt(await importJWK(oldBare, "ECDH-ES+A256KW"));
    const { body } = await post(tk.url, jwe);
    const { payload: reply } = await openJws(tk.url, body); // signed by the new key
    expect(reply).toMatchObject({ status: 201, requestId: "old-key-1" });
  });

  it("the data dir: new key 0600, archive dir 0700 with the old sealed key (0600) and old chain (0644), no temp files", () => {
    const dir = tk.dataDir;
    expect(mode(join(dir, DATA_FILES.staticKey))).toBe(0o600);
    expect(mode(join(dir, DATA_FILES.kmsCert))).toBe(0o644);
    const archive = join(dir, DATA_FILES.previousKeys);
    expect(mode(archive)).toBe(0o700);
    const files = readdirSync(archive).sort();
    expect(files).toHaveLength(2);
    const [jsonFile, pemFile] = [files.find((f) => f.endsWith(".json"))!, files.find((f) => f.endsWith(".pem"))!];
    expect(jsonFile.replace(/\.json$/, "")).toBe(pemFile.replace(/\.pem$/, ""));
    expect(jsonFile).toMatch(/^\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3}Z\.json$/);
    expect(mode(join(archive, jsonFile))).toBe(0o600);
    expect(mode(join(archive, pemFile))).toBe(0o644);
    const archived = JSON.parse(readFileSync(join(archive, jsonFile), "utf8")) as { x5c: string[]; retired: string; sealedPrivateKey: string };
    expect(archived.x5c).toEqual(oldDoc.jwk.x5c);
    expect(Date.parse(archived.retired)).toBeGreaterThan(0);
    expect(leafOfPem(readFileSync(join(archive, pemFile), "utf8")).equal(leafOfPem(oldKmsCertPem))).toBe(true);
    // kms-cert.pem is the new chain.
    const current = JSON.parse(readFileSync(join(dir, DATA_FILES.staticKey), "utf8")) as { x5c: string[] };
    expect(leafOfPem(readFileSync(join(dir, DATA_FILES.kmsCert), "utf8")).equal(new x509.X509Certificate(current.x5c[0]!))).toBe(true);
    for (const f of [...readdirSync(dir), ...files]) expect(f).not.toMatch(/\.tmp$/);
  });
});

describe("keyward rotate-static-key (data dir only)", () => {
  let root: string;
  const dirs: string[] = [];
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), "keyward-rotate-"));
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  async function initDir(name: string, keyType = "ec"): Promise<string> {
    const dir = join(root, name);
    const r = await runCli(["init", "--dir", dir, "--authority", "kms.example.com", "--domain", "example.com", "--key-type", keyType]);
    expect(r.code, r.stderr).toBe(0);
    dirs.push(dir);
    return dir;
  }
  const snapshot = (dir: string) => Object.fromEntries(readdirSync(dir).map((f) => [f, statSync(join(dir, f)).isFile() ? readFileSync(join(dir, f), "utf8") : "<dir>"]));

  it("refuses without a CA key and without --key/--cert, and changes nothing", async () => {
    const dir = await initDir("operator-ca");
    rmSync(join(dir, DATA_FILES.caKey));
    const before = snapshot(dir);
    const r = await runCli(["rotate-static-key", "--dir", dir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("has no CA key (ca-key.sealed): its certificate comes from an operator CA");
    expect(r.stderr).toContain("--key new-key.pem --cert new-chain.pem");
    expect(r.stderr).toContain("DNS SANs: kms.example.com, example.com");
    expect(snapshot(dir)).toEqual(before);
    expect(existsSync(join(dir, DATA_FILES.previousKeys))).toBe(false);
  });

  it("with --key and --cert installs the operator's key and chain; a key that is not the leaf's is refused", async () => {
    const dir = await initDir("operator-key");
    rmSync(join(dir, DATA_FILES.caKey));
    const operatorCa = await createDevCa({ commonName: "Operator CA" });
    const pair = await generateStaticKeyPair("ec");
    const leaf = await issueKmsCertificate({ ca: { cert: operatorCa.cert, privateKey: operatorCa.keys.privateKey }, dnsNames: ["kms.example.com", "example.com"], publicKey: pair.publicKey });
    const keyFile = join(root, "op-key.pem");
    const certFile = join(root, "op-chain.pem");
    writeFileSync(keyFile, x509.PemConverter.encode(pair.pkcs8Der.buffer, "PRIVATE KEY"), { mode: 0o600 });
    writeFileSync(certFile, leaf.certPem + operatorCa.certPem);

    const other = await generateStaticKeyPair("ec");
    const otherKey = join(root, "other-key.pem");
    writeFileSync(otherKey, x509.PemConverter.encode(other.pkcs8Der.buffer, "PRIVATE KEY"), { mode: 0o600 });
    const before = snapshot(dir);
    const bad = await runCli(["rotate-static-key", "--dir", dir, "--key", otherKey, "--cert", certFile]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain("--cert's first certificate is not for the key in --key");
    expect(snapshot(dir)).toEqual(before);
    const half = await runCli(["rotate-static-key", "--dir", dir, "--key", keyFile]);
    expect(half.code).toBe(1);
    expect(half.stderr).toContain("--key and --cert go together");

    const r = await runCli(["rotate-static-key", "--dir", dir, "--key", keyFile, "--cert", certFile]);
    expect(r.code, r.stderr).toBe(0);
    const file = JSON.parse(readFileSync(join(dir, DATA_FILES.staticKey), "utf8")) as { x5c: string[] };
    expect(new x509.X509Certificate(file.x5c[0]!).equal(leaf.cert)).toBe(true);
    expect(new x509.X509Certificate(file.x5c[1]!).equal(operatorCa.cert)).toBe(true);
    expect(readFileSync(join(dir, DATA_FILES.staticKey), "utf8")).not.toContain(Buffer.from(pair.pkcs8Der).toString("base64"));
  });

  it("--key-type rsa switches the key type; the server loads the EC key as a previous key, decrypting only ECDH-ES", async () => {
    const dir = await initDir("ec-to-rsa");
    const r = await runCli(["rotate-static-key", "--dir", dir, "--key-type", "rsa"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("new RSA key");
    const { loadConfig } = await import("../../src/config/config.js");
    const config = loadConfig(dir, { KEYWARD_OAUTH_ISSUER: "https://idp.example", KEYWARD_OAUTH_JWKS_URI: "https://idp.example/jwks" });
    const key = await loadStaticKey(config, loadMasterKey(config));
    expect(key.type).toBe("RSA");
    expect(key.previousPublicJwks.map((j) => j.kty)).toEqual(["EC"]);
    // Key agreement's header check accepts the old EC key's algorithms during the grace period.
    expect([...key.acceptedKeyManagementAlgorithms].sort()).toEqual(["ECDH-ES", "ECDH-ES+A256KW", "RSA-OAEP", "RSA-OAEP-256"]);
  });

  it("rotating twice keeps both previous keys, newest first", async () => {
    const dir = await initDir("twice");
    for (let i = 0; i < 2; i++) expect((await runCli(["rotate-static-key", "--dir", dir])).code).toBe(0);
    expect(readdirSync(join(dir, DATA_FILES.previousKeys))).toHaveLength(4);
    const { loadConfig } = await import("../../src/config/config.js");
    const config = loadConfig(dir, { KEYWARD_OAUTH_ISSUER: "https://idp.example", KEYWARD_OAUTH_JWKS_URI: "https://idp.example/jwks" });
    const key = await loadStaticKey(config, loadMasterKey(config));
    const archives = readdirSync(join(dir, DATA_FILES.previousKeys)).filter((f) => f.endsWith(".json")).sort();
    const x5cOf = (f: string) => (JSON.parse(readFileSync(join(dir, DATA_FILES.previousKeys, f), "utf8")) as { x5c: string[] }).x5c;
    expect(key.previousPublicJwks.map((j) => j.x5c)).toEqual([x5cOf(archives[1]!), x5cOf(archives[0]!)]);
  });

  it("refuses a data dir whose master key does not open the static key, before writing anything", async () => {
    const dir = await initDir("wrong-master");
    const before = snapshot(dir);
    const { generateMasterKey } = await import("../../src/server/barrier/master-key.js");
    const r = await runCli(["rotate-static-key", "--dir", dir], { env: { KEYWARD_MASTER_KEY: generateMasterKey() } });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("the master key does not open");
    expect(snapshot(dir)).toEqual(before);
  });
});
