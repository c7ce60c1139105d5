import { randomBytes } from "node:crypto";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { checkTransportFlags, chooseMechanism, isLoopbackHost, type TransportFlags } from "../../src/cli/transport.js";
import { freePort, runCli, startDevChild, type DevChild } from "../helpers/cli.js";
import { prosodyForTests, startProsody, type ProsodyServer } from "../helpers/prosody.js";
import { KMS_COMPONENT, kmsXmppEnv, waitForReadyz } from "../helpers/xmpp-client.js";

/**
 * The user commands over `--transport ws` and `--transport xmpp`, run as a user runs them, against
 * one `keyward dev` child shared by the file: a KMS that is also the component `kms.localhost` of
 * one real Prosody (when Prosody is installed; the XMPP tests skip without it, and fail under CI).
 */
const TIMEOUT = 90_000;
const withProsody = prosodyForTests("the CLI over --transport xmpp");

let dev: DevChild;
let prosody: ProsodyServer | undefined;

beforeAll(async () => {
  prosody = withProsody ? await startProsody() : undefined;
  try {
    dev = await startDevChild("keyward-cli-transports-", 25_000, prosody ? kmsXmppEnv(prosody) : {});
    // The component link comes up after the HTTP listener: /readyz waits for it (§3).
    if (prosody) await waitForReadyz(`http://${dev.env.KEYWARD_LISTEN}`, 200);
  } catch (e) {
    await prosody?.stop();
    throw e;
  }
}, TIMEOUT);

afterAll(async () => {
  await dev?.stop();
  await prosody?.stop();
});

const cli = (args: string[], env: Record<string, string> = {}) => runCli([...args, "--dir", dev.dir], { env: { ...dev.env, ...env }, timeoutMs: 40_000 });
const deviceFile = (user: string) => join(dev.env.KEYWARD_HOME!, "devices", `${user}.json`);

/** ping, group create + show, encrypt/decrypt round trip: the same commands whatever the transport. */
async function roundTrip(transportArgs: string[], env: Record<string, string> = {}, bobArgs: string[] = transportArgs) {
  const ping = await cli(["ping", "--user", "alice@example.com", ...transportArgs], env);
  expect(ping.code, ping.stderr).toBe(0);
  const created = await cli(["group", "create", "--user", "alice@example.com", "--add", "alice@example.com", "--add", "bob@example.com", ...transportArgs], env);
  expect(created.code, created.stderr).toBe(0);
  const group = created.stdout.trim();
  expect(group).toMatch(/^kms:\/\/localhost\/blocks\/\S+$/);

  const shown = await cli(["group", "show", group, "--user", "bob@example.com", ...bobArgs], env);
  expect(shown.code, shown.stderr).toBe(0);
  expect(shown.stdout).toContain("chain verified (1 block)");
  expect(shown.stdout).toContain("members (2):\n  alice@example.com\n  bob@example.com\n");

  const original = Buffer.concat([Buffer.from([0, 0xff, 0x0a]), randomBytes(4096)]);
  const plainPath = join(dev.root, `plain-${randomBytes(4).toString("hex")}.bin`);
  writeFileSync(plainPath, original);
  const encrypted = await cli(["encrypt", "--user", "alice@example.com", "--group", group, plainPath, ...transportArgs], env);
  expect(encrypted.code, encrypted.stderr).toBe(0);
  const jwePath = `${plainPath}.jwe`;
  writeFileSync(jwePath, encrypted.stdoutBytes);
  const decrypted = await cli(["decrypt", "--user", "bob@example.com", jwePath, ...bobArgs], env);
  expect(decrypted.code, decrypted.stderr).toBe(0);
  expect(decrypted.stdoutBytes.equals(original)).toBe(true);
  return { ping, outputs: [ping, created, shown, encrypted, decrypted] };
}

/** `keyward_ws_frames_total{outcome="message"}` of the dev KMS. */
async function wsMessageFrames(): Promise<number> {
  const text = await (await fetch(`http://${dev.env.KEYWARD_LISTEN}/metrics`)).text();
  const m = /^keyward_ws_frames_total\{outcome="message"\} (\d+)/m.exec(text);
  return m ? Number(m[1]) : 0;
}

describe("keyward over --transport ws", () => {
  it(
    "ping, group create + show, encrypt/decrypt round trip: every KMS message goes as a WebSocket frame",
    async () => {
      const before = await wsMessageFrames();
      const { ping } = await roundTrip(["--transport", "ws"]);
      expect(ping.stdout).toMatch(/^ping ok over ws: channel kms:\/\/localhost\/ecdhe\/\S+ for alice@example\.com/);
      // ping alone is 3 messages (ECDHE, ping, delete); the rest many more.
      expect((await wsMessageFrames()) - before).toBeGreaterThan(10);
    },
    TIMEOUT,
  );

  it("KEYWARD_TRANSPORT=ws chooses it too", async () => {
    const viaEnv = await cli(["ping", "--user", "alice@example.com"], { KEYWARD_TRANSPORT: "ws" });
    expect(viaEnv.code, viaEnv.stderr).toBe(0);
    expect(viaEnv.stdout).toMatch(/^ping ok over ws: /);
  }, TIMEOUT);
});

