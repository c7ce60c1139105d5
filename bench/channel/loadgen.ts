/**
 * The load generator of the channel bench: a child process (pinned to the client core) driven by
 * run.ts over IPC. It opens the ping channels itself (so it holds their keys), pre-builds the
 * ECDHE requests before their timed phase (so its own EC crypto does not limit the measurement),
 * and runs closed-loop phases against a port. One request = one fresh message.
 */
import { createCipheriv, createDecipheriv, randomBytes, randomUUID } from "node:crypto";
import { CompactEncrypt, compactVerify, exportJWK, importJWK, type JWK } from "jose";
import { deriveEphemeralKey, generateEphemeralKeyPair, importEcdhPublicKey } from "../../src/protocol/jose/ephemeral-key.js";
import { agentClient, rawClient, type PostClient, type SimpleResponse } from "../lib/raw-http.js";
import { runPhase, type PhaseResult } from "../lib/load.js";
import { connectTransport, type TransportTarget } from "../lib/transports.js";
import { postRetrying429 } from "../lib/kms-session.js";

export type ClientKind = "raw" | "agent";

export type LoadgenRequest =
  | { cmd: "setup"; url: string; token: string; channels: number; concurrency: number; client: ClientKind }
  | { cmd: "pregen-start" }
  | { cmd: "pregen-target"; target: number }
  /** `transport`: how the phase reaches the server (default: HTTP to 127.0.0.1:`port`, one connection per request in flight). */
  | { cmd: "phase"; op: "bare" | "ping" | "ecdhe"; port: number; warmupMs: number; measureMs: number; transport?: TransportTarget }
  | { cmd: "exit" };

export interface SetupResult {
  readonly kid: string;
  readonly pingRequestBytes: number;
  readonly ecdheRequestBytes: number;
}

interface Channel {
  readonly uri: string;
  readonly key: Buffer;
  /** base64url of the protected header, also the AAD (its ASCII bytes). */
  readonly h: string;
  readonly aad: Buffer;
}

const JOSE = "application/jose";
const PATH = "/kms/messages";

let url = "";
let host = "127.0.0.1";
let token = "";
let kid = "";
let staticKey: CryptoKey | undefined;
let concurrency = 32;
let clientKind: ClientKind = "raw";
let channels: Channel[] = [];
const prefix = randomUUID().slice(0, 8);
let seq = 0;

const credential = () => ({ clientId: "keyward-bench", credential: { bearer: token } });

async function ecdheRequest(): Promise<{ message: string; privateKey: CryptoKey }> {
  const pair = await generateEphemeralKeyPair();
  const { kty, crv, x, y } = await exportJWK(pair.publicKey);
  const payload = { client: credential(), method: "create", uri: "/ecdhe", requestId: `${prefix}-e${seq++}`, jwk: { kty, crv, x, y } };
  const message = await new CompactEncrypt(new TextEncoder().encode(JSON.stringify(payload)))
    .setProtectedHeader({ alg: "ECDH-ES+A256KW", enc: "A256GCM", kid })
    .encrypt(staticKey!);
  return { message, privateKey: pair.privateKey };
}

/** Opens one channel the way a client does: ECDHE, verify the signed reply, derive K_ephemeral. */
async function openChannel(verifyKey: CryptoKey): Promise<Channel> {
  const { message, privateKey } = await ecdheRequest();
  const res = await postRetrying429(`${url}${PATH}`, message);
  const body = await res.text();
  if (res.status !== 200) throw new Error(`ECDHE: HTTP ${res.status}: ${body.slice(0, 200)}`);
  const { payload } = await compactVerify(body, verifyKey, { algorithms: ["ES256"] });
  const reply = JSON.parse(new TextDecoder().decode(payload)) as { status: number; reason?: string; key?: { uri: string; jwk: JWK } };
  if (reply.status !== 201 || !reply.key) throw new Error(`ECDHE refused: ${reply.status} ${reply.reason ?? ""}`);
  const key = Buffer.from(await deriveEphemeralKey(privateKey, await importEcdhPublicKey(reply.key.jwk)));
  const h = Buffer.from(JSON.stringify({ alg: "dir", enc: "A256GCM", kid: reply.key.uri })).toString("base64url");
  return { uri: reply.key.uri, key, h, aad: Buffer.from(h, "ascii") };
}

/** A common message (dir/A256GCM compact JWE), built with node:crypto: a few microseconds. */
function sealCommon(ch: Channel, payload: unknown): string {
  const iv = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", ch.key, iv);
  cipher.setAAD(ch.aad);
  const ct = Buffer.concat([cipher.update(JSON.stringify(payload), "utf8"), cipher.final()]);
  return `${ch.h}..${iv.toString("base64url")}.${ct.toString("base64url")}.${cipher.getAuthTag().toString("base64url")}`;
}

function openCommon(ch: Channel, jwe: string): unknown {
  const [h, , iv, ct, tag] = jwe.split(".");
  const decipher = createDecipheriv("aes-256-gcm", ch.key, Buffer.from(iv!, "base64url"));
  decipher.setAAD(Buffer.from(h!, "ascii"));
  decipher.setAuthTag(Buffer.from(tag!, "base64url"));
  const pt = Buffer.concat([decipher.update(Buffer.from(ct!, "base64url")), decipher.final()]);
  return JSON.parse(pt.toString("utf8"));
}

/** The payload of a JWS, unverified (for telling a reply from an error in the hot loop). */
function jwsPayload(jws: string): { status?: number; reason?: string } {
  return JSON.parse(Buffer.from(jws.split(".")[1] ?? "", "base64url").toString("utf8")) as { status?: number; reason?: string };
}

