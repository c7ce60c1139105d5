import { describe, expect, it } from "vitest";
import { runFileSharing, type FileSharingResult } from "../../examples/file-sharing/run.js";

/** The draft §3.1 demo (examples/file-sharing) under each membership policy. */
describe.each([1, 2, 3] as const)("examples/file-sharing under policy %i", (policy) => {
  let result: FileSharingResult;
  const run = async () => (result ??= await runFileSharing({ policy, log: () => undefined }));

  it("prints steps 1 to 11 of the draft in order, then the removal steps", async () => {
    const { lines } = await run();
    const steps = lines.map((l) => /^step (\d+):/.exec(l)?.[1]).filter((n): n is string => n !== undefined).map(Number);
    expect(steps).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
    expect(lines.filter((l) => l.startsWith("race:"))).toHaveLength(2);
    expect(lines[0]).toContain(`policy ${policy}`);
  });

  it("the race: B is refused the GK before A binds it (403), granted once bound", async () => {
    const { race, gk, blocks } = await run();
    for (const early of [race.beforeAdd, race.beforeBind]) {
      expect(early).toMatchObject({ granted: false, status: 403 });
      if (!early.granted) expect(early.reason).toMatch(/not bound/);
    }
    expect(race.afterBind).toEqual({ granted: true });
    expect(gk.block).toBe(blocks.addedBAndC);
  });

  it("B and C decrypt exactly A's file", async () => {
    const r = await run();
    expect(r.bobDecrypted).toBe(true);
    expect(r.carolDecrypted).toBe(true);
  });

  it("the file server never holds a plaintext, only JWEs naming their GK", async () => {
    const { fileServer, gk, rotation } = await run();
    expect(fileServer.files.map((f) => f.id).sort()).toEqual(["board-minutes.txt", "q4-plan.txt"]);
    for (const f of fileServer.files) {
      expect(f.containsPlaintext).toBe(false);
      expect(f.firstBytes).toMatch(/^"eyJ/); // a JOSE header, base64url
    }
    expect(fileServer.files.map((f) => f.gk).sort()).toEqual([gk.uri, rotation.gkUri].sort());
  });

  it(`after C's removal: ${policy === 1 ? "C still fetches the GK it was entitled to" : "C is refused the old GK (403)"}`, async () => {
    const { carolAfterRemoval, carolCachedCopyDecrypts } = await run();
    if (policy === 1) {
      expect(carolAfterRemoval).toEqual({ granted: true });
    } else {
      expect(carolAfterRemoval).toMatchObject({ granted: false, status: 403 });
      if (!carolAfterRemoval.granted) expect(carolAfterRemoval.reason).toContain(`policy ${policy}`);
    }
    // What C already holds cannot be taken back, under any policy.
    expect(carolCachedCopyDecrypts).toBe(true);
  });

  it("content encrypted after C's removal uses a new GK bound to the new tail, which C cannot fetch; B can", async () => {
    const { rotation, gk, blocks } = await run();
    expect(rotation.gkUri).not.toBe(gk.uri);
    expect(rotation.block).toBe(blocks.removedC);
    expect(rotation.bobDecrypted).toBe(true);
    expect(rotation.carolAccess).toMatchObject({ granted: false, status: 403 });
    if (!rotation.carolAccess.granted) expect(rotation.carolAccess.reason).toContain(`policy ${policy}`);
  });
});
