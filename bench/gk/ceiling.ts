/**
 * The crypto-only ceilings of GK create and GK get (PROTOCOL.md §9) with one EC P-256 device key:
 * the cryptography the server must do per request, with exactly the functions the server calls,
 * in one process pinned to the server core, no HTTP, no store:
 *
 *   openCommonMessage (src/server/channel-codec.ts, node:crypto) of the request + JSON.parse
 *   + wrapGroupKey (src/server/gk/wrap-group-key.ts: jose GeneralEncrypt, ECDH-ES+A256KW, one
 *     recipient; it imports the device JWK itself, as in the server)
 *   + StaticKey.sign (src/server/static-key.ts, ES256) of the GK object {uri, creator, created, key, block}
 *   + sealCommonMessage of the reply {status, gk, requestId}.
 *
 * Create and get do the same cryptography (create: fresh 256 random bits; get: the stored key);
 * their requests differ ({block} vs {entity}), so each is measured on its own.
 * Each is run with 1 operation in flight and with N in flight (WebCrypto work hops to libuv's
 * pool, pinned to the same core; overlapping hides the hand-offs); the four modes are measured in
 * interleaved windows (6 rounds of 0.4 s each) after a warm-up, keeping each mode's best window
 * (the machine is shared and its speed drifts: a slow stretch costs every mode one window); the
 * ceiling is the better mode of each operation.
 * For information: the parts alone (sequential), the barrier seal/open the handlers also do, and
 * the same GK get with node:crypto one-shot calls (ECDH, Concat KDF, AES key wrap, AES-GCM,
 * ES256 sign): what moving wrapGroupKey and StaticKey.sign off jose/WebCrypto would buy.
 * Prints one JSON line (CeilingReport).
 */
import {
  createCipheriv,
  createHash,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  randomBytes,
  randomUUID,
  sign,
  type KeyObject,
} from "node:crypto";
import { base64url, compactVerify, exportJWK, generalDecrypt, generateKeyPair, importJWK, type GeneralJWE, type JWK } from "jose";
import { openCommonMessage, sealCommonMessage } from "../../src/server/channel-codec.js";
import { wrapGroupKey } from "../../src/server/gk/wrap-group-key.js";
import { StaticKey } from "../../src/server/static-key.js";
import { SealingKey } from "../../src/server/barrier/master-key.js";
import { rfc3339 } from "../../src/server/key-agreement.js";
import { ephemeralEcdh, uncompressedPoint } from "../../src/server/ecdhe-node-crypto.js";
import { measureRate, type Ceiling, type CeilingMode } from "../lib/ceiling-rate.js";

export interface CeilingReport {
  readonly create: Ceiling;
  readonly get: Ceiling;
  /** GK get's cryptography with node:crypto one-shot calls (information). */
  readonly getNodeCrypto: CeilingMode;
  /** Parts, sequential, µs each (information). */
  readonly partsUs: Readonly<Record<string, number>>;
  /** Sizes of what the ceiling produced (bytes): GK JWS, reply message. */
  readonly gkJwsBytes: number;
  readonly replyBytes: number;
  readonly cpuSeconds: number;
}

const warmupMs = Number(process.env.CEILING_WARMUP_MS ?? 500);
const measureMs = Number(process.env.CEILING_MEASURE_MS ?? 2400);
const inFlight = Number(process.env.CEILING_IN_FLIGHT ?? 32);
const windows = Number(process.env.CEILING_WINDOWS ?? 6);
const token = process.env.CEILING_TOKEN ?? "x".repeat(700);
const AUTHORITY = "localhost";
const ALICE = "alice@example.com";

async function measure(op: (i: number) => Promise<void> | void, parallel: number, ms = measureMs): Promise<CeilingMode> {
  const { best } = await measureRate(op, { parallel, warmupMs, measureMs: ms, windows });
  return { inFlight: parallel, opsPerSec: best, meanMs: 1000 / best };
}

