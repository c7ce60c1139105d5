import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { REL_ENTITY_KEYS, REL_KMS } from "../../src/protocol/constants.js";
import { startTestKms, type TestKms } from "../helpers/harness.js";
import { channel, expectStatus, newDevice, registerDevice } from "../helpers/gmbc-fixtures.js";

/** §12: every KMS names itself as its entities' home KMS in WebFinger; `rel` filters (RFC 7033 §4.3). */
describe("WebFinger urn:x-keyward:rel:kms (PROTOCOL.md §12)", () => {
  let kms: TestKms;

  beforeAll(async () => {
    kms = await startTestKms();
    const alice = await channel(kms, "alice@example.com");
    await registerDevice(alice, await newDevice("alice@example.com", "alice-1"));
    // An entity of another domain with keys here: still 404 in WebFinger (§7).
    const foreign = await channel(kms, "bob@example.org");
    await registerDevice(foreign, await newDevice("bob@example.org", "bob-1"));
    expectStatus(await foreign.request({ method: "retrieve", uri: "/entities/bob@example.org/keys" }), 200);
  });
  afterAll(async () => {
    await kms?.close();
  });

  const webfinger = async (resource: string, rels: string[] = []) => {
    const q = new URLSearchParams({ resource });
    for (const r of rels) q.append("rel", r);
    const res = await fetch(`${kms.url}/.well-known/webfinger?${q}`);
    return { status: res.status, type: res.headers.get("content-type"), body: (await res.json()) as { subject?: string; links?: { rel: string; href: string; type?: string }[] } };
  };

  it("the rel names live in the constants module", () => {
    expect(REL_KMS).toBe("urn:x-keyward:rel:kms");
    expect(REL_ENTITY_KEYS).toBe("urn:x-keyward:rel:entity-keys");
  });

  it("without rel: the entity-keys link and the kms link, href kms://<own authority>", async () => {
    const r = await webfinger("acct:alice@example.com");
    expect(r.status).toBe(200);
    expect(r.type).toMatch(/^application\/jrd\+json\b/);
    expect(r.body.subject).toBe("acct:alice@example.com");
    expect(r.body.links?.map((l) => l.rel)).toEqual([REL_ENTITY_KEYS, REL_KMS]);
    expect(r.body.links?.find((l) => l.rel === REL_KMS)).toEqual({ rel: REL_KMS, href: "kms://kms.example.com" });
  });

  it("rel=urn:x-keyward:rel:kms: only the kms link", async () => {
    const r = await webfinger("acct:alice@example.com", [REL_KMS]);
    expect(r.status).toBe(200);
    expect(r.body.links).toEqual([{ rel: REL_KMS, href: "kms://kms.example.com" }]);
  });

  it("rel=entity-keys: only the entity-keys link; both rels: both links", async () => {
    const keys = await webfinger("acct:alice@example.com", [REL_ENTITY_KEYS]);
    expect(keys.body.links?.map((l) => l.rel)).toEqual([REL_ENTITY_KEYS]);
    const both = await webfinger("acct:alice@example.com", [REL_KMS, REL_ENTITY_KEYS]);
    expect(both.body.links?.map((l) => l.rel)).toEqual([REL_ENTITY_KEYS, REL_KMS]);
  });

  it("an unknown rel: 200 with no links (RFC 7033 §4.3: the resource exists, no link matches)", async () => {
    const r = await webfinger("acct:alice@example.com", ["http://webfinger.net/rel/avatar"]);
    expect(r.status).toBe(200);
    expect(r.body.links).toEqual([]);
  });

  it("§7's 404 rules unchanged with rel: no keys, another domain, no resource", async () => {
    expect((await webfinger("acct:nobody@example.com", [REL_KMS])).status).toBe(404);
    expect((await webfinger("acct:bob@example.org", [REL_KMS])).status).toBe(404);
    expect((await webfinger("acct:bob@example.org")).status).toBe(404);
    expect((await fetch(`${kms.url}/.well-known/webfinger?rel=${encodeURIComponent(REL_KMS)}`)).status).toBe(404);
  });
});
