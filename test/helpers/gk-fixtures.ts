import { existsSync, readFileSync } from "node:fs";
import Database from "better-sqlite3";
import { base64url, exportJWK, generalDecrypt, generateKeyPair, importJWK, type GeneralJWE, type JWK } from "jose";
import { expect } from "vitest";
import { parseBlock } from "../../src/primitives/gmbc/parse-block.js";
import { buildAppendedPayload, signAppendedBlock } from "../../src/primitives/gmbc/sign-block.js";
import type { GenesisPayload, Operation, ParsedBlock } from "../../src/primitives/gmbc/types.js";
import { openJws, RawClient, type TestKms } from "./harness.js";

/** A device key of a test entity: the public JWK it registers and what it needs to sign blocks and unwrap GKs. */
export interface DeviceKey {
  readonly kind: "ec" | "rsa";
  readonly kid: string;
  readonly publicJwk: JWK & { kid: string };
  /** The private key as bare JWK members (kty and key material only: no alg, no key_ops). */
  readonly privateJwk: JWK;
  /** ECDSA P-256 private key (EC keys only): signs appended blocks with ES256. */
  readonly signingKey?: CryptoKey;
}

export async function makeDeviceKey(kind: "ec" | "rsa", kid: string): Promise<DeviceKey> {
  if (kind === "ec") {
    const { privateKey } = await generateKeyPair("ES256", { extractable: true });
    const { kty, crv, x, y, d } = await exportJWK(privateKey);
    return { kind, kid, publicJwk: { kty: kty!, crv, x, y, kid } as JWK & { kid: string }, privateJwk: { kty, crv, x, y, d }, signingKey: privateKey };
  }
  const { privateKey } = await generateKeyPair("RSA-OAEP-256", { extractable: true, modulusLength: 2048 });
  const { kty, n, e, d, p, q, dp, dq, qi } = await exportJWK(privateKey);
  return { kind, kid, publicJwk: { kty: kty!, n, e, kid } as JWK & { kid: string }, privateJwk: { kty, n, e, d, p, q, dp, dq, qi } };
}

export type Reply = Record<string, unknown> & { status?: unknown; reason?: unknown };

/** One entity with its own channel to a test KMS and its registered device keys. */
export class Party {
  readonly raw: RawClient;
  readonly keys: DeviceKey[] = [];
  constructor(
    readonly kms: TestKms,
    readonly entity: string,
  ) {
    this.raw = new RawClient(kms, entity);
  }

  static async open(kms: TestKms, entity: string, keyKinds: readonly ("ec" | "rsa")[] = ["ec"]): Promise<Party> {
    const p = new Party(kms, entity);
    const r = await p.raw.ecdhe();
    expect(r.status, `ECDHE for ${entity}`).toBe(201);
    for (const kind of keyKinds) await p.addKey(kind);
    return p;
  }

  /** A request on the channel. Every answer after key agreement is a common message (§4). */
  async call(fields: Record<string, unknown>): Promise<Reply> {
    const r = await this.raw.request(fields);
    expect(r.form, `reply to ${String(fields.method)} ${String(fields.uri)} as ${this.entity}`).toBe("jwe");
    return r.payload as Reply;
  }

  async addKey(kind: "ec" | "rsa" = "ec", kid = `${this.entity.split("@")[0]}-${kind}-${this.keys.length + 1}`): Promise<DeviceKey> {
    const key = await makeDeviceKey(kind, kid);
    const r = await this.call({ method: "create", uri: "/entities/keys", jwk: key.publicJwk });
    expect(r.status, String(r.reason)).toBe(201);
    this.keys.push(key);
    return key;
  }

  /** The key this entity signs blocks with (its first EC key). */
  get signer(): DeviceKey {
    const k = this.keys.find((key) => key.kind === "ec");
    if (!k) throw new Error(`${this.entity} has no EC key to sign blocks with`);
    return k;
  }

  createGk(block?: unknown): Promise<Reply> {
    return this.call({ method: "create", uri: "/gks", ...(block !== undefined ? { block } : {}) });
  }

  bindGk(gkUri: string, block: unknown): Promise<Reply> {
    return this.call({ method: "update", uri: gkUri, block });
  }

  getGk(gkUri: string, entity: unknown = this.entity): Promise<Reply> {
    return this.call({ method: "retrieve", uri: gkUri, entity });
  }
}

/** A group's chain as the test knows it: its uri, its blocks in order (parsed), its tail hash. */
export interface Chain {
  readonly uri: string;
  readonly blocks: ParsedBlock[];
  tail: string;
}

const PARSE = { maxOperations: 10_000 } as const;

/** `create /blocks` by `creator` with the given members → the genesis block, parsed. */
export async function createGroup(creator: Party, members: readonly string[]): Promise<Chain> {
  const r = await creator.call({ method: "create", uri: "/blocks", blockPayload: { operations: members.map((entity) => ({ entity, optype: "add" })) } });
  expect(r.status, String(r.reason)).toBe(201);
  const block = await parseBlock(r.block as string, PARSE);
  return { uri: (block.payload as GenesisPayload).uri, blocks: [block], tail: block.hash };
}

/** Appends one block signed by `signer` (a member), relayed by `relay` (default: the signer). */
export async function appendBlock(chain: Chain, signer: Party, operations: readonly Operation[], relay: Party = signer): Promise<ParsedBlock> {
  const payload = buildAppendedPayload({ antecedent: chain.tail, creator: signer.entity, operations });
  const key = signer.signer;
  const jws = await signAppendedBlock(payload, key.signingKey!, { alg: "ES256", kid: key.kid });
  const r = await relay.call({ method: "create", uri: chain.uri, blocks: [jws] });
  expect(r.status, String(r.reason)).toBe(200);
  const block = await parseBlock(jws, PARSE);
  expect(r.tail).toBe(block.hash);
  chain.blocks.push(block);
  chain.tail = block.hash;
  return block;
}