/**
 * Several operations, each with 1 and with `inFlight` in flight, measured in interleaved windows
 * (op A seq, op A conc, op B seq, op B conc, then again, `windows` times) after a warm-up of
 * each: a slow stretch of the machine then costs each mode one window, not all of them. Keeps the
 * best window per mode.
 */
async function interleaved<K extends string>(ops: Record<K, (i: number) => Promise<void>>): Promise<Record<K, Ceiling>> {
  const names = Object.keys(ops) as K[];
  const windowMs = measureMs / windows;
  const run = async (op: (i: number) => Promise<void>, parallel: number, length: number) => {
    let i = 0;
    const t0 = performance.now();
    const loop = async () => {
      let n = 0;
      while (performance.now() < t0 + length) {
        await op(i++);
        n++;
      }
      return n;
    };
    const counts = await Promise.all(Array.from({ length: parallel }, loop));
    return counts.reduce((a, b) => a + b, 0) / ((performance.now() - t0) / 1000);
  };
  for (const n of names) {
    await run(ops[n], 1, warmupMs / 2);
    await run(ops[n], inFlight, warmupMs / 2);
  }
  const best = new Map<string, number>();
  for (let w = 0; w < windows; w++) {
    for (const n of names) {
      for (const parallel of [1, inFlight]) {
        const key = `${n}/${parallel}`;
        best.set(key, Math.max(best.get(key) ?? 0, await run(ops[n], parallel, windowMs)));
      }
    }
  }
  const mode = (n: K, parallel: number): CeilingMode => {
    const opsPerSec = best.get(`${n}/${parallel}`)!;
    return { inFlight: parallel, opsPerSec, meanMs: 1000 / opsPerSec };
  };
  return Object.fromEntries(
    names.map((n) => {
      const sequential = mode(n, 1);
      const concurrent = mode(n, inFlight);
      return [n, { sequential, concurrent, opsPerSec: Math.max(sequential.opsPerSec, concurrent.opsPerSec) }];
    }),
  ) as Record<K, Ceiling>;
}

// ---- the server's keys: an EC P-256 static key (as `keyward dev` makes), a channel key, alice's device key ----
const { privateKey: staticPriv } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
const staticKey = await StaticKey.fromPkcs8(staticPriv.export({ format: "der", type: "pkcs8" }), `kms://${AUTHORITY}`, []);
const channelKey = new Uint8Array(randomBytes(32));
const channelUri = `kms://${AUTHORITY}/ecdhe/${randomUUID()}`;
const device = await generateKeyPair("ECDH-ES+A256KW", { extractable: true });
const { kty, crv, x, y } = await exportJWK(device.publicKey);
/** alice's device key as the store returns it (the registered public JWK with kid). */
const aliceJwk: JWK = { kty, crv, x, y, kid: "alice-bench" };
const barrier = new SealingKey(new Uint8Array(randomBytes(32)));
const blockHash = createHash("sha256").update("a block").digest("hex");

const COUNT = 256;
const gkUris = Array.from({ length: COUNT }, () => `kms://${AUTHORITY}/gks/${randomUUID()}`);
const gkKeys = gkUris.map(() => new Uint8Array(randomBytes(32)));
const client = { clientId: "keyward-bench", credential: { bearer: token } };
const createRequests = Array.from({ length: COUNT }, (_, i) =>
  sealCommonMessage(channelKey, channelUri, { client, method: "create", uri: "/gks", requestId: `c${i}`, block: blockHash }),
);
const getRequests = gkUris.map((uri, i) => sealCommonMessage(channelKey, channelUri, { client, method: "retrieve", uri, requestId: `g${i}`, entity: ALICE }));
const created = new Date(Math.floor(Date.now() / 1000) * 1000);
const gkObject = (uri: string, key: GeneralJWE) => ({ uri, creator: `kms://${AUTHORITY}`, created: rfc3339(created), key, block: blockHash });

