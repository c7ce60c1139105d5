/**
 * draft-abiggs-saag-key-management-service-03 §3.2, "Securing an XMPP Multi-User Chat", run end to
 * end on a real XMPP server: Prosody (started here, loopback only, thrown away at the end) with a
 * MUC service and the Keyward KMS connected to it as an external component (XEP-0114). Users A
 * (alice), B (bob) and C (carol) are XMPP clients (xmpp.js) in one MUC room; every KMS request goes
 * over their own XMPP connection (the SDK's XmppTransport): the XMPP service is the KMS transport.
 *
 *   npm run example:xmpp-muc
 *
 * Needs Prosody (`apt-get install prosody`); it never installs anything.
 */
import { realpathSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { client, xml, type Client } from "@xmpp/client";
import type { Element } from "@xmpp/xml";
import { decodeProtectedHeader } from "jose";
import { DeviceKey, GroupKeys, Groups, KmsClient, XmppTransport, xmppJsConnection } from "../../src/client/index.js";
import { prosodyInstalled, startProsody, type ProsodyServer } from "../../test/helpers/prosody.js";
import { startXmppDemoKms, type XmppDemoKms } from "./kms.js";
import { attempt, short, shown, stepLog, type Access } from "../lib/steps.js";

const NS_KMS = "urn:x-keyward:kms:1";
const NS_EME = "urn:xmpp:eme:0";
const NS_MUC = "http://jabber.org/protocol/muc";
const NS_MUC_USER = "http://jabber.org/protocol/muc#user";
const NS_MAM = "urn:xmpp:mam:2";
const NS_FORWARD = "urn:xmpp:forward:0";
const NS_DELAY = "urn:xmpp:delay";
const COMPONENT = "kms.localhost";
const FALLBACK_BODY = "[This message is end-to-end encrypted with Keyward (urn:x-keyward:kms:1); your client cannot display it.]";

const ALICE = "alice@example.com";
const BOB = "bob@example.com";
const CAROL = "carol@example.com";

/** Thrown when Prosody is not installed: the demo needs a real XMPP server. */
export class ProsodyMissingError extends Error {
  constructor() {
    super("prosody is not installed: this demo runs a real XMPP server. Install it (Debian/Ubuntu: `apt-get install prosody`) and run it again");
  }
}

/** Whether the KMS handed a GK over, and if not, its refusal. */
export type { Access };

/** A groupchat message as a room occupant received it. */
interface Received {
  readonly id: string;
  readonly fromNick: string;
  readonly encrypted?: string;
  readonly hint: boolean;
  readonly body?: string;
  /** Delivered as room history (XEP-0203 delay), not live. */
  readonly delayed: boolean;
  readonly xml: string;
}

/** What happened, for tests and the summary. */
export interface XmppMucResult {
  readonly room: string;
  readonly groupUri: string;
  readonly blocks: { readonly genesis: string; readonly removedC: string };
  readonly gk1: { readonly uri: string; readonly block: string };
  readonly gk2: { readonly uri: string; readonly block: string };
  /** The messages' wire form as B received the first one: §14. */
  readonly firstMessage: { readonly kidIsGk: boolean; readonly hint: boolean; readonly fallbackBody: string };
  readonly bobRead: readonly [boolean, boolean];
  readonly carolReadFirst: boolean;
  /** C still receives the second message from the room ... */
  readonly carolReceivedSecond: boolean;
  /** ... but her GK Get is refused and she cannot read it. */
  readonly carolSecondAccess: Access;
  readonly carolReadSecond: boolean;
  /** The room's archive (XEP-0313 on the room, mod_muc_mam), as A queried it. */
  readonly archive: { readonly messages: number; readonly allEncrypted: boolean; readonly containsPlaintext: boolean };
  /** What a late joiner (dave, in no group) received as room history. */
  readonly lateJoiner: { readonly messages: number; readonly allEncrypted: boolean; readonly containsPlaintext: boolean };
  readonly lines: readonly string[];
}

/** One user: an XMPP client in the room, and the Keyward SDK over that same XMPP connection. */
interface Member {
  readonly name: "A" | "B" | "C";
  readonly entity: string;
  readonly nick: string;
  readonly xmpp: Client;
  readonly kms: KmsClient;
  readonly groups: Groups;
  readonly gks: GroupKeys;
  /** A GroupKeys with nothing cached: the same device in a new session. */
  fresh(): GroupKeys;
  readonly inbox: Received[];
}

/** Connects a Prosody user with xmpp.js; PLAIN on loopback (see test/helpers/prosody.ts), reconnect off. */
async function connect(prosody: ProsodyServer, user: string, resource: string): Promise<Client> {
  const password = prosody.users[user]!;
  const xmpp = client({
    service: prosody.c2sService,
    domain: prosody.domain,
    resource,
    credentials: (authenticate: (c: { username: string; password: string }, mechanism: string) => Promise<void>) => authenticate({ username: user, password }, "PLAIN"),
  });
  xmpp.reconnect.stop();
  xmpp.on("error", () => {});
  await xmpp.start();
  return xmpp;
}

/** Collects the room's groupchat messages as this client receives them. */
function collect(xmpp: Client, room: string): Received[] {
  const inbox: Received[] = [];
  xmpp.on("stanza", (st: Element) => {
    if (!st.is("message") || st.attrs.type !== "groupchat" || !st.attrs.from?.startsWith(`${room}/`)) return;
    const encrypted = st.getChild("encrypted", NS_KMS)?.text();
    const body = st.getChildText("body") ?? undefined;
    inbox.push({
      id: st.attrs.id ?? "",
      fromNick: st.attrs.from.slice(room.length + 1),
      ...(encrypted !== undefined ? { encrypted } : {}),
      hint: st.getChild("encryption", NS_EME)?.attrs.namespace === NS_KMS,
      ...(body !== undefined ? { body } : {}),
      delayed: st.getChild("delay", NS_DELAY) !== undefined,
      xml: st.toString(),
    });
  });
  return inbox;
}

/** Joins the MUC room as `nick`; resolves on the room's self-presence (status 110). */
async function join(xmpp: Client, room: string, nick: string, history: boolean): Promise<void> {
  const joined = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${nick} could not join ${room}`)), 10_000);
    const onStanza = (st: Element) => {
      if (!st.is("presence") || st.attrs.from !== `${room}/${nick}`) return;
      if (st.attrs.type === "error") {
        clearTimeout(timer);
        reject(new Error(`${room} refused ${nick}: ${st.getChild("error")?.toString()}`));
        return;
      }
      const statuses = st.getChild("x", NS_MUC_USER)?.getChildren("status").map((s) => s.attrs.code) ?? [];
      if (statuses.includes("110")) {
        clearTimeout(timer);
        xmpp.removeListener("stanza", onStanza);
        resolve();
      }
    };
    xmpp.on("stanza", onStanza);
  });
  await xmpp.send(xml("presence", { to: `${room}/${nick}` }, xml("x", { xmlns: NS_MUC }, history ? null : xml("history", { maxstanzas: "0" }))));
  await joined;
}

/** The §14 groupchat message: the JWE in `<encrypted/>`, the XEP-0380 hint, a fallback body. */
function encryptedMessage(room: string, id: string, jwe: string): Element {
  return xml(
    "message",
    { type: "groupchat", to: room, id },
    xml("body", {}, FALLBACK_BODY),
    xml("encrypted", { xmlns: NS_KMS }, jwe),
    xml("encryption", { xmlns: NS_EME, namespace: NS_KMS, name: "Keyward" }),
    xml("store", { xmlns: "urn:xmpp:hints" }),
  );
}

async function waitFor<T>(what: string, probe: () => T | undefined, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** A's query of the room archive (XEP-0313, to the room's JID): the archived message stanzas. */
async function queryArchive(xmpp: Client, room: string): Promise<Element[]> {
  const queryid = `q-${globalThis.crypto.randomUUID()}`;
  const found: Element[] = [];
  const onStanza = (st: Element) => {
    const result = st.is("message") ? st.getChild("result", NS_MAM) : undefined;
    if (result?.attrs.queryid !== queryid) return;
    const archived = result.getChild("forwarded", NS_FORWARD)?.getChild("message");
    if (archived) found.push(archived);
  };
  xmpp.on("stanza", onStanza);
  try {
    await xmpp.iqCaller.request(xml("iq", { type: "set", to: room }, xml("query", { xmlns: NS_MAM, queryid })), 10_000);
  } finally {
    xmpp.removeListener("stanza", onStanza);
  }
  return found;
}


/**
 * Plays draft §3.2 steps 1-7 over XMPP only, then C's removal and the next message, then checks
 * the room's history. Prints `step N: ...` lines through `log` and returns what happened. Throws
 * if anything the draft promises does not hold, and {@link ProsodyMissingError} without Prosody.
 *
 * @example
 * const result = await runXmppMuc({ log: () => undefined });
 * result.carolSecondAccess // { granted: false, status: 403, reason: "..." }
 */
export async function runXmppMuc(opts: { log?: (line: string) => void } = {}): Promise<XmppMucResult> {
  if (!prosodyInstalled()) throw new ProsodyMissingError();
  const { lines, say, ensure } = stepLog("xmpp-muc demo", opts.log);

  const secret = `component-${globalThis.crypto.randomUUID()}`;
  const prosody = await startProsody({
    users: { alice: "alice-pw", bob: "bob-pw", carol: "carol-pw", dave: "dave-pw" },
    components: { [COMPONENT]: secret },
  });
  let kms: XmppDemoKms | undefined;
  const clients: Client[] = [];
  const members: Member[] = [];
  try {
    say(`setup: Prosody ${prosody.c2sService} (c2s) with the MUC service ${prosody.mucDomain} (room archive: mod_muc_mam), on loopback only`);
    kms = await startXmppDemoKms({ service: prosody.componentService, component: COMPONENT, secret });
    say(`setup: KMS ${kms.uri} connected to Prosody as the external component ${COMPONENT} (XEP-0114, ${prosody.componentService}); no client uses its HTTP port`);
    const room = `board@${prosody.mucDomain}`;

    const open = async (name: Member["name"], user: string, entity: string, type: "ec" | "rsa"): Promise<Member> => {
      const xmpp = await connect(prosody, user, "laptop");
      clients.push(xmpp);
      const inbox = collect(xmpp, room);
      const demo = kms!;
      // The application hands the SDK its own XMPP connection: chat and KMS share it.
      const transport = new XmppTransport({ connection: xmppJsConnection(xmpp, xml), to: COMPONENT });
      const kmsClient = new KmsClient({ transport, user: entity, token: () => demo.token(entity), trustRoots: [demo.caPem] });
      const device = await DeviceKey.generate({ type, kid: `${user}-laptop` });
      const groups = new Groups(kmsClient, { user: entity, device });
      await kmsClient.connect(); // discovery and ECDHE, as IQs to kms.localhost
      await groups.registerDevice();
      const fresh = () => new GroupKeys(kmsClient, { user: entity, device, chains: groups });
      await join(xmpp, room, user, false);
      const m: Member = { name, entity, nick: user, xmpp, kms: kmsClient, groups, gks: fresh(), fresh, inbox };
      members.push(m);
      return m;
    };
    const A = await open("A", "alice", ALICE, "ec");
    const B = await open("B", "bob", BOB, "rsa");
    const C = await open("C", "carol", CAROL, "ec");
    say(`setup: A (alice@localhost, KMS identity ${ALICE}), B (bob@localhost, ${BOB}, an RSA device) and C (carol@localhost, ${CAROL}) log in to Prosody, establish a secure channel to the KMS over XMPP (discovery + ECDHE IQs to ${COMPONENT}), register a device key, and join the room ${room}`);

    // 1. A GMBC with A, B and C.
    const group = await A.groups.create([ALICE, BOB, CAROL]);
    say(`step 1: A requests a new GMBC adding A, B and C; the KMS creates the genesis block (curator ${kms.uri}, members A, B, C): group ${group.uri}, block ${short(group.genesis.hash)}`);

    // 2. A GK bound at once to the genesis block.
    const gk1 = await A.gks.create({ block: group.genesis.hash });
    ensure(gk1.block === group.genesis.hash, "the GK is not bound to the genesis block");
    say(`step 2: A requests a new GK bound to the genesis block: ${gk1.uri} (block ${short(gk1.block!)}), wrapped to A's device only`);

    // 3. A encrypts a message and sends it to the room.
    const marker1 = globalThis.crypto.randomUUID();
    const text1 = `The merger goes ahead on Monday (${marker1}). Not a word to the chat provider.`;
    const jwe1 = await A.gks.encrypt(gk1, new TextEncoder().encode(text1), "text/plain");
    const id1 = `m1-${globalThis.crypto.randomUUID()}`; // not the marker: the plaintext must appear nowhere
    await A.xmpp.send(encryptedMessage(room, id1, jwe1));
    say(`step 3: A encrypts a message with the GK (compact JWE, dir/A256GCM, kid = the GK URI) and sends it to ${room} as <encrypted xmlns='${NS_KMS}'> with the XEP-0380 hint and a fallback <body>`);

    // 4. The MUC delivers it to B and C.
    const toBob = await waitFor("B to receive message 1", () => B.inbox.find((m) => m.id === id1));
    const toCarol = await waitFor("C to receive message 1", () => C.inbox.find((m) => m.id === id1));
    ensure(toBob.encrypted === jwe1 && toCarol.encrypted === jwe1, "the room changed the encrypted payload");
    ensure(!toBob.xml.includes(marker1), "the message as delivered contains the plaintext");
    ensure(toBob.hint && toBob.body === FALLBACK_BODY, "the XEP-0380 hint or the fallback body is missing");
    say(`step 4: the MUC service delivers A's message to B and C (from ${room}/${toBob.fromNick}); what it relayed is ${toBob.xml.length} bytes of XML with no plaintext in it (checked)`);

    // 5. B fetches the GK the message names.
    const kid1 = decodeProtectedHeader(toBob.encrypted!).kid;
    ensure(kid1 === gk1.uri, "the message's kid is not the GK URI");
    const bobGk1 = await attempt(() => B.gks.fetch(kid1 as string));
    ensure(bobGk1.granted, `B's GK Get was ${shown(bobGk1)}`);
    say(`step 5: B performs a GK Get for ${kid1} (the kid in the message's JWE header), over XMPP: B is a member at the genesis block → granted, wrapped to B's device`);

    // 6. B decrypts.
    const bobPlain1 = new TextDecoder().decode((await B.gks.decrypt(toBob.encrypted!)).plaintext);
    ensure(bobPlain1 === text1, "B decrypted another text than A sent");
    say(`step 6: B decrypts the message: "${bobPlain1}"`);

    // 7. C likewise.
    const carolGk1 = await attempt(() => C.gks.fetch(decodeProtectedHeader(toCarol.encrypted!).kid as string));
    ensure(carolGk1.granted, `C's GK Get was ${shown(carolGk1)}`);
    const carolPlain1 = new TextDecoder().decode((await C.gks.decrypt(toCarol.encrypted!)).plaintext);
    ensure(carolPlain1 === text1, "C decrypted another text than A sent");
    say(`step 7: C performs steps 5 and 6 in the same fashion: GK Get granted, message decrypted, identical`);

    // Beyond §3.2: C is removed; the next message uses a new GK.
    const removedC = await A.groups.remove(group.uri, [CAROL]);
    say(`step 8: (beyond §3.2) A signs a block removing C: block ${short(removedC)}, members A, B; C stays in the XMPP room (the MUC knows nothing of the group)`);

    const marker2 = globalThis.crypto.randomUUID();
    const text2 = `C has left the deal team (${marker2}); the price is 42.`;
    const jwe2 = await A.gks.encryptFor(group.uri, new TextEncoder().encode(text2), "text/plain");
    const gk2 = await A.gks.currentKey(group.uri);
    ensure(gk2.uri !== gk1.uri && gk2.block === removedC, "the next message does not use a new GK bound to the new tail");
    const id2 = `m2-${globalThis.crypto.randomUUID()}`;
    await A.xmpp.send(encryptedMessage(room, id2, jwe2));
    say(`step 9: A's next message uses encryptFor(group): the membership changed, so a new GK ${gk2.uri} bound to block ${short(removedC)}; sent to the room`);

    const bobSecond = await waitFor("B to receive message 2", () => B.inbox.find((m) => m.id === id2));
    const bobPlain2 = new TextDecoder().decode((await B.gks.decrypt(bobSecond.encrypted!)).plaintext);
    ensure(bobPlain2 === text2, "B did not read the second message");
    say(`step 10: B receives it, fetches the new GK over XMPP (a member at its block → granted) and decrypts: "${bobPlain2}"`);

    const carolSecond = await waitFor("C to receive message 2", () => C.inbox.find((m) => m.id === id2));
    const carolSecondAccess = await attempt(() => C.fresh().fetch(decodeProtectedHeader(carolSecond.encrypted!).kid as string));
    ensure(!carolSecondAccess.granted && carolSecondAccess.status === 403, `C's GK Get for the new GK was ${shown(carolSecondAccess)}`);
    const carolReadSecond = await C.gks.decrypt(carolSecond.encrypted!).then(
      (r) => new TextDecoder().decode(r.plaintext) === text2,
      () => false,
    );
    ensure(!carolReadSecond, "C read the message sent after her removal");
    say(`step 11: C still receives the message from the room, but her GK Get is ${shown(carolSecondAccess)}: she cannot read it`);

    // The room's history: the archive and what a late joiner gets.
    const archived = await queryArchive(A.xmpp, room);
    const ours = archived.filter((m) => m.attrs.id === id1 || m.attrs.id === id2);
    const archiveText = archived.map((m) => m.toString()).join("\n");
    const archive = {
      messages: ours.length,
      allEncrypted: ours.length === 2 && ours.every((m) => m.getChild("encrypted", NS_KMS) !== undefined),
      containsPlaintext: [text1, text2, marker1, marker2].some((t) => archiveText.includes(t)),
    };
    ensure(archive.messages === 2 && archive.allEncrypted && !archive.containsPlaintext, `the room archive is not what it should be: ${JSON.stringify(archive)}`);
    say(`check: the room archive (XEP-0313 query to ${room}) holds ${archived.length} messages, both of ours as <encrypted/> JWEs: no plaintext in it (checked)`);

    const dave = await connect(prosody, "dave", "late");
    clients.push(dave);
    const daveInbox = collect(dave, room);
    await join(dave, room, "dave", true);
    const history = await waitFor("the late joiner's history", () => {
      const h = daveInbox.filter((m) => m.delayed && (m.id === id1 || m.id === id2));
      return h.length === 2 ? h : undefined;
    });
    const lateJoiner = {
      messages: history.length,
      allEncrypted: history.every((m) => m.encrypted !== undefined),
      containsPlaintext: daveInbox.some((m) => [text1, text2, marker1, marker2].some((t) => m.xml.includes(t))),
    };
    ensure(lateJoiner.allEncrypted && !lateJoiner.containsPlaintext, "the late joiner's history holds a plaintext");
    say(`check: dave (in no group) joins late and receives ${history.length} messages of room history: ciphertext and the fallback body only`);

    return {
      room,
      groupUri: group.uri,
      blocks: { genesis: group.genesis.hash, removedC },
      gk1: { uri: gk1.uri, block: gk1.block! },
      gk2: { uri: gk2.uri, block: gk2.block! },
      firstMessage: { kidIsGk: kid1 === gk1.uri, hint: toBob.hint, fallbackBody: toBob.body ?? "" },
      bobRead: [bobPlain1 === text1, bobPlain2 === text2],
      carolReadFirst: carolPlain1 === text1,
      carolReceivedSecond: carolSecond.encrypted === jwe2,
      carolSecondAccess,
      carolReadSecond,
      archive,
      lateJoiner,
      lines,
    };
  } finally {
    for (const m of members) await m.kms.close().catch(() => undefined);
    for (const c of clients) await c.stop().catch(() => undefined);
    await kms?.close();
    await prosody.stop();
  }
}

async function main(): Promise<void> {
  console.log("\n=== draft §3.2, securing an XMPP multi-user chat (Prosody + Keyward over XMPP) ===");
  const r = await runXmppMuc();
  console.log(
    `\nsummary: B read ${r.bobRead.filter(Boolean).length}/2; C read the first, was refused the second (${r.carolSecondAccess.granted ? "granted?!" : r.carolSecondAccess.status}); archive and late-joiner history: ciphertext only`,
  );
}

const invoked = process.argv[1];
if (invoked !== undefined && import.meta.url === pathToFileURL(realpathSync(invoked)).href) {
  main().catch((e: unknown) => {
    console.error(`example:xmpp-muc: ${e instanceof Error ? e.message : String(e)}`);
    process.exit(1);
  });
}
