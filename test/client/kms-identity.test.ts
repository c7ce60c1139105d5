import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { describe, it, expect } from "vitest";
import { CompactSign } from "jose";
import { KmsClient, KmsProtocolError } from "../../src/client/index.js";
import { KmsIdentityError, matchesDnsName, validateKmsIdentity } from "../../src/client/kms-identity.js";
import { createDevCa, generateStaticKeyPair, issueKmsCertificate, toX5c } from "../../src/pki/dev-ca.js";
import { AsnConvert } from "@peculiar/asn1-schema";
import { GeneralName, GeneralSubtree, GeneralSubtrees, Name as AsnName, NameConstraints } from "@peculiar/asn1-x509";

const DAY = 86_400_000;
const ca = await createDevCa({ commonName: "Keyward Test Root" });
const caRef = { cert: ca.cert, privateKey: ca.keys.privateKey };
const otherCa = await createDevCa({ commonName: "Some Other Root" });
const ecKey = await generateStaticKeyPair("ec");

/** A KMS JWK for `key` whose x5c is `chain` (leaf first). */
const jwkOf = (key: { publicJwk: JsonWebKey }, chain: x509.X509Certificate[]) => ({
  ...key.publicJwk,
  kid: "kms-static-1",
  x5c: toX5c(chain),
});

/** Issues an EC leaf for `dnsNames` from the test root and returns its JWK. */
async function leafJwk(dnsNames: string[], extra: Partial<Parameters<typeof issueKmsCertificate>[0]> = {}) {
  const { cert } = await issueKmsCertificate({ ca: caRef, dnsNames, publicKey: ecKey.publicKey, ...extra });
  return jwkOf(ecKey, [cert]);
}

