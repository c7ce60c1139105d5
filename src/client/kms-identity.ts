import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { AsnConvert } from "@peculiar/asn1-schema";
import { NameConstraints, type GeneralName } from "@peculiar/asn1-x509";
import { signedBy } from "../protocol/x509-signed-by.js";
import { calculateJwkThumbprint, type JWK } from "jose";

/**
 * Client-side authentication of a KMS static key (wire profile §2). ISOMORPHIC: runs unchanged in
 * browsers and Node (WebCrypto via `globalThis.crypto`, no `node:` imports, no `Buffer`).
 *
 * A client accepts the KMS's JWK only if its `x5c` chain verifies up to a configured trust root
 * with SHA-2 signatures, every certificate is within its validity period and has no critical
 * extension the client does not process, every CA's DNS name constraints (RFC 5280 §4.2.1.10)
 * hold for the certificates below it, the leaf is an end entity fit for a server (not a CA;
 * KeyUsage, when present, with digitalSignature; ExtendedKeyUsage, when present, with serverAuth
 * or anyExtendedKeyUsage), the leaf's DNS SubjectAltNames cover the domain of the client's own
 * user (RFC 6125 §6 / RFC 9525: DNS-ID only, no CN fallback), no RSA key is below 2048 bits, and
 * the JWK is the leaf's public key.
 */

/** Stable machine codes of {@link KmsIdentityError}. */
export type KmsIdentityErrorCode =
  | "ERR_KMS_NO_X5C"
  | "ERR_KMS_CERT_PARSE"
  | "ERR_KMS_CERT_CHAIN"
  | "ERR_KMS_CERT_EXPIRED"
  | "ERR_KMS_CERT_NOT_YET_VALID"
  | "ERR_KMS_CERT_NAME"
  | "ERR_KMS_CERT_NO_SAN"
  | "ERR_KMS_JWK_MISMATCH"
  | "ERR_KMS_KEY_TOO_SMALL"
  /** A certificate of the path has a critical extension the client does not process (RFC 5280 §4.2). */
  | "ERR_KMS_CERT_CRITICAL_EXTENSION"
  /** A name of a certificate is outside a CA's permitted subtrees, inside its excluded ones, or of a constrained form the client cannot check. */
  | "ERR_KMS_CERT_NAME_CONSTRAINTS"
  /** The leaf is a CA certificate (BasicConstraints cA=true). */
  | "ERR_KMS_CERT_LEAF_CA"
  /** The leaf's KeyUsage lacks digitalSignature. */
  | "ERR_KMS_CERT_KEY_USAGE"
  /** The leaf's ExtendedKeyUsage has neither serverAuth nor anyExtendedKeyUsage. */
  | "ERR_KMS_CERT_EXT_KEY_USAGE"
  /** A signature of the path uses SHA-1 (or another hash than SHA-256/384/512). */
  | "ERR_KMS_CERT_WEAK_SIGNATURE";

/**
 * Why a KMS identity was refused: a stable `code` and a message saying what was expected and what
 * was found.
 *
 * @example
 * try { await validateKmsIdentity(opts); }
 * catch (e) { if (e instanceof KmsIdentityError && e.code === "ERR_KMS_CERT_EXPIRED") renewAlert(); }
 */
