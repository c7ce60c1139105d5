import { describe, expect, it } from "vitest";
import type { AuthenticatedIdentity } from "../../src/identity/authenticator.js";
import { REL_KMS } from "../../src/protocol/constants.js";
import type { RequestPayload } from "../../src/protocol/messages.js";
import { resolveUri } from "../../src/protocol/uri.js";
import type { CoreSettings } from "../../src/server/context.js";
import { ActingForChecks, peerOperationOf, type WebFingerFetch } from "../../src/server/federation/acting-for.js";
import { KmsError } from "../../src/protocol/errors.js";

/** The WebFinger cache and hostile answers of §12's check 3, with a controlled clock. */
const settings = {
  authority: "kms.example.com",
  domain: "example.com",
  federation: { peers: [{ authority: "kms.b.example", url: "https://kms.b.example" }], webfinger: {} },
} as unknown as CoreSettings;
const peerIdentity: AuthenticatedIdentity = { entity: "kms://kms.b.example", kind: "certificate", thumbprint: "t" };
const credential = { jwk: { kty: "EC", crv: "P-256", x: "x", y: "y", kid: "kms://kms.b.example", x5c: ["..."] } };

function harness(answer: (url: string) => Response | Promise<Response>) {
  const urls: string[] = [];
  let clock = 1_000_000;
  const fetch: WebFingerFetch = async (url) => {
    urls.push(url);
    return answer(url);
  };
  const checks = new ActingForChecks({ settings, fetch, now: () => clock, maxCacheEntries: 2 });
  const decide = (entity: string) =>
    checks.decide({ identity: peerIdentity, credential, request: { method: "create", uri: "/gks", entity } as unknown as RequestPayload, target: resolveUri("/gks", "kms.example.com") });
  return { urls, decide, advance: (ms: number) => (clock += ms) };
}
const jrd = (href: string) => new Response(JSON.stringify({ links: [{ rel: REL_KMS, href }] }), { status: 200 });
const statusOf = async (p: Promise<unknown>) => {
  try {
    await p;
    return 200;
  } catch (e) {
    return (e as KmsError).status;
  }
};

describe("ActingForChecks (PROTOCOL.md §12, check 3)", () => {
  it("the default WebFinger origin is https://<domain>", async () => {
    const h = harness(() => jrd("kms://kms.b.example"));
    await h.decide("bob@b.example");
    expect(h.urls[0]).toBe(`https://b.example/.well-known/webfinger?resource=acct%3Abob%40b.example&rel=${encodeURIComponent(REL_KMS)}`);
  });

  it("a positive answer is remembered up to 300 s, then asked again", async () => {
    const h = harness(() => jrd("KMS://KMS.B.EXAMPLE"));
    const d = await h.decide("bob@b.example");
    expect(d.identity.entity).toBe("bob@b.example");
    expect(d.peer).toEqual({ uri: "kms://kms.b.example", jwk: { kty: "EC", crv: "P-256", x: "x", y: "y", kid: "kms://kms.b.example" } });
    h.advance(299_000);
    await h.decide("bob@b.example");
    expect(h.urls).toHaveLength(1);
    h.advance(2_000);
    await h.decide("bob@b.example");
    expect(h.urls).toHaveLength(2);
  });

  it("the cache is bounded: the oldest entry goes first", async () => {
    const h = harness(() => jrd("kms://kms.b.example"));
    for (const u of ["a", "b", "c"]) await h.decide(`${u}@b.example`);
    expect(h.urls).toHaveLength(3);
    await h.decide("c@b.example");
    expect(h.urls).toHaveLength(3);
    await h.decide("a@b.example"); // evicted
    expect(h.urls).toHaveLength(4);
  });

  it("hostile answers: a body too large, a JRD whose links are not objects, a 200 array → 502; a href with a path → 403", async () => {
    expect(await statusOf(harness(() => new Response("x".repeat(100_000), { status: 200 })).decide("bob@b.example"))).toBe(502);
    expect(await statusOf(harness(() => new Response(JSON.stringify([]), { status: 200 })).decide("bob@b.example"))).toBe(502);
    expect(await statusOf(harness(() => new Response(JSON.stringify({ links: [null, 7, "kms://kms.b.example"] }), { status: 200 })).decide("bob@b.example"))).toBe(403);
    expect(await statusOf(harness(() => jrd("kms://kms.b.example/evil")).decide("bob@b.example"))).toBe(403);
    expect(await statusOf(harness(() => new Response(null, { status: 301, headers: { location: "https://x" } })).decide("bob@b.example"))).toBe(502);
    expect(await statusOf(harness(() => Promise.reject(new TypeError("fetch failed"))).decide("bob@b.example"))).toBe(502);
  });

  it("peerOperationOf follows the router's paths", () => {
    const op = (uri: string, method: string) => peerOperationOf(resolveUri(uri, "kms.example.com"), method);
    expect(op("/gks/1", "retrieve")).toBe("gk.get");
    expect(op("kms://kms.example.com/gks", "create")).toBe("gk.create");
    expect(op("/entities/a@b.example/keys", "retrieve")).toBe("keys.list");
    expect(op("/entities/keys", "create")).toBe("keys.register");
    expect(op("/entities/a@b.example/keys/k", "delete")).toBe("keys.revoke");
    expect(op("/blocks", "create")).toBe("gmbc.genesis");
    expect(op("/blocks/1", "create")).toBe("gmbc.append");
    expect(op("/ping", "update")).toBe("ping");
    expect(op("/gks/1/x", "retrieve")).toBeUndefined();
  });
});
