import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { base64url, CompactSign, exportJWK, type JWK } from "jose";
import { deriveEphemeralKey, generateEphemeralKeyPair, importEcdhPublicKey } from "../../src/protocol/jose/ephemeral-key.js";
import { openJws, post, RawClient, startTestKms, type TestKms } from "../helpers/harness.js";
import { buildTestPki, signProof, type TestLeaf, type TestPki } from "../helpers/test-pki.js";

/**
 * Certificate credentials end to end (PROTOCOL.md §5, §6): a peer opens a channel with
 * JWE(K_kms_pub, JWS(K_client_priv, request)) and uses it with the same `jwk` credential.
 */

const enc = (o: unknown) => base64url.encode(JSON.stringify(o));

describe("certificate credentials, end to end (PROTOCOL.md §6)", () => {
  let pki: TestPki;
  let kms: TestKms;
  let plain: TestKms;
  let dir: string;

  beforeAll(async () => {
    pki = await buildTestPki();
    dir = mkdtempSync(join(tmpdir(), "keyward-roots-"));
    const rootsPath = join(dir, "roots.pem");
    writeFileSync(rootsPath, pki.trustRootsPem);
    [kms, plain] = await Promise.all([startTestKms({ env: { KEYWARD_TRUST_ROOTS: rootsPath } }), startTestKms()]);
  }, 60_000);

  afterAll(async () => {
    await Promise.all([kms?.close(), plain?.close()]);
    rmSync(dir, { recursive: true, force: true });
  });

  /** The key-agreement request of a peer: `create /ecdhe` with its certificate credential. */
  async function ecdheRequest(jwk: JWK, requestId: string | number = crypto.randomUUID()) {
    const pair = await generateEphemeralKeyPair();
    const { kty, crv, x, y } = await exportJWK(pair.publicKey);
    const payload = { client: { clientId: "peer-kms", credential: { jwk } }, method: "create", uri: "/ecdhe", requestId, jwk: { kty, crv, x, y } };
    return { pair, payload };
  }

  /** Sends a key-agreement plaintext (a JWS or a JSON text) to `target`; returns the verified JWS reply payload. */
  async function sendKeyAgreement(target: TestKms, plaintext: string): Promise<Record<string, unknown>> {
    const raw = new RawClient(target);
    const res = await post(target.url, await raw.ecdheMessage(plaintext));
    expect(res.status).toBe(200);
    expect(res.body.split(".")).toHaveLength(3); // a JWS, never a common message
    const { header, payload } = await openJws(target.url, res.body);
    expect(header.kid).toBe(target.kid);
    return payload;
  }

  /** Opens a channel with `leaf`'s credential; returns a RawClient bound to it and the reply. */
  async function openChannel(leaf: TestLeaf): Promise<{ raw: RawClient; reply: Record<string, unknown> }> {
    const { pair, payload } = await ecdheRequest(leaf.jwk);
    const reply = await sendKeyAgreement(kms, await signProof(leaf, payload));
    const raw = new RawClient(kms);
    if (reply.status === 201) {
      const key = reply.key as { uri: string; jwk: JWK };
      raw.uri = key.uri;
      raw.key = await deriveEphemeralKey(pair.privateKey, await importEcdhPublicKey(key.jwk));
    }
    return { raw, reply };
  }

  /** Expects a key-agreement refusal: JWS error, 401, reason, requestId echoed, no channel created. */
  async function expectRefused(target: TestKms, plaintext: string, reason: RegExp, requestId: unknown) {
    const before = target.channelCount();
    const reply = await sendKeyAgreement(target, plaintext);
    expect(reply.status).toBe(401);
    expect(String(reply.reason)).toMatch(reason);
    expect(reply.requestId).toEqual(requestId);
    expect(target.channelCount()).toBe(before);
  }

  const certCredential = (leaf: TestLeaf) => ({ client: { clientId: "peer-kms", credential: { jwk: leaf.jwk } } });

  describe("accepted", () => {
    it("EC leaf via an intermediate → 201, userId kms://peer.example.org; the channel takes the same jwk (200), not another certificate's (403) nor a bearer (403)", async () => {
      const before = kms.channelCount();
      const { raw, reply } = await openChannel(pki.leaves.ec);
      expect(reply.status).toBe(201);
      const key = reply.key as Record<string, unknown>;
      expect(key.userId).toBe("kms://peer.example.org");
      expect(key.clientId).toBe("peer-kms");
      expect(reply["ephemeral-key"]).toEqual(key);
      expect(kms.channelCount()).toBe(before + 1);

      const ok = await raw.request(certCredential(pki.leaves.ec));
      expect(ok.form).toBe("jwe");
      expect(ok.payload.status).toBe(200);

      const other = await raw.request(certCredential(pki.leaves.ecOther));
      expect(other.form).toBe("jwe");
      expect(other.payload.status).toBe(403);
      expect(String(other.payload.reason)).toMatch(/another identity/);

      // Same entity (same SAN), another key: the thumbprint differs → 403.
      const sameSan = await raw.request(certCredential(pki.leaves.ecWithRoot));
      expect(sameSan.payload.status).toBe(403);

      const bearer = await raw.request({ client: await new RawClient(kms).credential() });
      expect(bearer.form).toBe("jwe");
      expect(bearer.payload.status).toBe(403);

      // A jwk credential on the channel with a broken chain is a 401 (credential fails), as a common message.
      const broken = await raw.request({ client: { clientId: "peer-kms", credential: { jwk: { ...pki.leaves.ec.jwk, x5c: [pki.leaves.ec.x5c[0]] } } } });
      expect(broken.form).toBe("jwe");
      expect(broken.payload.status).toBe(401);
      expect(String(broken.payload.reason)).toMatch(/not trusted/);
    });

    it("RSA 2048 leaf (RS256 proof) → 201 kms://rsa-peer.example.org; PS256 too", async () => {
      const leaf = pki.leaves.rsa;
      const { raw, reply } = await openChannel(leaf);
      expect(reply.status).toBe(201);
      expect((reply.key as Record<string, unknown>).userId).toBe("kms://rsa-peer.example.org");
      expect((await raw.request(certCredential(leaf))).payload.status).toBe(200);

      const { payload } = await ecdheRequest(leaf.jwk);
      const ps = await sendKeyAgreement(kms, await signProof(leaf, payload, "PS256"));
      expect(ps.status).toBe(201);
    });

    it("EC leaf issued directly by the root (x5c = [leaf]) → 201, host lower-cased", async () => {
      const { reply } = await openChannel(pki.leaves.ecDirect);
      expect(reply.status).toBe(201);
      expect((reply.key as Record<string, unknown>).userId).toBe("kms://direct.example.org");
    });

    it("bearer credentials still work on a KMS with trust roots", async () => {
      const raw = new RawClient(kms);
      expect((await raw.ecdhe()).status).toBe(201);
    });
  });

  describe("refused at key agreement (JWS error, 401, nothing created)", () => {
    it("no trust roots configured → ERR_NO_TRUST_ROOTS", async () => {
      const { payload } = await ecdheRequest(pki.leaves.ec.jwk, "nr-1");
      await expectRefused(plain, await signProof(pki.leaves.ec, payload), /no trust roots configured/, "nr-1");
    });

    it.each([
      ["unknown root", "unknownRoot", /not trusted/],
      ["expired", "expired", /expired at/],
      ["not yet valid", "notYetValid", /not valid before/],
      ["keyEncipherment only", "keyEnciphermentOnly", /digitalSignature/],
      ["serverAuth only", "serverAuthOnly", /clientAuth/],
      ["leaf is a CA", "caLeaf", /is a CA certificate/],
      ["no DNS SAN", "noDnsSan", /no DNS SubjectAltName/],
    ] as const)("%s", async (_name, which, reason) => {
      const leaf = pki.leaves[which];
      const { payload } = await ecdheRequest(leaf.jwk, `bad-${which}`);
      await expectRefused(kms, await signProof(leaf, payload), reason, `bad-${which}`);
    });

    it("no proof of possession: a plain JSON plaintext with a jwk credential", async () => {
      const { payload } = await ecdheRequest(pki.leaves.ec.jwk, 7);
      await expectRefused(kms, JSON.stringify(payload), /certificate credential without proof of possession/, 7);
    });

    it("proof signed by another key", async () => {
      const { payload } = await ecdheRequest(pki.leaves.ec.jwk, "other-key");
      await expectRefused(kms, await signProof(pki.leaves.ecOther, payload), /does not verify with the credential's key/, "other-key");
    });

    it("a JWK that is not the leaf's key (proof signed with that JWK's key)", async () => {
      const jwk = { ...pki.leaves.ecOther.publicJwk, x5c: pki.leaves.ec.x5c };
      const { payload } = await ecdheRequest(jwk, "mismatch");
      await expectRefused(kms, await signProof(pki.leaves.ecOther, payload), /not the public key of its certificate/, "mismatch");
    });

    it("alg none as proof", async () => {
      const { payload } = await ecdheRequest(pki.leaves.ec.jwk, "none");
      await expectRefused(kms, `${enc({ alg: "none" })}.${enc(payload)}.`, /alg 'none'/, "none");
    });

    it("HS256 as proof (keyed with the public JWK)", async () => {
      const { payload } = await ecdheRequest(pki.leaves.ec.jwk, "hmac");
      const jws = await new CompactSign(new TextEncoder().encode(JSON.stringify(payload)))
        .setProtectedHeader({ alg: "HS256" })
        .sign(new TextEncoder().encode(JSON.stringify(pki.leaves.ec.publicJwk)));
      await expectRefused(kms, jws, /alg 'HS256'/, "hmac");
    });

    it("a JWS-wrapped bearer credential", async () => {
      const raw = new RawClient(kms);
      const { payload } = await ecdheRequest(pki.leaves.ec.jwk, "jws-bearer");
      const withBearer = { ...payload, client: await raw.credential() };
      await expectRefused(kms, await signProof(pki.leaves.ec, withBearer), /must carry a 'jwk' certificate credential/, "jws-bearer");
    });

    it("a JWS whose payload is not JSON → 400", async () => {
      const before = kms.channelCount();
      const reply = await sendKeyAgreement(kms, await signProof(pki.leaves.ec, "not json"));
      expect(reply.status).toBe(400);
      expect(String(reply.reason)).toMatch(/not JSON/);
      expect(kms.channelCount()).toBe(before);
    });
  });

  it("no certificate or key material reaches the logs", () => {
    const logs = kms.logs();
    expect(logs.length).toBeGreaterThan(0);
    for (const leaf of [pki.leaves.ec, pki.leaves.rsa, pki.leaves.expired]) {
      expect(logs).not.toContain(leaf.x5c[0]!.slice(0, 64));
      expect(logs).not.toContain(String(leaf.publicJwk.x ?? leaf.publicJwk.n).slice(0, 32));
    }
  });
});
