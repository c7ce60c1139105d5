/**
 * The load generator of the GK bench: a child process (pinned to the client core) driven by
 * run.ts over IPC. It opens alice's channels, registers (or reuses) her one EC P-256 device key,
 * creates her group (`create /blocks`), pre-creates bound GKs, and runs the closed-loop phases:
 *   - create: `create /gks` with `{block: <tail hash>}` (each call a new GK);
 *   - get: `retrieve <gk uri>` with `{entity: alice}`, round robin over the pre-created GKs;
 *   - get-small / get-big: gets by members (each with its own key, token and channel) of GKs
 *     bound at the tail of a 2-block group / of the large (100,000-block) group.
 * Replies are decrypted and checked (status, GK object with one recipient, uri of the GK asked
 * for). The first GK of each kind is unwrapped with the device key to check the key round-trips.
 */
import { exportJWK, generalDecrypt, generateKeyPair, importJWK, type GeneralJWE, type JWK } from "jose";
import { parseBlock } from "../../src/primitives/gmbc/parse-block.js";
import { runPhase, type PhaseResult } from "../lib/load.js";
import { rawClient, type PostClient } from "../lib/raw-http.js";
import { connectTransport, withTimeout, type TransportTarget } from "../lib/transports.js";
import { serveIpc } from "../lib/harness.js";
import { JOSE_TYPE, KmsSession, MESSAGES_PATH, openReply, seal, jwsPayload, type KmsChannel } from "../lib/kms-session.js";
import { ALICE, ChainSigner, memberKeyFromJwk, newMemberKey, type MemberKey } from "../gmbc/blocks.js";

export type PhaseKind = "create" | "get" | "get-small" | "get-big";

export type LoadgenRequest =
  | { cmd: "setup"; url: string; token: string; channels: number; alicePrivateJwk?: Record<string, unknown> }
  | { cmd: "members"; members: { entity: string; token: string }[]; big: { uri: string; tail: string } }
  | { cmd: "pregen"; main: number; compare: number; concurrency: number }
  | { cmd: "reconnect"; url: string; token: string; memberTokens: string[] }
  /** `transport`: how the phase reaches the KMS (default: HTTP to the KMS set up, one connection per request in flight). */
  | { cmd: "phase"; kind: PhaseKind; warmupMs: number; measureMs: number; concurrency: number; shed?: boolean; transport?: TransportTarget }
  /** Fetches each GK (as alice, checked: 200, the GK asked for, bound to `block`); returns how many and how long. */
  | { cmd: "fetch"; uris: string[]; block: string; concurrency: number }
  | { cmd: "exit" };

export interface SetupResult {
  readonly channels: number;
  readonly groupUri: string;
  readonly tail: string;
  /** alice's device key was registered in this run (false: reused from the cached data dir). */
  readonly registered: boolean;
  readonly createRequestBytes: number;
  readonly getRequestBytes: number;
  /** A GK create reply and the GK JWS in it (bytes). */
  readonly createReplyBytes: number;
  readonly gkJwsBytes: number;
}

export interface MembersResult {
  readonly smallUri: string;
  readonly smallTail: string;
  readonly smallBlocks: number;
}

export interface PregenResult {
  readonly main: number;
  readonly small: number;
  readonly big: number;
  readonly seconds: number;
}

export interface LoadgenPhaseResult extends PhaseResult {
  /** Latency (ms) of every successful reply completed in the measured window (compare phases only). */
  readonly latencies?: number[];
}

interface Member {
  readonly entity: string;
  session: KmsSession;
  channel: KmsChannel;
  readonly key: CryptoKey;
}

let url = "";
let host = "127.0.0.1";
let port = 0;
let session: KmsSession | undefined;
let channels: KmsChannel[] = [];
let alice: MemberKey | undefined;
let aliceDecrypt: CryptoKey | undefined;
let group = { uri: "", tail: "" };
let small = { uri: "", tail: "" };
let big = { uri: "", tail: "" };
let members: Member[] = [];
const gks = { main: [] as string[], small: [] as string[], big: [] as string[] };

function setTarget(u: string): void {
  url = u;
  const p = new URL(u);
  host = p.hostname;
  port = Number(p.port);
}

