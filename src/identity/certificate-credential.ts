import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { signedBy } from "../protocol/x509-signed-by.js";
import { createHash, createPublicKey, type JsonWebKey as NodeJwk, type KeyObject } from "node:crypto";
import { calculateJwkThumbprint, compactVerify, decodeProtectedHeader, type JWK } from "jose";
import { unauthorized } from "../protocol/errors.js";
import type { AuthenticatedIdentity } from "./authenticator.js";
import type { CertificateCredentialVerifier } from "./credential-authenticator.js";
import { echo } from "../protocol/echo.js";

/**
 * Certificate credentials (wire profile §6, docs/certificate-credentials.md): a request credential
 * `{"jwk": <public JWK with x5c>}` used by peer KMS servers and trusted services.
 *
 * What is checked, in this order (each refusal is a 401 with a stable code):
 *  1. shape: the JWK is an object without private members and with a non-empty `x5c` of base64
 *     DER certificates (ERR_CERT_MALFORMED);
 *  2. on key agreement, a proof of possession is present (ERR_NO_PROOF_OF_POSSESSION);
 *  3. the chain (unless a successful validation of the same x5c is cached): a path from x5c[0]
 *     (the leaf) through the other x5c entries (intermediates, any order; a root in x5c is
 *     optional and ignored) to a configured trust root, every signature verified
 *     (ERR_CERT_UNTRUSTED); no SHA-1 signature (ERR_CERT_WEAK_SIGNATURE); every certificate of the
 *     path, trust root included, within its validity dates (ERR_CERT_EXPIRED,
 *     ERR_CERT_NOT_YET_VALID); no unsupported critical extension
 *     (ERR_CERT_UNSUPPORTED_CRITICAL_EXTENSION); every issuer a CA (ERR_CERT_NOT_CA) whose
 *     pathLenConstraint holds (ERR_CERT_PATH_LENGTH) and whose KeyUsage, when present, has
 *     keyCertSign (ERR_CERT_KEY_USAGE); the leaf not a CA (ERR_CERT_LEAF_IS_CA), with a KeyUsage
 *     extension that has digitalSignature (ERR_CERT_KEY_USAGE) and an ExtendedKeyUsage, when
 *     present, with clientAuth or anyExtendedKeyUsage (ERR_CERT_EXTENDED_KEY_USAGE); RSA keys of
 *     at least 2048 bits on the whole path (ERR_CERT_KEY_TOO_SMALL); the leaf key EC P-256 or RSA
 *     (ERR_CERT_KEY_TYPE); a first DNS SubjectAltName that is a host name (ERR_CERT_NO_DNS_SAN);
 *  4. the JWK's key members equal the leaf's public key (ERR_CERT_KEY_MISMATCH);
 *  5. on key agreement, the proof (the JWS compact that was the request plaintext) verifies with
 *     that key, with ES256 (EC) or RS256/PS256 (RSA) only, and its payload carries this very
 *     credential (ERR_PROOF_INVALID).
 *
 * The entity is `kms://<first DNS SAN, lower-cased>`; the identity carries the RFC 7638
 * thumbprint of the JWK and expires at the leaf's notAfter.
 *
 * @example
 * const v = new CertificateCredentialValidator({ trustRootsPem: readFileSync("roots.pem", "utf8") });
 * const id = await v.verify(jwk, { keyAgreement: true, proofOfPossession: jwsCompact });
 * // { entity: "kms://peer.example.org", kind: "certificate", thumbprint, expiresAt }
 */
export class CertificateCredentialValidator implements CertificateCredentialVerifier {
  private readonly roots: x509.X509Certificate[];
  private readonly now: () => Date;
  /** Successful chain validations, keyed by SHA-256 of the x5c array, until the path's earliest notAfter. */
  private readonly cache = new Map<string, ValidatedChain>();
  private readonly cacheSize: number;

  constructor(readonly options: { trustRootsPem: string; now?: () => Date; cacheSize?: number }) {
    this.roots = parseTrustRoots(options.trustRootsPem);
    this.now = options.now ?? (() => new Date());
    this.cacheSize = options.cacheSize ?? 1000;
  }

