import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { runXmppMuc, type XmppMucResult } from "../../examples/xmpp-muc/run.js";
import { prosodyForTests } from "../helpers/prosody.js";

describe("examples/xmpp-muc without Prosody", () => {
  it("says what to install and exits non-zero (it installs nothing)", { timeout: 60_000 }, () => {
    // A PATH holding node and nothing else: no prosody on it.
    const bin = mkdtempSync(join(tmpdir(), "keyward-no-prosody-"));
    try {
      symlinkSync(process.execPath, join(bin, "node"));
      const r = spawnSync(process.execPath, ["--import", "tsx", resolve(import.meta.dirname, "../../examples/xmpp-muc/run.ts")], {
        env: { PATH: bin, HOME: process.env.HOME ?? "/tmp" },
        encoding: "utf8",
        timeout: 50_000,
      });
      expect(r.status).toBe(1);
      expect(r.stderr).toContain("prosody is not installed");
      expect(r.stderr).toContain("apt-get install prosody");
    } finally {
      rmSync(bin, { recursive: true, force: true });
    }
  });
});

const run = prosodyForTests("examples/xmpp-muc");

/** The draft §3.2 demo (examples/xmpp-muc) on a real Prosody, every KMS request over XMPP. */
describe.skipIf(!run)("examples/xmpp-muc", () => {
  let result: XmppMucResult;
  const played = async () => (result ??= await runXmppMuc({ log: () => undefined }));

  it("prints the draft's steps 1 to 7 in order, then the removal steps and the history checks", { timeout: 90_000 }, async () => {
    const { lines } = await played();
    const steps = lines.map((l) => /^step (\d+):/.exec(l)?.[1]).filter((n): n is string => n !== undefined).map(Number);
    expect(steps).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    expect(lines.filter((l) => l.startsWith("check:"))).toHaveLength(2);
  });

  it("steps 1-2: a genesis block with A, B and C, and a GK bound to it at creation", async () => {
    const r = await played();
    expect(r.gk1.block).toBe(r.blocks.genesis);
  });

  it("steps 3-7: the message is in §14's form, and B and C read exactly A's text", async () => {
    const r = await played();
    expect(r.firstMessage).toEqual({ kidIsGk: true, hint: true, fallbackBody: expect.stringContaining("encrypted") });
    expect(r.bobRead[0]).toBe(true);
    expect(r.carolReadFirst).toBe(true);
  });

  it("after C's removal: a new GK bound to the new tail; C still receives the message but is refused the GK (403) and cannot read it", async () => {
    const r = await played();
    expect(r.gk2.uri).not.toBe(r.gk1.uri);
    expect(r.gk2.block).toBe(r.blocks.removedC);
    expect(r.bobRead[1]).toBe(true);
    expect(r.carolReceivedSecond).toBe(true);
    expect(r.carolSecondAccess).toMatchObject({ granted: false, status: 403 });
    expect(r.carolReadSecond).toBe(false);
  });

  it("the room's archive and a late joiner's history hold ciphertext only", async () => {
    const r = await played();
    expect(r.archive).toEqual({ messages: 2, allEncrypted: true, containsPlaintext: false });
    expect(r.lateJoiner).toEqual({ messages: 2, allEncrypted: true, containsPlaintext: false });
  });
});
