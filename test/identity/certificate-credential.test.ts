import { beforeAll, describe, expect, it } from "vitest";
import { base64url, calculateJwkThumbprint, CompactSign, type JWK } from "jose";
import { CertificateCredentialValidator } from "../../src/identity/certificate-credential.js";
import { KmsError } from "../../src/protocol/errors.js";
import { buildTestPki, signProof, type TestLeaf, type TestPki } from "../helpers/test-pki.js";

/** The key-agreement request a peer signs: its payload carries the credential itself. */
function request(jwk: JWK, fields: Record<string, unknown> = {}) {
  return { client: { clientId: "peer", credential: { jwk } }, method: "create", uri: "/ecdhe", requestId: "r-1", jwk: { kty: "EC" }, ...fields };
}

describe("CertificateCredentialValidator (PROTOCOL.md §6)", () => {
  let pki: TestPki;
  let v: CertificateCredentialValidator;
  beforeAll(async () => {
    pki = await buildTestPki();
    v = new CertificateCredentialValidator({ trustRootsPem: pki.trustRootsPem });
  }, 60_000);

  /** Key agreement with a proof signed by the leaf itself over a request carrying its jwk. */
  async function agree(leaf: TestLeaf, validator = v, jwk: JWK = leaf.jwk) {
    return validator.verify(jwk, { keyAgreement: true, proofOfPossession: await signProof(leaf, request(jwk)) });
  }

  async function refusal(p: Promise<unknown>): Promise<KmsError> {
    const e = await p.then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(KmsError);
    expect((e as KmsError).status).toBe(401);
    return e as KmsError;
  }

  async function expectRefused(p: Promise<unknown>, code: string, reason: RegExp) {
    const e = await refusal(p);
    expect(e.code).toBe(code);
    expect(e.reason).toMatch(reason);
  }

  describe("accepted", () => {
    it("EC P-256 leaf via an intermediate: entity kms://<first DNS SAN>, kind, thumbprint, expiresAt", async () => {
      const leaf = pki.leaves.ec;
      const id = await agree(leaf);
      expect(id).toEqual({
        entity: "kms://peer.example.org",
        kind: "certificate",
        thumbprint: await calculateJwkThumbprint(leaf.publicJwk),
        expiresAt: leaf.cert.notAfter,
      });
    });

    it("EC leaf issued directly by the root (x5c = [leaf]); the host is lower-cased", async () => {
      expect((await agree(pki.leaves.ecDirect)).entity).toBe("kms://direct.example.org");
    });

    it("the root may be included at the end of x5c", async () => {
      expect((await agree(pki.leaves.ecWithRoot)).entity).toBe("kms://peer.example.org");
    });

    it("intermediates in x5c may come in any order after the leaf", async () => {
      const leaf = pki.leaves.ecWithRoot;
      const jwk = { ...leaf.jwk, x5c: [leaf.x5c[0]!, leaf.x5c[2]!, leaf.x5c[1]!] };
      expect((await agree(leaf, v, jwk)).entity).toBe("kms://peer.example.org");
    });

    it("RSA 2048 leaf, proof RS256 or PS256", async () => {
      const leaf = pki.leaves.rsa;
      const id = await agree(leaf);
      expect(id.entity).toBe("kms://rsa-peer.example.org");
      expect(id.thumbprint).toBe(await calculateJwkThumbprint(leaf.publicJwk));
      const ps = await signProof(leaf, request(leaf.jwk), "PS256");
      expect((await v.verify(leaf.jwk, { keyAgreement: true, proofOfPossession: ps })).entity).toBe("kms://rsa-peer.example.org");
    });

    it("EKU anyExtendedKeyUsage, or no EKU at all", async () => {
      expect((await agree(pki.leaves.anyEku)).kind).toBe("certificate");
      expect((await agree(pki.leaves.noEku)).kind).toBe("certificate");
    });

    it("later requests on a channel (keyAgreement false) need no proof and return the same thumbprint", async () => {
      const leaf = pki.leaves.ec;
      const first = await agree(leaf);
      const later = await v.verify(leaf.jwk, { keyAgreement: false });
      expect(later).toEqual(first);
    });

    it("members other than the key and x5c (kid, alg, use) do not change the thumbprint", async () => {
      const leaf = pki.leaves.ec;
      const id = await v.verify({ ...leaf.jwk, kid: "peer-1", use: "sig" }, { keyAgreement: false });
      expect(id.thumbprint).toBe(await calculateJwkThumbprint(leaf.publicJwk));
    });
  });

  describe("the chain", () => {
    it("unknown root → ERR_CERT_UNTRUSTED", async () => {
      await expectRefused(agree(pki.leaves.unknownRoot), "ERR_CERT_UNTRUSTED", /not trusted.*Unknown Root|Unknown Intermediate/);
    });

    it("missing intermediate → ERR_CERT_UNTRUSTED", async () => {
      const leaf = pki.leaves.ec;
      await expectRefused(agree(leaf, v, { ...leaf.jwk, x5c: [leaf.x5c[0]!] }), "ERR_CERT_UNTRUSTED", /Keyward Test Intermediate/);
    });

    it("an intermediate from another chain with the same name does not verify → ERR_CERT_UNTRUSTED", async () => {
      const leaf = pki.leaves.ec;
      const x5c = [leaf.x5c[0]!, pki.leaves.unknownRoot.x5c[1]!];
      await expectRefused(agree(leaf, v, { ...leaf.jwk, x5c }), "ERR_CERT_UNTRUSTED", /not trusted/);
    });

    it("expired leaf → ERR_CERT_EXPIRED", async () => {
      await expectRefused(agree(pki.leaves.expired), "ERR_CERT_EXPIRED", /expired at/);
    });

    it("not yet valid leaf → ERR_CERT_NOT_YET_VALID", async () => {
      await expectRefused(agree(pki.leaves.notYetValid), "ERR_CERT_NOT_YET_VALID", /not valid before/);
    });

    it("validity is judged at options.now: an expired intermediate or root refuses the chain", async () => {
      const later = new CertificateCredentialValidator({ trustRootsPem: pki.trustRootsPem, now: () => new Date(Date.now() + 20 * 365 * 86_400_000) });
      await expectRefused(agree(pki.leaves.ecDirect, later), "ERR_CERT_EXPIRED", /expired at/);
    });

    it("leaf issued by an end entity → ERR_CERT_NOT_CA", async () => {
      await expectRefused(agree(pki.leaves.issuedByLeaf), "ERR_CERT_NOT_CA", /not a CA/);
    });

    it("pathLenConstraint exceeded → ERR_CERT_PATH_LENGTH", async () => {
      await expectRefused(agree(pki.leaves.pathTooLong), "ERR_CERT_PATH_LENGTH", /pathLenConstraint/);
    });

    it("issuer whose KeyUsage lacks keyCertSign → ERR_CERT_KEY_USAGE", async () => {
      await expectRefused(agree(pki.leaves.issuerWithoutKeyCertSign), "ERR_CERT_KEY_USAGE", /keyCertSign/);
    });

    it("leaf that is a CA → ERR_CERT_LEAF_IS_CA", async () => {
      await expectRefused(agree(pki.leaves.caLeaf), "ERR_CERT_LEAF_IS_CA", /is a CA certificate/);
    });

    it("leaf with only keyEncipherment → ERR_CERT_KEY_USAGE", async () => {
      await expectRefused(agree(pki.leaves.keyEnciphermentOnly), "ERR_CERT_KEY_USAGE", /without digitalSignature/);
    });

    it("leaf without a KeyUsage extension → ERR_CERT_KEY_USAGE", async () => {
      await expectRefused(agree(pki.leaves.noKeyUsage), "ERR_CERT_KEY_USAGE", /no KeyUsage/);
    });

    it("leaf with EKU serverAuth only → ERR_CERT_EXTENDED_KEY_USAGE", async () => {
      await expectRefused(agree(pki.leaves.serverAuthOnly), "ERR_CERT_EXTENDED_KEY_USAGE", /clientAuth/);
    });

    it("leaf without DNS SAN → ERR_CERT_NO_DNS_SAN (no CN fallback)", async () => {
      await expectRefused(agree(pki.leaves.noDnsSan), "ERR_CERT_NO_DNS_SAN", /no DNS SubjectAltName/);
    });

    it("leaf whose first DNS SAN is a wildcard → ERR_CERT_NO_DNS_SAN", async () => {
      await expectRefused(agree(pki.leaves.wildcardSan), "ERR_CERT_NO_DNS_SAN", /not a host name/);
    });

    it("RSA 1024 leaf → ERR_CERT_KEY_TOO_SMALL", async () => {
      // jose will not even sign with a 1024-bit key: the chain is refused before any proof is read.
      await expectRefused(v.verify(pki.leaves.rsa1024.jwk, { keyAgreement: true, proofOfPossession: "x.y.z" }), "ERR_CERT_KEY_TOO_SMALL", /1024-bit/);
    });
  });

  describe("the JWK", () => {
    it.each([
      ["not an object", "nope"],
      ["no x5c", { kty: "EC", crv: "P-256", x: "a", y: "b" }],
      ["empty x5c", { kty: "EC", x5c: [] }],
      ["x5c not base64", { kty: "EC", x5c: ["!!!"] }],
      ["x5c not a certificate", { kty: "EC", x5c: ["AAAA"] }],
      ["x5c too long", { kty: "EC", x5c: Array(11).fill("AAAA") }],
    ])("%s → ERR_CERT_MALFORMED", async (_name, jwk) => {
      await expectRefused(v.verify(jwk, { keyAgreement: false }), "ERR_CERT_MALFORMED", /x5c|JWK|jwk/);
    });

    it("private key material → ERR_CERT_MALFORMED", async () => {
      await expectRefused(v.verify({ ...pki.leaves.ec.jwk, d: "secret" }, { keyAgreement: false }), "ERR_CERT_MALFORMED", /private key material/);
    });

    it("a JWK that is not the leaf's key → ERR_CERT_KEY_MISMATCH", async () => {
      const jwk = { ...pki.leaves.ecOther.publicJwk, x5c: pki.leaves.ec.x5c };
      await expectRefused(v.verify(jwk, { keyAgreement: false }), "ERR_CERT_KEY_MISMATCH", /not the public key of its certificate/);
    });

    it("a key of another type than the leaf's → ERR_CERT_KEY_MISMATCH", async () => {
      const jwk = { ...pki.leaves.rsa.publicJwk, x5c: pki.leaves.ec.x5c };
      await expectRefused(v.verify(jwk, { keyAgreement: false }), "ERR_CERT_KEY_MISMATCH", /RSA key/);
    });

    it("an EC point off the curve → ERR_CERT_KEY_MISMATCH", async () => {
      const { x } = pki.leaves.ec.publicJwk;
      const jwk = { kty: "EC", crv: "P-256", x, y: base64url.encode(new Uint8Array(32).fill(7)), x5c: pki.leaves.ec.x5c };
      await expectRefused(v.verify(jwk, { keyAgreement: false }), "ERR_CERT_KEY_MISMATCH", /not a point on P-256/);
    });

    it("P-384 JWK → ERR_CERT_KEY_MISMATCH", async () => {
      await expectRefused(v.verify({ ...pki.leaves.ec.jwk, crv: "P-384" }, { keyAgreement: false }), "ERR_CERT_KEY_MISMATCH", /P-256/);
    });
  });

  describe("proof of possession", () => {
    it("none on key agreement → ERR_NO_PROOF_OF_POSSESSION", async () => {
      await expectRefused(v.verify(pki.leaves.ec.jwk, { keyAgreement: true }), "ERR_NO_PROOF_OF_POSSESSION", /certificate credential without proof of possession/);
    });

    it("signed by another key → ERR_PROOF_INVALID", async () => {
      const proof = await signProof(pki.leaves.ecOther, request(pki.leaves.ec.jwk));
      await expectRefused(v.verify(pki.leaves.ec.jwk, { keyAgreement: true, proofOfPossession: proof }), "ERR_PROOF_INVALID", /does not verify/);
    });

    it("alg none → ERR_PROOF_INVALID", async () => {
      const enc = (o: unknown) => base64url.encode(JSON.stringify(o));
      const proof = `${enc({ alg: "none" })}.${enc(request(pki.leaves.ec.jwk))}.`;
      await expectRefused(v.verify(pki.leaves.ec.jwk, { keyAgreement: true, proofOfPossession: proof }), "ERR_PROOF_INVALID", /alg 'none'/);
    });

    it("HS256 (keyed with the public key) → ERR_PROOF_INVALID", async () => {
      const jwk = pki.leaves.ec.jwk;
      const proof = await new CompactSign(new TextEncoder().encode(JSON.stringify(request(jwk))))
        .setProtectedHeader({ alg: "HS256" })
        .sign(new TextEncoder().encode(JSON.stringify(pki.leaves.ec.publicJwk)));
      await expectRefused(v.verify(jwk, { keyAgreement: true, proofOfPossession: proof }), "ERR_PROOF_INVALID", /alg 'HS256'/);
    });

    it("an algorithm of the wrong key type (RS256 for an EC credential) → ERR_PROOF_INVALID", async () => {
      const proof = await signProof(pki.leaves.rsa, request(pki.leaves.ec.jwk));
      await expectRefused(v.verify(pki.leaves.ec.jwk, { keyAgreement: true, proofOfPossession: proof }), "ERR_PROOF_INVALID", /ES256/);
    });

    it("a proof whose payload carries another credential → ERR_PROOF_INVALID", async () => {
      const leaf = pki.leaves.ec;
      const proof = await signProof(leaf, request(pki.leaves.ecOther.jwk));
      await expectRefused(v.verify(leaf.jwk, { keyAgreement: true, proofOfPossession: proof }), "ERR_PROOF_INVALID", /does not carry this credential/);
    });

    it("garbage → ERR_PROOF_INVALID", async () => {
      await expectRefused(v.verify(pki.leaves.ec.jwk, { keyAgreement: true, proofOfPossession: "a.b.c" }), "ERR_PROOF_INVALID", /proof of possession/);
    });
  });

  describe("cache", () => {
    it("a cached chain still checks the JWK against the leaf and the proof", async () => {
      const leaf = pki.leaves.ec;
      await v.verify(leaf.jwk, { keyAgreement: false }); // cached now
      await expectRefused(v.verify({ ...pki.leaves.ecOther.publicJwk, x5c: leaf.x5c }, { keyAgreement: false }), "ERR_CERT_KEY_MISMATCH", /not the public key/);
      const proof = await signProof(pki.leaves.ecOther, request(leaf.jwk));
      await expectRefused(v.verify(leaf.jwk, { keyAgreement: true, proofOfPossession: proof }), "ERR_PROOF_INVALID", /does not verify/);
    });

    it("a cached chain is validated again once a certificate of it has expired", async () => {
      let now = new Date();
      const val = new CertificateCredentialValidator({ trustRootsPem: pki.trustRootsPem, now: () => now });
      const leaf = pki.leaves.ec;
      await val.verify(leaf.jwk, { keyAgreement: false });
      now = new Date(leaf.cert.notAfter.getTime() + 1000);
      await expectRefused(val.verify(leaf.jwk, { keyAgreement: false }), "ERR_CERT_EXPIRED", /expired at/);
    });

    it("stays bounded", async () => {
      const val = new CertificateCredentialValidator({ trustRootsPem: pki.trustRootsPem, cacheSize: 2 });
      for (const leaf of [pki.leaves.ec, pki.leaves.ecOther, pki.leaves.ecDirect, pki.leaves.rsa]) await val.verify(leaf.jwk, { keyAgreement: false });
      expect((val as unknown as { cache: Map<string, unknown> }).cache.size).toBe(2);
    });
  });

  describe("trust roots at startup", () => {
    it("an empty bundle is a startup error", () => {
      expect(() => new CertificateCredentialValidator({ trustRootsPem: "" })).toThrow(/no PEM certificate/);
    });

    it("an unparsable bundle is a startup error", () => {
      expect(() => new CertificateCredentialValidator({ trustRootsPem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n" })).toThrow(/does not parse/);
    });

    it("a non-CA certificate as trust root is a startup error", () => {
      expect(() => new CertificateCredentialValidator({ trustRootsPem: pki.leaves.ec.pem })).toThrow(/not a CA certificate/);
    });

    it("a bundle of several roots: each is trusted", async () => {
      const val = new CertificateCredentialValidator({ trustRootsPem: `${pki.otherRoot.pem}\n${pki.root.pem}` });
      expect((await agree(pki.leaves.unknownRoot, val)).entity).toBe("kms://peer.example.org");
      expect((await agree(pki.leaves.ec, val)).entity).toBe("kms://peer.example.org");
    });
  });
});
