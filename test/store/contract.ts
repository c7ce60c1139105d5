import { randomUUID } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { ChannelRecord, RecordOutcome, Store } from "../../src/store/store.js";
import { onAFreshStoreEachTest } from "./fresh-store.js";

/**
 * A channel record with unique uri and client key thumbprint; `overrides` replace any field.
 * Dates carry milliseconds so that a store truncating to seconds fails the round trip.
 */
export function makeChannel(overrides: Partial<ChannelRecord> = {}): ChannelRecord {
  const id = randomUUID();
  return {
    uri: `kms://kms.example.com/ecdhe/${id}`,
    entity: "alice@example.com",
    clientId: "client-1",
    credentialKind: "bearer",
    clientKeyThumbprint: `thumb-${id}`,
    sealedKey: `kw1.sealed-${id}`,
    createdAt: new Date(1_700_000_000_123),
    expiresAt: new Date(1_700_003_600_456),
    messageCount: 0,
    ...overrides,
  };
}

const BIG_LIMIT = 1_000_000;

/**
 * The contract every {@link Store} implementation passes. `open` returns a fresh, empty store (it
 * is called before every test); the suite migrates it, closes it after the test, then calls
 * `cleanup`.
 *
 * @example
 * storeContract("sqlite", async () => new SqliteStore(freshPath()), async () => rmTempDirs());
 */
