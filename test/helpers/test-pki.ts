import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { CompactSign, importPKCS8, type JWK } from "jose";
import { derToPem } from "../../src/pki/dev-ca.js";

/**
 * Test PKI for certificate credentials (wire profile §6): a root CA, an intermediate, and leaf
 * certificates with every variation the validator must accept or refuse. Everything is generated
 * in memory, fresh for each call of {@link buildTestPki}.
 */

const crypto = globalThis.crypto;
x509.cryptoProvider.set(crypto);

const DAY = 86_400_000;
const EC: EcKeyGenParams = { name: "ECDSA", namedCurve: "P-256" };
const F = x509.KeyUsageFlags;

export interface TestCa {
  readonly cert: x509.X509Certificate;
  readonly pem: string;
  readonly b64: string;
  readonly keys: CryptoKeyPair;
}

export interface TestLeaf extends TestCa {
  /** x5c as sent in a credential: leaf first, then intermediates (root not included unless asked). */
  readonly x5c: string[];
  /** The public key members only (kty/crv/x/y or kty/n/e). */
  readonly publicJwk: JWK;
  /** The credential JWK: public members plus x5c. */
  readonly jwk: JWK;
  /** PKCS#8 PEM of the leaf's private key (import it with jose importPKCS8 for any alg). */
  readonly privateKeyPem: string;
  /** The natural proof algorithm for this key: ES256 (EC) or RS256 (RSA). */
  readonly alg: "ES256" | "RS256";
}

function serial(): string {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[0] = (b[0]! & 0x7f) || 1;
  return Array.from(b, (v) => v.toString(16).padStart(2, "0")).join("");
}

async function signingAlgorithm(key: CryptoKey): Promise<Algorithm> {
  return key.algorithm.name === "ECDSA" ? ({ name: "ECDSA", hash: "SHA-256" } as EcdsaParams) : { name: "RSASSA-PKCS1-v1_5" };
}

function wrap(cert: x509.X509Certificate, keys: CryptoKeyPair): TestCa {
  return { cert, pem: cert.toString("pem"), b64: cert.toString("base64"), keys };
}

/** A CA certificate: self-signed (no issuer) or issued by `issuer`. */
export async function createCa(opts: { name: string; issuer?: TestCa; pathLength?: number; keyUsage?: number; notBefore?: Date; notAfter?: Date }): Promise<TestCa> {
  const keys = (await crypto.subtle.generateKey(EC, true, ["sign", "verify"])) as CryptoKeyPair;
  const notBefore = opts.notBefore ?? new Date(Date.now() - DAY);
  const notAfter = opts.notAfter ?? new Date(Date.now() + 3650 * DAY);
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(true, opts.pathLength, true),
    new x509.KeyUsagesExtension(opts.keyUsage ?? F.keyCertSign | F.cRLSign, true),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
  ];
  if (!opts.issuer) {
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: serial(),
      name: [{ CN: [opts.name] }],
      notBefore,
      notAfter,
      keys,
      signingAlgorithm: await signingAlgorithm(keys.privateKey),
      extensions,
    });
    return wrap(cert, keys);
  }
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: [{ CN: [opts.name] }],
    issuer: opts.issuer.cert.subjectName,
    notBefore,
    notAfter,
    publicKey: keys.publicKey,
    signingKey: opts.issuer.keys.privateKey,
    signingAlgorithm: await signingAlgorithm(opts.issuer.keys.privateKey),
    extensions,
  });
  return wrap(cert, keys);
}

export interface LeafOptions {
  /** The issuer, then the rest of the chain to put in x5c (intermediates; a root if wanted). */
  issuer: TestCa;
  chain?: TestCa[];
  keyType?: "ec" | "rsa";
  rsaBits?: number;
  /** DNS SANs; [] = no SAN extension at all. */
  dnsNames?: string[];
  commonName?: string;
  notBefore?: Date;
  notAfter?: Date;
  /** KeyUsage flags; null = no KeyUsage extension. Default digitalSignature. */
  keyUsage?: number | null;
  /** ExtendedKeyUsage OIDs; null = none. Default clientAuth. */
  extKeyUsage?: string[] | null;
  /** BasicConstraints cA=true (a leaf that is a CA). */
  ca?: boolean;
}

