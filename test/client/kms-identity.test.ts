import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { describe, it, expect } from "vitest";
import { KmsIdentityError, matchesDnsName, validateKmsIdentity } from "../../src/client/kms-identity.js";
import { createDevCa, generateStaticKeyPair, issueKmsCertificate, toX5c } from "../../src/pki/dev-ca.js";

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

describe("validateKmsIdentity", () => {
  const roots = [ca.certPem];
  const accept = async (jwk: Awaited<ReturnType<typeof leafJwk>>, userDomain: string, trustRoots = roots) =>
    validateKmsIdentity({ jwk, trustRoots, userDomain });
  const refuse = async (jwk: Awaited<ReturnType<typeof leafJwk>>, userDomain: string, trustRoots = roots, now?: Date) =>
    refusal(validateKmsIdentity({ jwk, trustRoots, userDomain, ...(now ? { now } : {}) }));

  it("accepts an exact SAN for the user's domain (user id or bare domain)", async () => {
    const jwk = await leafJwk(["example.com"]);
    const r = await accept(jwk, "alice@example.com");
    expect(r.dnsNames).toEqual(["example.com"]);
    expect(r.leaf.subject).toBe("CN=example.com");
    await accept(jwk, "example.com");
  });

  it("refuses a certificate for the KMS host rather than the user's domain", async () => {
    const e = await refuse(await leafJwk(["kms.example.com"]), "alice@example.com");
    expect(e.code).toBe("ERR_KMS_CERT_NAME");
    expect(e.message).toBe("KMS certificate names [kms.example.com] but the user alice@example.com needs a certificate for example.com");
  });

  it("accepts case differences in SAN and user id", async () => {
    await accept(await leafJwk(["EXAMPLE.com"]), "Alice@Example.COM");
  });

  it("wildcard *.example.com: matches a.example.com, not example.com nor a.b.example.com", async () => {
    const jwk = await leafJwk(["*.example.com"]);
    await accept(jwk, "bob@a.example.com");
    expect((await refuse(jwk, "bob@example.com")).code).toBe("ERR_KMS_CERT_NAME");
    expect((await refuse(jwk, "bob@a.b.example.com")).code).toBe("ERR_KMS_CERT_NAME");
  });

  it("refuses partial and multiple wildcards", async () => {
    expect((await refuse(await leafJwk(["a*.example.com"]), "bob@ab.example.com")).code).toBe("ERR_KMS_CERT_NAME");
    expect((await refuse(await leafJwk(["*.*.example.com"]), "bob@a.b.example.com")).code).toBe("ERR_KMS_CERT_NAME");
  });

  it("refuses a CN-only certificate (no CN fallback)", async () => {
    const jwk = await leafJwk([], { omitSan: true, commonName: "example.com" });
    const e = await refuse(jwk, "alice@example.com");
    expect(e.code).toBe("ERR_KMS_CERT_NO_SAN");
    expect(e.message).toMatch(/no DNS SubjectAltName/);
  });

  it("refuses a wrong SAN", async () => {
    const e = await refuse(await leafJwk(["example.org", "www.example.org"]), "alice@example.com");
    expect(e.code).toBe("ERR_KMS_CERT_NAME");
    expect(e.message).toContain("[example.org, www.example.org]");
  });

  it("refuses a chain to an unknown CA, and accepts it when that CA is in a trust bundle", async () => {
    const jwk = await leafJwk(["example.com"]);
    const e = await refuse(jwk, "alice@example.com", [otherCa.certPem]);
    expect(e.code).toBe("ERR_KMS_CERT_CHAIN");
    expect(e.message).toContain("Some Other Root");
    await accept(jwk, "alice@example.com", [otherCa.certPem + "\n" + ca.certPem]);
    expect((await refuse(jwk, "alice@example.com", [])).code).toBe("ERR_KMS_CERT_CHAIN");
  });

  it("refuses an expired certificate", async () => {
    const jwk = await leafJwk(["example.com"], { notBefore: new Date(Date.now() - 10 * DAY), notAfter: new Date(Date.now() - DAY) });
    const e = await refuse(jwk, "alice@example.com");
    expect(e.code).toBe("ERR_KMS_CERT_EXPIRED");
    expect(e.message).toMatch(/expired at/);
  });

  it("refuses a not-yet-valid certificate, and honours `now`", async () => {
    const notBefore = new Date(Date.now() + DAY);
    const jwk = await leafJwk(["example.com"], { notBefore, notAfter: new Date(Date.now() + 10 * DAY) });
    expect((await refuse(jwk, "alice@example.com")).code).toBe("ERR_KMS_CERT_NOT_YET_VALID");
    await validateKmsIdentity({ jwk, trustRoots: roots, userDomain: "example.com", now: new Date(Date.now() + 2 * DAY) });
    const later = new Date(Date.now() + 20 * DAY);
    expect((await refuse(jwk, "alice@example.com", roots, later)).code).toBe("ERR_KMS_CERT_EXPIRED");
  });

  it("refuses a JWK that is not the leaf's key", async () => {
    const { cert } = await issueKmsCertificate({ ca: caRef, dnsNames: ["example.com"], publicKey: ecKey.publicKey });
    const other = await generateStaticKeyPair("ec");
    const e = await refuse(jwkOf(other, [cert]), "alice@example.com");
    expect(e.code).toBe("ERR_KMS_JWK_MISMATCH");
    expect(e.message).toContain("kms-static-1");
  });

  it("refuses an RSA-1024 leaf and accepts an RSA-2048 leaf", async () => {
    const rsa1024 = await generateStaticKeyPair("rsa", 1024);
    const small = await issueKmsCertificate({ ca: caRef, dnsNames: ["example.com"], publicKey: rsa1024.publicKey });
    const e = await refuse(jwkOf(rsa1024, [small.cert]), "alice@example.com");
    expect(e.code).toBe("ERR_KMS_KEY_TOO_SMALL");
    expect(e.message).toMatch(/1024-bit RSA key; at least 2048/);

    const rsa2048 = await generateStaticKeyPair("rsa", 2048);
    const ok = await issueKmsCertificate({ ca: caRef, dnsNames: ["example.com"], publicKey: rsa2048.publicKey });
    const r = await accept(jwkOf(rsa2048, [ok.cert]), "alice@example.com");
    expect(r.dnsNames).toEqual(["example.com"]);
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
