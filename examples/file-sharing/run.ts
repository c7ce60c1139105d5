/**
 * draft-abiggs-saag-key-management-service-03 §3.1, "Securing an HTTP File Sharing Service", run
 * end to end: a real Keyward KMS (in this process), an untrusted file-sharing service, and three
 * users A (alice), B (bob) and C (carol) with the Keyward SDK.
 *
 *   npm run example:file-sharing                 # policy 1
 *   npm run example:file-sharing -- --policy 2
 *   npm run example:file-sharing -- --all        # policies 1, 2 and 3 in turn
 */
import { realpathSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { DeviceKey, GroupKeys, Groups, type KmsClient } from "../../src/client/index.js";
import { describePolicy } from "../../src/server/gk/policy.js";
import { preview, startFileServer, type FileServer } from "./file-server.js";
import { startDemoKms, type DemoKms } from "./kms.js";
import { attempt, short, shown, stepLog, type Access } from "../lib/steps.js";

export type Policy = 1 | 2 | 3;

/** Whether the KMS handed a GK over, and if not, its refusal. */
export type { Access };

/** What happened, for tests and the summary. */
export interface FileSharingResult {
  readonly policy: Policy;
  readonly groupUri: string;
  readonly blocks: { readonly genesis: string; readonly addedBAndC: string; readonly removedC: string };
  /** The GK of the first file (steps 2-11), after step 6 bound it. */
  readonly gk: { readonly uri: string; readonly block: string };
  /** B's GK Get for the first file: before step 5, between steps 5 and 6, and at step 9. */
  readonly race: { readonly beforeAdd: Access; readonly beforeBind: Access; readonly afterBind: Access };
  /** Steps 8-10 and 11: B and C decrypted exactly A's bytes. */
  readonly bobDecrypted: boolean;
  readonly carolDecrypted: boolean;
  /** After C's removal (step 13): C asks the KMS for the first file's GK again, with no cached copy. */
  readonly carolAfterRemoval: Access;
  /** ... and whether the copy C fetched at step 11, still in its memory, decrypts the first file. */
  readonly carolCachedCopyDecrypts: boolean;
  /** The second file, encrypted after C's removal (steps 14-16). */
  readonly rotation: {
    readonly gkUri: string;
    readonly block: string;
    readonly bobDecrypted: boolean;
    readonly carolAccess: Access;
  };
  /** What the untrusted service holds. */
  readonly fileServer: {
    readonly files: readonly { readonly id: string; readonly bytes: number; readonly gk: string; readonly firstBytes: string; readonly containsPlaintext: boolean }[];
  };
  /** Every line printed. */
  readonly lines: readonly string[];
}

const ALICE = "alice@example.com";
const BOB = "bob@example.com";
const CAROL = "carol@example.com";

/** One user's client: a secure channel to the KMS, a registered device key, Groups and GroupKeys. */
interface User {
  readonly name: "A" | "B" | "C";
  readonly entity: string;
  readonly kms: KmsClient;
  readonly groups: Groups;
  readonly gks: GroupKeys;
  /** A GroupKeys with nothing cached: the same device in a new session. */
  fresh(): GroupKeys;
}

async function openUser(kms: DemoKms, name: User["name"], entity: string, type: "ec" | "rsa"): Promise<User> {
  const client = kms.client(entity);
  const device = await DeviceKey.generate({ type, kid: `${entity.split("@")[0]}-laptop` });
  const groups = new Groups(client, { user: entity, device });
  await client.connect(); // ECDHE (§5): the secure channel the draft assumes
  await groups.registerDevice(); // the public key GKs are wrapped to
  const fresh = () => new GroupKeys(client, { user: entity, device, chains: groups });
  return { name, entity, kms: client, groups, gks: fresh(), fresh };
}


function contains(haystack: Uint8Array, needle: Uint8Array): boolean {
  return Buffer.from(haystack.buffer, haystack.byteOffset, haystack.byteLength).includes(Buffer.from(needle));
}

async function upload(server: FileServer, owner: string, id: string, jwe: string, gkUri: string): Promise<void> {
  const res = await fetch(`${server.url}/files/${encodeURIComponent(id)}`, {
    method: "PUT",
    headers: { "content-type": "application/octet-stream", "x-keyward-gk": gkUri, "x-user": owner },
    body: jwe,
  });
  if (res.status !== 201) throw new Error(`the file service refused the upload: ${res.status}`);
}

async function share(server: FileServer, id: string, user: string): Promise<void> {
  const res = await fetch(`${server.url}/files/${encodeURIComponent(id)}/share`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user }),
  });
  if (!res.ok) throw new Error(`the file service refused to share: ${res.status}`);
}