describe("keyward refuses a transport it cannot use, before it talks to any KMS", () => {
  const USER = "dave@example.com";

  it("a bad --transport (flag or KEYWARD_TRANSPORT): exit 1, the choices named", async () => {
    const cases: Array<{ command: string[]; args: string[]; env: Record<string, string>; where: string }> = [
      { command: ["ping"], args: ["--transport", "smtp"], env: {}, where: "argument 'smtp'" },
      { command: ["group", "create", "--add", USER], args: [], env: { KEYWARD_TRANSPORT: "carrier-pigeon" }, where: "value 'carrier-pigeon' from env 'KEYWARD_TRANSPORT'" },
    ];
    for (const { command, args, env, where } of cases) {
      const r = await cli([...command, "--user", USER, ...args], env);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe("");
      expect(r.stderr).toContain(`error: option '--transport <kind>' ${where} is invalid. Allowed choices are http, ws, xmpp.`);
    }
    expect(existsSync(deviceFile(USER))).toBe(false);
  }, TIMEOUT);

  it("--transport xmpp without an account or the KMS component's JID: exit 1, what is missing named, the password never shown", async () => {
    const none = await cli(["ping", "--user", USER, "--transport", "xmpp"]);
    expect(none.code).toBe(1);
    expect(none.stdout).toBe("");
    expect(none.stderr).toBe(
      "keyward: --transport xmpp needs an XMPP account and the KMS component: give --xmpp-jid (or KEYWARD_XMPP_JID), --xmpp-password (or KEYWARD_XMPP_PASSWORD), --kms-jid (or KEYWARD_KMS_JID)\n",
    );
    const noPassword = await cli(["group", "show", "kms://localhost/blocks/x", "--user", USER, "--kms-jid", KMS_COMPONENT], { KEYWARD_TRANSPORT: "xmpp", KEYWARD_XMPP_JID: "dave@localhost" });
    expect(noPassword.code).toBe(1);
    expect(noPassword.stderr).toBe("keyward: --transport xmpp needs an XMPP account and the KMS component: give --xmpp-password (or KEYWARD_XMPP_PASSWORD)\n");
    expect(existsSync(deviceFile(USER))).toBe(false);
  }, TIMEOUT);

  it("checkTransportFlags: each missing or malformed XMPP setting is named; the password never appears", () => {
    const pw = "pw-not-to-show";
    const refusal = (flags: TransportFlags) => {
      try {
        checkTransportFlags(flags);
      } catch (e) {
        expect((e as Error).message).not.toContain(pw);
        return (e as Error).message;
      }
      throw new Error("expected a refusal");
    };
    const xmpp = { transport: "xmpp", xmppJid: "dave@localhost", xmppPassword: pw, kmsJid: KMS_COMPONENT } as const;
    expect(refusal({ ...xmpp, xmppJid: undefined })).toMatch(/give --xmpp-jid \(or KEYWARD_XMPP_JID\)$/);
    expect(refusal({ ...xmpp, xmppPassword: "" })).toMatch(/give --xmpp-password \(or KEYWARD_XMPP_PASSWORD\)$/);
    expect(refusal({ ...xmpp, kmsJid: undefined })).toMatch(/give --kms-jid \(or KEYWARD_KMS_JID\)$/);
    expect(refusal({ ...xmpp, xmppJid: "localhost" })).toBe('--xmpp-jid "localhost" is not an XMPP account (user@domain)');
    expect(refusal({ ...xmpp, kmsJid: "kms@example.com" })).toMatch(/^--kms-jid "kms@example.com" is not a component JID/);
    expect(refusal({ ...xmpp, xmppService: "http://127.0.0.1:5222" })).toMatch(/^--xmpp-service "http:\/\/127.0.0.1:5222" is not xmpp:\/\/host:port/);
    expect(refusal({ ...xmpp, xmppService: "xmpp://127.0.0.1:99999" })).toMatch(/is not xmpp:\/\/host:port/);
    expect(refusal({ transport: "smtp" as never })).toBe('--transport must be one of http, ws, xmpp (got "smtp")');
    expect(checkTransportFlags({ ...xmpp })).toMatchObject({ service: "xmpp://localhost:5222", jid: "dave@localhost", username: "dave", kmsJid: KMS_COMPONENT, insecure: false });
    expect(checkTransportFlags({ ...xmpp, xmppJid: "Dave@LocalHost/phone", xmppService: "xmpps://[::1]" })).toMatchObject({ service: "xmpps://[::1]", jid: "Dave@localhost" });
    expect(checkTransportFlags({ transport: "ws" })).toBeUndefined();
    expect(checkTransportFlags({})).toBeUndefined();
  });

  it("SASL PLAIN without TLS only to loopback, or with --xmpp-insecure; SCRAM preferred when offered", () => {
    const plainOnly = ["PLAIN"];
    expect(chooseMechanism(plainOnly, { secure: false, host: "127.0.0.1", insecure: false })).toBe("PLAIN");
    expect(chooseMechanism(plainOnly, { secure: false, host: "::1", insecure: false })).toBe("PLAIN");
    expect(chooseMechanism(plainOnly, { secure: false, host: "localhost", insecure: false })).toBe("PLAIN");
    expect(chooseMechanism(plainOnly, { secure: false, host: "chat.example.com", insecure: false })).toBeUndefined();
    expect(chooseMechanism(plainOnly, { secure: false, host: "127.0.0.1.example.com", insecure: false })).toBeUndefined();
    expect(chooseMechanism(plainOnly, { secure: false, host: "10.0.0.1", insecure: false })).toBeUndefined();
    expect(chooseMechanism(plainOnly, { secure: false, host: "chat.example.com", insecure: true })).toBe("PLAIN");
    expect(chooseMechanism(plainOnly, { secure: true, host: "chat.example.com", insecure: false })).toBe("PLAIN");
    expect(chooseMechanism(["SCRAM-SHA-1", "PLAIN"], { secure: false, host: "127.0.0.1", insecure: true })).toBe("SCRAM-SHA-1");
    expect(chooseMechanism(["ANONYMOUS"], { secure: true, host: "chat.example.com", insecure: true })).toBeUndefined();
    expect([isLoopbackHost("127.5.6.7"), isLoopbackHost("[::1]"), isLoopbackHost("kms.localhost"), isLoopbackHost("128.0.0.1")]).toEqual([true, true, true, false]);
  });
});