async function refusal(p: Promise<unknown>): Promise<KmsIdentityError> {
  const e = await p.then(
    () => expect.fail("expected a KmsIdentityError"),
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(KmsIdentityError);
  return e as KmsIdentityError;
}

/** An intermediate CA issued by the test root (BasicConstraints cA=true, keyCertSign). */
async function makeIntermediate(opts: { ca?: boolean } = {}) {
  const keys = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"])) as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.create({
    subject: "CN=Keyward Test Intermediate",
    issuer: ca.cert.subjectName,
    notBefore: new Date(Date.now() - DAY),
    notAfter: new Date(Date.now() + 30 * DAY),
    publicKey: keys.publicKey,
    signingKey: ca.keys.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(opts.ca ?? true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { cert, privateKey: keys.privateKey };
}

describe("matchesDnsName (RFC 6125 §6.4, RFC 9525 restrictions)", () => {
  const table: [pattern: string, host: string, expected: boolean][] = [
    ["example.com", "example.com", true],
    ["EXAMPLE.com", "example.COM", true],
    ["example.com.", "example.com", true],
    ["example.com", "example.com.", true],
    ["kms.example.com", "example.com", false],
    ["example.com", "kms.example.com", false],
    ["*.example.com", "a.example.com", true],
    ["*.Example.com", "A.EXAMPLE.COM", true],
    ["*.example.com", "example.com", false],
    ["*.example.com", "a.b.example.com", false],
    ["*.example.com", ".example.com", false],
    ["a*.example.com", "ab.example.com", false],
    ["*a.example.com", "ba.example.com", false],
    ["*.*.example.com", "a.b.example.com", false],
    ["a.*.example.com", "a.b.example.com", false],
    ["*.com", "example.com", false],
    ["*", "example", false],
    ["*.0.0.1", "127.0.0.1", false],
    ["", "", false],
    ["example..com", "example..com", false],
    ["*.example.com", "*.example.com", false],
  ];
  it.each(table)("%j vs %j -> %s", (pattern, host, expected) => {
    expect(matchesDnsName(pattern, host)).toBe(expected);
  });
});

const rsa1024 = await generateStaticKeyPair("rsa", 1024);
const rsa2048 = await generateStaticKeyPair("rsa", 2048);
const otherKey = await generateStaticKeyPair("ec");

// ---- Certificates for the path checks (name constraints, critical extensions, leaf usage, SHA-1) ----
const F = x509.KeyUsageFlags;
interface Issuer {
  readonly cert: x509.X509Certificate;
  readonly privateKey: CryptoKey;
}
/** Constraint subtrees: a string is a dNSName; an object any other GeneralName. */
type Subtree = string | ConstructorParameters<typeof GeneralName>[0];
const subtrees = (list: Subtree[]) =>
  new GeneralSubtrees(list.map((b) => new GeneralSubtree({ base: new GeneralName(typeof b === "string" ? { dNSName: b } : b) })));
/** A critical nameConstraints extension. */
const nameConstraints = (c: { permitted?: Subtree[]; excluded?: Subtree[] }) =>
  new x509.Extension(
    "2.5.29.30",
    true,
    AsnConvert.serialize(
      new NameConstraints({
        ...(c.permitted ? { permittedSubtrees: subtrees(c.permitted) } : {}),
        ...(c.excluded ? { excludedSubtrees: subtrees(c.excluded) } : {}),
      }),
    ),
  );
const directoryName = (dn: string) => ({ directoryName: AsnConvert.parse(new x509.Name(dn).toArrayBuffer(), AsnName) });
/** An extension no validator knows (a private OID). */
const unknownExtension = (critical: boolean) => new x509.Extension("1.3.6.1.4.1.55555.1.1", critical, new Uint8Array([0x05, 0x00]));
const SERVER_AUTH = x509.ExtendedKeyUsage.serverAuth;

/** A certificate for `publicKey` signed by `issuer` (self-signed root when `issuer` is omitted and `keys` given). */
async function certificate(opts: {
  subject: string;
  issuer?: Issuer;
  keys?: CryptoKeyPair;
  publicKey?: CryptoKey;
  ca?: boolean;
  pathLength?: number;
  dnsNames?: string[];
  /** null: no KeyUsage. Default: keyCertSign|cRLSign for a CA, digitalSignature|keyAgreement for a leaf. */
  keyUsage?: number | null;
  /** null: no ExtendedKeyUsage. Default: none for a CA, serverAuth for a leaf. */
  eku?: string[] | null;
  extensions?: x509.Extension[];
  hash?: "SHA-1" | "SHA-256" | "SHA-384";
}): Promise<x509.X509Certificate> {
  const ca = opts.ca ?? false;
  const extensions: x509.Extension[] = [new x509.BasicConstraintsExtension(ca, opts.pathLength, true)];
  const ku = opts.keyUsage === undefined ? (ca ? F.keyCertSign | F.cRLSign : F.digitalSignature | F.keyAgreement) : opts.keyUsage;
  if (ku !== null) extensions.push(new x509.KeyUsagesExtension(ku, true));
  const eku = opts.eku === undefined ? (ca ? null : [SERVER_AUTH]) : opts.eku;
  if (eku !== null) extensions.push(new x509.ExtendedKeyUsageExtension(eku));
  if (opts.dnsNames?.length) extensions.push(new x509.SubjectAlternativeNameExtension(opts.dnsNames.map((value) => ({ type: "dns" as const, value }))));
  extensions.push(...(opts.extensions ?? []));
  const common = {
    notBefore: new Date(Date.now() - DAY),
    notAfter: new Date(Date.now() + 30 * DAY),
    signingAlgorithm: { name: "ECDSA", hash: opts.hash ?? "SHA-256" } as EcdsaParams,
    extensions,
  };
  if (!opts.issuer) return x509.X509CertificateGenerator.createSelfSigned({ ...common, name: `CN=${opts.subject}`, keys: opts.keys! });
  return x509.X509CertificateGenerator.create({
    ...common,
    subject: `CN=${opts.subject}`,
    issuer: opts.issuer.cert.subjectName,
    publicKey: opts.publicKey ?? opts.keys!.publicKey,
    signingKey: opts.issuer.privateKey,
  });
}
const ecPair = async () => (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"])) as CryptoKeyPair;
/** A CA issued by `issuer` (default: the test root). */
async function subCa(subject: string, opts: Omit<Parameters<typeof certificate>[0], "subject" | "ca" | "keys"> = {}): Promise<Issuer> {
  const keys = await ecPair();
  const cert = await certificate({ issuer: caRef, ...opts, subject, ca: true, keys });
  return { cert, privateKey: keys.privateKey };
}
/** A self-signed root (its PEM is the trust root). */
async function rootCa(subject: string, opts: { extensions?: x509.Extension[]; hash?: "SHA-1" | "SHA-256" } = {}): Promise<Issuer & { pem: string }> {
  const keys = await ecPair();
  const cert = await certificate({ ...opts, subject, ca: true, keys });
  return { cert, privateKey: keys.privateKey, pem: cert.toString("pem") };
}
/** The KMS JWK (ecKey) with a leaf for `dnsNames` issued by `issuer`, x5c = leaf + `chain`. */
async function kmsJwk(issuer: Issuer, chain: x509.X509Certificate[], dnsNames: string[], opts: Omit<Parameters<typeof certificate>[0], "subject" | "issuer" | "dnsNames"> = {}) {
  const leaf = await certificate({ subject: dnsNames[0] ?? "kms", issuer, publicKey: ecKey.publicKey, dnsNames, ...opts });
  return jwkOf(ecKey, [leaf, ...chain]);
}
const constrainedRoot = await rootCa("Partner Root", { extensions: [nameConstraints({ permitted: ["partner.org"] })] });
const sha1Root = await rootCa("Old SHA-1 Root", { hash: "SHA-1" });

/** A leaf via a sub-CA of the test root constrained by `constraints`. */
async function viaConstrained(constraints: Parameters<typeof nameConstraints>[0], dnsNames: string[]) {
  const partner = await subCa("Partner CA", { extensions: [nameConstraints(constraints)] });
  return kmsJwk(partner, [partner.cert], dnsNames);
}

describe("validateKmsIdentity", () => {
  const roots = [ca.certPem];
  const accept = async (jwk: Awaited<ReturnType<typeof leafJwk>>, userDomain: string, trustRoots = roots) =>
    validateKmsIdentity({ jwk, trustRoots, userDomain });
  const refuse = async (jwk: Awaited<ReturnType<typeof leafJwk>>, userDomain: string, trustRoots = roots, now?: Date) =>
    refusal(validateKmsIdentity({ jwk, trustRoots, userDomain, ...(now ? { now } : {}) }));

  type Jwk = Awaited<ReturnType<typeof leafJwk>>;
  interface Case {
    readonly name: string;
    readonly jwk: () => Promise<Jwk>;
    readonly user: string;
    readonly trustRoots?: string[];
    /** Accepted: the DNS names returned. Refused: the code and the whole message (or a pattern). */
    readonly expect: { dnsNames: string[] } | { code: KmsIdentityError["code"]; message: string | RegExp };
  }
  const WILDCARD_HINT =
    " (a wildcard matches only as the whole left-most label and for exactly one label: *.example.com covers " +
    "kms.example.com, not example.com nor a.b.example.com; k*.example.com and kms.*.com match nothing)";
  const past = { notBefore: new Date(Date.now() - 10 * DAY), notAfter: new Date(Date.now() - DAY) };
  const future = { notBefore: new Date(Date.now() + DAY), notAfter: new Date(Date.now() + 10 * DAY) };
  // Certificates hold whole seconds.
  const iso = (d: Date) => new Date(Math.floor(d.getTime() / 1000) * 1000).toISOString().replace(/[.]/g, "\\.");

  const cases: Case[] = [
    { name: "exact SAN for the user's domain", jwk: () => leafJwk(["example.com"]), user: "alice@example.com", expect: { dnsNames: ["example.com"] } },
    { name: "exact SAN, bare domain given", jwk: () => leafJwk(["example.com"]), user: "example.com", expect: { dnsNames: ["example.com"] } },
    {
      name: "a certificate for the KMS host only, not the user's domain",
      jwk: () => leafJwk(["kms.example.com"]),
      user: "alice@example.com",
      expect: {
        code: "ERR_KMS_CERT_NAME",
        message:
          "KMS certificate names [kms.example.com] but the user alice@example.com needs a certificate for example.com (a certificate for the KMS host " +
          "is not enough: it must also carry a DNS SAN for example.com, the domain of the users the KMS serves; wire profile §2)",
      },
    },
    { name: "the KMS host and the user's domain (what keyward init issues)", jwk: () => leafJwk(["kms.example.com", "example.com"]), user: "alice@example.com", expect: { dnsNames: ["kms.example.com", "example.com"] } },
    { name: "case differences in SAN and user id", jwk: () => leafJwk(["EXAMPLE.com"]), user: "Alice@Example.COM", expect: { dnsNames: ["EXAMPLE.com"] } },
    { name: "*.example.com for kms.example.com", jwk: () => leafJwk(["*.example.com"]), user: "bob@kms.example.com", expect: { dnsNames: ["*.example.com"] } },
    {
      name: "*.example.com not for a.b.example.com (one label only)",
      jwk: () => leafJwk(["*.example.com"]),
      user: "bob@a.b.example.com",
      expect: { code: "ERR_KMS_CERT_NAME", message: "KMS certificate names [*.example.com] but the user bob@a.b.example.com needs a certificate for a.b.example.com" + WILDCARD_HINT },
    },
    {
      name: "*.example.com not for example.com (the wildcard needs a label)",
      jwk: () => leafJwk(["*.example.com"]),
      user: "bob@example.com",
      expect: { code: "ERR_KMS_CERT_NAME", message: "KMS certificate names [*.example.com] but the user bob@example.com needs a certificate for example.com" + WILDCARD_HINT },
    },
    {
      name: "partial wildcard k*.example.com",
      jwk: () => leafJwk(["k*.example.com"]),
      user: "bob@kms.example.com",
      expect: { code: "ERR_KMS_CERT_NAME", message: "KMS certificate names [k*.example.com] but the user bob@kms.example.com needs a certificate for kms.example.com" + WILDCARD_HINT },
    },
    {
      name: "wildcard not left-most: kms.*.com",
      jwk: () => leafJwk(["kms.*.com"]),
      user: "bob@kms.example.com",
      expect: { code: "ERR_KMS_CERT_NAME", message: "KMS certificate names [kms.*.com] but the user bob@kms.example.com needs a certificate for kms.example.com" + WILDCARD_HINT },
    },
    {
      name: "two wildcards *.*.example.com",
      jwk: () => leafJwk(["*.*.example.com"]),
      user: "bob@a.b.example.com",
      expect: { code: "ERR_KMS_CERT_NAME", message: "KMS certificate names [*.*.example.com] but the user bob@a.b.example.com needs a certificate for a.b.example.com" + WILDCARD_HINT },
    },
    {
      name: "CN-only certificate (no CN fallback)",
      jwk: () => leafJwk([], { omitSan: true, commonName: "example.com" }),
      user: "alice@example.com",
      expect: {
        code: "ERR_KMS_CERT_NO_SAN",
        message: 'KMS certificate "CN=example.com" has no DNS SubjectAltName; a DNS name for example.com is required (the subject CN is not used)',
      },
    },
    {
      name: "wrong SAN",
      jwk: () => leafJwk(["example.org", "www.example.org"]),
      user: "alice@example.com",
      expect: { code: "ERR_KMS_CERT_NAME", message: "KMS certificate names [example.org, www.example.org] but the user alice@example.com needs a certificate for example.com" },
    },
    {
      name: "chain to an unknown CA",
      jwk: () => leafJwk(["example.com"]),
      user: "alice@example.com",
      trustRoots: [otherCa.certPem],
      expect: {
        code: "ERR_KMS_CERT_CHAIN",
        message:
          'the KMS certificate chain ends at "CN=example.com" issued by "CN=Keyward Test Root", which is none of the 1 configured trust root(s) ' +
          "[CN=Some Other Root] and is not signed by one (give the client the CA that issued the KMS certificate as a trust root)",
      },
    },
    {
      name: "no trust roots at all",
      jwk: () => leafJwk(["example.com"]),
      user: "alice@example.com",
      trustRoots: [],
      expect: { code: "ERR_KMS_CERT_CHAIN", message: /none of the 0 configured trust root\(s\) \[\]/ },
    },
    {
      name: "expired",
      jwk: () => leafJwk(["example.com"], past),
      user: "alice@example.com",
      expect: { code: "ERR_KMS_CERT_EXPIRED", message: new RegExp(`^KMS certificate "CN=example.com" expired at ${iso(past.notAfter)}; now is \\S+Z$`) },
    },
    {
      name: "not yet valid",
      jwk: () => leafJwk(["example.com"], future),
      user: "alice@example.com",
      expect: {
        code: "ERR_KMS_CERT_NOT_YET_VALID",
        message: new RegExp(`^KMS certificate "CN=example.com" is not valid before ${iso(future.notBefore)}; now is \\S+Z \\(check the clocks\\)$`),
      },
    },
    {
      name: "a JWK that is not the leaf's key",
      jwk: async () => jwkOf(otherKey, [(await issueKmsCertificate({ ca: caRef, dnsNames: ["example.com"], publicKey: ecKey.publicKey })).cert]),
      user: "alice@example.com",
      expect: {
        code: "ERR_KMS_JWK_MISMATCH",
        message: /^the KMS JWK \(kid kms-static-1\) \(EC key, thumbprint [\w-]{43}\) is not the key of its certificate "CN=example.com" \(EC key, thumbprint [\w-]{43}\)$/,
      },
    },
    {
      name: "an RSA key below 2048 bits",
      jwk: async () => jwkOf(rsa1024, [(await issueKmsCertificate({ ca: caRef, dnsNames: ["example.com"], publicKey: rsa1024.publicKey })).cert]),
      user: "alice@example.com",
      expect: { code: "ERR_KMS_KEY_TOO_SMALL", message: 'certificate "CN=example.com" has a 1024-bit RSA key; at least 2048 bits are required' },
    },
    {
      name: "an RSA-2048 key",
      jwk: async () => jwkOf(rsa2048, [(await issueKmsCertificate({ ca: caRef, dnsNames: ["example.com"], publicKey: rsa2048.publicKey })).cert]),
      user: "alice@example.com",
      expect: { dnsNames: ["example.com"] },
    },

    // Name constraints (RFC 5280 §4.2.1.10), on every CA of the path.
    {
      name: "the attack: a sub-CA constrained to partner.org issues a KMS certificate for example.com",
      jwk: () => viaConstrained({ permitted: ["partner.org"] }, ["kms.example.com", "example.com"]),
      user: "alice@example.com",
      expect: {
        code: "ERR_KMS_CERT_NAME_CONSTRAINTS",
        message: 'x5c[0] "CN=kms.example.com" names kms.example.com, outside the permitted DNS subtrees [partner.org], which the name constraints of x5c[1] "CN=Partner CA" forbid',
      },
    },
    {
      name: "the same sub-CA's certificate for kms.partner.org, for a partner.org user",
      jwk: () => viaConstrained({ permitted: ["partner.org"] }, ["kms.partner.org", "partner.org"]),
      user: "bob@partner.org",
      expect: { dnsNames: ["kms.partner.org", "partner.org"] },
    },
    {
      name: "a constrained sub-CA's certificate naming one permitted and one other domain (every SAN must be permitted)",
      jwk: () => viaConstrained({ permitted: ["partner.org"] }, ["partner.org", "example.com"]),
      user: "bob@partner.org",
      expect: { code: "ERR_KMS_CERT_NAME_CONSTRAINTS", message: /names example\.com, outside the permitted DNS subtrees \[partner\.org\]/ },
    },
    {
      name: "evilpartner.org under a partner.org constraint (a suffix is not a subtree)",
      jwk: () => viaConstrained({ permitted: ["partner.org"] }, ["evilpartner.org"]),
      user: "bob@evilpartner.org",
      expect: { code: "ERR_KMS_CERT_NAME_CONSTRAINTS", message: /names evilpartner\.org, outside the permitted DNS subtrees/ },
    },
    {
      name: "KMS.partner.org under a Partner.ORG constraint (case-insensitive)",
      jwk: () => viaConstrained({ permitted: ["Partner.ORG"] }, ["KMS.partner.org"]),
      user: "bob@kms.partner.org",
      expect: { dnsNames: ["KMS.partner.org"] },
    },
    {
      name: "partner.org under a .partner.org constraint (subdomains only)",
      jwk: () => viaConstrained({ permitted: [".partner.org"] }, ["partner.org"]),
      user: "bob@partner.org",
      expect: { code: "ERR_KMS_CERT_NAME_CONSTRAINTS", message: /names partner\.org, outside the permitted DNS subtrees \[\.partner\.org\]/ },
    },
    {
      name: "kms.partner.org under a .partner.org constraint",
      jwk: () => viaConstrained({ permitted: [".partner.org"] }, ["kms.partner.org"]),
      user: "bob@kms.partner.org",
      expect: { dnsNames: ["kms.partner.org"] },
    },
    {
      name: "kms.secret.partner.org when secret.partner.org is excluded",
      jwk: () => viaConstrained({ permitted: ["partner.org"], excluded: ["secret.partner.org"] }, ["kms.secret.partner.org"]),
      user: "bob@kms.secret.partner.org",
      expect: {
        code: "ERR_KMS_CERT_NAME_CONSTRAINTS",
        message: 'x5c[0] "CN=kms.secret.partner.org" names kms.secret.partner.org, inside the excluded DNS subtree secret.partner.org, which the name constraints of x5c[1] "CN=Partner CA" forbid',
      },
    },
    {
      name: "*.partner.org when secret.partner.org is excluded (the wildcard would cover it)",
      jwk: () => viaConstrained({ excluded: ["secret.partner.org"] }, ["*.partner.org"]),
      user: "bob@kms.partner.org",
      expect: { code: "ERR_KMS_CERT_NAME_CONSTRAINTS", message: /names \*\.partner\.org, inside the excluded DNS subtree secret\.partner\.org/ },
    },
    {
      name: "kms.partner.org and partner.org when secret.partner.org is excluded",
      jwk: () => viaConstrained({ permitted: ["partner.org"], excluded: ["secret.partner.org"] }, ["kms.partner.org", "partner.org"]),
      user: "bob@partner.org",
      expect: { dnsNames: ["kms.partner.org", "partner.org"] },
    },
    {
      name: "example.org when only example.com is excluded (no permitted DNS subtree)",
      jwk: () => viaConstrained({ excluded: ["example.com"] }, ["example.org"]),
      user: "bob@example.org",
      expect: { dnsNames: ["example.org"] },
    },
    {
      name: "kms.example.com and example.com when example.com is excluded",
      jwk: () => viaConstrained({ excluded: ["example.com"] }, ["kms.example.com", "example.com"]),
      user: "alice@example.com",
      expect: { code: "ERR_KMS_CERT_NAME_CONSTRAINTS", message: /names kms\.example\.com, inside the excluded DNS subtree example\.com/ },
    },
    {
      name: "example.com from a trust root constrained to partner.org",
      jwk: async () => kmsJwk(constrainedRoot, [], ["example.com"]),
      user: "alice@example.com",
      trustRoots: [constrainedRoot.pem],
      expect: {
        code: "ERR_KMS_CERT_NAME_CONSTRAINTS",
        message: 'x5c[0] "CN=example.com" names example.com, outside the permitted DNS subtrees [partner.org], which the name constraints of trust root "CN=Partner Root" forbid',
      },
    },
    {
      name: "example.com from an unconstrained sub-CA below a CA constrained to partner.org",
      jwk: async () => {
        const upper = await subCa("Partner CA", { pathLength: 1, extensions: [nameConstraints({ permitted: ["partner.org"] })] });
        const lower = await subCa("Partner Issuing CA", { issuer: upper });
        return kmsJwk(lower, [lower.cert, upper.cert], ["example.com"]);
      },
      user: "alice@example.com",
      expect: { code: "ERR_KMS_CERT_NAME_CONSTRAINTS", message: /^x5c\[0\] "CN=example\.com" names example\.com, .* of x5c\[2\] "CN=Partner CA" forbid$/ },
    },
    {
      name: "a sub-CA whose own DNS SAN is outside its issuer's constraint",
      jwk: async () => {
        const upper = await subCa("Partner CA", { pathLength: 1, extensions: [nameConstraints({ permitted: ["partner.org"] })] });
        const lower = await subCa("Partner Issuing CA", { issuer: upper, dnsNames: ["ca.example.com"] });
        return kmsJwk(lower, [lower.cert, upper.cert], ["kms.partner.org"]);
      },
      user: "bob@kms.partner.org",
      expect: {
        code: "ERR_KMS_CERT_NAME_CONSTRAINTS",
        message: 'x5c[1] "CN=Partner Issuing CA" names ca.example.com, outside the permitted DNS subtrees [partner.org], which the name constraints of x5c[2] "CN=Partner CA" forbid',
      },
    },
    {
      name: "other.org below a CA constrained to org and a sub-CA constrained to partner.org",
      jwk: async () => {
        const upper = await subCa("Org CA", { pathLength: 1, extensions: [nameConstraints({ permitted: ["org"] })] });
        const lower = await subCa("Partner CA", { issuer: upper, extensions: [nameConstraints({ permitted: ["partner.org"] })] });
        return kmsJwk(lower, [lower.cert, upper.cert], ["other.org"]);
      },
      user: "bob@other.org",
      expect: { code: "ERR_KMS_CERT_NAME_CONSTRAINTS", message: /names other\.org, outside the permitted DNS subtrees \[partner\.org\], .* x5c\[1\] "CN=Partner CA"/ },
    },
    {
      name: "a directoryName constraint (a form this client does not check) above a leaf with a subject",
      jwk: () => viaConstrained({ permitted: ["partner.org", directoryName("O=Partner")] }, ["partner.org"]),
      user: "bob@partner.org",
      expect: {
        code: "ERR_KMS_CERT_NAME_CONSTRAINTS",
        message: 'x5c[1] "CN=Partner CA" constrains dn names, which this client does not check, and x5c[0] "CN=partner.org" has one',
      },
    },
    {
      name: "an iPAddress constraint above a leaf without IP SAN (nothing to check)",
      jwk: () => viaConstrained({ permitted: ["partner.org"], excluded: [{ iPAddress: "10.0.0.0" }] }, ["partner.org"]),
      user: "bob@partner.org",
      expect: { dnsNames: ["partner.org"] },
    },
    // Critical extensions (RFC 5280 §4.2).
    {
      name: "an unknown critical extension on the leaf",
      jwk: () => kmsJwk(caRef, [], ["example.com"], { extensions: [unknownExtension(true)] }),
      user: "alice@example.com",
      expect: {
        code: "ERR_KMS_CERT_CRITICAL_EXTENSION",
        message:
          'x5c[0] "CN=example.com" has a critical extension 1.3.6.1.4.1.55555.1.1 that this client does not process ' +
          "(it processes basicConstraints, keyUsage, extendedKeyUsage, subjectAltName, nameConstraints, subjectKeyIdentifier, authorityKeyIdentifier)",
      },
    },
    {
      name: "an unknown critical extension on an intermediate",
      jwk: async () => {
        const inter = await subCa("Odd CA", { extensions: [unknownExtension(true)] });
        return kmsJwk(inter, [inter.cert], ["example.com"]);
      },
      user: "alice@example.com",
      expect: { code: "ERR_KMS_CERT_CRITICAL_EXTENSION", message: /^x5c\[1\] "CN=Odd CA" has a critical extension 1\.3\.6\.1\.4\.1\.55555\.1\.1 / },
    },
    {
      name: "an unknown non-critical extension (ignored, as RFC 5280 allows)",
      jwk: () => kmsJwk(caRef, [], ["example.com"], { extensions: [unknownExtension(false)] }),
      user: "alice@example.com",
      expect: { dnsNames: ["example.com"] },
    },
    // The leaf is a server end entity.
    {
      name: "a leaf that is a CA (BasicConstraints cA=true)",
      jwk: () => kmsJwk(caRef, [], ["example.com"], { ca: true, keyUsage: F.digitalSignature | F.keyCertSign }),
      user: "alice@example.com",
      expect: { code: "ERR_KMS_CERT_LEAF_CA", message: 'KMS certificate "CN=example.com" is a CA certificate (BasicConstraints cA=true); the KMS key must be an end entity\'s' },
    },
    {
      name: "a leaf whose KeyUsage lacks digitalSignature",
      jwk: () => kmsJwk(caRef, [], ["example.com"], { keyUsage: F.keyAgreement | F.keyEncipherment }),
      user: "alice@example.com",
      expect: { code: "ERR_KMS_CERT_KEY_USAGE", message: 'KMS certificate "CN=example.com" has a KeyUsage without digitalSignature; the KMS signs with this key' },
    },
    { name: "a leaf with digitalSignature only", jwk: () => kmsJwk(caRef, [], ["example.com"], { keyUsage: F.digitalSignature }), user: "alice@example.com", expect: { dnsNames: ["example.com"] } },
    { name: "a leaf without KeyUsage", jwk: () => kmsJwk(caRef, [], ["example.com"], { keyUsage: null }), user: "alice@example.com", expect: { dnsNames: ["example.com"] } },
    {
      name: "a leaf whose ExtendedKeyUsage is clientAuth and codeSigning only",
      jwk: () => kmsJwk(caRef, [], ["example.com"], { eku: [x509.ExtendedKeyUsage.clientAuth, x509.ExtendedKeyUsage.codeSigning] }),
      user: "alice@example.com",
      expect: {
        code: "ERR_KMS_CERT_EXT_KEY_USAGE",
        message: 'KMS certificate "CN=example.com" has an ExtendedKeyUsage [1.3.6.1.5.5.7.3.2, 1.3.6.1.5.5.7.3.3] without serverAuth (1.3.6.1.5.5.7.3.1) or anyExtendedKeyUsage',
      },
    },
    { name: "a leaf with ExtendedKeyUsage anyExtendedKeyUsage", jwk: () => kmsJwk(caRef, [], ["example.com"], { eku: ["2.5.29.37.0"] }), user: "alice@example.com", expect: { dnsNames: ["example.com"] } },
    { name: "a leaf without ExtendedKeyUsage", jwk: () => kmsJwk(caRef, [], ["example.com"], { eku: null }), user: "alice@example.com", expect: { dnsNames: ["example.com"] } },
    // Signatures: SHA-2 only.
    {
      name: "a leaf signed with ECDSA and SHA-1",
      jwk: () => kmsJwk(caRef, [], ["example.com"], { hash: "SHA-1" }),
      user: "alice@example.com",
      expect: {
        code: "ERR_KMS_CERT_WEAK_SIGNATURE",
        message: 'x5c[0] "CN=example.com" is signed with ECDSA and SHA-1; only SHA-256, SHA-384 or SHA-512 signatures are accepted (SHA-1 is refused)',
      },
    },
    {
      name: "an intermediate signed by the root with SHA-1",
      jwk: async () => {
        const inter = await subCa("SHA-1 CA", { hash: "SHA-1" });
        return kmsJwk(inter, [inter.cert], ["example.com"]);
      },
      user: "alice@example.com",
      expect: { code: "ERR_KMS_CERT_WEAK_SIGNATURE", message: /^x5c\[1\] "CN=SHA-1 CA" is signed with ECDSA and SHA-1;/ },
    },
    { name: "a leaf signed with SHA-384", jwk: () => kmsJwk(caRef, [], ["example.com"], { hash: "SHA-384" }), user: "alice@example.com", expect: { dnsNames: ["example.com"] } },
    {
      name: "a trust root whose own self-signature is SHA-1 (never relied on: the root is trusted by configuration)",
      jwk: async () => kmsJwk(sha1Root, [sha1Root.cert], ["example.com"]),
      user: "alice@example.com",
      trustRoots: [sha1Root.pem],
      expect: { dnsNames: ["example.com"] },
    },
  ];

  it.each(cases.map((c) => [("dnsNames" in c.expect ? "accepts " : "refuses ") + c.name, c] as const))("%s", async (_name, c) => {
    const run = validateKmsIdentity({ jwk: await c.jwk(), trustRoots: c.trustRoots ?? roots, userDomain: c.user });
    if ("dnsNames" in c.expect) {
      expect((await run).dnsNames).toEqual(c.expect.dnsNames);
      return;
    }
    const e = await refusal(run);
    expect(e.code).toBe(c.expect.code);
    if (typeof c.expect.message === "string") expect(e.message).toBe(c.expect.message);
    else expect(e.message).toMatch(c.expect.message);
  });

  it("accepts an unknown CA once it is in a trust bundle", async () => {
    const jwk = await leafJwk(["example.com"]);
    const r = await accept(jwk, "alice@example.com", [otherCa.certPem + "\n" + ca.certPem]);
    expect(r.leaf.subject).toBe("CN=example.com");
  });

  it("honours `now` for the validity period", async () => {
    const jwk = await leafJwk(["example.com"], future);
    await validateKmsIdentity({ jwk, trustRoots: roots, userDomain: "example.com", now: new Date(Date.now() + 2 * DAY) });
    expect((await refuse(jwk, "alice@example.com", roots, new Date(Date.now() + 20 * DAY))).code).toBe("ERR_KMS_CERT_EXPIRED");
  });

  it("accepts a chain through an intermediate CA (with or without the root in x5c)", async () => {
    const inter = await makeIntermediate();
    const { cert } = await issueKmsCertificate({ ca: inter, dnsNames: ["example.com"], publicKey: ecKey.publicKey });
    await accept(jwkOf(ecKey, [cert, inter.cert]), "alice@example.com");
    await accept(jwkOf(ecKey, [cert, inter.cert, ca.cert]), "alice@example.com");
    // The intermediate is missing: the leaf's issuer is not a trust root.
    expect((await refuse(jwkOf(ecKey, [cert]), "alice@example.com")).code).toBe("ERR_KMS_CERT_CHAIN");
    // Wrong order.
    expect((await refuse(jwkOf(ecKey, [inter.cert, cert]), "alice@example.com")).code).toBe("ERR_KMS_CERT_CHAIN");
  });

  it("refuses a chain exceeding the intermediate's pathLenConstraint", async () => {
    const inter = await makeIntermediate(); // pathLen 0
    const sub = await makeIntermediate();
    // Re-issue `sub` under `inter` with cA=true.
    const subCert = await x509.X509CertificateGenerator.create({
      subject: "CN=Sub CA",
      issuer: inter.cert.subjectName,
      publicKey: sub.cert.publicKey,
      signingKey: inter.privateKey,
      notBefore: new Date(Date.now() - DAY),
      extensions: [new x509.BasicConstraintsExtension(true, undefined, true)],
    });
    const { cert } = await issueKmsCertificate({ ca: { cert: subCert, privateKey: sub.privateKey }, dnsNames: ["example.com"], publicKey: ecKey.publicKey });
    const e = await refuse(jwkOf(ecKey, [cert, subCert, inter.cert]), "alice@example.com");
    expect(e.code).toBe("ERR_KMS_CERT_CHAIN");
    expect(e.message).toMatch(/pathLenConstraint/);
  });

  it("refuses a leaf (non-CA) used as an issuer", async () => {
    const fakeCaKey = await generateStaticKeyPair("ec");
    const fakeCa = await issueKmsCertificate({ ca: caRef, dnsNames: ["evil.example.net"], publicKey: fakeCaKey.publicKey });
    const { cert } = await issueKmsCertificate({
      ca: { cert: fakeCa.cert, privateKey: fakeCaKey.privateKey },
      dnsNames: ["example.com"],
      publicKey: ecKey.publicKey,
    });
    const e = await refuse(jwkOf(ecKey, [cert, fakeCa.cert]), "alice@example.com");
    expect(e.code).toBe("ERR_KMS_CERT_CHAIN");
    expect(e.message).toMatch(/is not a CA certificate/);
  });

  it("refuses a JWK without x5c, and x5c that is not standard base64 DER", async () => {
    expect((await refusal(validateKmsIdentity({ jwk: { ...ecKey.publicJwk }, trustRoots: roots, userDomain: "example.com" }))).code).toBe(
      "ERR_KMS_NO_X5C",
    );
    const { cert } = await issueKmsCertificate({ ca: caRef, dnsNames: ["example.com"], publicKey: ecKey.publicKey });
    const b64 = cert.toString("base64");
    for (const bad of ["not base64!", b64.replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "") + "-", b64.slice(0, 40) + "\n" + b64.slice(40)]) {
      const jwk = { ...ecKey.publicJwk, x5c: [bad] };
      expect((await refusal(validateKmsIdentity({ jwk, trustRoots: roots, userDomain: "example.com" }))).code).toBe("ERR_KMS_CERT_PARSE");
    }
  });

  it("refuses a certificate whose signature was tampered with", async () => {
    const { cert } = await issueKmsCertificate({ ca: caRef, dnsNames: ["example.com"], publicKey: ecKey.publicKey });
    const der = new Uint8Array(cert.rawData);
    der[der.length - 5]! ^= 0x01; // inside the signature value
    const jwk = { ...ecKey.publicJwk, x5c: [new x509.X509Certificate(der).toString("base64")] };
    expect((await refusal(validateKmsIdentity({ jwk, trustRoots: roots, userDomain: "example.com" }))).code).toBe("ERR_KMS_CERT_CHAIN");
  });
});

describe("KmsClient: previous KMS keys from discovery (static key rotation)", () => {
  const KMS = "kms://kms.example.com";
  const signer = async () => {
    const key = await generateStaticKeyPair("ec");
    const { cert } = await issueKmsCertificate({ ca: caRef, dnsNames: ["example.com"], publicKey: key.publicKey });
    return { key, jwk: { ...key.publicJwk, kid: KMS, x5c: toX5c([cert]) } };
  };
  const sign = (key: CryptoKey, payload: unknown) =>
    new CompactSign(new TextEncoder().encode(JSON.stringify(payload))).setProtectedHeader({ alg: "ES256", kid: KMS }).sign(key);

  it("trusts only previous keys that pass the same identity checks; fails closed on the others", async () => {
    const current = await signer();
    const previous = await signer();
    const untrusted = await generateStaticKeyPair("ec");
    const untrustedCert = (await issueKmsCertificate({ ca: { cert: otherCa.cert, privateKey: otherCa.keys.privateKey }, dnsNames: ["example.com"], publicKey: untrusted.publicKey })).cert;
    const wrongName = await generateStaticKeyPair("ec");
    const wrongNameCert = (await issueKmsCertificate({ ca: caRef, dnsNames: ["example.org"], publicKey: wrongName.publicKey })).cert;
    const wrongKid = await signer();
    const doc = {
      uri: KMS,
      jwk: current.jwk,
      protocol: "draft-abiggs-saag-key-management-service-03",
      previousKeys: [
        previous.jwk,
        { ...untrusted.publicJwk, kid: KMS, x5c: toX5c([untrustedCert]) },
        { ...wrongName.publicJwk, kid: KMS, x5c: toX5c([wrongNameCert]) },
        { ...wrongKid.jwk, kid: "kms://elsewhere.example" },
        "not a key",
      ],
    };
    let discoveries = 0;
    const client = new KmsClient({
      transport: { send: () => Promise.reject(new Error("no messages here")), discover: async () => (discoveries++, doc) },
      user: "alice@example.com",
      token: "t",
      trustRoots: [ca.certPem],
    });
    const info = await client.discover();
    expect(info.previousJwks).toEqual([previous.jwk]);
    expect(await client.verifyKmsSignature(await sign(current.key.privateKey, { n: 1 }))).toEqual({ n: 1 });
    expect(await client.verifyKmsSignature(await sign(previous.key.privateKey, { n: 2 }))).toEqual({ n: 2 });
    expect(discoveries).toBe(1);
    for (const k of [untrusted.privateKey, wrongName.privateKey, wrongKid.key.privateKey]) {
      const e = await client.verifyKmsSignature(await sign(k, { n: 3 })).catch((err: unknown) => err);
      expect(e).toBeInstanceOf(KmsProtocolError);
      expect((e as InstanceType<typeof KmsProtocolError>).message).toBe(
        "a KMS reply is not signed by the KMS static key (nor by any of its authenticated previous keys)",
      );
    }
    // One re-discovery per failed verification, never more.
    expect(discoveries).toBe(4);
  });
});

describe("KmsClient: a fake KMS certified by a name-constrained sub-CA", () => {
  it("is refused at discovery: the bearer token is never sent", async () => {
    const partner = await subCa("Partner CA", { extensions: [nameConstraints({ permitted: ["partner.org"] })] });
    const fake = await kmsJwk(partner, [partner.cert], ["kms.example.com", "example.com"]);
    const sent: string[] = [];
    const client = new KmsClient({
      transport: {
        discover: async () => ({ uri: "kms://kms.example.com", jwk: { ...fake, kid: "kms://kms.example.com" }, protocol: "draft-abiggs-saag-key-management-service-03" }),
        send: async (message) => (sent.push(message), Promise.reject(new Error("the fake KMS got a message"))),
      },
      user: "alice@example.com",
      token: "alice-bearer-token",
      trustRoots: [ca.certPem],
    });
    const e = await refusal(client.ping());
    expect(e.code).toBe("ERR_KMS_CERT_NAME_CONSTRAINTS");
    expect(sent).toEqual([]);
    // The same sub-CA's certificate for its own domain works for a partner.org user.
    const own = await kmsJwk(partner, [partner.cert], ["kms.partner.org", "partner.org"]);
    const partnerClient = new KmsClient({
      transport: { discover: async () => ({ uri: "kms://kms.partner.org", jwk: { ...own, kid: "kms://kms.partner.org" } }), send: () => Promise.reject(new Error("unused")) },
      user: "bob@partner.org",
      token: "bob-bearer-token",
      trustRoots: [ca.certPem],
    });
    expect((await partnerClient.discover()).uri).toBe("kms://kms.partner.org");
  });
});
