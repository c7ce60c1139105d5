import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { configReferenceMarkdown } from "../../src/config/config.js";
import { REPO_ROOT } from "../helpers/cli.js";

describe("README configuration reference", () => {
  it("is the table the key table generates (configReferenceMarkdown), so a new key cannot go undocumented", () => {
    const readme = readFileSync(join(REPO_ROOT, "README.md"), "utf8");
    const generated = configReferenceMarkdown().trim();
    const tableLines = generated.split("\n").filter((l) => l.startsWith("|"));
    const start = readme.split("\n").findIndex((l) => l === tableLines[0]);
    expect(start, "the README has the reference table's header").toBeGreaterThanOrEqual(0);
    const inReadme = readme.split("\n").slice(start, start + tableLines.length);
    expect(inReadme.join("\n")).toBe(tableLines.join("\n"));
  });
});
