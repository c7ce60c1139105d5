import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { describe, it, expect } from "vitest";
import { createDevCa, derToPem, generateStaticKeyPair, issueKmsCertificate, pemToDer, toX5c } from "../../src/pki/dev-ca.js";

const subtle = globalThis.crypto.subtle;
const ca = await createDevCa({ commonName: "Test CA" });
const caRef = { cert: ca.cert, privateKey: ca.keys.privateKey };

describe("createDevCa", () => {
  it("makes a self-signed CA with critical BasicConstraints and KeyUsage, an SKI and a positive serial", async () => {
    expect(ca.cert.subject).toBe("CN=Test CA");
    expect(await ca.cert.isSelfSigned()).toBe(true);
    const bc = ca.cert.getExtension(x509.BasicConstraintsExtension)!;
    expect(bc.ca).toBe(true);
    expect(bc.critical).toBe(true);
    const ku = ca.cert.getExtension(x509.KeyUsagesExtension)!;
    expect(ku.critical).toBe(true);
    expect(ku.usages).toBe(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign);
    expect(ca.cert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId).toMatch(/^[0-9a-f]{40}$/);
    expect(parseInt(ca.cert.serialNumber.slice(0, 2), 16)).toBeLessThan(0x80);
    expect(ca.cert.signatureAlgorithm).toMatchObject({ name: "ECDSA", hash: { name: "SHA-256" } });
    expect(ca.certPem).toMatch(/^-----BEGIN CERTIFICATE-----/);
    const pkcs8 = pemToDer(ca.privateKeyPkcs8Pem)[0]!;
    await expect(subtle.importKey("pkcs8", pkcs8, { name: "ECDSA", namedCurve: "P-256" }, false, ["sign"])).resolves.toBeDefined();
  });

  it("honours validDays", async () => {
    const short = await createDevCa({ validDays: 2 });
    const days = (short.cert.notAfter.getTime() - short.cert.notBefore.getTime()) / 86_400_000;
    expect(days).toBeCloseTo(2, 5);
  });
});

describe("issueKmsCertificate", () => {
  it("issues an EC leaf: SAN, cA=false, digitalSignature|keyAgreement, serverAuth+clientAuth, AKI = CA SKI", async () => {
    const kms = await generateStaticKeyPair("ec");
    const { cert, certPem } = await issueKmsCertificate({ ca: caRef, dnsNames: ["example.com", "kms.example.com"], publicKey: kms.publicKey });
    expect(certPem).toContain("BEGIN CERTIFICATE");
    expect(cert.issuer).toBe(ca.cert.subject);
    expect(await cert.verify({ publicKey: ca.cert.publicKey })).toBe(true);
    const san = cert.getExtension(x509.SubjectAlternativeNameExtension)!;
    expect(san.names.items.map((n) => [n.type, n.value])).toEqual([["dns", "example.com"], ["dns", "kms.example.com"]]);
    expect(cert.getExtension(x509.BasicConstraintsExtension)?.ca).toBe(false);
    const F = x509.KeyUsageFlags;
    expect(cert.getExtension(x509.KeyUsagesExtension)?.usages).toBe(F.digitalSignature | F.keyAgreement);
    expect(cert.getExtension(x509.ExtendedKeyUsageExtension)?.usages).toEqual([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]);
    expect(cert.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId).toBe(
      ca.cert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId,
    );
    const spki = new Uint8Array(await subtle.exportKey("spki", kms.publicKey));
    expect(new Uint8Array(cert.publicKey.rawData)).toEqual(spki);
  });

  it("issues an RSA leaf from an RSA-OAEP key with digitalSignature|keyEncipherment", async () => {
    const oaep = (await subtle.generateKey(
      { name: "RSA-OAEP", modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" },
      true,
      ["encrypt", "decrypt"],
    )) as CryptoKeyPair;
    const { cert } = await issueKmsCertificate({ ca: caRef, dnsNames: ["example.com"], publicKey: oaep.publicKey });
    const F = x509.KeyUsageFlags;
    expect(cert.getExtension(x509.KeyUsagesExtension)?.usages).toBe(F.digitalSignature | F.keyEncipherment);
    expect(await cert.verify({ publicKey: ca.cert.publicKey })).toBe(true);
  });

  it("honours notBefore / notAfter, and makes a CN-only certificate with omitSan", async () => {
    const kms = await generateStaticKeyPair("ec");
    const notBefore = new Date("2030-01-01T00:00:00Z");
    const notAfter = new Date("2030-02-01T00:00:00Z");
    const { cert } = await issueKmsCertificate({
      ca: caRef, dnsNames: [], publicKey: kms.publicKey, notBefore, notAfter, omitSan: true, commonName: "example.com",
    });
    expect(cert.notBefore).toEqual(notBefore);
    expect(cert.notAfter).toEqual(notAfter);
    expect(cert.subject).toBe("CN=example.com");
    expect(cert.getExtension(x509.SubjectAlternativeNameExtension)).toBeNull();
  });

  it("refuses an empty dnsNames unless omitSan", async () => {
    const kms = await generateStaticKeyPair("ec");
    await expect(issueKmsCertificate({ ca: caRef, dnsNames: [], publicKey: kms.publicKey })).rejects.toThrow(/dnsNames is empty/);
  });
});

describe("generateStaticKeyPair", () => {
  it("EC: pkcs8 imports for ES256 signing and ECDH-ES; public JWK has only key members", async () => {
    const k = await generateStaticKeyPair("ec");
    expect(Object.keys(k.publicJwk).sort()).toEqual(["crv", "kty", "x", "y"]);
    await subtle.importKey("pkcs8", k.pkcs8Der, { name: "ECDSA", namedCurve: "P-256" }, false, ["sign"]);
    await subtle.importKey("pkcs8", k.pkcs8Der, { name: "ECDH", namedCurve: "P-256" }, false, ["deriveBits"]);
  });

  it("RSA: pkcs8 imports for RS256 signing and RSA-OAEP; modulus size as asked", async () => {
    const k = await generateStaticKeyPair("rsa", 2048);
    expect(Object.keys(k.publicJwk).sort()).toEqual(["e", "kty", "n"]);
    await subtle.importKey("pkcs8", k.pkcs8Der, { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }, false, ["sign"]);
    const oaep = await subtle.importKey("pkcs8", k.pkcs8Der, { name: "RSA-OAEP", hash: "SHA-256" }, false, ["decrypt"]);
    expect((oaep.algorithm as RsaHashedKeyAlgorithm).modulusLength).toBe(2048);
  });
});

describe("PEM helpers", () => {
  it("round-trips a bundle of several certificates, and encodes x5c as standard base64", async () => {
    const other = await createDevCa();
    const bundle = ca.certPem + "\n" + other.certPem;
    const ders = pemToDer(bundle);
    expect(ders).toHaveLength(2);
    expect(ders[0]).toEqual(new Uint8Array(ca.cert.rawData));
    expect(derToPem(ders[1]!, "CERTIFICATE").trim()).toBe(other.certPem.trim());
    const [x5c0] = toX5c([ca.cert]);
    expect(x5c0).toMatch(/^[A-Za-z0-9+/]+=*$/);
    expect(pemToDer(derToPem(ders[0]!))[0]).toEqual(ders[0]);
  });
});
