/**
 * The crypto-only ceiling of one GMBC append (one block, one operation, ES256 member key): the
 * bare cryptography the server must do per request, with the library's own primitives, in one
 * process pinned to the server core, no HTTP, no store:
 *
 *   openCommonMessage of the request (src/server/channel-codec.ts, node:crypto)
 *   + blockHashSync (SHA-256, node:crypto) of the block
 *   + verifyBlockSignature ES256 (src/server/gmbc/node-crypto.ts, node:crypto, key cached)
 *   + sealCommonMessage of the reply {status, requestId, tail}
 * (and, as `genesis`, the same for `create /blocks`: open + parseGenesisOperations + StaticKey.sign
 * + blockHashSync + seal):
 * exactly the primitives the server's append handler runs.
 *
 * Run with 1 operation in flight and with N in flight (WebCrypto work goes through libuv's thread
 * pool, pinned to the same core); the ceiling is the better of the two. Each mode is measured over
 * 4 windows of 0.5 s after a 0.5 s warm-up and keeps the best window. For information: the same
 * with importJWK on every verify (what verifyAppendedBlockSignature does today), and with
 * node:crypto one-shot calls instead of WebCrypto/jose.
 * Prints one JSON line (CeilingReport).
 */
import { createCipheriv, createDecipheriv, createHash, createPublicKey, generateKeyPairSync, randomBytes, randomUUID, verify } from "node:crypto";
import { compactVerify, importJWK } from "jose";
import { blockHash } from "../../src/primitives/block-hash.js";
import { openCommonMessage, sealCommonMessage } from "../../src/server/channel-codec.js";
import { blockHashSync, verifyBlockSignature } from "../../src/server/gmbc/node-crypto.js";
import { decryptCommonMessage, encryptCommonMessage } from "../../src/protocol/jose/common-message.js";
import { parseGenesisOperations } from "../../src/primitives/gmbc/parse-block.js";
import { StaticKey } from "../../src/server/static-key.js";
import { rfc3339 } from "../../src/server/key-agreement.js";
import { ALICE, ChainSigner, DOMAIN, newMemberKey, type SignedBlock } from "./blocks.js";
import { measureRate, type Ceiling, type CeilingMode } from "../lib/ceiling-rate.js";

export interface CeilingReport {
  readonly append: Ceiling;
  /**
   * Genesis (`create /blocks`, one `add`): openCommonMessage + parseGenesisOperations +
   * StaticKey.sign (ES256) of the block + blockHashSync + sealCommonMessage of the reply, as the
   * server's createChain handler does.
   */
  readonly genesis: Ceiling;
  /** The same with importJWK of the member key per verify (information). */
  readonly appendImportEachTime: Ceiling;
  /** The same work with node:crypto one-shot calls (information). */
  readonly appendNodeCrypto: CeilingMode;
  /** Parts of the ceiling operation, sequential, µs each (information). */
  readonly partsUs: Readonly<Record<string, number>>;
  readonly cpuSeconds: number;
}

const warmupMs = Number(process.env.CEILING_WARMUP_MS ?? 500);
const measureMs = Number(process.env.CEILING_MEASURE_MS ?? 2000);
const inFlight = Number(process.env.CEILING_IN_FLIGHT ?? 32);
const windows = Number(process.env.CEILING_WINDOWS ?? 4);
const token = process.env.CEILING_TOKEN ?? "x".repeat(700); // the request carries a bearer token; size matters a little

/**
 * Warm-up, then `windows` windows of equal length with `parallel` operations in flight; keeps the
 * best window (the machine is shared: load from elsewhere can only make a window slower).
 */
async function measure(op: (i: number) => Promise<void> | void, parallel: number, ms = measureMs): Promise<CeilingMode> {
  const { best } = await measureRate(op, { parallel, warmupMs, measureMs: ms, windows });
  return { inFlight: parallel, opsPerSec: best, meanMs: 1000 / best };
}

async function both(op: (i: number) => Promise<void>): Promise<Ceiling> {
  const sequential = await measure(op, 1);
  const concurrent = await measure(op, inFlight);
  return { sequential, concurrent, opsPerSec: Math.max(sequential.opsPerSec, concurrent.opsPerSec) };
}

const channelKey = new Uint8Array(randomBytes(32));
const kid = `kms://localhost/ecdhe/${randomUUID()}`;
const chainUri = `kms://localhost/blocks/${randomUUID()}`;
const alice = await newMemberKey(ALICE, "alice-bench");
const signer = new ChainSigner(alice, createHash("sha256").update("genesis").digest("hex"));
const COUNT = 256;
const blocks: SignedBlock[] = [];
for (let i = 0; i < COUNT; i++) blocks.push(await signer.next([{ entity: `u${i}@${DOMAIN}`, optype: "add" }]));
const requests = await Promise.all(
  blocks.map((b, i) =>
    encryptCommonMessage(channelKey, kid, {
      client: { clientId: "keyward-bench", credential: { bearer: token } },
      method: "create",
      uri: chainUri,
      requestId: `r${i}`,
      blocks: [b.jws],
    }),
  ),
);
const publicKey = await importJWK(alice.publicJwk, "ES256");

