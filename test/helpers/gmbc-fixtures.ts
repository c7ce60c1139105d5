import Database from "better-sqlite3";
import { CompactSign, exportJWK, generateKeyPair, type JWK } from "jose";
import { expect } from "vitest";
import { blockHash } from "../../src/primitives/block-hash.js";
import { rfc3339Now, signAppendedBlock, type BlockSigningAlgorithm, type Operation } from "../../src/primitives/gmbc/index.js";
import { RawClient, type TestKms } from "./harness.js";

/** One device of an entity: a signing key pair whose public half is (or will be) registered (§7). */
export interface Device {
  readonly entity: string;
  readonly kid: string;
  readonly alg: BlockSigningAlgorithm;
  readonly privateKey: CryptoKey;
  /** The public JWK with its kid, as a client registers it. */
  readonly publicJwk: JWK & { kid: string };
}

/** A fresh device key: EC P-256 for ES256, RSA-2048 for PS256/RS256. */
export async function newDevice(entity: string, kid: string, alg: BlockSigningAlgorithm = "ES256"): Promise<Device> {
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true, ...(alg === "ES256" ? {} : { modulusLength: 2048 }) });
  const jwk = await exportJWK(publicKey);
  return { entity, kid, alg, privateKey, publicJwk: { ...jwk, kid } };
}

/** A RawClient with a live channel for `user`. */
export async function channel(kms: TestKms, user: string): Promise<RawClient> {
  const raw = new RawClient(kms, user);
  const reply = await raw.ecdhe();
  expect(reply.status).toBe(201);
  return raw;
}

/** A reply that must be a common message (JWE) with `status`, and a reason matching `reason` if given. */
export function expectStatus(res: { form: string; payload: Record<string, unknown> }, status: number, reason?: RegExp): Record<string, unknown> {
  expect({ form: res.form, status: res.payload.status, reason: res.payload.reason }).toMatchObject({ form: "jwe", status });
  if (reason) expect(String(res.payload.reason)).toMatch(reason);
  return res.payload;
}

/** Registers a device key over the owner's channel (`create /entities/keys`), expecting 201. */
export async function registerDevice(raw: RawClient, device: Device): Promise<void> {
  expectStatus(await raw.request({ method: "create", uri: "/entities/keys", jwk: device.publicJwk }), 201);
}

/**
 * An appended block signed by `device` (§8). `kid: null` signs without a `kid` header; `creator`
 * and `created` default to the device's entity and now.
 */
export async function signBlock(
  device: Device,
  fields: { antecedent: string; operations: readonly Operation[]; creator?: string; created?: string },
  opts: { kid?: string | null; alg?: BlockSigningAlgorithm } = {},
): Promise<string> {
  const payload = {
    antecedent: fields.antecedent,
    creator: fields.creator ?? device.entity,
    created: fields.created ?? rfc3339Now(),
    operations: fields.operations.map((o) => ({ ...o })),
  };
  const alg = opts.alg ?? device.alg;
  if (opts.kid === null) {
    return new CompactSign(new TextEncoder().encode(JSON.stringify(payload))).setProtectedHeader({ alg }).sign(device.privateKey);
  }
  return signAppendedBlock(payload, device.privateKey, { alg, kid: opts.kid ?? device.kid });
}

/** Signs any payload bytes (JSON or not) as a compact JWS with `device`'s key and kid. */
export async function signRaw(device: Device, payload: unknown): Promise<string> {
  const bytes = new TextEncoder().encode(typeof payload === "string" ? payload : JSON.stringify(payload));
  return new CompactSign(bytes).setProtectedHeader({ alg: device.alg, kid: device.kid }).sign(device.privateKey);
}

export const add = (entity: string): Operation => ({ entity, optype: "add" });
export const remove = (entity: string): Operation => ({ entity, optype: "remove" });

/** Everything the store holds about one chain, read straight from the SQLite file. */
export interface ChainSnapshot {
  chain: { uri: string; requester: string; length: number; tail_hash: string } | undefined;
  blocks: { position: number; hash: string; jws: string; creator: string }[];
  memberships: { entity: string; start_pos: number; end_pos: number | null }[];
}

function withDb<T>(kms: TestKms, f: (db: Database.Database) => T): T {
  if (kms.config.store.kind !== "sqlite") throw new Error("these tests need the SQLite store");
  const db = new Database(kms.config.store.path, { readonly: true });
  try {
    return f(db);
  } finally {
    db.close();
  }
}

export function chainSnapshot(kms: TestKms, chainUri: string): ChainSnapshot {
  return withDb(kms, (db) => ({
    chain: db.prepare("SELECT uri, requester, length, tail_hash FROM chains WHERE uri = ?").get(chainUri) as ChainSnapshot["chain"],
    blocks: db.prepare("SELECT position, hash, jws, creator FROM blocks WHERE chain_uri = ? ORDER BY position").all(chainUri) as ChainSnapshot["blocks"],
    memberships: db
      .prepare("SELECT entity, start_pos, end_pos FROM memberships WHERE chain_uri = ? ORDER BY entity, start_pos")
      .all(chainUri) as ChainSnapshot["memberships"],
  }));
}

/** Rows of a table (to show that a refusal stored nothing). */
export function rowCount(kms: TestKms, table: "chains" | "blocks" | "memberships" | "entity_keys"): number {
  return withDb(kms, (db) => (db.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n);
}

/** Positions of a chain that hold more than one block (a fork); must always be empty. */
export function forkedPositions(kms: TestKms, chainUri: string): number[] {
  return withDb(kms, (db) =>
    (db.prepare("SELECT position FROM blocks WHERE chain_uri = ? GROUP BY position HAVING count(*) > 1").all(chainUri) as { position: number }[]).map(
      (r) => r.position,
    ),
  );
}

/** The stored entity key rows (raw JSON text of each JWK). */
export function storedKeyRows(kms: TestKms): { entity: string; kid: string; jwk: string; revoked_at: number | null }[] {
  return withDb(kms, (db) => db.prepare("SELECT entity, kid, jwk, revoked_at FROM entity_keys ORDER BY entity, kid").all() as never);
}

/** Creates a chain (`create /blocks`) adding `members`; returns its genesis block, uri and hash. */
export async function createChain(raw: RawClient, members: readonly string[]): Promise<{ jws: string; uri: string; hash: string }> {
  const reply = expectStatus(
    await raw.request({ method: "create", uri: "/blocks", blockPayload: { operations: members.map((m) => add(m)) } }),
    201,
  );
  const jws = reply.block as string;
  const payload = JSON.parse(Buffer.from(jws.split(".")[1]!, "base64url").toString("utf8")) as { uri: string };
  return { jws, uri: payload.uri, hash: await blockHash(jws) };
}

/** `create <chain>` with `blocks`. */
export function append(raw: RawClient, chainUri: string, blocks: readonly unknown[]) {
  return raw.request({ method: "create", uri: chainUri, blocks });
}