/** A leaf certificate with its key pair, x5c and credential JWK. */
export async function issueLeaf(opts: LeafOptions): Promise<TestLeaf> {
  const rsa = opts.keyType === "rsa";
  const alg = rsa
    ? { name: "RSASSA-PKCS1-v1_5", modulusLength: opts.rsaBits ?? 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" }
    : EC;
  const keys = (await crypto.subtle.generateKey(alg, true, ["sign", "verify"])) as CryptoKeyPair;
  const dnsNames = opts.dnsNames ?? ["peer.example.org"];
  const extensions: x509.Extension[] = [new x509.BasicConstraintsExtension(opts.ca ?? false, undefined, true)];
  const ku = opts.keyUsage === undefined ? F.digitalSignature : opts.keyUsage;
  if (ku !== null) extensions.push(new x509.KeyUsagesExtension(ku, true));
  const eku = opts.extKeyUsage === undefined ? [x509.ExtendedKeyUsage.clientAuth] : opts.extKeyUsage;
  if (eku !== null) extensions.push(new x509.ExtendedKeyUsageExtension(eku));
  if (dnsNames.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(dnsNames.map((value) => ({ type: "dns" as const, value }))));
  extensions.push(await x509.SubjectKeyIdentifierExtension.create(keys.publicKey));
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: [{ CN: [opts.commonName ?? dnsNames[0] ?? "no-san.example.org"] }],
    issuer: opts.issuer.cert.subjectName,
    notBefore: opts.notBefore ?? new Date(Date.now() - DAY),
    notAfter: opts.notAfter ?? new Date(Date.now() + 365 * DAY),
    publicKey: keys.publicKey,
    signingKey: opts.issuer.keys.privateKey,
    signingAlgorithm: await signingAlgorithm(opts.issuer.keys.privateKey),
    extensions,
  });
  const exported = await crypto.subtle.exportKey("jwk", keys.publicKey);
  const publicJwk: JWK = rsa ? { kty: "RSA", n: exported.n!, e: exported.e! } : { kty: "EC", crv: "P-256", x: exported.x!, y: exported.y! };
  const b64 = cert.toString("base64");
  const x5c = [b64, ...(opts.chain ?? []).map((c) => c.b64)];
  return {
    ...wrap(cert, keys),
    x5c,
    publicJwk,
    jwk: { ...publicJwk, x5c },
    privateKeyPem: derToPem(await crypto.subtle.exportKey("pkcs8", keys.privateKey), "PRIVATE KEY"),
    alg: rsa ? "RS256" : "ES256",
  };
}

/** Signs `payload` (an object or a string) as a JWS compact with the leaf's key (or any PEM key), `alg` default the key's natural one. */
export async function signProof(signer: { privateKeyPem: string; alg: string }, payload: unknown, alg = signer.alg, header: Record<string, unknown> = {}): Promise<string> {
  const bytes = new TextEncoder().encode(typeof payload === "string" ? payload : JSON.stringify(payload));
  return new CompactSign(bytes).setProtectedHeader({ alg, ...header }).sign(await importPKCS8(signer.privateKeyPem, alg));
}

export interface TestPki {
  readonly root: TestCa;
  readonly intermediate: TestCa;
  /** A root nobody configured. */
  readonly otherRoot: TestCa;
  /** PEM bundle of the trusted root(s) (only `root`). */
  readonly trustRootsPem: string;
  readonly leaves: {
    /** EC P-256, via the intermediate, SAN peer.example.org, KU digitalSignature, EKU clientAuth. */
    ec: TestLeaf;
    /** Same but another key and SAN other.example.org. */
    ecOther: TestLeaf;
    /** EC, issued directly by the root (x5c = [leaf]), SAN Direct.Example.ORG (upper case on purpose). */
    ecDirect: TestLeaf;
    /** EC via the intermediate, with the root included at the end of x5c. */
    ecWithRoot: TestLeaf;
    /** RSA 2048 via the intermediate, SAN rsa-peer.example.org. */
    rsa: TestLeaf;
    /** RSA 1024: too small. */
    rsa1024: TestLeaf;
    expired: TestLeaf;
    notYetValid: TestLeaf;
    /** KeyUsage keyEncipherment only. */
    keyEnciphermentOnly: TestLeaf;
    /** No KeyUsage extension at all. */
    noKeyUsage: TestLeaf;
    /** EKU serverAuth only. */
    serverAuthOnly: TestLeaf;
    /** EKU anyExtendedKeyUsage (accepted). */
    anyEku: TestLeaf;
    /** No EKU extension (accepted). */
    noEku: TestLeaf;
    /** BasicConstraints cA=true on the leaf. */
    caLeaf: TestLeaf;
    /** No SubjectAltName (CN only). */
    noDnsSan: TestLeaf;
    /** Wildcard as the first DNS SAN. */
    wildcardSan: TestLeaf;
    /** Chain to otherRoot (intermediate of the unknown root in x5c). */
    unknownRoot: TestLeaf;
    /** Issued by `ec` (an end entity, not a CA). */
    issuedByLeaf: TestLeaf;
    /** root → constrained (pathLen 0) → sub → leaf: one intermediate too many. */
    pathTooLong: TestLeaf;
    /** Via an intermediate whose KeyUsage lacks keyCertSign. */
    issuerWithoutKeyCertSign: TestLeaf;
  };
}