let lastJws = "";
let lastReply = "";
const createOp = async (i: number): Promise<void> => {
  const req = JSON.parse(openCommonMessage(channelKey, createRequests[i % COUNT]!).toString("utf8")) as { requestId: string; block: string };
  const uri = `kms://${AUTHORITY}/gks/${randomUUID()}`;
  const keyBytes = randomBytes(32);
  const key = await wrapGroupKey(keyBytes, uri, [aliceJwk]);
  const jws = await staticKey.sign({ ...gkObject(uri, key), block: req.block });
  lastReply = sealCommonMessage(channelKey, channelUri, { status: 201, gk: jws, requestId: req.requestId });
  lastJws = jws;
};
const getOp = async (i: number): Promise<void> => {
  const req = JSON.parse(openCommonMessage(channelKey, getRequests[i % COUNT]!).toString("utf8")) as { requestId: string; uri: string };
  const key = await wrapGroupKey(gkKeys[i % COUNT]!, req.uri, [aliceJwk]);
  const jws = await staticKey.sign(gkObject(req.uri, key));
  sealCommonMessage(channelKey, channelUri, { status: 200, gk: jws, requestId: req.requestId });
};
const { create, get } = await interleaved({ create: createOp, get: getOp });

// Sanity: what the ceiling produced opens with alice's private key and holds a 256-bit key.
{
  const payload = JSON.parse(Buffer.from(lastJws.split(".")[1]!, "base64url").toString("utf8")) as { uri: string; key: GeneralJWE };
  const { plaintext } = await generalDecrypt(payload.key, device.privateKey);
  const jwk = JSON.parse(new TextDecoder().decode(plaintext)) as { kid: string; k: string };
  if (jwk.kid !== payload.uri || base64url.decode(jwk.k).length !== 32) throw new Error("ceiling: the wrapped GK does not open as expected");
}

// ---- node:crypto one-shot equivalent of GK get (information) ----
const b64u = (b: Uint8Array | string) => Buffer.from(b).toString("base64url");
const u32be = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};
const lenPrefixed = (b: Buffer) => Buffer.concat([u32be(b.length), b]);
const ALG = "ECDH-ES+A256KW";
const otherInfo = Buffer.concat([lenPrefixed(Buffer.from(ALG)), lenPrefixed(Buffer.alloc(0)), lenPrefixed(Buffer.alloc(0)), u32be(256)]);
const AES_KW_IV = Buffer.from("A6A6A6A6A6A6A6A6", "hex");
const staticKeyObject = createPrivateKey({ key: staticPriv.export({ format: "der", type: "pkcs8" }), format: "der", type: "pkcs8" });
const staticHeader = b64u(JSON.stringify({ alg: "ES256", kid: `kms://${AUTHORITY}` }));