/** A raw HTTP client whose replies time out (a connection the server closed becomes an error, not a hung worker). */
function clientWithTimeout(connections: number, timeoutMs = 30_000): PostClient {
  return withTimeout(rawClient(host, port, MESSAGES_PATH, JOSE_TYPE, connections), timeoutMs);
}

interface GkPayload {
  uri: string;
  key: { recipients?: { header?: { kid?: string } }[] };
  block?: string;
}

/** Checks a GK reply on `ch`: KMS status, a JWS GK object wrapped to exactly one key, bound to `block`, and (for gets) the GK asked for. */
function checkGk(ch: KmsChannel, body: Buffer, expectStatus: number, block: string, uri?: string): string | undefined {
  const reply = openReply(ch, body.toString("latin1"));
  if (reply.status !== expectStatus) return `KMS ${reply.status}: ${reply.reason ?? ""}`;
  if (typeof reply.gk !== "string") return "reply without a gk JWS";
  const gk = jwsPayload(reply.gk) as unknown as GkPayload;
  if (gk.key?.recipients?.length !== 1) return `GK wrapped to ${gk.key?.recipients?.length} keys, expected 1`;
  if (gk.block !== block) return "GK not bound to the expected block";
  if (uri !== undefined && gk.uri !== uri) return "reply is not the GK asked for";
  return undefined;
}

/** The 256-bit key inside a GK JWS, unwrapped with a device key (setup checks only). */
async function unwrap(gkJws: string, key: CryptoKey): Promise<string> {
  const gk = jwsPayload(gkJws) as unknown as { uri: string; key: GeneralJWE };
  const { plaintext } = await generalDecrypt(gk.key, key);
  const jwk = JSON.parse(new TextDecoder().decode(plaintext)) as JWK;
  if (jwk.kid !== gk.uri || jwk.kty !== "oct" || jwk.alg !== "A256GCM") throw new Error("the unwrapped GK is not {kty oct, alg A256GCM, kid <gk uri>}");
  return jwk.k!;
}

/** Creates `count` GKs bound to `block` (as alice), `concurrency` in flight; returns their uris. */
async function createMany(block: string, count: number, concurrency: number): Promise<string[]> {
  const out: string[] = [];
  const client = clientWithTimeout(concurrency);
  try {
    let issued = 0;
    await Promise.all(
      Array.from({ length: concurrency }, async (_, w) => {
        const ch = channels[w % channels.length]!;
        while (issued < count) {
          issued++;
          const res = await client.post(w, seal(ch, session!.payload("create", "/gks", { block })));
          const problem = res.status === 200 ? checkGk(ch, res.body, 201, block) : `HTTP ${res.status}`;
          if (problem) throw new Error(`pre-creating GKs: ${problem}`);
          out.push((jwsPayload(openReply(ch, res.body.toString("latin1")).gk as string) as unknown as GkPayload).uri);
        }
      }),
    );
  } finally {
    await client.close();
  }
  return out;
}

/** One GK created by alice at `block`, fetched back by `getter` (alice or a member); both unwrap to the same key. */
async function roundTrip(block: string, getter: { session: KmsSession; channel: KmsChannel; entity: string; key: CryptoKey }): Promise<void> {
  const created = await session!.request(channels[0]!, "create", "/gks", { block });
  const uri = (jwsPayload(created.gk as string) as unknown as GkPayload).uri;
  const fetched = await getter.session.request(getter.channel, "retrieve", uri, { entity: getter.entity });
  if ((await unwrap(created.gk as string, aliceDecrypt!)) !== (await unwrap(fetched.gk as string, getter.key))) {
    throw new Error("GK get returned another key than GK create");
  }
}