describe.skipIf(!withProsody)("keyward over --transport xmpp, through Prosody to the KMS component", () => {
  /** A closed port: any HTTP the CLI tried would fail, so everything below went over XMPP. */
  let deadUrl: string;
  beforeAll(async () => {
    deadUrl = `http://127.0.0.1:${await freePort()}`;
  });
  const xmppAs = (local: "alice" | "bob") => ["--transport", "xmpp", "--xmpp-service", prosody!.c2sService, "--xmpp-jid", `${local}@localhost`, "--kms-jid", KMS_COMPONENT, "--url", deadUrl];

  it(
    "ping, group create + show, encrypt/decrypt round trip; no HTTP at all; the password never shown",
    async () => {
      // alice's password from the environment, bob's as a flag: both ways work.
      const { ping, outputs } = await roundTrip(xmppAs("alice"), { KEYWARD_XMPP_PASSWORD: prosody!.users.alice! }, [...xmppAs("bob"), "--xmpp-password", prosody!.users.bob!]);
      expect(ping.stdout).toMatch(/^ping ok over xmpp: channel kms:\/\/localhost\/ecdhe\/\S+ for alice@example\.com/);
      for (const r of outputs) {
        for (const pw of [prosody!.users.alice!, prosody!.users.bob!]) expect(r.stdout + r.stderr).not.toContain(pw);
      }
    },
    TIMEOUT,
  );

  it("a wrong XMPP password: exit 1, the login failure named, the password not shown", async () => {
    const r = await cli(["ping", "--user", "alice@example.com", ...xmppAs("alice")], { KEYWARD_XMPP_PASSWORD: "wrong-password-xyz" });
    expect(r.code).toBe(1);
    expect(r.stdout).toBe("");
    expect(r.stderr).toMatch(/^keyward: XMPP login as alice@localhost to xmpp:\/\/127\.0\.0\.1:\d+ failed: not-authorized/);
    expect(r.stderr).not.toContain("wrong-password-xyz");
  }, TIMEOUT);

  it("a KMS JID nobody serves: exit 1 with the XMPP error, no hang", async () => {
    const args = xmppAs("alice").map((a) => (a === KMS_COMPONENT ? "nobody.localhost" : a));
    const r = await cli(["ping", "--user", "alice@example.com", ...args], { KEYWARD_XMPP_PASSWORD: prosody!.users.alice! });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^keyward: /);
    expect(r.stderr).toMatch(/nobody\.localhost answered the IQ with the stanza error [a-z-]+/);
  }, TIMEOUT);
});
