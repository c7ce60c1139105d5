import "reflect-metadata";
import * as x509 from "@peculiar/x509";

/**
 * Development / test PKI for the KMS static key (wire profile §2): a throw-away CA, KMS leaf
 * certificates for EC P-256 or RSA keys, and PEM helpers. Server-side only; never use a dev CA
 * in production.
 */

const crypto = globalThis.crypto;
x509.cryptoProvider.set(crypto);

const DAY_MS = 86_400_000;
/** Back-date `notBefore` a little so that a client whose clock lags does not refuse a fresh certificate. */
const SKEW_MS = 5 * 60_000;
const ECDSA_P256: EcKeyGenParams = { name: "ECDSA", namedCurve: "P-256" };

/** A random positive 128-bit serial number, hex (first octet 0x01..0x7f, so DER needs no padding). */
function randomSerial(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[0] = (bytes[0]! & 0x7f) || 0x01;
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Creates a self-signed development CA (EC P-256, ECDSA with SHA-256) with critical
 * BasicConstraints cA=true, critical KeyUsage keyCertSign|cRLSign and a SubjectKeyIdentifier.
 *
 * @example
 * const ca = await createDevCa({ commonName: "Keyward Dev CA" });
 * fs.writeFileSync("ca.pem", ca.certPem); // give this file to clients as a trust root
 */
export async function createDevCa(opts: { commonName?: string; validDays?: number } = {}): Promise<{
  certPem: string;
  privateKeyPkcs8Pem: string;
  cert: x509.X509Certificate;
  keys: CryptoKeyPair;
}> {
  const keys = (await crypto.subtle.generateKey(ECDSA_P256, true, ["sign", "verify"])) as CryptoKeyPair;
  const notBefore = new Date(Date.now() - SKEW_MS);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: [{ CN: [opts.commonName ?? "Keyward Development CA"] }],
    notBefore,
    notAfter: new Date(notBefore.getTime() + (opts.validDays ?? 3650) * DAY_MS),
    keys,
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } as EcdsaParams,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  const pkcs8 = await crypto.subtle.exportKey("pkcs8", keys.privateKey);
  return { certPem: cert.toString("pem"), privateKeyPkcs8Pem: derToPem(pkcs8, "PRIVATE KEY"), cert, keys };
}

/**
 * Issues a KMS leaf certificate signed by `ca`: DNS SubjectAltName with every `dnsNames` entry,
 * BasicConstraints cA=false, critical KeyUsage (digitalSignature|keyAgreement for EC,
 * digitalSignature|keyEncipherment for RSA), ExtendedKeyUsage serverAuth and clientAuth (a KMS
 * presents the same certificate as a credential to peer KMS servers, which require clientAuth),
 * AuthorityKeyIdentifier (and SubjectKeyIdentifier). `publicKey` may be any EC or RSA CryptoKey (ECDSA, ECDH,
 * RSASSA-PKCS1-v1_5, RSA-OAEP, ...): only its SPKI is used.
 *
 * Test knobs: `notBefore` / `notAfter` override `validDays`; `omitSan` with `commonName` makes
 * a CN-only certificate (which clients must refuse).
 *
 * @example
 * const ca = await createDevCa();
 * const kms = await generateStaticKeyPair("ec");
 * const { certPem } = await issueKmsCertificate({
 *   ca: { cert: ca.cert, privateKey: ca.keys.privateKey },
 *   dnsNames: ["example.com"],
 *   publicKey: kms.publicKey,
 * });
 */
