import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

/**
 * The repository carries its own copies of the protocol texts and the known-answer vectors, so a
 * clone builds and tests alone. Where the shared originals sit beside the repository (`../shared`,
 * as on the development machine and in CI), each copy must equal its source byte for byte: a
 * drifted copy would test against a profile that is no longer the binding one.
 */
const repo = join(dirname(fileURLToPath(import.meta.url)), "..");
const shared = join(repo, "..", "shared");

/** Vendored copy (relative to the repository) → its source (relative to `../shared`). */
export const VENDORED: readonly (readonly [copy: string, source: string])[] = [
  ["docs/protocol/PROTOCOL.md", "PROTOCOL.md"],
  ["docs/protocol/draft-abiggs-saag-key-management-service-03.md", "spec/draft-abiggs-saag-key-management-service-03.md"],
  ["docs/protocol/primitives-summary.md", "spec/primitives-summary.md"],
  ["test/vectors/node-jose-vectors.json", "vectors/node-jose-vectors.json"],
  ["test/vectors/README.md", "vectors/README.md"],
];

describe("vendored protocol texts and vectors", () => {
  it.each(VENDORED)("%s is in the repository", (copy) => {
    expect(existsSync(join(repo, copy)), `${copy} is missing from the repository`).toBe(true);
  });

  const sharedPresent = existsSync(shared);
  if (!sharedPresent) {
    console.warn(`${shared} does not exist: the byte-for-byte comparison with the shared originals is SKIPPED`);
    it.skip(`equals ../shared byte for byte (SKIPPED: ${shared} does not exist beside the repository)`, () => {});
    return;
  }
  it.each(VENDORED)("%s equals ../shared/%s byte for byte", (copy, source) => {
    const sourcePath = join(shared, source);
    expect(existsSync(sourcePath), `../shared/${source} (the source of ${copy}) is missing`).toBe(true);
    const mine = readFileSync(join(repo, copy));
    const theirs = readFileSync(sourcePath);
    expect(mine.equals(theirs), `${copy} has drifted from ../shared/${source}: copy it again (cp ../shared/${source} ${copy})`).toBe(true);
  });
});
