import { randomBytes } from "node:crypto";
import { connect, createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { describe, TestRunner } from "vitest";
import { WebSocket } from "ws";
import { KmsClient, WebSocketTransport, type KmsClientOptions } from "../../src/client/index.js";
import { startTestKms, type TestKms } from "./harness.js";
import { prosodyForTests, prosodyInstalled, startProsody, type ProsodyServer } from "./prosody.js";
import { kmsClientOverXmpp, kmsXmppEnv, waitForReadyz } from "./xmpp-client.js";

/** The SDK transports a suite can run over (PROTOCOL.md §3). */
export type TransportKind = "http" | "ws" | "xmpp";
export const TRANSPORT_KINDS: readonly TransportKind[] = ["http", "ws", "xmpp"];
/** The transports that need nothing but the KMS's own listener (xmpp needs an XMPP server too). */
export type DirectTransportKind = Exclude<TransportKind, "xmpp">;

/** A WebSocketTransport to a TestKms (Node 20 has no global WebSocket: `ws`'s is injected). */
export function wsTransport(kms: { url: string }, opts: { requestTimeoutMs?: number } = {}): WebSocketTransport {
  return new WebSocketTransport({ url: kms.url, WebSocket, ...opts });
}

/**
 * A KmsClient for `user` on a TestKms over the given transport: "http" is `kms.client(user)`,
 * "ws" the same client with a WebSocketTransport (which the caller closes: it is not the
 * client's). For all three transports, with xmpp, use {@link transportServers}.
 *
 * @example
 * const alice = kmsClient(kms, ALICE, "ws");
 */
export function kmsClient(kms: TestKms, user: string, kind: DirectTransportKind, opts: Partial<KmsClientOptions> = {}): KmsClient {
  if (kind === "http") return kms.client(user, opts);
  return kms.client(user, { transport: wsTransport(kms), ...opts });
}

/**
 * `describe(title + " over " + kind, ...)` once per transport of {@link TRANSPORT_KINDS}, for
 * running the same end-to-end suite over each. The xmpp variant needs Prosody: without it, it is
 * skipped with {@link prosodyForTests}'s message (and the file fails under CI=true); the http and
 * ws variants still run.
 *
 * @example
 * const servers = transportServers();
 * afterAll(() => servers.close());
 * describeOverTransports("Groups against a real KMS", (kind) => {
 *   let over: KmsOverTransport;
 *   beforeAll(async () => (over = await servers.start(kind)));
 *   it("pings", async () => (await over.client(ALICE)).ping());
 * });
 */
export function describeOverTransports(title: string, body: (kind: TransportKind) => void): void {
  // The skip message names the suite in full (file, enclosing describe), as the report would.
  const enclosing = TestRunner.getCurrentSuite();
  const where = [enclosing.file?.name, enclosing.name].filter((s) => s).join(" > ");
  for (const kind of TRANSPORT_KINDS) {
    const runs = kind !== "xmpp" || prosodyForTests(`${where} > "${title} over xmpp"`);
    describe.skipIf(!runs)(`${title} over ${kind}`, () => body(kind));
  }
}

/** KmsClients over one transport to one KMS, all closed together. */
export interface TransportClients {
  readonly kind: TransportKind;
  /**
   * A new KmsClient for `user` over the transport: http as `kms.client(user)`; ws with its own
   * WebSocketTransport; xmpp with its own XMPP connection to the file's Prosody (as the Prosody
   * user of the same local part when there is one, else the first one: the JID is never the
   * identity, §3) and no HTTP URL at all, so nothing goes over HTTP behind the test's back.
   */
  client(user: string): Promise<KmsClient>;
  /** Closes every client made here (its channel deleted), then its socket or XMPP connection. */
  close(): Promise<void>;
}

/** A KMS of its own with its clients over one transport; `close()` stops both. */
export interface KmsOverTransport extends TransportClients {
  readonly kms: TestKms;
}

/** Options of {@link TransportServers.kms}: those of `startTestKms`, and whether it joins Prosody. */
export type TransportKmsOptions = NonNullable<Parameters<typeof startTestKms>[0]> & {
  /** Connect the KMS to the file's Prosody as a component, for xmpp clients. Default: whenever Prosody is installed. */
  readonly xmpp?: boolean;
};

/** The servers one test file runs its suites over each transport with; see {@link transportServers}. */
export interface TransportServers {
  /**
   * Starts a TestKms (options as `startTestKms`'s). With `xmpp` (default: when Prosody is
   * installed) it is also a component of the file's Prosody, started on first use, and this
   * resolves once the component is connected (`/readyz` 200).
   */
  kms(opts?: TransportKmsOptions): Promise<TestKms>;
  /** Clients to `kms` over `kind` (xmpp: `kms` must have come from {@link kms} with xmpp on). */
  clients(kms: TestKms, kind: TransportKind): TransportClients;
  /** A KMS of its own for one suite over `kind` (joined to Prosody only for xmpp), with its clients. */
  start(kind: TransportKind, opts?: NonNullable<Parameters<typeof startTestKms>[0]>): Promise<KmsOverTransport>;
  /** Closes every client, every KMS and the Prosody started here (for the file's `afterAll`). */
  close(): Promise<void>;
}

/** How many KMSes one file's Prosody can take (each its own component JID): components are configured when Prosody starts. */
const XMPP_COMPONENTS = 8;

/**
 * One test file's servers for running its end-to-end suites over http, ws and xmpp: KMSes
 * (`startTestKms`) and, for xmpp, a single Prosody for the whole file (it takes about as long to
 * start as several KMSes), each KMS on it as a component of its own (`kms1.localhost`, ...).
 * Everything it started and every client it made is closed by `close()`.
 *
 * @example
 * const servers = transportServers();
 * afterAll(() => servers.close());
 * // one KMS shared by the three transports:
 * const kms = await servers.kms();
 * const alice = await servers.clients(kms, "xmpp").client("alice@example.com");
 */
export function transportServers(): TransportServers {
  const components: Record<string, string> = Object.fromEntries(
    Array.from({ length: XMPP_COMPONENTS }, (_, i) => [`kms${i + 1}.localhost`, randomBytes(12).toString("hex")]),
  );
  const freeComponents = Object.keys(components);
  let prosody: Promise<ProsodyServer> | undefined;
  const componentOf = new Map<TestKms, string>();
  const kmses = new Set<TestKms>();
  const clientSets = new Set<TransportClients>();
  let resources = 0;

  const kms = async (opts: TransportKmsOptions = {}): Promise<TestKms> => {
    const { xmpp = prosodyInstalled(), ...kmsOpts } = opts;
    if (!xmpp) {
      const k = await startTestKms(kmsOpts);
      kmses.add(k);
      return k;
    }
    prosody ??= startProsody({ components });
    const p = await prosody;
    const component = freeComponents.shift();
    if (component === undefined) throw new Error(`transportServers: more than ${XMPP_COMPONENTS} KMSes on one Prosody (raise XMPP_COMPONENTS)`);
    const k = await startTestKms({ ...kmsOpts, env: { ...kmsOpts.env, ...kmsXmppEnv(p, component) } });
    kmses.add(k);
    componentOf.set(k, component);
    await waitForReadyz(k.url, 200);
    return k;
  };

  const clients = (k: TestKms, kind: TransportKind): TransportClients => {
    const made: { client: KmsClient; stop: () => Promise<void> | void }[] = [];
    const set: TransportClients = {
      kind,
      client: async (user) => {
        if (kind === "http") {
          const client = k.client(user);
          made.push({ client, stop: () => {} });
          return client;
        }
        if (kind === "ws") {
          const transport = wsTransport(k);
          const client = k.client(user, { transport });
          made.push({ client, stop: () => transport.close() });
          return client;
        }
        const component = componentOf.get(k);
        if (component === undefined || prosody === undefined) throw new Error("this KMS is not on Prosody: start it with transportServers().kms({ xmpp: true })");
        const p = await prosody;
        const local = user.split("@")[0]!;
        const xmppUser = p.users[local] !== undefined ? local : Object.keys(p.users)[0]!;
        // A resource of its own: a second session on the same full JID would replace the first.
        const over = await kmsClientOverXmpp(k, p, xmppUser, { user, component, resource: `kms-${++resources}` });
        made.push({ client: over.kms, stop: over.close });
        return over.kms;
      },
      close: async () => {
        clientSets.delete(set);
        for (const { client, stop } of made.splice(0)) {
          await client.close().catch(() => undefined);
          await Promise.resolve(stop()).catch(() => undefined);
        }
      },
    };
    clientSets.add(set);
    return set;
  };

  const closeKms = async (k: TestKms): Promise<void> => {
    if (!kmses.delete(k)) return;
    await k.close();
  };

  return {
    kms,
    clients,
    start: async (kind, opts = {}) => {
      const k = await kms({ ...opts, xmpp: kind === "xmpp" });
      const set = clients(k, kind);
      return {
        kms: k,
        kind,
        client: set.client,
        close: async () => {
          await set.close();
          await closeKms(k);
        },
      };
    },
    close: async () => {
      for (const set of [...clientSets]) await set.close();
      for (const k of [...kmses]) await closeKms(k);
      const p = prosody;
      prosody = undefined;
      if (p) await (await p.catch(() => undefined))?.stop();
    },
  };
}

/**
 * A TCP relay on loopback in front of `target` (a `http://host:port` origin), so that a test can
 * cut every connection through it at once (`dropAll`), as a network failure or a KMS restart would.
 */
export async function startTcpRelay(target: string): Promise<{ url: string; dropAll(): void; close(): Promise<void> }> {
  const { hostname, port } = new URL(target);
  const sockets = new Set<Socket>();
  const track = (s: Socket) => {
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
    s.on("error", () => s.destroy());
  };
  const server: Server = createServer((client) => {
    const upstream = connect(Number(port), hostname);
    track(client);
    track(upstream);
    client.pipe(upstream);
    upstream.pipe(client);
    client.once("close", () => upstream.destroy());
    upstream.once("close", () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address() as AddressInfo;
  const dropAll = () => {
    for (const s of sockets) s.destroy();
  };
  return {
    url: `http://127.0.0.1:${address.port}`,
    dropAll,
    close: () =>
      new Promise<void>((resolve) => {
        dropAll();
        server.close(() => resolve());
      }),
  };
}