export async function issueKmsCertificate(opts: {
  ca: { cert: x509.X509Certificate; privateKey: CryptoKey };
  dnsNames: string[];
  publicKey: CryptoKey;
  validDays?: number;
  notBefore?: Date;
  notAfter?: Date;
  commonName?: string;
  omitSan?: boolean;
}): Promise<{ certPem: string; cert: x509.X509Certificate }> {
  if (!opts.omitSan && opts.dnsNames.length === 0) {
    throw new TypeError("issueKmsCertificate: dnsNames is empty (pass omitSan: true to issue a certificate without SAN)");
  }
  const kty = opts.publicKey.algorithm.name;
  const isEc = kty === "ECDSA" || kty === "ECDH";
  if (!isEc && !kty.startsWith("RSA")) throw new TypeError(`issueKmsCertificate: unsupported key algorithm ${kty}`);
  const spki = await crypto.subtle.exportKey("spki", opts.publicKey);

  const caSki = opts.ca.cert.getExtension(x509.SubjectKeyIdentifierExtension);
  const aki = caSki
    ? new x509.AuthorityKeyIdentifierExtension(caSki.keyId)
    : await x509.AuthorityKeyIdentifierExtension.create(opts.ca.cert.publicKey);
  const F = x509.KeyUsageFlags;
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(F.digitalSignature | (isEc ? F.keyAgreement : F.keyEncipherment), true),
    new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
    aki,
    await x509.SubjectKeyIdentifierExtension.create(spki),
  ];
  if (!opts.omitSan) {
    extensions.push(new x509.SubjectAlternativeNameExtension(opts.dnsNames.map((value) => ({ type: "dns" as const, value }))));
  }

  const notBefore = opts.notBefore ?? new Date(Date.now() - SKEW_MS);
  const notAfter = opts.notAfter ?? new Date(notBefore.getTime() + (opts.validDays ?? 365) * DAY_MS);
  const cn = opts.commonName ?? opts.dnsNames[0] ?? "Keyward KMS";
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: [{ CN: [cn] }],
    issuer: opts.ca.cert.subjectName,
    notBefore,
    notAfter,
    publicKey: spki,
    signingKey: opts.ca.privateKey,
    extensions,
  });
  return { certPem: cert.toString("pem"), cert };
}

/**
 * Generates a KMS static key pair. `"ec"`: P-256 (as ECDSA); `"rsa"`: RSASSA-PKCS1-v1_5 with
 * SHA-256 and `rsaBits` bits (>= 2048 for production). Both are extractable. The returned
 * `pkcs8Der` carries a generic key (id-ecPublicKey / rsaEncryption), so the server can import it
 * both for signing (ES256 / RS256) and for decryption (ECDH-ES / RSA-OAEP). `publicJwk` holds
 * only the key members (`kty`, `crv`, `x`, `y` / `kty`, `n`, `e`): no `alg`, `key_ops`, `ext`,
 * so that clients may use it for both verification and encryption.
 *
 * @example
 * const { pkcs8Der, publicJwk, publicKey } = await generateStaticKeyPair("rsa", 3072);
 */
export async function generateStaticKeyPair(
  type: "ec" | "rsa",
  rsaBits = 2048,
): Promise<{ privateKey: CryptoKey; publicKey: CryptoKey; pkcs8Der: Uint8Array<ArrayBuffer>; publicJwk: JsonWebKey }> {
  const algorithm: EcKeyGenParams | RsaHashedKeyGenParams =
    type === "ec"
      ? ECDSA_P256
      : {
          name: "RSASSA-PKCS1-v1_5",
          modulusLength: rsaBits,
          publicExponent: new Uint8Array([1, 0, 1]),
          hash: "SHA-256",
        };
  const { privateKey, publicKey } = (await crypto.subtle.generateKey(algorithm, true, ["sign", "verify"])) as CryptoKeyPair;
  const pkcs8Der = new Uint8Array(await crypto.subtle.exportKey("pkcs8", privateKey));
  const jwk = await crypto.subtle.exportKey("jwk", publicKey);
  const publicJwk: JsonWebKey =
    type === "ec" ? { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y } : { kty: jwk.kty, n: jwk.n, e: jwk.e };
  return { privateKey, publicKey, pkcs8Der, publicJwk };
}

/**
 * Decodes every PEM block of `pem` (a single certificate or a bundle) to DER, in order.
 *
 * @example
 * const [leafDer, caDer] = pemToDer(fs.readFileSync("chain.pem", "utf8"));
 */
export function pemToDer(pem: string): Uint8Array<ArrayBuffer>[] {
  return x509.PemConverter.decode(pem).map((ab) => new Uint8Array(ab));
}

/**
 * Encodes DER as PEM with the given label (default `CERTIFICATE`).
 *
 * @example
 * const pem = derToPem(pkcs8Der, "PRIVATE KEY");
 */
export function derToPem(der: BufferSource, label = "CERTIFICATE"): string {
  return x509.PemConverter.encode(der, label);
}

/**
 * Encodes certificates (leaf first) as a JWK `x5c` array: standard base64 (not base64url) DER.
 *
 * @example
 * const jwk = { ...publicJwk, kid, x5c: toX5c([leaf.cert, ca.cert]) };
 */
export function toX5c(certs: x509.X509Certificate[]): string[] {
  return certs.map((c) => c.toString("base64"));
}