type AppendRequest = { requestId: string; blocks: string[] };
const check = (hash: string, i: number) => {
  if (hash !== blocks[i % COUNT]!.hash) throw new Error("block hash mismatch");
};

const append = await both(async (i) => {
  const req = JSON.parse(openCommonMessage(channelKey, requests[i % COUNT]!).toString("utf8")) as AppendRequest;
  const jws = req.blocks[0]!;
  const hash = blockHashSync(jws);
  if (!(await verifyBlockSignature(jws, alice.publicJwk, "ES256"))) throw new Error("signature");
  check(hash, i);
  sealCommonMessage(channelKey, kid, { status: 200, requestId: req.requestId, tail: hash });
});

const staticKey = await StaticKey.fromPkcs8(
  generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ format: "der", type: "pkcs8" }),
  "kms://localhost",
  [],
);
const genesisRequests = await Promise.all(
  Array.from({ length: COUNT }, (_, i) =>
    encryptCommonMessage(channelKey, kid, {
      client: { clientId: "keyward-bench", credential: { bearer: token } },
      method: "create",
      uri: "/blocks",
      requestId: `g${i}`,
      blockPayload: { operations: [{ entity: ALICE, optype: "add" }] },
    }),
  ),
);
type GenesisRequest = { requestId: string; blockPayload: { operations: unknown } };
const genesis = await both(async (i) => {
  const req = JSON.parse(openCommonMessage(channelKey, genesisRequests[i % COUNT]!).toString("utf8")) as GenesisRequest;
  const operations = parseGenesisOperations(req.blockPayload.operations, 10_000);
  const uri = `kms://localhost/blocks/${randomUUID()}`;
  const jws = await staticKey.sign({ uri, nonce: randomUUID(), curator: "kms://localhost", creator: "kms://localhost", created: rfc3339(new Date()), operations });
  blockHashSync(jws);
  sealCommonMessage(channelKey, kid, { status: 201, requestId: req.requestId, block: jws });
});

const appendImportEachTime = await both(async (i) => {
  const { payload } = await decryptCommonMessage(channelKey, requests[i % COUNT]!);
  const req = payload as AppendRequest;
  const jws = req.blocks[0]!;
  const hash = await blockHash(jws);
  await compactVerify(jws, await importJWK(alice.publicJwk, "ES256"), { algorithms: ["ES256"] });
  await encryptCommonMessage(channelKey, kid, { status: 200, requestId: req.requestId, tail: hash });
});

// ---- node:crypto one-shot equivalent (information) ----
const unb64 = (s: string) => Buffer.from(s, "base64url");
const keyObject = createPublicKey({ key: alice.publicJwk as never, format: "jwk" });
const header = Buffer.from(JSON.stringify({ alg: "dir", enc: "A256GCM", kid })).toString("base64url");
const appendNodeCrypto = await measure((i) => {
  const [h, , iv, ct, tag] = requests[i % COUNT]!.split(".");
  const d = createDecipheriv("aes-256-gcm", channelKey, unb64(iv!));
  d.setAAD(Buffer.from(h!, "ascii"));
  d.setAuthTag(unb64(tag!));
  const req = JSON.parse(Buffer.concat([d.update(unb64(ct!)), d.final()]).toString("utf8")) as AppendRequest;
  const jws = req.blocks[0]!;
  const hash = createHash("sha256").update(jws, "ascii").digest("hex");
  const dot = jws.lastIndexOf(".");
  if (!verify("sha256", Buffer.from(jws.slice(0, dot), "ascii"), { key: keyObject, dsaEncoding: "ieee-p1363" }, unb64(jws.slice(dot + 1)))) {
    throw new Error("signature does not verify");
  }
  const riv = randomBytes(12);
  const c = createCipheriv("aes-256-gcm", channelKey, riv);
  c.setAAD(Buffer.from(header, "ascii"));
  const out = Buffer.concat([c.update(JSON.stringify({ status: 200, requestId: req.requestId, tail: hash }), "utf8"), c.final()]);
  void `${header}..${riv.toString("base64url")}.${out.toString("base64url")}.${c.getAuthTag().toString("base64url")}`;
}, 1);

// ---- the parts, sequential (information) ----
const part = async (op: (i: number) => Promise<unknown>) => 1000 / (await measure(async (i) => void (await op(i)), 1, 700)).opsPerSec * 1000;
const partsUs = {
  decryptCommonMessage: await part((i) => decryptCommonMessage(channelKey, requests[i % COUNT]!)),
  blockHash: await part((i) => blockHash(blocks[i % COUNT]!.jws)),
  "compactVerify ES256": await part((i) => compactVerify(blocks[i % COUNT]!.jws, publicKey, { algorithms: ["ES256"] })),
  "importJWK ES256": await part(() => importJWK(alice.publicJwk, "ES256")),
  encryptCommonMessage: await part((i) => encryptCommonMessage(channelKey, kid, { status: 200, requestId: `r${i}`, tail: blocks[i % COUNT]!.hash })),
};

const cpu = process.cpuUsage();
const report: CeilingReport = { append, genesis, appendImportEachTime, appendNodeCrypto, partsUs, cpuSeconds: (cpu.user + cpu.system) / 1e6 };
console.log(JSON.stringify(report));