async function setup(req: Extract<LoadgenRequest, { cmd: "setup" }>): Promise<SetupResult> {
  setTarget(req.url);
  session = await KmsSession.connect(url, req.token);
  channels = [];
  for (let i = 0; i < req.channels; i++) channels.push(await session.openChannel());
  let registered = false;
  if (req.alicePrivateJwk) {
    alice = await memberKeyFromJwk(ALICE, req.alicePrivateJwk as JWK & { kid: string });
  } else {
    alice = await newMemberKey(ALICE, "alice-bench");
    await session.request(channels[0]!, "create", "/entities/keys", { jwk: alice.publicJwk });
    registered = true;
  }
  // The same key pair, for unwrapping (ECDH-ES): WebCrypto binds a key to its algorithm.
  const priv = req.alicePrivateJwk ?? { ...(await exportJWK(alice.privateKey)) };
  const { kty, crv, x, y, d } = priv as JWK;
  aliceDecrypt = (await importJWK({ kty, crv, x, y, d }, "ECDH-ES+A256KW")) as CryptoKey;
  const { keys } = await session.request(channels[0]!, "retrieve", `/entities/${ALICE}/keys`);
  if (!Array.isArray(keys) || keys.length !== 1) throw new Error(`alice has ${Array.isArray(keys) ? keys.length : "?"} registered keys; the bench expects exactly 1`);

  const reply = await session.request(channels[0]!, "create", "/blocks", { blockPayload: { operations: [{ entity: ALICE, optype: "add" }] } });
  const genesis = await parseBlock(reply.block as string, { maxOperations: 10_000 });
  group = { uri: (genesis.payload as { uri: string }).uri, tail: genesis.hash };
  await roundTrip(group.tail, { session, channel: channels[0]!, entity: ALICE, key: aliceDecrypt });
  const created = seal(channels[0]!, session.payload("create", "/gks", { block: group.tail }));
  const createdReply = await session.post(created);
  const gkJws = openReply(channels[0]!, createdReply).gk as string;
  const getBody = seal(channels[0]!, session.payload("retrieve", (jwsPayload(gkJws) as unknown as GkPayload).uri, { entity: ALICE }));
  return {
    channels: channels.length, groupUri: group.uri, tail: group.tail, registered,
    createRequestBytes: created.length, getRequestBytes: getBody.length, createReplyBytes: createdReply.length, gkJwsBytes: gkJws.length,
  };
}

/** Members with a fresh device key each and one channel each; the 2-block group (genesis alice + members, then one block by alice). */
async function setupMembers(req: Extract<LoadgenRequest, { cmd: "members" }>): Promise<MembersResult> {
  big = req.big;
  members = [];
  for (const m of req.members) {
    const s = await KmsSession.connect(url, m.token);
    const channel = await s.openChannel();
    const { privateKey, publicKey } = await generateKeyPair("ECDH-ES+A256KW", { extractable: true });
    const { kty, crv, x, y } = await exportJWK(publicKey);
    await s.request(channel, "create", "/entities/keys", { jwk: { kty, crv, x, y, kid: "member-bench" } });
    members.push({ entity: m.entity, session: s, channel, key: privateKey as CryptoKey });
  }
  const ops = [{ entity: ALICE, optype: "add" }, ...members.map((m) => ({ entity: m.entity, optype: "add" }))];
  const reply = await session!.request(channels[0]!, "create", "/blocks", { blockPayload: { operations: ops } });
  const genesis = await parseBlock(reply.block as string, { maxOperations: 10_000 });
  const uri = (genesis.payload as { uri: string }).uri;
  const block = await new ChainSigner(alice!, genesis.hash).next([{ entity: "small-extra@example.com", optype: "add" }]);
  const appended = await session!.request(channels[0]!, "create", uri, { blocks: [block.jws] });
  if (appended.tail !== block.hash) throw new Error("2-block group: the append reply's tail is not the block's hash");
  small = { uri, tail: block.hash };
  for (const tail of [small.tail, big.tail]) await roundTrip(tail, members[0]!);
  return { smallUri: uri, smallTail: small.tail, smallBlocks: 2 };
}

/** Gets each of `uris` once as alice, `concurrency` in flight, every reply checked. */
async function fetchMany(uris: string[], block: string, concurrency: number): Promise<{ fetched: number; seconds: number }> {
  const client = clientWithTimeout(concurrency);
  const t0 = performance.now();
  let next = 0;
  try {
    await Promise.all(
      Array.from({ length: concurrency }, async (_, w) => {
        const ch = channels[w % channels.length]!;
        while (next < uris.length) {
          const uri = uris[next++]!;
          const res = await client.post(w, seal(ch, session!.payload("retrieve", uri, { entity: ALICE })));
          const problem = res.status === 200 ? checkGk(ch, res.body, 200, block, uri) : `HTTP ${res.status}`;
          if (problem) throw new Error(`fetching ${uri}: ${problem}`);
        }
      }),
    );
  } finally {
    await client.close();
  }
  return { fetched: uris.length, seconds: (performance.now() - t0) / 1000 };
}