/** RFC 7518 ECDH-ES+A256KW + A256GCM to one P-256 key, General JSON, with node:crypto (the JWK imported per call, as wrapGroupKey does). */
function wrapNode(keyBytes: Uint8Array, gkUri: string, jwk: JWK): GeneralJWE {
  // The server's own ephemeral ECDH (createECDH: see src/server/ecdhe-node-crypto.ts).
  const { z, publicJwk: epk } = ephemeralEcdh(uncompressedPoint(jwk));
  const kek = createHash("sha256").update(u32be(1)).update(z).update(otherInfo).digest();
  const cek = randomBytes(32);
  const kw = createCipheriv("id-aes256-wrap", kek, AES_KW_IV);
  const encryptedKey = Buffer.concat([kw.update(cek), kw.final()]);
  const prot = b64u(JSON.stringify({ enc: "A256GCM" }));
  const iv = randomBytes(12);
  const gcm = createCipheriv("aes-256-gcm", cek, iv);
  gcm.setAAD(Buffer.from(prot, "ascii"));
  const pt = JSON.stringify({ kty: "oct", alg: "A256GCM", kid: gkUri, k: b64u(keyBytes) });
  const ct = Buffer.concat([gcm.update(pt, "utf8"), gcm.final()]);
  return {
    protected: prot,
    recipients: [{ header: { alg: ALG, kid: jwk.kid!, epk }, encrypted_key: b64u(encryptedKey) }],
    iv: b64u(iv),
    ciphertext: b64u(ct),
    tag: b64u(gcm.getAuthTag()),
  };
}
function signNode(payload: unknown): string {
  const input = `${staticHeader}.${b64u(JSON.stringify(payload))}`;
  return `${input}.${b64u(sign("sha256", Buffer.from(input, "ascii"), { key: staticKeyObject, dsaEncoding: "ieee-p1363" }))}`;
}
{
  // Sanity: the node:crypto JWE opens with jose, and the JWS verifies with the static key's public JWK.
  const jwe = wrapNode(gkKeys[0]!, gkUris[0]!, aliceJwk);
  const { plaintext } = await generalDecrypt(jwe, device.privateKey);
  if ((JSON.parse(new TextDecoder().decode(plaintext)) as { k: string }).k !== b64u(gkKeys[0]!)) throw new Error("node:crypto wrap does not open");
  await compactVerify(signNode({ a: 1 }), await importJWK(staticKey.publicJwk, "ES256"), { algorithms: ["ES256"] });
}
const getNodeCrypto = await measure((i) => {
  const req = JSON.parse(openCommonMessage(channelKey, getRequests[i % COUNT]!).toString("utf8")) as { requestId: string; uri: string };
  const jws = signNode(gkObject(req.uri, wrapNode(gkKeys[i % COUNT]!, req.uri, aliceJwk)));
  sealCommonMessage(channelKey, channelUri, { status: 200, gk: jws, requestId: req.requestId });
}, 1);

// ---- the parts, sequential (information) ----
const part = async (op: (i: number) => unknown) => (1000 / (await measure(async (i) => void (await op(i)), 1, 700)).opsPerSec) * 1000;
const sealedKeys = gkUris.map((u, i) => barrier.seal(`gk:${u}`, gkKeys[i]!));
const sampleWrapped = await wrapGroupKey(gkKeys[0]!, gkUris[0]!, [aliceJwk]);
const partsUs = {
  "openCommonMessage + JSON.parse (request)": await part((i) => JSON.parse(openCommonMessage(channelKey, getRequests[i % COUNT]!).toString("utf8"))),
  "wrapGroupKey (1 EC P-256 key)": await part((i) => wrapGroupKey(gkKeys[i % COUNT]!, gkUris[i % COUNT]!, [aliceJwk])),
  "  of which importJWK ECDH-ES+A256KW (per call)": await part(() => importJWK({ kty, crv, x, y }, "ECDH-ES+A256KW")),
  "StaticKey.sign ES256 (GK object)": await part((i) => staticKey.sign(gkObject(gkUris[i % COUNT]!, sampleWrapped))),
  "sealCommonMessage (reply)": await part((i) => sealCommonMessage(channelKey, channelUri, { status: 200, gk: lastJws, requestId: `g${i}` })),
  "info: barrier.seal + barrier.open (not in the ceiling)": await part((i) => {
    barrier.seal(`gk:${gkUris[i % COUNT]!}`, gkKeys[i % COUNT]!);
    return barrier.open(`gk:${gkUris[i % COUNT]!}`, sealedKeys[i % COUNT]!);
  }),
  "info: node:crypto wrap (ECDH, Concat KDF, AES-KW, AES-GCM)": await part((i) => wrapNode(gkKeys[i % COUNT]!, gkUris[i % COUNT]!, aliceJwk)),
  "info: node:crypto ES256 sign (GK object)": await part((i) => signNode(gkObject(gkUris[i % COUNT]!, sampleWrapped))),
};

const cpu = process.cpuUsage();
const report: CeilingReport = {
  create,
  get,
  getNodeCrypto,
  partsUs,
  gkJwsBytes: lastJws.length,
  replyBytes: lastReply.length,
  cpuSeconds: (cpu.user + cpu.system) / 1e6,
};
console.log(JSON.stringify(report));
