import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

/**
 * Every relative link in README.md and in docs/**\/*.md resolves to a file inside the repository
 * (a clone alone must be readable: no links into `../shared` or elsewhere). Anchors are not
 * checked; external links (with a scheme) and pure anchors are out of scope.
 */
const repo = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

function markdownUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return markdownUnder(path);
    return name.endsWith(".md") ? [path] : [];
  });
}

/** The link targets of a Markdown text: inline `[text](target)` and definitions `[ref]: target`, outside code. */
export function linkTargets(markdown: string): { target: string; line: number }[] {
  const found: { target: string; line: number }[] = [];
  let fenced = false;
  markdown.split("\n").forEach((raw, index) => {
    if (/^\s*(```|~~~)/.test(raw)) {
      fenced = !fenced;
      return;
    }
    if (fenced) return;
    const text = raw.replace(/`[^`]*`/g, "");
    for (const m of text.matchAll(/\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)) found.push({ target: m[1]!, line: index + 1 });
    const definition = /^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$/.exec(text);
    if (definition) found.push({ target: definition[1]!, line: index + 1 });
  });
  return found;
}

/** Whether a target is a relative link to check (not a URL with a scheme, not a pure anchor). */
function isRelative(target: string): boolean {
  return !/^[a-z][a-z0-9+.-]*:/i.test(target) && !target.startsWith("#") && !target.startsWith("//");
}

const files = [join(repo, "README.md"), ...markdownUnder(join(repo, "docs"))];

describe("relative links in README.md and docs/", () => {
  it("finds the documents and their links", () => {
    expect(files.length).toBeGreaterThan(3);
    const all = files.flatMap((f) => linkTargets(readFileSync(f, "utf8")).filter((l) => isRelative(l.target)));
    expect(all.length).toBeGreaterThan(5);
  });

  it.each(files.map((f) => relative(repo, f)))("every relative link in %s resolves to a file in the repository", (file) => {
    const path = join(repo, file);
    const broken: string[] = [];
    for (const { target, line } of linkTargets(readFileSync(path, "utf8"))) {
      if (!isRelative(target)) continue;
      const withoutAnchor = decodeURIComponent(target.split("#")[0]!.split("?")[0]!);
      if (withoutAnchor === "") continue;
      const resolved = resolve(dirname(path), withoutAnchor);
      if (resolved !== repo && !resolved.startsWith(repo + sep)) broken.push(`${file}:${line}: ${target} leaves the repository`);
      else if (!existsSync(resolved)) broken.push(`${file}:${line}: ${target} does not exist`);
    }
    expect(broken).toEqual([]);
  });

  it("the checker sees inline links and definitions, and ignores code", () => {
    const md = "[a](x.md) `[b](y.md)`\n```\n[c](z.md)\n```\n[ref]: w.md\n[e](https://example.com) [f](#anchor)";
    expect(linkTargets(md).map((l) => l.target)).toEqual(["x.md", "w.md", "https://example.com", "#anchor"]);
  });
});