async function sharesOf(server: FileServer, user: string): Promise<{ id: string; gk: string; owner: string }[]> {
  return (await (await fetch(`${server.url}/shares/${encodeURIComponent(user)}`)).json()) as { id: string; gk: string; owner: string }[];
}

/** Step 8: the encrypted file and its GK URI metadata, as the service returns them. */
async function download(server: FileServer, id: string): Promise<{ jwe: string; gk: string; bytes: number }> {
  const res = await fetch(`${server.url}/files/${encodeURIComponent(id)}`);
  if (!res.ok) throw new Error(`the file service has no ${id}: ${res.status}`);
  const body = new Uint8Array(await res.arrayBuffer());
  return { jwe: new TextDecoder().decode(body), gk: res.headers.get("x-keyward-gk") ?? "", bytes: body.length };
}

/**
 * Plays draft §3.1 steps 1-11, the race the draft notes, and what follows a member's removal
 * (steps 12-16) against a fresh KMS configured with `policy`. Prints `step N: ...` lines through
 * `log` and returns what happened. Throws if anything the draft promises does not hold (B or C
 * reads other bytes, the file service holds a plaintext, a refusal that should be a grant).
 *
 * @example
 * const result = await runFileSharing({ policy: 2, log: () => undefined });
 * result.carolAfterRemoval // { granted: false, status: 403, reason: "policy 2: ..." }
 */