  async verify(jwk: unknown, context: { keyAgreement: boolean; proofOfPossession?: string }): Promise<AuthenticatedIdentity> {
    const { x5c, key } = checkShape(jwk);
    if (context.keyAgreement && !context.proofOfPossession) {
      throw unauthorized(
        "certificate credential without proof of possession: on key agreement the request plaintext must be a JWS signed with the credential's key (JWE(K_kms_pub, JWS(K_client_priv, request)))",
        "ERR_NO_PROOF_OF_POSSESSION",
      );
    }
    const chain = await this.validateChain(x5c);

    // The JWK is the leaf's key: same RFC 7638 thumbprint, and a valid key of the leaf's type.
    const thumbprint = await jwkThumbprint(key);
    if (thumbprint !== chain.leafThumbprint) {
      throw unauthorized(
        `the credential's JWK (${String(key.kty)} key, thumbprint ${thumbprint}) is not the public key of its certificate x5c[0] "${chain.leafSubject}" (thumbprint ${chain.leafThumbprint})`,
        "ERR_CERT_KEY_MISMATCH",
      );
    }

    if (context.proofOfPossession) await verifyProof(context.proofOfPossession, chain.leafKey, thumbprint);
    return { entity: chain.entity, kind: "certificate", thumbprint, expiresAt: chain.leafNotAfter };
  }

  private async validateChain(x5c: string[]): Promise<ValidatedChain> {
    const now = this.now();
    const cacheKey = createHash("sha256").update(JSON.stringify(x5c)).digest("base64url");
    const cached = this.cache.get(cacheKey);
    if (cached) {
      if (cached.validFrom.getTime() <= now.getTime() && now.getTime() <= cached.validUntil.getTime()) return cached;
      this.cache.delete(cacheKey); // outside the window: validate again, for the precise refusal
    }
    const chain = await validatePath(x5c, this.roots, now);
    if (this.cache.size >= this.cacheSize) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(cacheKey, chain);
    return chain;
  }
}

interface ValidatedChain {
  readonly entity: string;
  readonly leafSubject: string;
  readonly leafKey: KeyObject;
  readonly leafThumbprint: string;
  readonly leafNotAfter: Date;
  /** The window in which every certificate of the path is valid. */
  readonly validFrom: Date;
  readonly validUntil: Date;
}

const crypto = globalThis.crypto;
x509.cryptoProvider.set(crypto);

const MAX_CHAIN = 10;
const MIN_RSA_BITS = 2048;
const PRIVATE_MEMBERS = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
const ANY_EXTENDED_KEY_USAGE = "2.5.29.37.0";
/** Extensions this validator processes; any other extension marked critical is refused (RFC 5280 §4.2). */
const PROCESSED_EXTENSIONS = new Set([
  "2.5.29.19", // basicConstraints
  "2.5.29.15", // keyUsage
  "2.5.29.37", // extKeyUsage
  "2.5.29.17", // subjectAltName
  "2.5.29.14", // subjectKeyIdentifier
  "2.5.29.35", // authorityKeyIdentifier
]);
const PROOF_ALGORITHMS: Readonly<Record<string, string[]>> = { EC: ["ES256"], RSA: ["RS256", "PS256"] };

const refuse = unauthorized;
const subj = (c: x509.X509Certificate) => `"${echo(c.subject)}"`;

