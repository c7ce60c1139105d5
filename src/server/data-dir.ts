import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { resolveConfig, writeConfigFile, type ConfigFileValues, type KeywardConfig } from "../config/config.js";
import { createDevCa, generateStaticKeyPair, issueKmsCertificate, toX5c } from "../pki/dev-ca.js";
import { kmsUri } from "../protocol/uri.js";
import { generateMasterKey, parseMasterKey, SealingKey } from "./barrier/master-key.js";
import { StaticKey } from "./static-key.js";

/** The files of a data directory, in one place. */
export const DATA_FILES = {
  config: "config.json",
  masterKey: "master.key",
  staticKey: "static-key.json",
  caCert: "ca.pem",
  caKey: "ca-key.sealed",
  kmsCert: "kms-cert.pem",
} as const;

/** static-key.json: the private key is sealed under the master key, bound to its kid. */
interface StaticKeyFile {
  readonly kid: string;
  readonly type: "EC" | "RSA";
  readonly sealedPrivateKey: string;
  readonly x5c: string[];
  readonly created: string;
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

/** Opens static-key.json with the master key. */
export async function loadStaticKey(config: KeywardConfig, masterKey: Uint8Array): Promise<StaticKey> {
  const file = JSON.parse(readFileSync(config.staticKeyFile, "utf8")) as StaticKeyFile;
  const expectedKid = kmsUri(config.authority);
  if (file.kid !== expectedKid) {
    throw new Error(`${config.staticKeyFile} is for ${file.kid}, but this KMS is ${expectedKid} (authority changed?)`);
  }
  let pkcs8: Uint8Array;
  try {
    pkcs8 = new SealingKey(masterKey).open(`keyward:static-key:${file.kid}`, file.sealedPrivateKey);
  } catch {
    throw new Error(`the master key does not open ${config.staticKeyFile} (wrong KEYWARD_MASTER_KEY or master.key?)`);
  }
  return StaticKey.fromPkcs8(pkcs8, file.kid, file.x5c);
}

function writeSecret(path: string, content: string): void {
  writeFileSync(path, content, { mode: 0o600 });
  chmodSync(path, 0o600); // the umask cannot widen it, but a pre-existing file's mode would stay: set it
}