async function phase(req: Extract<LoadgenRequest, { cmd: "phase" }>): Promise<LoadgenPhaseResult> {
  const { kind, concurrency, warmupMs, measureMs } = req;
  const shed = req.shed ? { shedStatus: 429 } : {};
  const client = req.transport ? await connectTransport(req.transport, concurrency) : clientWithTimeout(concurrency);
  const list = kind === "get" ? gks.main : kind === "get-small" ? gks.small : kind === "get-big" ? gks.big : [];
  const block = kind === "get-small" ? small.tail : kind === "get-big" ? big.tail : group.tail;
  if (kind !== "create" && list.length === 0) throw new Error(`no pre-created GKs for ${kind}`);
  const compare = kind === "get-small" || kind === "get-big";
  if (compare && members.length === 0) throw new Error("no members set up");
  const asked: string[] = [];
  const started = new Float64Array(concurrency);
  const latencies: number[] = [];
  let cursor = 0;
  const chOf = (w: number) => (compare ? members[w % members.length]!.channel : channels[w % channels.length]!);
  const from = performance.now() + warmupMs;
  const to = from + measureMs;
  try {
    const result = await runPhase({
      client,
      concurrency,
      warmupMs,
      measureMs,
      ...shed,
      next: (w) => {
        started[w] = performance.now();
        if (kind === "create") return seal(chOf(w), session!.payload("create", "/gks", { block }));
        const uri = list[cursor++ % list.length]!;
        asked[w] = uri;
        if (compare) {
          const m = members[w % members.length]!;
          return seal(m.channel, m.session.payload("retrieve", uri, { entity: m.entity }));
        }
        return seal(chOf(w), session!.payload("retrieve", uri, { entity: ALICE }));
      },
      check: (res, _body, w) => {
        if (res.status !== 200) return `HTTP ${res.status}`;
        const problem = kind === "create" ? checkGk(chOf(w), res.body, 201, block) : checkGk(chOf(w), res.body, 200, block, asked[w]);
        if (problem === undefined && compare) {
          const t = performance.now();
          if (t >= from && t <= to) latencies.push(t - started[w]!);
        }
        return problem;
      },
    });
    return compare ? { ...result, latencies } : result;
  } finally {
    await client.close();
  }
}

async function handle(req: LoadgenRequest): Promise<unknown> {
  switch (req.cmd) {
    case "setup":
      return setup(req);
    case "members":
      return setupMembers(req);
    case "pregen": {
      const t0 = performance.now();
      gks.main = await createMany(group.tail, req.main, req.concurrency);
      if (req.compare > 0) {
        gks.small = await createMany(small.tail, req.compare, req.concurrency);
        gks.big = await createMany(big.tail, req.compare, req.concurrency);
      }
      const r: PregenResult = { main: gks.main.length, small: gks.small.length, big: gks.big.length, seconds: (performance.now() - t0) / 1000 };
      return r;
    }
    case "reconnect": {
      // The KMS restarted (new ports, new dev-IdP issuer): new sessions and channels, same keys, groups and GKs.
      setTarget(req.url);
      session = await KmsSession.connect(url, req.token);
      const n = channels.length;
      channels = [];
      for (let i = 0; i < n; i++) channels.push(await session.openChannel());
      for (const [i, m] of members.entries()) {
        m.session = await KmsSession.connect(url, req.memberTokens[i]!);
        m.channel = await m.session.openChannel();
      }
      if (members[0]) for (const tail of [small.tail, big.tail]) await roundTrip(tail, members[0]);
      return { channels: channels.length, members: members.length };
    }
    case "phase":
      return phase(req);
    case "fetch":
      return fetchMany(req.uris, req.block, req.concurrency);
    case "exit":
      setImmediate(() => process.exit(0));
      return {};
  }
}

serveIpc<LoadgenRequest>(handle);