/** Parses the configured PEM bundle; no certificate, a broken one or a non-CA is a startup error. */
function parseTrustRoots(pem: string): x509.X509Certificate[] {
  let roots: x509.X509Certificate[];
  try {
    roots = x509.PemConverter.decodeWithHeaders(pem)
      .filter((block) => block.type === "CERTIFICATE")
      .map((block) => new x509.X509Certificate(block.rawData));
  } catch (e) {
    throw new Error(`trust roots (KEYWARD_TRUST_ROOTS): the PEM bundle does not parse as certificates: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (roots.length === 0) {
    throw new Error("trust roots (KEYWARD_TRUST_ROOTS): the file holds no PEM certificate ('-----BEGIN CERTIFICATE-----'); configure a bundle of CA certificates or unset it");
  }
  for (const root of roots) {
    if (!root.getExtension(x509.BasicConstraintsExtension)?.ca) {
      throw new Error(`trust roots (KEYWARD_TRUST_ROOTS): ${subj(root)} is not a CA certificate (BasicConstraints cA is not true); only CA certificates can be trust roots`);
    }
  }
  return roots;
}

/** Step 1: the JWK's shape; returns the x5c array and the key members. */
function checkShape(jwk: unknown): { x5c: string[]; key: Record<string, unknown> } {
  if (typeof jwk !== "object" || jwk === null || Array.isArray(jwk)) {
    throw refuse("'client.credential.jwk' must be a public JWK object with an x5c certificate chain", "ERR_CERT_MALFORMED");
  }
  const key = jwk as Record<string, unknown>;
  if (PRIVATE_MEMBERS.some((m) => m in key)) {
    throw refuse("'client.credential.jwk' holds private key material: send the public key only (and replace the leaked key)", "ERR_CERT_MALFORMED");
  }
  const x5c = key.x5c;
  if (!Array.isArray(x5c) || x5c.length === 0 || !x5c.every((c) => typeof c === "string")) {
    throw refuse("'client.credential.jwk' has no 'x5c': a certificate credential needs its chain (leaf first, base64 DER)", "ERR_CERT_MALFORMED");
  }
  if (x5c.length > MAX_CHAIN) throw refuse(`'x5c' has ${x5c.length} certificates; at most ${MAX_CHAIN} are accepted`, "ERR_CERT_MALFORMED");
  return { x5c: x5c as string[], key };
}

function parseCertificate(b64: string, i: number): x509.X509Certificate {
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64) || b64.length % 4 !== 0) {
    throw refuse(`x5c[${i}] is not standard base64 (x5c uses base64 DER, not base64url nor PEM)`, "ERR_CERT_MALFORMED");
  }
  try {
    return new x509.X509Certificate(Buffer.from(b64, "base64"));
  } catch {
    throw refuse(`x5c[${i}] is not a DER X.509 certificate`, "ERR_CERT_MALFORMED");
  }
}


/** Step 3: path building and every certificate check; returns what the identity needs. */
async function validatePath(x5c: string[], roots: readonly x509.X509Certificate[], now: Date): Promise<ValidatedChain> {
  const presented = x5c.map(parseCertificate);
  const leaf = presented[0]!;

  // Path: leaf, then issuers found among the other x5c entries, until a trust root signed the last one.
  const path: x509.X509Certificate[] = [leaf];
  const unused = presented.slice(1);
  let anchor: x509.X509Certificate | undefined;
  for (;;) {
    const current = path[path.length - 1]!;
    anchor = await findAsync(roots, (r) => signedBy(current, r));
    if (anchor) break;
    const next = await findAsync(unused, (c) => signedBy(current, c));
    if (!next || path.length >= MAX_CHAIN) {
      throw refuse(
        `certificate chain not trusted: ${subj(current)} is issued by "${current.issuer}", which is neither a configured trust root ` +
          `(${roots.map((r) => `"${r.subject}"`).join("; ")}) nor a certificate of x5c whose signature verifies`,
        "ERR_CERT_UNTRUSTED",
      );
    }
    unused.splice(unused.indexOf(next), 1);
    path.push(next);
  }

  for (const [i, cert] of path.entries()) {
    const what = i === 0 ? "the leaf certificate" : "intermediate certificate";
    const hash = cert.signatureAlgorithm.hash?.name?.toUpperCase();
    if (hash === "SHA-1" || hash === "MD5") {
      throw refuse(`${what} ${subj(cert)} is signed with ${hash}; SHA-256 or stronger is required`, "ERR_CERT_WEAK_SIGNATURE");
    }
  }
  for (const cert of [...path, anchor]) checkValidity(cert, now, cert === anchor ? "trust root" : cert === leaf ? "the leaf certificate" : "intermediate certificate");
  for (const cert of [...path, anchor]) {
    const unknown = cert.extensions.find((e) => e.critical && !PROCESSED_EXTENSIONS.has(e.type));
    if (unknown) {
      throw refuse(`certificate ${subj(cert)} has a critical extension ${unknown.type} that this KMS does not process`, "ERR_CERT_UNSUPPORTED_CRITICAL_EXTENSION");
    }
  }

  // Issuers: path[1..] and the anchor; `below` = intermediates below it on the path (RFC 5280 §4.2.1.9).
  const issuers = [...path.slice(1), anchor];
  for (const [j, issuer] of issuers.entries()) {
    const below = j; // path[1..j] are intermediates below issuers[j]
    const bc = issuer.getExtension(x509.BasicConstraintsExtension);
    const role = issuer === anchor ? "trust root" : "intermediate certificate";
    if (!bc?.ca) {
      throw refuse(`${role} ${subj(issuer)} issued ${subj(path[j]!)} but is not a CA (BasicConstraints cA is ${bc ? "false" : "absent"})`, "ERR_CERT_NOT_CA");
    }
    if (bc.pathLength !== undefined && below > bc.pathLength) {
      throw refuse(`${role} ${subj(issuer)} allows ${bc.pathLength} intermediate(s) below it (pathLenConstraint) but the chain has ${below}`, "ERR_CERT_PATH_LENGTH");
    }
    const ku = issuer.getExtension(x509.KeyUsagesExtension);
    if (ku && !(ku.usages & x509.KeyUsageFlags.keyCertSign)) {
      throw refuse(`${role} ${subj(issuer)} has a KeyUsage without keyCertSign, so it may not issue certificates`, "ERR_CERT_KEY_USAGE");
    }
  }

  // The leaf: an end entity that may sign (the proof of possession) and act as a client.
  if (leaf.getExtension(x509.BasicConstraintsExtension)?.ca) {
    throw refuse(`the leaf certificate ${subj(leaf)} is a CA certificate (BasicConstraints cA true); a credential needs an end-entity certificate`, "ERR_CERT_LEAF_IS_CA");
  }
  const ku = leaf.getExtension(x509.KeyUsagesExtension);
  if (!ku || !(ku.usages & x509.KeyUsageFlags.digitalSignature)) {
    throw refuse(
      `the leaf certificate ${subj(leaf)} ${ku ? "has a KeyUsage without digitalSignature" : "has no KeyUsage extension"}; a certificate credential needs KeyUsage digitalSignature (its key signs the proof of possession)`,
      "ERR_CERT_KEY_USAGE",
    );
  }
  const eku = leaf.getExtension(x509.ExtendedKeyUsageExtension);
  if (eku && !eku.usages.some((u) => u === x509.ExtendedKeyUsage.clientAuth || u === ANY_EXTENDED_KEY_USAGE)) {
    throw refuse(
      `the leaf certificate ${subj(leaf)} has an ExtendedKeyUsage without clientAuth (it has ${eku.usages.map(String).join(", ")}); a certificate credential needs clientAuth`,
      "ERR_CERT_EXTENDED_KEY_USAGE",
    );
  }

  // Keys: RSA >= 2048 everywhere; the leaf key EC P-256 or RSA.
  let leafKey: KeyObject | undefined;
  for (const cert of [...path, anchor]) {
    let key: KeyObject;
    try {
      key = createPublicKey({ key: Buffer.from(cert.publicKey.rawData), format: "der", type: "spki" });
    } catch {
      throw refuse(`the public key of ${subj(cert)} cannot be read`, "ERR_CERT_MALFORMED");
    }
    const bits = key.asymmetricKeyDetails?.modulusLength;
    if (key.asymmetricKeyType?.startsWith("rsa") && bits !== undefined && bits < MIN_RSA_BITS) {
      throw refuse(`certificate ${subj(cert)} has a ${bits}-bit RSA key; at least ${MIN_RSA_BITS} bits are required`, "ERR_CERT_KEY_TOO_SMALL");
    }
    if (cert === leaf) leafKey = key;
  }
  const type = leafKey!.asymmetricKeyType;
  const curve = leafKey!.asymmetricKeyDetails?.namedCurve;
  if (!(type === "rsa" || (type === "ec" && curve === "prime256v1"))) {
    throw refuse(`the leaf certificate ${subj(leaf)} has a ${type}${curve ? ` ${curve}` : ""} key; a certificate credential needs an EC P-256 or RSA key`, "ERR_CERT_KEY_TYPE");
  }

  // The entity: kms://<first DNS SAN>.
  const san = leaf.getExtension(x509.SubjectAlternativeNameExtension);
  const first = san?.names.items.find((n) => n.type === "dns")?.value;
  if (first === undefined) {
    throw refuse(`the leaf certificate ${subj(leaf)} has no DNS SubjectAltName; the entity of a certificate credential is kms://<first DNS SAN> (the subject CN is not used)`, "ERR_CERT_NO_DNS_SAN");
  }
  const host = first.toLowerCase().replace(/\.$/, "");
  if (!/^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/.test(host)) {
    throw refuse(`the first DNS SubjectAltName of ${subj(leaf)} ('${echo(first)}') is not a host name (wildcards are not accepted as an entity)`, "ERR_CERT_NO_DNS_SAN");
  }

  const all = [...path, anchor];
  return {
    entity: `kms://${host}`,
    leafSubject: leaf.subject,
    leafKey: leafKey!,
    leafThumbprint: await jwkThumbprint(leafKey!.export({ format: "jwk" }) as Record<string, unknown>),
    leafNotAfter: leaf.notAfter,
    validFrom: new Date(Math.max(...all.map((c) => c.notBefore.getTime()))),
    validUntil: new Date(Math.min(...all.map((c) => c.notAfter.getTime()))),
  };
}

function checkValidity(cert: x509.X509Certificate, now: Date, what: string): void {
  if (now.getTime() < cert.notBefore.getTime()) {
    throw refuse(`${what} ${subj(cert)} is not valid before ${cert.notBefore.toISOString()}; now is ${now.toISOString()} (check the clocks)`, "ERR_CERT_NOT_YET_VALID");
  }
  if (now.getTime() > cert.notAfter.getTime()) {
    throw refuse(`${what} ${subj(cert)} expired at ${cert.notAfter.toISOString()}; now is ${now.toISOString()}`, "ERR_CERT_EXPIRED");
  }
}

/** RFC 7638 thumbprint of a JWK's public members; the key must be EC P-256 (a point on the curve) or RSA. */
async function jwkThumbprint(key: Record<string, unknown>): Promise<string> {
  const { kty, crv, x, y, n, e } = key;
  const members = kty === "EC" ? { kty, crv, x, y } : kty === "RSA" ? { kty, n, e } : undefined;
  if (!members || Object.values(members).some((v) => typeof v !== "string") || (kty === "EC" && crv !== "P-256")) {
    throw refuse("'client.credential.jwk' must be an EC P-256 key (kty, crv, x, y) or an RSA key (kty, n, e)", "ERR_CERT_KEY_MISMATCH");
  }
  try {
    createPublicKey({ key: members as NodeJwk, format: "jwk" }); // refuses a point off the curve
  } catch {
    throw refuse(`'client.credential.jwk' is not a valid ${String(kty)} public key${kty === "EC" ? " (not a point on P-256)" : ""}`, "ERR_CERT_KEY_MISMATCH");
  }
  return calculateJwkThumbprint(members as JWK);
}

/** Step 5: the JWS that carried the key-agreement request verifies with the credential's key and carries it. */
async function verifyProof(proof: string, key: KeyObject, thumbprint: string): Promise<void> {
  const kty = key.asymmetricKeyType === "ec" ? "EC" : "RSA";
  const allowed = PROOF_ALGORITHMS[kty]!;
  let header;
  try {
    header = decodeProtectedHeader(proof);
  } catch {
    throw refuse("the proof of possession is not a JWS compact serialization with a readable protected header", "ERR_PROOF_INVALID");
  }
  if (typeof header.alg !== "string" || !allowed.includes(header.alg)) {
    throw refuse(`the proof of possession uses alg '${String(header.alg)}'; a ${kty} credential signs with ${allowed.join(" or ")}`, "ERR_PROOF_INVALID");
  }
  if ("b64" in header) throw refuse("the proof of possession must not use the 'b64' header (RFC 7797)", "ERR_PROOF_INVALID");
  let payload: Uint8Array;
  try {
    ({ payload } = await compactVerify(proof, key, { algorithms: allowed }));
  } catch {
    throw refuse("the proof of possession does not verify with the credential's key: the request must be signed with the private key of the certificate x5c[0]", "ERR_PROOF_INVALID");
  }
  let carried: unknown;
  try {
    const request = JSON.parse(new TextDecoder().decode(payload)) as { client?: { credential?: { jwk?: Record<string, unknown> } } };
    carried = request.client?.credential?.jwk;
  } catch {
    /* refused below */
  }
  const same = typeof carried === "object" && carried !== null && (await jwkThumbprint(carried as Record<string, unknown>).catch(() => "")) === thumbprint;
  if (!same) throw refuse("the proof of possession does not carry this credential: its payload must be the request itself", "ERR_PROOF_INVALID");
}

async function findAsync<T>(items: readonly T[], pred: (item: T) => Promise<boolean>): Promise<T | undefined> {
  for (const item of items) if (await pred(item)) return item;
  return undefined;
}