/** Builds the whole test PKI (a few seconds: several RSA keys). */
export async function buildTestPki(): Promise<TestPki> {
  const root = await createCa({ name: "Keyward Test Root" });
  const intermediate = await createCa({ name: "Keyward Test Intermediate", issuer: root, pathLength: 0 });
  const otherRoot = await createCa({ name: "Unknown Root" });
  const otherIntermediate = await createCa({ name: "Unknown Intermediate", issuer: otherRoot });
  const constrained = await createCa({ name: "Constrained Intermediate", issuer: root, pathLength: 0 });
  const sub = await createCa({ name: "Sub Intermediate", issuer: constrained });
  const noCertSign = await createCa({ name: "No keyCertSign Intermediate", issuer: root, keyUsage: F.cRLSign | F.digitalSignature });
  const viaInt = { issuer: intermediate, chain: [intermediate] };
  const now = Date.now();

  const ec = await issueLeaf({ ...viaInt });
  const [ecOther, ecDirect, ecWithRoot, rsa, rsa1024, expired, notYetValid, keyEnciphermentOnly, noKeyUsage, serverAuthOnly, anyEku, noEku, caLeaf, noDnsSan, wildcardSan, unknownRoot, issuedByLeaf, pathTooLong, issuerWithoutKeyCertSign] =
    await Promise.all([
      issueLeaf({ ...viaInt, dnsNames: ["other.example.org"] }),
      issueLeaf({ issuer: root, dnsNames: ["Direct.Example.ORG", "alt.example.org"] }),
      issueLeaf({ issuer: intermediate, chain: [intermediate, root] }),
      issueLeaf({ ...viaInt, keyType: "rsa", dnsNames: ["rsa-peer.example.org"] }),
      issueLeaf({ ...viaInt, keyType: "rsa", rsaBits: 1024, dnsNames: ["small.example.org"] }),
      issueLeaf({ ...viaInt, notBefore: new Date(now - 30 * DAY), notAfter: new Date(now - DAY) }),
      issueLeaf({ ...viaInt, notBefore: new Date(now + DAY), notAfter: new Date(now + 30 * DAY) }),
      issueLeaf({ ...viaInt, keyUsage: F.keyEncipherment }),
      issueLeaf({ ...viaInt, keyUsage: null }),
      issueLeaf({ ...viaInt, extKeyUsage: [x509.ExtendedKeyUsage.serverAuth] }),
      issueLeaf({ ...viaInt, extKeyUsage: ["2.5.29.37.0"] }),
      issueLeaf({ ...viaInt, extKeyUsage: null }),
      issueLeaf({ ...viaInt, ca: true, keyUsage: F.digitalSignature | F.keyCertSign }),
      issueLeaf({ ...viaInt, dnsNames: [], commonName: "peer.example.org" }),
      issueLeaf({ ...viaInt, dnsNames: ["*.example.org"] }),
      issueLeaf({ issuer: otherIntermediate, chain: [otherIntermediate] }),
      issueLeaf({ issuer: ec, chain: [ec, intermediate] }),
      issueLeaf({ issuer: sub, chain: [sub, constrained] }),
      issueLeaf({ issuer: noCertSign, chain: [noCertSign] }),
    ]);
  return {
    root,
    intermediate,
    otherRoot,
    trustRootsPem: root.pem,
    leaves: { ec, ecOther, ecDirect, ecWithRoot, rsa, rsa1024: rsa1024!, expired, notYetValid, keyEnciphermentOnly, noKeyUsage, serverAuthOnly, anyEku, noEku, caLeaf, noDnsSan, wildcardSan, unknownRoot, issuedByLeaf, pathTooLong, issuerWithoutKeyCertSign } as TestPki["leaves"],
  };
}
