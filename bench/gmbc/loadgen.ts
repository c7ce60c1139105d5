/**
 * The load generator of the GMBC bench: a child process (pinned to the client core) driven by
 * run.ts over IPC. It opens channels, registers alice's ES256 device key, creates one chain per
 * worker, pre-signs each chain's blocks before the timed phase (the next block only needs the
 * hash of the previous JWS, which it produced itself), runs the closed-loop append phase, and
 * builds the large chain through the server API in batches.
 */
import { exportJWK } from "jose";
import { parseBlock } from "../../src/primitives/gmbc/parse-block.js";
import { runPhase, type PhaseResult } from "../lib/load.js";
import { rawClient, type PostClient } from "../lib/raw-http.js";
import { latencyStats, type LatencyStats } from "../lib/stats.js";
import { serveIpc } from "../lib/harness.js";
import { JOSE_TYPE, KmsSession, MESSAGES_PATH, openReply, seal, type KmsChannel } from "../lib/kms-session.js";
import { ALICE, bigChainOperations, ChainSigner, DOMAIN, newMemberKey, type BigChainShape, type MemberKey, type SignedBlock } from "./blocks.js";

export type LoadgenRequest =
  | { cmd: "setup"; url: string; token: string; channels: number; chains: number }
  | { cmd: "pregen-start" }
  | { cmd: "pregen-target"; perChain: number }
  | { cmd: "phase"; warmupMs: number; measureMs: number }
  /** Genesis: `create /blocks` making alice the only member, each call a new chain, closed loop. */
  | { cmd: "genesis"; warmupMs: number; measureMs: number; concurrency: number }
  | { cmd: "big"; shape: BigChainShape; batch: number; budgetMs: number }
  | { cmd: "exit" };

export interface SetupResult {
  readonly chains: number;
  readonly channels: number;
  readonly appendRequestBytes: number;
  readonly blockBytes: number;
  /** alice's device key (private JWK with kid), for the in-process breakdown. */
  readonly alicePrivateJwk: Record<string, unknown>;
}

export interface BigResult {
  readonly chainUri: string;
  /** Blocks in the chain when the build stopped (genesis included). */
  readonly blocks: number;
  readonly complete: boolean;
  readonly seconds: number;
  readonly appends: number;
  readonly appendsPerSec: number;
  readonly blocksPerSec: number;
  /** Latency of one append request (one batch). */
  readonly appendLatency: LatencyStats;
  /** Time the client spent waiting for a signed batch (signing slower than the server). */
  readonly waitedForSigningSeconds: number;
  readonly requestBytes: number;
}

interface Chain {
  readonly uri: string;
  readonly signer: ChainSigner;
  readonly supply: SignedBlock[];
  cursor: number;
}

let session: KmsSession | undefined;
let port = 0;
let host = "127.0.0.1";
let channels: KmsChannel[] = [];
let alice: MemberKey | undefined;
let chains: Chain[] = [];
let entitySeq = 0;

/** Creates a chain whose genesis makes alice a member; returns its uri and genesis hash. */
async function createChain(ch: KmsChannel): Promise<{ uri: string; hash: string }> {
  const reply = await session!.request(ch, "create", "/blocks", { blockPayload: { operations: [{ entity: ALICE, optype: "add" }] } });
  const genesis = await parseBlock(reply.block as string, { maxOperations: 10_000 });
  if (!genesis.genesis) throw new Error("create /blocks did not return a genesis block");
  return { uri: (genesis.payload as { uri: string }).uri, hash: genesis.hash };
}

// ---- pre-signing of the append phase's blocks (background until the target per chain) ----
let perChainTarget = Number.POSITIVE_INFINITY;
let pregenRunning: Promise<void> | undefined;
let pregenStarted = 0;

async function pregenLoop(mine: Chain[]): Promise<void> {
  for (;;) {
    let grew = false;
    for (const c of mine) {
      if (c.supply.length >= perChainTarget) continue;
      c.supply.push(await c.signer.next([{ entity: `u${entitySeq++}@${DOMAIN}`, optype: "add" }]));
      grew = true;
    }
    if (!grew) return;
  }
}

