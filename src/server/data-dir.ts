import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { createPrivateKey, createPublicKey, webcrypto } from "node:crypto";
import { chmodSync, closeSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { resolveConfig, writeConfigFile, type ConfigFileValues, type KeywardConfig } from "../config/config.js";
import { createDevCa, generateStaticKeyPair, issueKmsCertificate, pemToDer, toX5c } from "../pki/dev-ca.js";
import { kmsUri } from "../protocol/uri.js";
import { generateMasterKey, parseMasterKey, SealingKey } from "./barrier/master-key.js";
import { StaticKey, type PreviousStaticKey } from "./static-key.js";

/** The files of a data directory, in one place. */
export const DATA_FILES = {
  config: "config.json",
  masterKey: "master.key",
  staticKey: "static-key.json",
  caCert: "ca.pem",
  caKey: "ca-key.sealed",
  kmsCert: "kms-cert.pem",
  /** Rotated-out static keys: `<time>.json` (sealed like static-key.json, 0600) and `<time>.pem`. */
  previousKeys: "previous-static-keys",
} as const;

/** static-key.json: the private key is sealed under the master key, bound to its kid. */
interface StaticKeyFile {
  readonly kid: string;
  readonly type: "EC" | "RSA";
  readonly sealedPrivateKey: string;
  readonly x5c: string[];
  readonly created: string;
  /** Set in the archived copy (previous-static-keys/): when `keyward rotate-static-key` replaced it. */
  readonly retired?: string;
}

export interface InitOptions {
  readonly dir: string;
  readonly authority: string;
  readonly keyType?: "ec" | "rsa";
  /** Domain(s) of the entities this KMS serves (default: the authority's host). */
  readonly domain?: string;
  /** Further config values to write (OAuth settings, listen address, ...). */
  readonly config?: Partial<ConfigFileValues>;
  /** The master key to use (base64url or hex); default: KEYWARD_MASTER_KEY, else a new one written to master.key. */
  readonly masterKey?: string;
}

/**
 * `keyward init`: creates a data directory: config, a development PKI (private CA in ca.pem and a
 * KMS certificate with a DNS SAN for the authority host and the served domain), the static key
 * pair, and the master key (mode 0600) under which the static private key is sealed. Refuses to
 * touch a directory that already holds anything.
 *
 * @example
 * await initDataDir({ dir: "/var/lib/keyward", authority: "kms.example.com", keyType: "ec" });
 */
export async function initDataDir(opts: InitOptions): Promise<{ caPem: string; kid: string }> {
  if (existsSync(opts.dir) && readdirSync(opts.dir).length > 0) {
    throw new Error(`refusing to initialise ${opts.dir}: it already exists and is not empty (a data dir holds keys; nothing was changed)`);
  }
  const configValues = { authority: opts.authority, ...(opts.domain ? { domain: opts.domain.toLowerCase() } : {}), ...opts.config };
  // Validate everything before the first file is written: a bad --authority leaves nothing behind.
  resolveConfig(opts.dir, { oauthIssuer: "https://placeholder.invalid", oauthJwksUri: "https://placeholder.invalid/jwks", ...configValues }, {});
  mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
  chmodSync(opts.dir, 0o700);

  const masterKeyText = opts.masterKey ?? process.env.KEYWARD_MASTER_KEY;
  let masterKey: Uint8Array;
  if (masterKeyText) {
    masterKey = parseMasterKey(masterKeyText);
  } else {
    const generated = generateMasterKey();
    writeSecret(join(opts.dir, DATA_FILES.masterKey), generated + "\n");
    masterKey = parseMasterKey(generated);
  }
  const sealing = new SealingKey(masterKey);

  const authorityHost = opts.authority.replace(/:\d+$/, "").toLowerCase();
  const domain = (opts.domain ?? authorityHost).toLowerCase();
  const dnsNames = [...new Set([authorityHost, domain])];
  const ca = await createDevCa({ commonName: `Keyward Development CA for ${authorityHost}` });
  const pair = await generateStaticKeyPair(opts.keyType ?? "ec");
  const leaf = await issueKmsCertificate({ ca: { cert: ca.cert, privateKey: ca.keys.privateKey }, dnsNames, publicKey: pair.publicKey });
  const kid = kmsUri(opts.authority);

  writeFileSync(join(opts.dir, DATA_FILES.caCert), ca.certPem, { mode: 0o644 });
  writeSecret(join(opts.dir, DATA_FILES.caKey), sealing.seal("keyward:ca-key", new TextEncoder().encode(ca.privateKeyPkcs8Pem)));
  writeFileSync(join(opts.dir, DATA_FILES.kmsCert), leaf.certPem + ca.certPem, { mode: 0o644 });
  const file: StaticKeyFile = {
    kid,
    type: opts.keyType === "rsa" ? "RSA" : "EC",
    sealedPrivateKey: sealing.seal(`keyward:static-key:${kid}`, pair.pkcs8Der),
    x5c: toX5c([leaf.cert, ca.cert]),
    created: new Date().toISOString(),
  };
  writeSecret(join(opts.dir, DATA_FILES.staticKey), JSON.stringify(file, null, 2) + "\n");
  writeConfigFile(opts.dir, configValues);
  return { caPem: ca.certPem, kid };
}

/** The master key: KEYWARD_MASTER_KEY wins over the key file. */
export function loadMasterKey(config: KeywardConfig): Uint8Array {
  if (config.masterKeyFromEnv) return parseMasterKey(config.masterKeyFromEnv);
  if (!existsSync(config.masterKeyFile)) {
    throw new Error(`no master key: set KEYWARD_MASTER_KEY or create ${config.masterKeyFile} (keyward init does)`);
  }
  return parseMasterKey(readFileSync(config.masterKeyFile, "utf8"));
}

/**
 * Opens static-key.json with the master key, and the archived previous keys of
 * previous-static-keys/ next to it (static key rotation): they are published for verification
 * and decrypt key agreement during a grace period (StaticKey.decryptKeyAgreement).
 */
export async function loadStaticKey(config: KeywardConfig, masterKey: Uint8Array): Promise<StaticKey> {
  const expectedKid = kmsUri(config.authority);
  const current = await openStaticKeyFile(config.staticKeyFile, expectedKid, masterKey);
  const previous: PreviousStaticKey[] = [];
  for (const path of previousKeyFiles(dirname(config.staticKeyFile))) {
    const key = await openStaticKeyFile(path, expectedKid, masterKey);
    const file = JSON.parse(readFileSync(path, "utf8")) as StaticKeyFile;
    const retiredAt = new Date(file.retired ?? file.created);
    if (Number.isNaN(retiredAt.getTime())) throw new Error(`${path} has no valid 'retired' time`);
    previous.push({ key, retiredAt });
  }
  await current.setPreviousKeys(previous);
  return current;
}

/** The archived static-key files of a data dir (previous-static-keys/*.json), oldest first. */
export function previousKeyFiles(dataDir: string): string[] {
  const dir = join(dataDir, DATA_FILES.previousKeys);
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith(".json"))
    .sort()
    .map((f) => join(dir, f));
}