export const add = (entity: string): Operation => ({ entity, optype: "add" });
export const remove = (entity: string): Operation => ({ entity, optype: "remove" });

/** A GK object (§9) as its JWS carries it. */
export interface GkPayload {
  uri: string;
  creator: string;
  created: string;
  key: GeneralJWE;
  block?: string;
}

/** Verifies a GK JWS with the KMS's static key (header kid = KMS URI) and returns header and payload. */
export async function openGk(kms: TestKms, jws: unknown): Promise<{ header: Record<string, unknown>; payload: GkPayload }> {
  expect(typeof jws, "gk must be a JWS compact serialization (a string)").toBe("string");
  expect((jws as string).split(".")).toHaveLength(3);
  const { header, payload } = await openJws(kms.url, jws as string);
  expect(header.kid).toBe(kms.kid);
  return { header, payload: payload as unknown as GkPayload };
}

/** The plaintext of a GK's key, as §9 defines it. */
export interface GkKeyPlaintext {
  kty: string;
  alg: string;
  kid: string;
  k: string;
}

/** The joint header of one recipient (protected ∪ shared unprotected ∪ per-recipient). */
export function recipientHeader(jwe: GeneralJWE, index: number): Record<string, unknown> {
  const r = jwe.recipients[index];
  if (!r) throw new Error(`no recipient ${index}`);
  const prot = jwe.protected ? (JSON.parse(new TextDecoder().decode(base64url.decode(jwe.protected))) as Record<string, unknown>) : {};
  return { ...prot, ...(jwe.unprotected ?? {}), ...(r.header ?? {}) };
}

/**
 * Unwraps every recipient of `jwe` with the matching private key of `party` (by kid), each one
 * alone (a one-recipient General JWE through jose's generalDecrypt). Fails if a recipient has no
 * key of the party or does not decrypt.
 */
export async function unwrapAll(jwe: GeneralJWE, party: Party): Promise<{ kid: string; alg: string; plaintext: GkKeyPlaintext }[]> {
  const out: { kid: string; alg: string; plaintext: GkKeyPlaintext }[] = [];
  for (let i = 0; i < jwe.recipients.length; i++) {
    const h = recipientHeader(jwe, i);
    const kid = h.kid as string;
    const alg = h.alg as string;
    const key = party.keys.find((k) => k.kid === kid);
    expect(key, `recipient ${i} (kid ${kid}) is a key of ${party.entity}`).toBeDefined();
    const priv = await importJWK(key!.privateJwk, alg);
    const { plaintext } = await generalDecrypt({ ...jwe, recipients: [jwe.recipients[i]!] }, priv);
    out.push({ kid, alg, plaintext: JSON.parse(new TextDecoder().decode(plaintext)) as GkKeyPlaintext });
  }
  return out;
}

/**
 * Opens a GK reply for `party`: verifies the JWS, unwraps every recipient with the party's keys,
 * checks the plaintext's shape (§9) and that every recipient carries the same key. Returns k.
 */
export async function gkKeyFor(party: Party, jws: unknown): Promise<{ payload: GkPayload; k: string; bytes: Uint8Array }> {
  const { payload } = await openGk(party.kms, jws);
  const unwrapped = await unwrapAll(payload.key, party);
  expect(unwrapped.length).toBeGreaterThan(0);
  const first = unwrapped[0]!.plaintext;
  expect(first).toEqual({ kty: "oct", alg: "A256GCM", kid: payload.uri, k: first.k });
  const bytes = base64url.decode(first.k);
  expect(bytes.length).toBe(32);
  for (const u of unwrapped) expect(u.plaintext).toEqual(first);
  return { payload, k: first.k, bytes };
}

/** A read-only look at the KMS's gks table. */
export function gkRows(kms: TestKms): Record<string, unknown>[] {
  const db = new Database(storePath(kms), { readonly: true });
  try {
    return db.prepare("SELECT * FROM gks ORDER BY uri").all() as Record<string, unknown>[];
  } finally {
    db.close();
  }
}

export function storePath(kms: TestKms): string {
  if (kms.config.store.kind !== "sqlite") throw new Error("these tests need the SQLite store");
  return kms.config.store.path;
}

/** The SQLite database file and its -wal / -shm companions, those that exist, with their bytes. */
export function databaseFiles(kms: TestKms): { path: string; bytes: Buffer }[] {
  const base = storePath(kms);
  return [base, `${base}-wal`, `${base}-shm`].filter((p) => existsSync(p)).map((path) => ({ path, bytes: readFileSync(path) }));
}

/** `PRAGMA wal_checkpoint(TRUNCATE)` through a separate connection. */
export function checkpoint(kms: TestKms): unknown {
  const db = new Database(storePath(kms));
  try {
    return db.pragma("wal_checkpoint(TRUNCATE)");
  } finally {
    db.close();
  }
}

/** Every encoding of a 32-byte key that a careless store or log could contain. */
export function keyForms(bytes: Uint8Array): { label: string; needle: Buffer }[] {
  const b = Buffer.from(bytes);
  return [
    { label: "raw bytes", needle: b },
    { label: "base64url", needle: Buffer.from(base64url.encode(b), "latin1") },
    { label: "base64", needle: Buffer.from(b.toString("base64"), "latin1") },
    { label: "hex", needle: Buffer.from(b.toString("hex"), "latin1") },
  ];
}

export const hex64 = () => Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("hex");