// ---- ECDHE pre-generation (runs in the background until the target count is reached) ----
const pregenerated: string[] = [];
let pregenTarget = Number.POSITIVE_INFINITY;
let pregenRunning = false;
let pregenDone: (() => void) | undefined;
let pregenStarted = 0;

async function pregenLoop(): Promise<void> {
  while (pregenerated.length < pregenTarget) pregenerated.push((await ecdheRequest()).message);
}

function startPregen(): void {
  if (pregenRunning) return;
  pregenRunning = true;
  pregenStarted = performance.now();
  // A few loops in flight hide WebCrypto's thread-pool round trips.
  void Promise.all([pregenLoop(), pregenLoop(), pregenLoop(), pregenLoop()]).then(() => {
    pregenRunning = false;
    pregenDone?.();
  });
}

function makeClient(port: number): PostClient {
  return (clientKind === "raw" ? rawClient : agentClient)(host, port, PATH, JOSE, concurrency);
}

async function phase(op: "bare" | "ping" | "ecdhe", port: number, warmupMs: number, measureMs: number, transport?: TransportTarget): Promise<PhaseResult> {
  const client = transport ? await connectTransport(transport, concurrency) : makeClient(port);
  const lastId: (string | undefined)[] = [];
  const channelOf = (w: number) => channels[w % channels.length]!;
  const pingBody = (w: number) => {
    const requestId = `${prefix}-p${seq++}`;
    lastId[w] = requestId;
    return sealCommon(channelOf(w), { client: credential(), method: "update", uri: "/ping", requestId });
  };
  let cursor = 0;
  try {
    if (op === "bare") {
      // Same bodies as the pings (size and shape); the bare server ignores them, so a pool is
      // reused and the client spends its time on HTTP only.
      const pool = Array.from({ length: 1024 }, (_, i) => pingBody(i));
      return await runPhase({
        client, concurrency, warmupMs, measureMs,
        next: () => pool[cursor++ % pool.length],
        check: (res) => (res.status === 200 ? undefined : `HTTP ${res.status}`),
      });
    }
    if (op === "ping") {
      return await runPhase({
        client, concurrency, warmupMs, measureMs,
        next: pingBody,
        check: (res: SimpleResponse, _body, w) => {
          if (res.status !== 200) return `HTTP ${res.status}`;
          const text = res.body.toString("latin1");
          if (text.split(".").length !== 5) {
            const p = jwsPayload(text);
            return `JWS error ${p.status}: ${p.reason}`;
          }
          const reply = openCommon(channelOf(w), text) as { status?: number; reason?: string; requestId?: unknown };
          if (reply.status !== 200) return `ping ${reply.status}: ${reply.reason}`;
          if (reply.requestId !== lastId[w]) return "requestId not echoed";
          return undefined;
        },
      });
    }
    return await runPhase({
      client, concurrency, warmupMs, measureMs,
      next: () => pregenerated[cursor++],
      check: (res) => {
        if (res.status !== 200) return `HTTP ${res.status}`;
        const text = res.body.toString("latin1");
        if (text.split(".").length !== 3) return "ECDHE reply is not a JWS";
        const p = jwsPayload(text);
        return p.status === 201 ? undefined : `ECDHE ${p.status}: ${p.reason}`;
      },
    });
  } finally {
    await client.close();
    if (op === "ecdhe") pregenerated.splice(0, cursor);
  }
}

async function handle(req: LoadgenRequest): Promise<unknown> {
  switch (req.cmd) {
    case "setup": {
      url = req.url;
      host = new URL(url).hostname;
      token = req.token;
      concurrency = req.concurrency;
      clientKind = req.client;
      const wk = (await (await fetch(`${url}/.well-known/kms`)).json()) as { jwk: JWK };
      const { x5c: _x5c, ...bare } = wk.jwk;
      kid = bare.kid!;
      if (bare.kty !== "EC") throw new Error(`the bench expects an EC static key, the KMS has ${bare.kty}`);
      staticKey = (await importJWK(bare, "ECDH-ES+A256KW")) as CryptoKey;
      const verifyKey = (await importJWK(bare, "ES256")) as CryptoKey;
      channels = [];
      for (let i = 0; i < req.channels; i++) channels.push(await openChannel(verifyKey));
      const sample = sealCommon(channels[0]!, { client: credential(), method: "update", uri: "/ping", requestId: `${prefix}-p000000` });
      const result: SetupResult = { kid, pingRequestBytes: sample.length, ecdheRequestBytes: (await ecdheRequest()).message.length };
      return result;
    }
    case "pregen-start":
      startPregen();
      return { started: true };
    case "pregen-target": {
      pregenTarget = req.target;
      if (pregenerated.length < pregenTarget) {
        startPregen();
        await new Promise<void>((resolve) => (pregenDone = resolve));
      }
      pregenerated.length = Math.min(pregenerated.length, pregenTarget);
      return { count: pregenerated.length, seconds: (performance.now() - pregenStarted) / 1000 };
    }
    case "phase":
      return phase(req.op, req.port, req.warmupMs, req.measureMs, req.transport);
    case "exit":
      setImmediate(() => process.exit(0));
      return {};
  }
}

process.on("message", (m: { id: number; req: LoadgenRequest }) => {
  handle(m.req).then(
    (result) => process.send!({ id: m.id, ok: true, result }),
    (e: unknown) => process.send!({ id: m.id, ok: false, error: e instanceof Error ? e.stack ?? e.message : String(e) }),
  );
});
process.on("disconnect", () => process.exit(0));