async function openStaticKeyFile(path: string, expectedKid: string, masterKey: Uint8Array): Promise<StaticKey> {
  const file = JSON.parse(readFileSync(path, "utf8")) as StaticKeyFile;
  if (file.kid !== expectedKid) {
    throw new Error(`${path} is for ${file.kid}, but this KMS is ${expectedKid} (authority changed?)`);
  }
  let pkcs8: Uint8Array;
  try {
    pkcs8 = new SealingKey(masterKey).open(`keyward:static-key:${file.kid}`, file.sealedPrivateKey);
  } catch {
    throw new Error(`the master key does not open ${path} (wrong KEYWARD_MASTER_KEY or master.key?)`);
  }
  return StaticKey.fromPkcs8(pkcs8, file.kid, file.x5c);
}

export interface RotateOptions {
  readonly dir: string;
  /** Type of the new key when the data dir's CA issues it (default: the current key's type). */
  readonly keyType?: "ec" | "rsa";
  /** The operator's own new key (PEM, PKCS#8 or PKCS#1/SEC1) and chain (PEM, leaf first): both or neither. */
  readonly keyPem?: string;
  readonly certPem?: string;
  readonly env?: Record<string, string | undefined>;
  readonly now?: Date;
}

export interface RotateResult {
  readonly kid: string;
  readonly type: "EC" | "RSA";
  /** The archived previous key (sealed) and certificate chain. */
  readonly archivedKey: string;
  readonly archivedCert: string;
  readonly dnsNames: string[];
}