export async function runFileSharing(opts: { policy?: Policy; log?: (line: string) => void } = {}): Promise<FileSharingResult> {
  const policy = opts.policy ?? 1;
  const { lines, say, ensure } = stepLog(`file-sharing demo (policy ${policy})`, opts.log);

  const kms = await startDemoKms({ policy });
  let server: FileServer | undefined;
  const users: User[] = [];
  try {
    server = await startFileServer({ log: say });
    say(`setup: KMS ${kms.uri} on ${kms.url}, policy ${policy}: ${describePolicy(policy)}`);
    say(`setup: an untrusted file-sharing service on ${server.url} (it stores bytes; it never sees a key)`);
    const A = await openUser(kms, "A", ALICE, "ec");
    const B = await openUser(kms, "B", BOB, "rsa");
    const C = await openUser(kms, "C", CAROL, "ec");
    users.push(A, B, C);
    say(`setup: A (${ALICE}), B (${BOB}, RSA device) and C (${CAROL}) each establish a secure channel to the KMS (ECDHE) and register a device key`);

    // 1. A new GMBC with A as its only member.
    const group = await A.groups.create([ALICE]);
    say(`step 1: A requests a new GMBC adding A; the KMS creates the genesis block (curator ${kms.uri}, member A): group ${group.uri}, block ${short(group.genesis.hash)}`);

    // 2. A new, unbound GK: only A can fetch it.
    const gk = await A.gks.create();
    say(`step 2: A requests a new GK; the KMS generates ${gk.uri} (unbound) and returns it wrapped to A's device only`);

    // 3. A encrypts the file with the GK.
    const fileId = "board-minutes.txt";
    const plaintext = new TextEncoder().encode(
      `Board minutes, Q3 (CONFIDENTIAL ${globalThis.crypto.randomUUID()})\n1. The merger goes ahead.\n2. Do not tell the file-sharing provider.\n`,
    );
    const jwe = await A.gks.encrypt(gk, plaintext, "text/plain");
    say(`step 3: A encrypts ${fileId} (${plaintext.length} bytes) with the GK's key: a compact JWE (dir, A256GCM) whose kid is the GK URI`);

    // 4. A posts it, the GK URI as metadata.
    say(`step 4: A posts the encrypted file to the file-sharing service, with the GK URI as metadata`);
    await upload(server, ALICE, fileId, jwe, gk.uri);
    const held = server.files().find((f) => f.id === fileId)!;
    ensure(!contains(held.bytes, plaintext), "the file service holds the plaintext");
    say(`        the service now holds ${held.bytes.length} bytes starting ${preview(held.bytes, 40)}: ciphertext, no plaintext in it (checked)`);

    // The race the draft notes: step 9 before steps 5 and 6.
    const beforeAdd = await attempt(() => B.gks.fetch(gk.uri));
    ensure(!beforeAdd.granted, "B fetched the GK before being added");
    say(`race: B learns of the file early and performs step 9 before steps 5 and 6 → ${shown(beforeAdd)}`);

    // 5. A adds B and C in a block it signs.
    const addedBAndC = await A.groups.add(group.uri, [BOB, CAROL]);
    say(`step 5: A signs a block adding B and C (antecedent: the genesis block ${short(group.genesis.hash)}) and posts it: block ${short(addedBAndC)}, members A, B, C`);

    const beforeBind = await attempt(() => B.gks.fetch(gk.uri));
    ensure(!beforeBind.granted, "B fetched the GK before it was bound");
    say(`race: B tries again between steps 5 and 6: a member now, but the GK is not bound yet → ${shown(beforeBind)}`);

    // 6. A binds the GK to the block of step 5.
    const bound = await A.gks.bind(gk.uri, addedBAndC);
    ensure(bound.block === addedBAndC, "the GK is not bound to the block of step 5");
    say(`step 6: A binds the GK to block ${short(addedBAndC)}: retrieving it now follows the group's membership at that block`);

    // 7. B and C learn of the file from the service.
    await share(server, fileId, BOB);
    await share(server, fileId, CAROL);
    const bobSees = await sharesOf(server, BOB);
    const carolSees = await sharesOf(server, CAROL);
    ensure(bobSees.some((s) => s.id === fileId) && carolSees.some((s) => s.id === fileId), "the share lists do not show the file");
    say(`step 7: A shares the file on the service; B and C learn of it from their share lists (the mechanism is out of the draft's scope)`);

    // 8-10. B retrieves, fetches the GK, decrypts.
    const forBob = await download(server, fileId);
    say(`step 8: B retrieves the encrypted file (${forBob.bytes} bytes) and its GK URI metadata ${forBob.gk}`);
    const afterBind = await attempt(() => B.gks.fetch(forBob.gk));
    ensure(afterBind.granted, `B's GK Get after the bind was ${shown(afterBind)}`);
    say(`step 9: B performs a GK Get: the KMS checks the GK's block, B is a member there → granted, wrapped to B's device only`);
    const bobPlain = (await B.gks.decrypt(forBob.jwe)).plaintext;
    const bobDecrypted = Buffer.from(bobPlain).equals(Buffer.from(plaintext));
    ensure(bobDecrypted, "B decrypted other bytes than A encrypted");
    say(`step 10: B decrypts the file: ${bobPlain.length} bytes, identical to A's ("${new TextDecoder().decode(bobPlain).split("\n")[0]}")`);

    // 11. C does the same.
    const forCarol = await download(server, fileId);
    const carolPlain = (await C.gks.decrypt(forCarol.jwe)).plaintext;
    const carolDecrypted = Buffer.from(carolPlain).equals(Buffer.from(plaintext));
    ensure(carolDecrypted, "C decrypted other bytes than A encrypted");
    say(`step 11: C performs steps 8 to 10 in the same fashion: file retrieved, GK Get granted, ${carolPlain.length} bytes decrypted, identical`);

    // Beyond §3.1: C leaves the group.
    const removedC = await A.groups.remove(group.uri, [CAROL]);
    say(`step 12: (beyond §3.1) A signs a block removing C: block ${short(removedC)}, members A, B`);

    const carolAfterRemoval = await attempt(() => C.fresh().decrypt(forCarol.jwe));
    ensure(carolAfterRemoval.granted === (policy === 1), `C's GK Get after removal was ${shown(carolAfterRemoval)} under policy ${policy}`);
    say(
      carolAfterRemoval.granted
        ? `step 13: C, removed, asks the KMS for the file's GK again (no cached copy) → granted: under policy 1 C keeps the keys it was entitled to (a member at the bound block)`
        : `step 13: C, removed, asks the KMS for the file's GK again (no cached copy) → ${shown(carolAfterRemoval)}`,
    );
    const carolCachedCopyDecrypts = await C.gks.decrypt(forCarol.jwe).then(
      (r) => Buffer.from(r.plaintext).equals(Buffer.from(plaintext)),
      () => false,
    );
    say(
      `        (the copy C fetched at step 11 ${carolCachedCopyDecrypts ? "still decrypts the file: a key once handed out cannot be recalled, which is why new content gets a new GK" : "no longer decrypts"})`,
    );

    // New content after the removal: a new GK bound to the new tail.
    const nextId = "q4-plan.txt";
    const next = new TextEncoder().encode(`Q4 plan (after C left, ${globalThis.crypto.randomUUID()}): announce the merger on 1 December.\n`);
    const nextJwe = await A.gks.encryptFor(group.uri, next, "text/plain");
    const gk2 = await A.gks.currentKey(group.uri);
    ensure(gk2.uri !== gk.uri && gk2.block === removedC, "the new content does not use a new GK bound to the new tail");
    await upload(server, ALICE, nextId, nextJwe, gk2.uri);
    await share(server, nextId, BOB);
    await share(server, nextId, CAROL); // an untrusted service may hand it to anyone
    say(`step 14: A encrypts ${nextId} with encryptFor(group): the membership changed, so a new GK ${gk2.uri} bound to block ${short(removedC)}; uploaded, and the service lists it for B and even for C`);

    const bobNext = await download(server, nextId);
    const bobNextPlain = (await B.gks.decrypt(bobNext.jwe)).plaintext;
    const bobDecryptedNext = Buffer.from(bobNextPlain).equals(Buffer.from(next));
    ensure(bobDecryptedNext, "B did not decrypt the new file");
    say(`step 15: B retrieves ${nextId}, performs a GK Get (a member at the new GK's block and now → granted) and decrypts it, identical`);

    const carolNext = await download(server, nextId);
    const carolAccess = await attempt(() => C.fresh().decrypt(carolNext.jwe));
    ensure(!carolAccess.granted, "C fetched the GK of content encrypted after its removal");
    say(`step 16: C retrieves ${nextId} from the service (it hands it over) and performs a GK Get → ${shown(carolAccess)}: C cannot read it`);

    const files = server.files().map((f) => ({
      id: f.id,
      bytes: f.bytes.length,
      gk: f.gk,
      firstBytes: preview(f.bytes, 40),
      containsPlaintext: contains(f.bytes, plaintext) || contains(f.bytes, next),
    }));
    ensure(files.every((f) => !f.containsPlaintext), "the file service holds a plaintext");
    say(`check: the file-sharing service holds ${files.length} files (${files.reduce((n, f) => n + f.bytes, 0)} bytes); neither plaintext appears in them`);

    return {
      policy,
      groupUri: group.uri,
      blocks: { genesis: group.genesis.hash, addedBAndC, removedC },
      gk: { uri: gk.uri, block: bound.block! },
      race: { beforeAdd, beforeBind, afterBind },
      bobDecrypted,
      carolDecrypted,
      carolAfterRemoval,
      carolCachedCopyDecrypts,
      rotation: { gkUri: gk2.uri, block: gk2.block!, bobDecrypted: bobDecryptedNext, carolAccess },
      fileServer: { files },
      lines,
    };
  } finally {
    for (const u of users) await u.kms.close().catch(() => undefined);
    await server?.close();
    await kms.close();
  }
}