function startPregen(): Promise<void> {
  if (!pregenRunning) {
    pregenStarted = performance.now();
    // A few loops in flight hide WebCrypto's thread-pool round trips.
    const loops = 4;
    pregenRunning = Promise.all(Array.from({ length: loops }, (_, j) => pregenLoop(chains.filter((_, i) => i % loops === j)))).then(() => {
      pregenRunning = undefined;
    });
  }
  return pregenRunning;
}

/**
 * A raw client whose replies time out: a connection the server closed (or a reply that never
 * comes) becomes an error instead of a worker waiting forever.
 */
function clientWithTimeout(connections: number, timeoutMs = 30_000): PostClient {
  const inner = rawClient(host, port, MESSAGES_PATH, JOSE_TYPE, connections);
  return {
    post: (slot, body) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no reply within ${timeoutMs / 1000} s (connection ${slot})`)), timeoutMs);
        inner.post(slot, body).then(
          (r) => (clearTimeout(timer), resolve(r)),
          (e: unknown) => (clearTimeout(timer), reject(e instanceof Error ? e : new Error(String(e)))),
        );
      }),
    close: () => inner.close(),
  };
}

async function phase(warmupMs: number, measureMs: number): Promise<PhaseResult> {
  const concurrency = chains.length;
  const client = clientWithTimeout(concurrency);
  const expected: string[] = [];
  try {
    return await runPhase({
      client,
      concurrency,
      warmupMs,
      measureMs,
      next: (w) => {
        const c = chains[w]!;
        const block = c.supply[c.cursor++];
        if (!block) return undefined;
        expected[w] = block.hash;
        return seal(channels[w % channels.length]!, session!.payload("create", c.uri, { blocks: [block.jws] }));
      },
      check: (res, _body, w) => {
        if (res.status !== 200) return `HTTP ${res.status}`;
        const reply = openReply(channels[w % channels.length]!, res.body.toString("latin1"));
        if (reply.status !== 200) return `append ${reply.status}: ${reply.reason}`;
        if (reply.tail !== expected[w]) return "reply tail is not the appended block's hash";
        return undefined;
      },
    });
  } finally {
    client.close();
  }
}

/** Closed loop of genesis requests; each reply decrypted and checked (201, a block JWS). */
async function genesisPhase(concurrency: number, warmupMs: number, measureMs: number): Promise<PhaseResult> {
  const client = clientWithTimeout(concurrency);
  const blockPayload = { operations: [{ entity: ALICE, optype: "add" }] };
  try {
    return await runPhase({
      client,
      concurrency,
      warmupMs,
      measureMs,
      next: (w) => seal(channels[w % channels.length]!, session!.payload("create", "/blocks", { blockPayload })),
      check: (res, _body, w) => {
        if (res.status !== 200) return `HTTP ${res.status}`;
        const reply = openReply(channels[w % channels.length]!, res.body.toString("latin1"));
        if (reply.status !== 201) return `genesis ${reply.status}: ${reply.reason}`;
        if (typeof reply.block !== "string" || reply.block.split(".").length !== 3) return "reply without a block JWS";
        return undefined;
      },
    });
  } finally {
    client.close();
  }
}

/**
 * The large chain through the server API: genesis (alice), then appends of `batch` blocks signed
 * by alice, one request in flight; signing runs ahead of the server by a few batches (pipelined
 * on this core while the server works on its own). Stops early when `budgetMs` runs out.
 */
async function buildBig(shape: BigChainShape, batch: number, budgetMs: number): Promise<BigResult> {
  const ch = channels[0]!;
  const t0 = performance.now();
  const { uri, hash } = await createChain(ch);
  const signer = new ChainSigner(alice!, hash);
  const ops = bigChainOperations(shape);
  const queue: SignedBlock[][] = [];
  let producing = true;
  let wake: (() => void) | undefined;
  let room: (() => void) | undefined;
  const AHEAD = 8;
  const producer = (async () => {
    let current: SignedBlock[] = [];
    for (const o of ops) {
      if (!producing) return;
      current.push(await signer.next(o));
      if (current.length === batch) {
        queue.push(current);
        current = [];
        wake?.();
        while (queue.length >= AHEAD && producing) await new Promise<void>((r) => (room = r));
      }
    }
    if (current.length) queue.push(current);
    producing = false;
    wake?.();
  })();

  const client = clientWithTimeout(1, 120_000);
  const latencies: number[] = [];
  let blocks = 1;
  let waited = 0;
  let requestBytes = 0;
  try {
    for (;;) {
      if (queue.length === 0) {
        if (!producing) break;
        const w0 = performance.now();
        await new Promise<void>((r) => (wake = r));
        waited += performance.now() - w0;
        continue;
      }
      if (performance.now() - t0 > budgetMs) break;
      const next = queue.shift()!;
      room?.();
      const body = seal(ch, session!.payload("create", uri, { blocks: next.map((b) => b.jws) }));
      requestBytes = Math.max(requestBytes, body.length);
      const a = performance.now();
      const res = await client.post(0, body);
      latencies.push(performance.now() - a);
      const reply = openReply(ch, res.body.toString("latin1"));
      if (res.status !== 200 || reply.status !== 200) throw new Error(`append to the large chain: HTTP ${res.status}, ${reply.status} ${reply.reason ?? ""}`);
      if (reply.tail !== next[next.length - 1]!.hash) throw new Error("large chain: reply tail is not the last block's hash");
      blocks += next.length;
    }
  } finally {
    producing = false;
    room?.();
    await producer.catch(() => {});
    client.close();
  }
  const seconds = (performance.now() - t0) / 1000;
  return {
    chainUri: uri,
    blocks,
    complete: blocks === shape.blocks,
    seconds,
    appends: latencies.length,
    appendsPerSec: latencies.length / seconds,
    blocksPerSec: (blocks - 1) / seconds,
    appendLatency: latencyStats(Float64Array.from(latencies)),
    waitedForSigningSeconds: waited / 1000,
    requestBytes,
  };
}

async function handle(req: LoadgenRequest): Promise<unknown> {
  switch (req.cmd) {
    case "setup": {
      const u = new URL(req.url);
      host = u.hostname;
      port = Number(u.port);
      session = await KmsSession.connect(req.url, req.token);
      channels = [];
      for (let i = 0; i < req.channels; i++) channels.push(await session.openChannel());
      alice = await newMemberKey(ALICE, "alice-bench");
      await session.request(channels[0]!, "create", "/entities/keys", { jwk: alice.publicJwk });
      chains = [];
      for (let i = 0; i < req.chains; i++) {
        const { uri, hash } = await createChain(channels[i % channels.length]!);
        chains.push({ uri, signer: new ChainSigner(alice, hash), supply: [], cursor: 0 });
      }
      const sample = await new ChainSigner(alice, "0".repeat(64)).next([{ entity: `u0@${DOMAIN}`, optype: "add" }]);
      const body = seal(channels[0]!, session.payload("create", chains[0]!.uri, { blocks: [sample.jws] }));
      const alicePrivateJwk = { ...(await exportJWK(alice.privateKey)), kid: alice.kid };
      const result: SetupResult = { chains: chains.length, channels: channels.length, appendRequestBytes: body.length, blockBytes: sample.jws.length, alicePrivateJwk };
      return result;
    }
    case "pregen-start":
      void startPregen();
      return { started: true };
    case "pregen-target": {
      perChainTarget = req.perChain;
      await startPregen();
      for (const c of chains) c.supply.length = Math.min(c.supply.length, perChainTarget);
      return { blocks: chains.reduce((a, c) => a + c.supply.length, 0), seconds: (performance.now() - pregenStarted) / 1000 };
    }
    case "phase":
      return phase(req.warmupMs, req.measureMs);
    case "genesis":
      return genesisPhase(req.concurrency, req.warmupMs, req.measureMs);
    case "big":
      return buildBig(req.shape, req.batch, req.budgetMs);
    case "exit":
      setImmediate(() => process.exit(0));
      return {};
  }
}

serveIpc<LoadgenRequest>(handle);