/**
 * `keyward rotate-static-key`: replaces the static key and certificate of a data dir. The new key
 * is issued by the data dir's CA (ca-key.sealed) with the current leaf's DNS SANs, or is the
 * operator's (`keyPem` + `certPem`, required when the data dir has no CA key). The current key and
 * chain are archived first under previous-static-keys/<time>.json|.pem, then static-key.json and
 * kms-cert.pem are replaced; every write is temp file + fsync + rename, so a crash at any point
 * leaves a data dir that starts with a usable key (at worst the old one, also archived). The
 * running KMS is not touched: restart it (every node) to serve the new key.
 *
 * @example
 * const r = await rotateStaticKey({ dir: "/var/lib/keyward" });
 * console.log(`archived ${r.archivedKey}`);
 */
export async function rotateStaticKey(opts: RotateOptions): Promise<RotateResult> {
  const dir = opts.dir;
  const env = opts.env ?? process.env;
  if (!existsSync(join(dir, DATA_FILES.config))) {
    throw new Error(`${dir} is not a Keyward data dir (no ${DATA_FILES.config}; run keyward init)`);
  }
  if ((opts.keyPem === undefined) !== (opts.certPem === undefined)) {
    throw new Error("--key and --cert go together: the new private key and its certificate chain (PEM)");
  }
  const fileValues = JSON.parse(readFileSync(join(dir, DATA_FILES.config), "utf8")) as Record<string, unknown>;
  // Rotation needs no identity provider: placeholders satisfy the config schema as in init.
  const config = resolveConfig(dir, { oauthIssuer: "https://placeholder.invalid", oauthJwksUri: "https://placeholder.invalid/jwks", ...fileValues }, env);
  const masterKey = loadMasterKey(config);
  const sealing = new SealingKey(masterKey);
  const kid = kmsUri(config.authority);
  // Open the current key first: a wrong master key must fail before anything is written.
  const current = await openStaticKeyFile(config.staticKeyFile, kid, masterKey);
  const currentFile = readFileSync(config.staticKeyFile, "utf8");
  const currentChain = (JSON.parse(currentFile) as StaticKeyFile).x5c.map((b64) => new x509.X509Certificate(Buffer.from(b64, "base64")));
  const currentLeaf = currentChain[0];
  const currentNames = currentLeaf?.getExtension(x509.SubjectAlternativeNameExtension)?.names.items.filter((n) => n.type === "dns").map((n) => n.value) ?? [];

  let pkcs8Der: Uint8Array;
  let chain: x509.X509Certificate[];
  if (opts.keyPem !== undefined && opts.certPem !== undefined) {
    ({ pkcs8Der, chain } = operatorKey(opts.keyPem, opts.certPem));
  } else {
    const caKeyPath = join(dir, DATA_FILES.caKey);
    if (!existsSync(caKeyPath) || !existsSync(join(dir, DATA_FILES.caCert))) {
      throw new Error(
        `${dir} has no CA key (${DATA_FILES.caKey}): its certificate comes from an operator CA, so rotate-static-key cannot issue one. ` +
          "Generate the new key and have your CA certify it (DNS SANs: " + (currentNames.join(", ") || "the served domain and the authority host") +
          "), then run: keyward rotate-static-key --dir DIR --key new-key.pem --cert new-chain.pem (nothing was changed)",
      );
    }
    const caCert = new x509.X509Certificate(readFileSync(join(dir, DATA_FILES.caCert), "utf8"));
    let caPkcs8Pem: string;
    try {
      caPkcs8Pem = new TextDecoder().decode(sealing.open("keyward:ca-key", readFileSync(caKeyPath, "utf8")));
    } catch {
      throw new Error(`the master key does not open ${caKeyPath} (wrong KEYWARD_MASTER_KEY or master.key?)`);
    }
    const caKey = await webcrypto.subtle.importKey("pkcs8", pemToDer(caPkcs8Pem)[0]!, { name: "ECDSA", namedCurve: "P-256" }, false, ["sign"]);
    const type = opts.keyType ?? (current.type === "RSA" ? "rsa" : "ec");
    const pair = await generateStaticKeyPair(type);
    const authorityHost = config.authority.replace(/:\d+$/, "").toLowerCase();
    const dnsNames = currentNames.length > 0 ? currentNames : [...new Set([authorityHost, config.domain])];
    const leaf = await issueKmsCertificate({ ca: { cert: caCert, privateKey: caKey as CryptoKey }, dnsNames, publicKey: pair.publicKey });
    pkcs8Der = pair.pkcs8Der;
    chain = [leaf.cert, caCert];
  }
  // The same checks the server makes at start-up (type, curve, size), before anything is written.
  const next = await StaticKey.fromPkcs8(pkcs8Der, kid, toX5c(chain));
  if (JSON.stringify(next.publicJwk) === JSON.stringify(current.publicJwk)) {
    throw new Error("the new key is the current key: nothing to rotate (nothing was changed)");
  }

  const now = opts.now ?? new Date();
  const archiveDir = join(dir, DATA_FILES.previousKeys);
  mkdirSync(archiveDir, { recursive: true, mode: 0o700 });
  chmodSync(archiveDir, 0o700);
  const stamp = now.toISOString().replace(/:/g, "-");
  let archivedKey = join(archiveDir, `${stamp}.json`);
  for (let i = 1; existsSync(archivedKey); i++) archivedKey = join(archiveDir, `${stamp}-${i}.json`);
  const archivedCert = archivedKey.replace(/\.json$/, ".pem");
  // 1. Archive the current key and chain (the current files stay in place and usable).
  writeAtomic(archivedCert, currentChain.map((c) => c.toString("pem") + "\n").join(""), 0o644);
  writeAtomic(archivedKey, JSON.stringify({ ...(JSON.parse(currentFile) as StaticKeyFile), retired: now.toISOString() }, null, 2) + "\n", 0o600);
  // 2. Replace: static-key.json is what the server loads; kms-cert.pem is its PEM copy for operators.
  const file: StaticKeyFile = {
    kid,
    type: next.type,
    sealedPrivateKey: sealing.seal(`keyward:static-key:${kid}`, pkcs8Der),
    x5c: toX5c(chain),
    created: now.toISOString(),
  };
  writeAtomic(config.staticKeyFile, JSON.stringify(file, null, 2) + "\n", 0o600);
  writeAtomic(join(dir, DATA_FILES.kmsCert), chain.map((c) => c.toString("pem") + "\n").join(""), 0o644);
  const dnsNames = chain[0]!.getExtension(x509.SubjectAlternativeNameExtension)?.names.items.filter((n) => n.type === "dns").map((n) => n.value) ?? [];
  return { kid, type: next.type, archivedKey, archivedCert, dnsNames };
}