function summary(r: FileSharingResult): string {
  const s = (a: Access) => (a.granted ? "granted" : `${a.status}`);
  return [
    `policy ${r.policy}:`,
    `race ${s(r.race.beforeAdd)}/${s(r.race.beforeBind)} → ${s(r.race.afterBind)};`,
    `B ${r.bobDecrypted ? "read" : "FAILED"}, C ${r.carolDecrypted ? "read" : "FAILED"};`,
    `C after removal, old GK: ${s(r.carolAfterRemoval)}; new GK: ${s(r.rotation.carolAccess)}`,
  ].join(" ");
}

async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { policy: { type: "string", default: "1" }, all: { type: "boolean", default: false }, help: { type: "boolean", short: "h", default: false } },
  });
  if (values.help) {
    console.log("usage: npm run example:file-sharing -- [--policy 1|2|3] [--all]");
    return;
  }
  if (!["1", "2", "3"].includes(values.policy)) throw new Error(`--policy must be 1, 2 or 3, not '${values.policy}'`);
  const policies: Policy[] = values.all ? [1, 2, 3] : [Number(values.policy) as Policy];
  const results: FileSharingResult[] = [];
  for (const policy of policies) {
    console.log(`\n=== draft §3.1, securing an HTTP file sharing service — KMS policy ${policy} ===`);
    results.push(await runFileSharing({ policy }));
  }
  console.log("\nsummary:");
  for (const r of results) console.log(`  ${summary(r)}`);
}

const invoked = process.argv[1];
if (invoked !== undefined && import.meta.url === pathToFileURL(realpathSync(invoked)).href) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    console.error(`example:file-sharing: ${e instanceof Error ? e.message : String(e)}`);
    process.exit(1);
  });
}
