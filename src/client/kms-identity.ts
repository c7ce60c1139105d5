import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { signedBy } from "../protocol/x509-signed-by.js";
import { calculateJwkThumbprint, type JWK } from "jose";

/**
 * Client-side authentication of a KMS static key (wire profile §2). ISOMORPHIC: runs unchanged in
 * browsers and Node (WebCrypto via `globalThis.crypto`, no `node:` imports, no `Buffer`).
 *
 * A client accepts the KMS's JWK only if its `x5c` chain verifies up to a configured trust root,
 * every certificate is within its validity period, the leaf's DNS SubjectAltNames cover the domain
 * of the client's own user (RFC 6125 §6 / RFC 9525: DNS-ID only, no CN fallback), no RSA key is
 * below 2048 bits, and the JWK is the leaf's public key.
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
  | "ERR_KMS_KEY_TOO_SMALL";

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
 * time), CA constraints and RSA >= 2048 bits on every certificate, matches the leaf's DNS SANs
 * against the user's domain (`userDomain` may be `example.com` or `alice@example.com`), and checks
 * that the JWK is the leaf's public key (RFC 7638 thumbprints). The last `x5c` entry may be the
 * trust root itself or be issued by one. Throws {@link KmsIdentityError} on any failure.
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

  // 2. Each certificate is issued by the next one, which must be a CA.
  for (let i = 0; i + 1 < certs.length; i++) {
    const child = certs[i]!;
    const issuer = certs[i + 1]!;
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

  // 4. The leaf names the user's domain (DNS-ID only, no CN fallback).
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

  // 5. The JWK is the leaf's key.
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
