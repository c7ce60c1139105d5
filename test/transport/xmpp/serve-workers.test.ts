import { afterAll, describe, expect, it } from "vitest";
import { initTestDataDir, spawnServe, stopAllServers, type TestDataDir } from "../../helpers/spawn-kms.js";
import { prosodyForTests, startProsody, type ProsodyServer } from "../../helpers/prosody.js";
import { connectXmppUser, kmsXmppEnv, rawIq, waitForReadyz, xml } from "../../helpers/xmpp-client.js";

const run = prosodyForTests("keyward serve with the XMPP binding");

describe.skipIf(!run)("keyward serve --workers 2 with the XMPP binding", () => {
  let prosody: ProsodyServer | undefined;
  let data: TestDataDir | undefined;

  afterAll(async () => {
    await stopAllServers();
    await data?.close();
    await prosody?.stop();
  });

  it("connects from the environment (KEYWARD_XMPP_*), with one component link for all workers: no <conflict/> at Prosody", { timeout: 90_000 }, async () => {
    prosody = await startProsody();
    data = await initTestDataDir();
    const served = await spawnServe(data, { workers: 2, env: kmsXmppEnv(prosody) });
    await waitForReadyz(served.url, 200);
    const alice = await connectXmppUser(prosody, "alice");
    try {
      const reply = await rawIq(alice, "get", xml("discovery", { xmlns: "urn:x-keyward:kms:1" }));
      expect(JSON.parse(reply.getChild("discovery", "urn:x-keyward:kms:1")!.text())).toMatchObject({ uri: "kms://kms.example.com" });
      await new Promise((r) => setTimeout(r, 2_000)); // time for a second worker to try, if one would
      expect(prosody.log()).not.toMatch(/Second component attempted to connect/);
      expect(prosody.log().match(/External component successfully authenticated/g) ?? []).toHaveLength(1);
    } finally {
      await alice.stop().catch(() => {});
    }
  });
});