export class KmsIdentityError extends Error {
  override readonly name = "KmsIdentityError";
  constructor(
    readonly code: KmsIdentityErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** Minimum RSA modulus size accepted anywhere in the chain. */
export const MIN_RSA_BITS = 2048;

const crypto = globalThis.crypto;

/** Lower-cases, drops one trailing dot; null when empty or containing an empty label. */
function normalizeName(name: string): string[] | null {
  const n = name.toLowerCase().replace(/\.$/, "");
  const labels = n.split(".");
  return n === "" || labels.some((l) => l === "") ? null : labels;
}

/**
 * Does the certificate DNS-ID `pattern` match `hostname`? RFC 6125 §6.4, restricted as RFC 9525:
 * case-insensitive, one trailing dot ignored; a wildcard is allowed only as the entire left-most
 * label (`*.example.com`, never `a*.example.com` nor `*.*.example.com`), matches exactly one
 * non-empty label, and needs at least two labels after it (`*.com` matches nothing).
 *
 * @example
 * matchesDnsName("*.example.com", "a.example.com");   // true
 * matchesDnsName("*.example.com", "example.com");     // false
 * matchesDnsName("*.example.com", "a.b.example.com"); // false
 * matchesDnsName("Example.COM.", "example.com");      // true
 */
export function matchesDnsName(pattern: string, hostname: string): boolean {
  const p = normalizeName(pattern);
  const h = normalizeName(hostname);
  if (!p || !h || h.some((l) => l.includes("*")) || p.length !== h.length) return false;
  const [first, ...rest] = p;
  if (rest.some((l) => l.includes("*"))) return false;
  if (first === "*") {
    if (rest.length < 2 || h.every((l) => /^\d+$/.test(l))) return false; // no *.tld, no IPv4
  } else if (first !== h[0]) {
    return false;
  }
  return rest.every((l, i) => l === h[i + 1]);
}

/** Domain part of `alice@example.com` (or the argument itself), lower-case, A-labels, no trailing dot. */
function toDomain(userOrDomain: string): string {
  let d = userOrDomain.slice(userOrDomain.lastIndexOf("@") + 1).trim().replace(/\.$/, "");
  // eslint-disable-next-line no-control-regex
  if (/[^\x00-\x7f]/.test(d)) {
    try {
      d = new URL(`http://${d}/`).hostname; // IDN -> A-labels
    } catch {
      /* left as is: it will match nothing */
    }
  }
  return d.toLowerCase();
}

function b64ToBytes(b64: string): Uint8Array<ArrayBuffer> {
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64) || b64.length % 4 !== 0) throw new Error("not standard base64");
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function sameBytes(a: ArrayBuffer, b: ArrayBuffer): boolean {
  if (a.byteLength !== b.byteLength) return false;
  const x = new Uint8Array(a);
  const y = new Uint8Array(b);
  return x.every((v, i) => v === y[i]);
}

function subj(cert: x509.X509Certificate): string {
  return `"${cert.subject}"`;
}

/** RFC 5280 §4.2.1.9 / §4.2.1.3: may `cert` issue certificates? Returns the reason it may not, or null. */
function notCaReason(cert: x509.X509Certificate, intermediatesBelow: number): string | null {
  const bc = cert.getExtension(x509.BasicConstraintsExtension);
  if (!bc?.ca) return `is not a CA certificate (BasicConstraints cA is ${bc ? "false" : "absent"})`;
  if (bc.pathLength !== undefined && intermediatesBelow > bc.pathLength) {
    return `allows ${bc.pathLength} intermediate(s) below it (pathLenConstraint) but the chain has ${intermediatesBelow}`;
  }
  const ku = cert.getExtension(x509.KeyUsagesExtension);
  if (ku && !(ku.usages & x509.KeyUsageFlags.keyCertSign)) return "has a KeyUsage without keyCertSign";
  return null;
}

/**
 * Extensions this validator processes; any other one marked critical refuses the certificate.
 * The key identifiers (which RFC 5280 says must not be critical) constrain nothing: understood as
 * such, as the server's §6 credential check does.
 */
const HANDLED_CRITICAL_EXTENSIONS: ReadonlyMap<string, string> = new Map([
  ["2.5.29.19", "basicConstraints"],
  ["2.5.29.15", "keyUsage"],
  ["2.5.29.37", "extendedKeyUsage"],
  ["2.5.29.17", "subjectAltName"],
  ["2.5.29.30", "nameConstraints"],
  ["2.5.29.14", "subjectKeyIdentifier"],
  ["2.5.29.35", "authorityKeyIdentifier"],
]);
const OID_NAME_CONSTRAINTS = "2.5.29.30";
const OID_SERVER_AUTH = "1.3.6.1.5.5.7.3.1";
const OID_ANY_EXTENDED_KEY_USAGE = "2.5.29.37.0";
const OID_EMAIL_ADDRESS = "1.2.840.113549.1.9.1";

/** RFC 5280 §4.2: a certificate with a critical extension the client does not process is refused. */
function checkCriticalExtensions(cert: x509.X509Certificate, where: string): void {
  for (const ext of cert.extensions) {
    if (ext.critical && !HANDLED_CRITICAL_EXTENSIONS.has(ext.type)) {
      throw new KmsIdentityError(
        "ERR_KMS_CERT_CRITICAL_EXTENSION",
        `${where} ${subj(cert)} has a critical extension ${ext.type} that this client does not process ` +
          `(it processes ${[...HANDLED_CRITICAL_EXTENSIONS.values()].join(", ")})`,
      );
    }
  }
}

/** Hashes accepted in certificate signatures. SHA-1 is broken for signatures (chosen-prefix collisions). */
const STRONG_SIGNATURE_HASHES = new Set(["SHA-256", "SHA-384", "SHA-512"]);

/**
 * Refuses a certificate whose signature (made by its issuer) uses SHA-1, MD5 or any hash other
 * than SHA-256/384/512. EdDSA (no separate hash) passes; an algorithm the library cannot name is
 * refused too.
 */
function checkSignatureHash(cert: x509.X509Certificate, where: string): void {
  let alg: { name?: string; hash?: string | { name?: string } };
  try {
    alg = cert.signatureAlgorithm as typeof alg;
  } catch {
    alg = {};
  }
  if (alg.name === "Ed25519" || alg.name === "Ed448" || alg.name === "EdDSA") return;
  const hash = typeof alg.hash === "string" ? alg.hash : alg.hash?.name;
  if (!hash || !STRONG_SIGNATURE_HASHES.has(hash.toUpperCase())) {
    throw new KmsIdentityError(
      "ERR_KMS_CERT_WEAK_SIGNATURE",
      `${where} ${subj(cert)} is signed with ${alg.name ?? "an unknown algorithm"}${hash ? ` and ${hash}` : ""}; ` +
        "only SHA-256, SHA-384 or SHA-512 signatures are accepted (SHA-1 is refused)",
    );
  }
}

/**
 * The leaf must be an end entity a server may use (RFC 5280 §4.2.1.9, §4.2.1.3, §4.2.1.12): not a
 * CA; a KeyUsage, when present, with digitalSignature (the KMS signs its replies with this key);
 * an ExtendedKeyUsage, when present, with serverAuth or anyExtendedKeyUsage (which RFC 5280
 * defines as "no restriction"; the server's own §6 credential check accepts it likewise).
 */
function checkLeafUsage(leaf: x509.X509Certificate): void {
  if (leaf.getExtension(x509.BasicConstraintsExtension)?.ca) {
    throw new KmsIdentityError("ERR_KMS_CERT_LEAF_CA", `KMS certificate ${subj(leaf)} is a CA certificate (BasicConstraints cA=true); the KMS key must be an end entity's`);
  }
  const ku = leaf.getExtension(x509.KeyUsagesExtension);
  if (ku && !(ku.usages & x509.KeyUsageFlags.digitalSignature)) {
    throw new KmsIdentityError("ERR_KMS_CERT_KEY_USAGE", `KMS certificate ${subj(leaf)} has a KeyUsage without digitalSignature; the KMS signs with this key`);
  }
  const eku = leaf.getExtension(x509.ExtendedKeyUsageExtension);
  if (eku) {
    const usages = eku.usages.map(String);
    if (!usages.includes(OID_SERVER_AUTH) && !usages.includes(OID_ANY_EXTENDED_KEY_USAGE)) {
      throw new KmsIdentityError(
        "ERR_KMS_CERT_EXT_KEY_USAGE",
        `KMS certificate ${subj(leaf)} has an ExtendedKeyUsage [${usages.join(", ")}] without serverAuth (${OID_SERVER_AUTH}) or anyExtendedKeyUsage`,
      );
    }
  }
}

/** Name forms a constraint may restrict other than dNSName (x509's SAN type names; otherName covers upn and guid). */
type OtherNameForm = "email" | "ip" | "url" | "dn" | "id" | "otherName";

/** A CA's name constraints, as far as this client processes them. */
interface DnsNameConstraints {
  /** dNSName permitted subtrees; undefined when there is none (DNS names are then not restricted). */
  readonly permitted?: readonly string[];
  readonly excluded: readonly string[];
  /** Other name forms constrained (permitted or excluded): rfc822Name, iPAddress, ... */
  readonly otherForms: ReadonlySet<OtherNameForm>;
}

const dnsNorm = (name: string) => name.toLowerCase().replace(/\.$/, "");

/** The name constraints of `ca` (undefined when it has none); refuses what cannot be processed. */
function nameConstraintsOf(ca: x509.X509Certificate, where: string): DnsNameConstraints | undefined {
  const ext = ca.extensions.find((e) => e.type === OID_NAME_CONSTRAINTS);
  if (!ext) return undefined;
  const refuse = (why: string) =>
    new KmsIdentityError("ERR_KMS_CERT_NAME_CONSTRAINTS", `${where} ${subj(ca)} has name constraints this client cannot process: ${why}`);
  let nc: NameConstraints;
  try {
    nc = AsnConvert.parse(ext.value, NameConstraints);
  } catch (e) {
    throw refuse(`they do not parse (${String(e)})`);
  }
  const otherForms = new Set<OtherNameForm>();
  const dns = (subtrees: NameConstraints["permittedSubtrees"]): string[] | undefined => {
    if (!subtrees) return undefined;
    const names: string[] = [];
    for (const { base, minimum, maximum } of subtrees) {
      // RFC 5280: minimum MUST be zero and maximum MUST be absent.
      if ((minimum ?? 0) !== 0 || maximum !== undefined) throw refuse("a subtree with minimum or maximum");
      const form = formOf(base);
      if (form === "dns") names.push(dnsNorm(base.dNSName!));
      else if (form === undefined) throw refuse("an x400Address or ediPartyName subtree");
      else otherForms.add(form);
    }
    return names;
  };
  const permitted = dns(nc.permittedSubtrees);
  const excluded = dns(nc.excludedSubtrees) ?? [];
  return { ...(permitted && permitted.length > 0 ? { permitted } : {}), excluded, otherForms };
}

function formOf(name: GeneralName): "dns" | OtherNameForm | undefined {
  if (name.dNSName !== undefined) return "dns";
  if (name.rfc822Name !== undefined) return "email";
  if (name.iPAddress !== undefined) return "ip";
  if (name.uniformResourceIdentifier !== undefined) return "url";
  if (name.directoryName !== undefined) return "dn";
  if (name.registeredID !== undefined) return "id";
  if (name.otherName !== undefined) return "otherName";
  return undefined;
}

/**
 * RFC 5280 §4.2.1.10: is DNS name `name` within the subtree `base`? `host.example.com` covers
 * itself and every name made by adding labels on the left; `.example.com` (a common form) only
 * names with at least one label added; the empty base covers every name.
 */
function withinDnsSubtree(name: string, base: string): boolean {
  if (base === "") return true;
  if (base.startsWith(".")) return name.length > base.length && name.endsWith(base);
  return name === base || name.endsWith(`.${base}`);
}

/**
 * Might a DNS SAN fall inside an excluded subtree? Exactly `withinDnsSubtree`, and for a wildcard
 * `*.parent` also when the excluded base is one label below `parent` (the wildcard would cover it).
 */
function touchesExcluded(name: string, base: string): boolean {
  if (withinDnsSubtree(name, base)) return true;
  if (!name.startsWith("*.") || base.startsWith(".")) return false;
  const parent = name.slice(2);
  return base.endsWith(`.${parent}`) && !base.slice(0, -parent.length - 1).includes(".");
}

/** Applies one CA's name constraints to a certificate below it in the path. */
function checkNameConstraints(constraints: DnsNameConstraints, ca: x509.X509Certificate, caWhere: string, cert: x509.X509Certificate, where: string): void {
  const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
  const items = san ? san.names.items : [];
  const dnsNames = items.filter((n) => n.type === "dns").map((n) => dnsNorm(n.value));
  const fail = (what: string) =>
    new KmsIdentityError("ERR_KMS_CERT_NAME_CONSTRAINTS", `${where} ${subj(cert)} ${what}, which the name constraints of ${caWhere} ${subj(ca)} forbid`);
  for (const name of dnsNames) {
    if (constraints.permitted && !constraints.permitted.some((base) => withinDnsSubtree(name, base))) {
      throw fail(`names ${name}, outside the permitted DNS subtrees [${constraints.permitted.join(", ")}]`);
    }
    const excluded = constraints.excluded.find((base) => touchesExcluded(name, base));
    if (excluded !== undefined) throw fail(`names ${name}, inside the excluded DNS subtree ${excluded}`);
  }
  // A constrained name form that appears below and that this client does not check: refused (RFC 5280 §4.2.1.10).
  for (const form of constraints.otherForms) {
    const present =
      form === "dn"
        ? cert.subject !== "" || items.some((n) => n.type === "dn")
        : form === "email"
          ? items.some((n) => n.type === "email") || cert.subjectName.getField(OID_EMAIL_ADDRESS).length > 0
          : form === "otherName"
            ? items.some((n) => n.type === "upn" || n.type === "guid")
            : items.some((n) => n.type === form);
    if (present) {
      throw new KmsIdentityError(
        "ERR_KMS_CERT_NAME_CONSTRAINTS",
        `${caWhere} ${subj(ca)} constrains ${form} names, which this client does not check, and ${where} ${subj(cert)} has one`,
      );
    }
  }
}

function checkValidity(cert: x509.X509Certificate, now: Date): void {
  if (now.getTime() < cert.notBefore.getTime()) {
    throw new KmsIdentityError(
      "ERR_KMS_CERT_NOT_YET_VALID",
      `KMS certificate ${subj(cert)} is not valid before ${cert.notBefore.toISOString()}; now is ${now.toISOString()} (check the clocks)`,
    );
  }
  if (now.getTime() > cert.notAfter.getTime()) {
    throw new KmsIdentityError(
      "ERR_KMS_CERT_EXPIRED",
      `KMS certificate ${subj(cert)} expired at ${cert.notAfter.toISOString()}; now is ${now.toISOString()}`,
    );
  }
}

async function checkKeySize(cert: x509.X509Certificate): Promise<CryptoKey> {
  let key: CryptoKey;
  try {
    key = await cert.publicKey.export(crypto);
  } catch (e) {
    throw new KmsIdentityError("ERR_KMS_CERT_PARSE", `cannot import the public key of ${subj(cert)}: ${String(e)}`);
  }
  const bits = (key.algorithm as Partial<RsaHashedKeyAlgorithm>).modulusLength;
  if (bits !== undefined && bits < MIN_RSA_BITS) {
    throw new KmsIdentityError(
      "ERR_KMS_KEY_TOO_SMALL",
      `certificate ${subj(cert)} has a ${bits}-bit RSA key; at least ${MIN_RSA_BITS} bits are required`,
    );
  }
  return key;
}

function parseTrustRoots(trustRoots: string[]): x509.X509Certificate[] {
  try {
    return trustRoots.flatMap((pem) =>
      x509.PemConverter.decodeWithHeaders(pem)
        .filter((s) => s.type === "CERTIFICATE")
        .map((s) => new x509.X509Certificate(s.rawData)),
    );
  } catch (e) {
    throw new KmsIdentityError("ERR_KMS_CERT_PARSE", `a configured trust root is not a valid PEM certificate: ${String(e)}`);
  }
}

/**
 * Authenticates a KMS static key: verifies the JWK's `x5c` chain (base64 DER, leaf first) up to
 * one of `trustRoots` (PEM, each possibly a bundle), checks validity at `now` (default: current
 * time), CA constraints and RSA >= 2048 bits on every certificate, refuses SHA-1 signatures and
 * unknown critical extensions, enforces the DNS name constraints of every CA of the path (the
 * trust root's included) on the certificates below it, checks that the leaf is a server end
 * entity (not a CA; KeyUsage digitalSignature and ExtendedKeyUsage serverAuth when present),
 * matches the leaf's DNS SANs against the user's domain (`userDomain` may be `example.com` or
 * `alice@example.com`), and checks that the JWK is the leaf's public key (RFC 7638 thumbprints).
 * The last `x5c` entry may be the trust root itself or be issued by one. Throws
 * {@link KmsIdentityError} (a stable `code` per refusal) on any failure.
 *
 * @example
 * const { dnsNames } = await validateKmsIdentity({
 *   jwk: kmsStaticJwk,                // { kty, crv, x, y, kid, x5c: [leafB64, caB64] }
 *   trustRoots: [fs.readFileSync("ca.pem", "utf8")],
 *   userDomain: "alice@example.com",
 * });
 */
export async function validateKmsIdentity(opts: {
  jwk: JsonWebKey & { x5c?: string[]; kid?: string };
  trustRoots: string[];
  userDomain: string;
  now?: Date;
}): Promise<{ leaf: x509.X509Certificate; dnsNames: string[] }> {
  const { jwk, userDomain } = opts;
  const now = opts.now ?? new Date();
  const kid = jwk.kid ? ` (kid ${jwk.kid})` : "";
  if (!Array.isArray(jwk.x5c) || jwk.x5c.length === 0) {
    throw new KmsIdentityError("ERR_KMS_NO_X5C", `the KMS static JWK${kid} has no x5c certificate chain; one is required`);
  }
  const certs = jwk.x5c.map((b64, i) => {
    try {
      return new x509.X509Certificate(b64ToBytes(String(b64)));
    } catch (e) {
      throw new KmsIdentityError("ERR_KMS_CERT_PARSE", `x5c[${i}] of the KMS JWK${kid} is not a base64 DER certificate: ${String(e)}`);
    }
  });
  const leaf = certs[0]!;
  const last = certs[certs.length - 1]!;

  // 1. Validity and key size of every presented certificate.
  for (const c of certs) {
    checkValidity(c, now);
    await checkKeySize(c);
  }

  // 2. Each certificate is issued by the next one, with a SHA-2 signature, which must be a CA.
  for (let i = 0; i + 1 < certs.length; i++) {
    const child = certs[i]!;
    const issuer = certs[i + 1]!;
    checkSignatureHash(child, `x5c[${i}]`);
    if (!(await signedBy(child, issuer))) {
      throw new KmsIdentityError(
        "ERR_KMS_CERT_CHAIN",
        `x5c[${i}] ${subj(child)} (issuer "${child.issuer}") is not signed by x5c[${i + 1}] ${subj(issuer)}`,
      );
    }
    const why = notCaReason(issuer, i);
    if (why) throw new KmsIdentityError("ERR_KMS_CERT_CHAIN", `x5c[${i + 1}] ${subj(issuer)} issued x5c[${i}] but ${why}`);
  }

  // 3. The chain ends at, or is issued by, a trust root.
  const roots = parseTrustRoots(opts.trustRoots);
  let anchor = roots.find((r) => sameBytes(r.rawData, last.rawData));
  if (!anchor) {
    // The anchor's own (self-)signature is never relied on: it is trusted by configuration.
    checkSignatureHash(last, `x5c[${certs.length - 1}]`);
    for (const r of roots) {
      if (await signedBy(last, r)) {
        anchor = r;
        break;
      }
    }
    if (!anchor) {
      throw new KmsIdentityError(
        "ERR_KMS_CERT_CHAIN",
        `the KMS certificate chain ends at ${subj(last)} issued by "${last.issuer}", which is none of the ` +
          `${roots.length} configured trust root(s) [${roots.map((r) => r.subject).join("; ")}] and is not signed by one ` +
          "(give the client the CA that issued the KMS certificate as a trust root)",
      );
    }
    const why = notCaReason(anchor, certs.length - 1);
    if (why) throw new KmsIdentityError("ERR_KMS_CERT_CHAIN", `trust root ${subj(anchor)} ${why}`);
    checkValidity(anchor, now);
  }
  // The path, leaf first, ending at the trust anchor; `where` names each certificate in messages.
  const path = sameBytes(anchor.rawData, last.rawData) ? certs : [...certs, anchor];
  const where = (i: number) => (i < certs.length ? `x5c[${i}]` : "trust root");

  // 4. No critical extension the client does not process, anywhere in the path.
  path.forEach((c, i) => checkCriticalExtensions(c, where(i)));

  // 5. The leaf is an end entity for a server.
  checkLeafUsage(leaf);

  // 6. Every CA's DNS name constraints hold for every certificate below it (leaf and sub-CAs).
  for (let j = path.length - 1; j >= 1; j--) {
    const constraints = nameConstraintsOf(path[j]!, where(j));
    if (!constraints) continue;
    for (let i = j - 1; i >= 0; i--) checkNameConstraints(constraints, path[j]!, where(j), path[i]!, where(i));
  }

  // 7. The leaf names the user's domain (DNS-ID only, no CN fallback).
  const domain = toDomain(userDomain);
  const san = leaf.getExtension(x509.SubjectAlternativeNameExtension);
  const dnsNames = san ? san.names.items.filter((n) => n.type === "dns").map((n) => n.value) : [];
  if (dnsNames.length === 0) {
    throw new KmsIdentityError(
      "ERR_KMS_CERT_NO_SAN",
      `KMS certificate ${subj(leaf)} has no DNS SubjectAltName; a DNS name for ${domain} is required (the subject CN is not used)`,
    );
  }
  if (!dnsNames.some((p) => matchesDnsName(p, domain))) {
    const who = userDomain.includes("@") ? `the user ${userDomain}` : "the user's domain";
    let hint = "";
    if (dnsNames.some((n) => n.includes("*"))) {
      hint =
        " (a wildcard matches only as the whole left-most label and for exactly one label: *.example.com covers " +
        "kms.example.com, not example.com nor a.b.example.com; k*.example.com and kms.*.com match nothing)";
    } else if (dnsNames.some((n) => n.toLowerCase().replace(/\.$/, "").endsWith(`.${domain}`))) {
      hint = ` (a certificate for the KMS host is not enough: it must also carry a DNS SAN for ${domain}, the domain of the users the KMS serves; wire profile §2)`;
    }
    throw new KmsIdentityError("ERR_KMS_CERT_NAME", `KMS certificate names [${dnsNames.join(", ")}] but ${who} needs a certificate for ${domain}${hint}`);
  }

  // 8. The JWK is the leaf's key.
  const leafJwk = (await crypto.subtle.exportKey("jwk", await checkKeySize(leaf))) as JWK;
  let jwkThumb: string;
  try {
    jwkThumb = await calculateJwkThumbprint(jwk as JWK);
  } catch (e) {
    throw new KmsIdentityError("ERR_KMS_JWK_MISMATCH", `the KMS JWK${kid} is not a valid public key: ${String(e)}`);
  }
  const leafThumb = await calculateJwkThumbprint(leafJwk);
  if (jwkThumb !== leafThumb) {
    throw new KmsIdentityError(
      "ERR_KMS_JWK_MISMATCH",
      `the KMS JWK${kid} (${jwk.kty} key, thumbprint ${jwkThumb}) is not the key of its certificate ${subj(leaf)} ` +
        `(${leafJwk.kty} key, thumbprint ${leafThumb})`,
    );
  }
  return { leaf, dnsNames };
}