export function storeContract(name: string, open: () => Promise<Store>, cleanup?: () => Promise<void>): void {
  describe(`Store contract: ${name}`, () => {
    let store: Store;
    onAFreshStoreEachTest(open, cleanup, (s) => (store = s));

    describe("migrate / ping", () => {
      it("migrate is idempotent (twice more is fine) and keeps data", async () => {
        const c = makeChannel();
        expect(await store.createChannel(c)).toBe(true);
        await store.migrate();
        await store.migrate();
        expect(await store.getChannel(c.uri)).toEqual(c);
      });

      it("ping resolves", async () => {
        await expect(store.ping()).resolves.toBeUndefined();
      });
    });

    describe("keyring", () => {
      it("is undefined before initKeyring", async () => {
        expect(await store.getKeyring()).toBeUndefined();
      });

      it("first writer wins: a second initKeyring returns (and keeps) the first value", async () => {
        expect(await store.initKeyring("kw1.first")).toBe("kw1.first");
        expect(await store.initKeyring("kw1.second")).toBe("kw1.first");
        expect(await store.getKeyring()).toBe("kw1.first");
      });

      it("concurrent initKeyring calls all return the same single value", async () => {
        const values = Array.from({ length: 20 }, (_, i) => `kw1.v${i}`);
        const results = await Promise.all(values.map((v) => store.initKeyring(v)));
        const stored = await store.getKeyring();
        expect(stored).toBeDefined();
        expect(values).toContain(stored);
        for (const r of results) expect(r).toBe(stored);
      });
    });

    describe("channels", () => {
      it("createChannel / getChannel round-trip every field (dates to the ms), without credentialThumbprint", async () => {
        const c = makeChannel({ messageCount: 3 });
        expect(await store.createChannel(c)).toBe(true);
        const got = await store.getChannel(c.uri);
        expect(got).toEqual(c);
        expect(got!.createdAt).toBeInstanceOf(Date);
        expect(got!.expiresAt).toBeInstanceOf(Date);
        expect(got!.createdAt.getTime()).toBe(1_700_000_000_123);
        expect(got!.expiresAt.getTime()).toBe(1_700_003_600_456);
        expect(got!.messageCount).toBe(3);
        expect(Object.hasOwn(got!, "credentialThumbprint")).toBe(false);
      });

      it("round-trips a certificate channel with credentialThumbprint", async () => {
        const c = makeChannel({
          entity: "bob@example.org",
          clientId: "cert-client",
          credentialKind: "certificate",
          credentialThumbprint: "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs",
        });
        expect(await store.createChannel(c)).toBe(true);
        const got = await store.getChannel(c.uri);
        expect(got).toEqual(c);
        expect(got!.credentialThumbprint).toBe("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
        expect(got!.credentialKind).toBe("certificate");
      });

      it("getChannel of an unknown uri is undefined", async () => {
        expect(await store.getChannel("kms://kms.example.com/ecdhe/nope")).toBeUndefined();
      });

      it("createChannel refuses a reused clientKeyThumbprint and stores nothing", async () => {
        const first = makeChannel();
        const second = makeChannel({ clientKeyThumbprint: first.clientKeyThumbprint, entity: "mallory@example.com" });
        expect(await store.createChannel(first)).toBe(true);
        expect(await store.createChannel(second)).toBe(false);
        expect(await store.getChannel(second.uri)).toBeUndefined();
        expect(await store.getChannel(first.uri)).toEqual(first);
      });

      it("deleteChannel is true then false, and the channel is gone", async () => {
        const c = makeChannel();
        await store.createChannel(c);
        expect(await store.deleteChannel(c.uri)).toBe(true);
        expect(await store.getChannel(c.uri)).toBeUndefined();
        expect(await store.deleteChannel(c.uri)).toBe(false);
      });

      it("deleteChannel removes the replay records", async () => {
        const c = makeChannel();
        await store.createChannel(c);
        expect(await store.recordChannelMessage(c.uri, '"r1"', BIG_LIMIT)).toBe("recorded");
        expect(await store.deleteChannel(c.uri)).toBe(true);
        expect(await store.recordChannelMessage(c.uri, '"r1"', BIG_LIMIT)).toBe("unknown");
        expect(await store.recordChannelMessage(c.uri, '"r2"', BIG_LIMIT)).toBe("unknown");
        // A channel later stored under the same uri starts with no replay records.
        const again = makeChannel({ uri: c.uri });
        expect(await store.createChannel(again)).toBe(true);
        expect(await store.recordChannelMessage(c.uri, '"r1"', BIG_LIMIT)).toBe("recorded");
      });
    });

    describe("countChannelMessage", () => {
      it('counts without a replay record: "recorded" up to the limit, then "exhausted"; an unknown channel is "unknown"', async () => {
        const c = makeChannel();
        await store.createChannel(c);
        expect(await store.countChannelMessage(c.uri, 3)).toBe("recorded");
        expect(await store.recordChannelMessage(c.uri, '"a"', 3)).toBe("recorded");
        expect(await store.countChannelMessage(c.uri, 3)).toBe("recorded");
        expect((await store.getChannel(c.uri))!.messageCount).toBe(3);
        expect(await store.countChannelMessage(c.uri, 3)).toBe("exhausted");
        expect(await store.recordChannelMessage(c.uri, '"b"', 3)).toBe("exhausted");
        expect((await store.getChannel(c.uri))!.messageCount).toBe(3);
        // The counted messages left no replay record: only "a" is a replay.
        expect(await store.recordChannelMessage(c.uri, '"a"', 10)).toBe("replay");
        expect(await store.countChannelMessage("kms://kms.example.com/ecdhe/nothing-here", 3)).toBe("unknown");
      });

      it("concurrent counts never pass the limit", async () => {
        const c = makeChannel();
        await store.createChannel(c);
        const outcomes = await Promise.all(Array.from({ length: 30 }, () => store.countChannelMessage(c.uri, 20)));
        expect(outcomes.filter((o) => o === "recorded")).toHaveLength(20);
        expect(outcomes.filter((o) => o === "exhausted")).toHaveLength(10);
        expect((await store.getChannel(c.uri))!.messageCount).toBe(20);
      });
    });

    describe("recordChannelMessage", () => {
      it('"recorded", then the same requestId is "replay" and does not count', async () => {
        const c = makeChannel();
        await store.createChannel(c);
        expect(await store.recordChannelMessage(c.uri, '"a"', BIG_LIMIT)).toBe("recorded");
        expect((await store.getChannel(c.uri))!.messageCount).toBe(1);
        expect(await store.recordChannelMessage(c.uri, '"a"', BIG_LIMIT)).toBe("replay");
        expect(await store.recordChannelMessage(c.uri, '"a"', BIG_LIMIT)).toBe("replay");
        expect((await store.getChannel(c.uri))!.messageCount).toBe(1);
      });

      it("different requestIds are all recorded and counted", async () => {
        const c = makeChannel();
        await store.createChannel(c);
        for (const id of ['"a"', '"b"', "1", "2", '"c"']) {
          expect(await store.recordChannelMessage(c.uri, id, BIG_LIMIT)).toBe("recorded");
        }
        expect((await store.getChannel(c.uri))!.messageCount).toBe(5);
      });

      it("requestIds 7 and \"7\" (JSON-encoded by the caller) are distinct", async () => {
        const c = makeChannel();
        await store.createChannel(c);
        expect(await store.recordChannelMessage(c.uri, JSON.stringify(7), BIG_LIMIT)).toBe("recorded");
        expect(await store.recordChannelMessage(c.uri, JSON.stringify("7"), BIG_LIMIT)).toBe("recorded");
        expect(await store.recordChannelMessage(c.uri, JSON.stringify(7), BIG_LIMIT)).toBe("replay");
        expect(await store.recordChannelMessage(c.uri, JSON.stringify("7"), BIG_LIMIT)).toBe("replay");
        expect((await store.getChannel(c.uri))!.messageCount).toBe(2);
      });

      it("the same requestId on two channels is independent", async () => {
        const a = makeChannel();
        const b = makeChannel();
        await store.createChannel(a);
        await store.createChannel(b);
        expect(await store.recordChannelMessage(a.uri, '"x"', BIG_LIMIT)).toBe("recorded");
        expect(await store.recordChannelMessage(b.uri, '"x"', BIG_LIMIT)).toBe("recorded");
        expect(await store.recordChannelMessage(a.uri, '"x"', BIG_LIMIT)).toBe("replay");
      });

      it('messageLimit: past the limit is "exhausted", uncounted, and leaves no replay record', async () => {
        const c = makeChannel();
        await store.createChannel(c);
        expect(await store.recordChannelMessage(c.uri, '"1"', 2)).toBe("recorded");
        expect(await store.recordChannelMessage(c.uri, '"2"', 2)).toBe("recorded");
        expect(await store.recordChannelMessage(c.uri, '"3"', 2)).toBe("exhausted");
        expect(await store.recordChannelMessage(c.uri, '"3"', 2)).toBe("exhausted");
        expect((await store.getChannel(c.uri))!.messageCount).toBe(2);
        // No replay record was left for "3": with room, it is recorded.
        expect(await store.recordChannelMessage(c.uri, '"3"', 3)).toBe("recorded");
        expect((await store.getChannel(c.uri))!.messageCount).toBe(3);
        expect(await store.recordChannelMessage(c.uri, '"3"', 10)).toBe("replay");
      });

      it("a channel created with messageCount at the limit is exhausted at once", async () => {
        const c = makeChannel({ messageCount: 5 });
        await store.createChannel(c);
        expect(await store.recordChannelMessage(c.uri, '"a"', 5)).toBe("exhausted");
        expect(await store.recordChannelMessage(c.uri, '"a"', 6)).toBe("recorded");
        expect((await store.getChannel(c.uri))!.messageCount).toBe(6);
      });

      it('"unknown" for a missing channel, and it creates nothing', async () => {
        const uri = "kms://kms.example.com/ecdhe/missing";
        expect(await store.recordChannelMessage(uri, '"a"', BIG_LIMIT)).toBe("unknown");
        expect(await store.getChannel(uri)).toBeUndefined();
      });

      it("50 concurrent calls with the same requestId: exactly one is recorded", async () => {
        const c = makeChannel();
        await store.createChannel(c);
        const outcomes = await Promise.all(Array.from({ length: 50 }, () => store.recordChannelMessage(c.uri, '"same"', BIG_LIMIT)));
        expect(outcomes.filter((o) => o === "recorded")).toHaveLength(1);
        expect(outcomes.filter((o) => o === "replay")).toHaveLength(49);
        expect((await store.getChannel(c.uri))!.messageCount).toBe(1);
      });

      it("concurrent calls near the limit never count past it", async () => {
        const c = makeChannel();
        await store.createChannel(c);
        const outcomes = await Promise.all(Array.from({ length: 30 }, (_, i) => store.recordChannelMessage(c.uri, JSON.stringify(i), 10)));
        expect(outcomes.filter((o) => o === "recorded")).toHaveLength(10);
        expect(outcomes.filter((o) => o === "exhausted")).toHaveLength(20);
        expect((await store.getChannel(c.uri))!.messageCount).toBe(10);
      });

      it("property: outcomes match a Set model; messageCount = number of distinct ids", async () => {
        await fc.assert(
          fc.asyncProperty(
            fc.array(fc.oneof(fc.constantFrom("a", "b", "c", "d", "e", "f"), fc.integer({ min: 0, max: 5 })), { maxLength: 40 }),
            async (ids) => {
              const c = makeChannel();
              expect(await store.createChannel(c)).toBe(true);
              const seen = new Set<string>();
              for (const raw of ids) {
                const id = JSON.stringify(raw);
                const expected: RecordOutcome = seen.has(id) ? "replay" : "recorded";
                seen.add(id);
                expect(await store.recordChannelMessage(c.uri, id, BIG_LIMIT)).toBe(expected);
              }
              expect((await store.getChannel(c.uri))!.messageCount).toBe(seen.size);
            },
          ),
          { numRuns: 100 },
        );
      });
    });

    describe("purgeChannels", () => {
      it("removes exactly the channels with expiresAt < before, returns the count, and drops their replay records", async () => {
        const before = new Date(1_800_000_000_000);
        const expired1 = makeChannel({ expiresAt: new Date(before.getTime() - 1) });
        const expired2 = makeChannel({ expiresAt: new Date(before.getTime() - 3_600_000) });
        const atBoundary = makeChannel({ expiresAt: new Date(before.getTime()) });
        const live = makeChannel({ expiresAt: new Date(before.getTime() + 1) });
        for (const c of [expired1, expired2, atBoundary, live]) expect(await store.createChannel(c)).toBe(true);
        expect(await store.recordChannelMessage(expired1.uri, '"r"', BIG_LIMIT)).toBe("recorded");
        expect(await store.recordChannelMessage(live.uri, '"r"', BIG_LIMIT)).toBe("recorded");

        expect(await store.purgeChannels(before)).toBe(2);

        expect(await store.getChannel(expired1.uri)).toBeUndefined();
        expect(await store.getChannel(expired2.uri)).toBeUndefined();
        expect(await store.getChannel(atBoundary.uri)).toEqual(atBoundary);
        expect(await store.getChannel(live.uri)).toEqual({ ...live, messageCount: 1 });
        expect(await store.recordChannelMessage(expired1.uri, '"r"', BIG_LIMIT)).toBe("unknown");
        // The live channel kept its replay records.
        expect(await store.recordChannelMessage(live.uri, '"r"', BIG_LIMIT)).toBe("replay");
        // The purged channel's replay records are gone with it.
        expect(await store.createChannel(makeChannel({ uri: expired1.uri, expiresAt: new Date(before.getTime() + 60_000) }))).toBe(true);
        expect(await store.recordChannelMessage(expired1.uri, '"r"', BIG_LIMIT)).toBe("recorded");

        expect(await store.purgeChannels(before)).toBe(0);
      });

      it("returns 0 on an empty store", async () => {
        expect(await store.purgeChannels(new Date())).toBe(0);
      });
    });
  });
}