/** The operator's key (any PEM private key node reads) as PKCS#8 DER, and its chain, checked to match. */
function operatorKey(keyPem: string, certPem: string): { pkcs8Der: Uint8Array; chain: x509.X509Certificate[] } {
  let pkcs8Der: Uint8Array;
  let spkiDer: Uint8Array;
  try {
    const key = createPrivateKey({ key: keyPem, format: "pem" });
    pkcs8Der = new Uint8Array(key.export({ format: "der", type: "pkcs8" }));
    spkiDer = new Uint8Array(createPublicKey(key).export({ format: "der", type: "spki" }));
  } catch (e) {
    throw new Error(`--key is not a PEM private key: ${(e as Error).message}`);
  }
  let chain: x509.X509Certificate[];
  try {
    chain = pemToDer(certPem).map((der) => new x509.X509Certificate(der));
  } catch (e) {
    throw new Error(`--cert is not a PEM certificate chain: ${(e as Error).message}`);
  }
  if (chain.length === 0) throw new Error("--cert holds no certificate (PEM, leaf first, then intermediates)");
  if (Buffer.compare(Buffer.from(chain[0]!.publicKey.rawData), Buffer.from(spkiDer)) !== 0) {
    throw new Error("--cert's first certificate is not for the key in --key (the chain must start with the leaf of that key)");
  }
  return { pkcs8Der, chain };
}

/** Writes `path` so that it holds either its old content or all of the new: temp file, fsync, rename, fsync dir. */
function writeAtomic(path: string, content: string, mode: number): void {
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  const fd = openSync(tmp, "w", mode);
  try {
    writeFileSync(fd, content);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  chmodSync(tmp, mode);
  renameSync(tmp, path);
  try {
    const dirFd = openSync(dirname(path), "r");
    try {
      fsyncSync(dirFd);
    } finally {
      closeSync(dirFd);
    }
  } catch {
    /* directories cannot be fsynced on every platform */
  }
}

function writeSecret(path: string, content: string): void {
  writeFileSync(path, content, { mode: 0o600 });
  chmodSync(path, 0o600); // the umask cannot widen it, but a pre-existing file's mode would stay: set it
}
