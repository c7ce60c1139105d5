import { spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { builtinModules } from "node:module";
import { dirname, join, relative, resolve, sep } from "node:path";
import { describe, expect, it } from "vitest";

/**
 * The isomorphic core (protocol, primitives, client) runs in browsers as well as Node: it must not
 * import Node built-ins, use Buffer or process, or reach into the server-only code.
 */
const REPO_ROOT = resolve(import.meta.dirname, "..");
const ISOMORPHIC_DIRS = ["src/protocol", "src/primitives", "src/client"];
const SERVER_ONLY_DIRS = ["src/server", "src/service", "src/store", "src/transport", "src/identity", "src/cli", "src/config", "src/pki"];

function sourceFiles(dir: string): string[] {
  const abs = join(REPO_ROOT, dir);
  let entries;
  try {
    entries = readdirSync(abs, { withFileTypes: true, recursive: true });
  } catch {
    return [];
  }
  return entries
    .filter((e) => e.isFile() && /\.(?:[cm]?ts|tsx|[cm]?js|jsx)$/.test(e.name))
    .map((e) => join(e.parentPath, e.name));
}

/** Removes comments (block, and line comments that start a line or follow whitespace or code punctuation). */
function stripComments(code: string): string {
  return code.replace(/\/\*[\s\S]*?\*\//g, " ").replace(/(^|[\s;{}(),])\/\/.*$/gm, "$1");
}

/** Blanks the contents of '...' and "..." strings (template literals are kept: `${...}` is code). */
function blankStrings(code: string): string {
  return code.replace(/"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'/g, '""');
}

interface ModuleRef {
  readonly specifier: string;
  readonly kind: "static" | "side-effect" | "dynamic" | "require";
}

const STATIC_RE = /\b(?:import|export)\s+(?:type\s+)?[\w$*{}\s,]*?\s*from\s*(["'])([^"'\n]+)\1/g;
const SIDE_EFFECT_RE = /\bimport\s*(["'])([^"'\n]+)\1/g;
const DYNAMIC_RE = /\bimport\s*\(\s*(["'`])([^"'`\n]+)\1\s*[,)]/g;
const REQUIRE_RE = /\brequire\s*\(\s*(["'`])([^"'`\n]+)\1\s*\)/g;
const ANY_DYNAMIC_RE = /\bimport\s*\(/g;

/** Every module a source text names in import/export-from statements, dynamic imports and require(). */
function moduleRefs(source: string): ModuleRef[] {
  const code = stripComments(source);
  const refs: ModuleRef[] = [];
  for (const m of code.matchAll(STATIC_RE)) refs.push({ specifier: m[2]!, kind: "static" });
  for (const m of code.matchAll(SIDE_EFFECT_RE)) refs.push({ specifier: m[2]!, kind: "side-effect" });
  for (const m of code.matchAll(DYNAMIC_RE)) refs.push({ specifier: m[2]!, kind: "dynamic" });
  for (const m of code.matchAll(REQUIRE_RE)) refs.push({ specifier: m[2]!, kind: "require" });
  return refs;
}

/** Dynamic imports whose argument is not a string literal: they cannot be checked statically. */
function uncheckableDynamicImports(source: string): number {
  const code = stripComments(source);
  return [...code.matchAll(ANY_DYNAMIC_RE)].length - [...code.matchAll(DYNAMIC_RE)].length;
}

const BUILTINS = new Set(builtinModules.filter((m) => !m.startsWith("_")));

function isNodeBuiltin(specifier: string): boolean {
  if (specifier.startsWith("node:")) return true;
  const base = specifier.split("/")[0]!;
  return BUILTINS.has(specifier) || BUILTINS.has(base);
}

const files = ISOMORPHIC_DIRS.flatMap(sourceFiles);
const rel = (f: string) => relative(REPO_ROOT, f).split(sep).join("/");

describe("the import scanner (self-check)", () => {
  it("finds static, type-only, multi-line, export-from, side-effect, dynamic and require references", () => {
    const src = [
      'import { a } from "./a.js";',
      "import type { B } from '../b.js';",
      "import {",
      "  c,",
      "  type D,",
      '} from "node:fs";',
      'import * as e from "crypto";',
      'import f, { g } from "buffer";',
      'export { h } from "../service/kms.js";',
      'export * from "./i.js";',
      'export type { J } from "./j.js";',
      'import "reflect-metadata";',
      'const k = await import("node:os");',
      "const l = await import('../store/store.js', { with: {} });",
      'const m = require("fs");',
      '// import { n } from "node:net";',
      '/* import "node:tls"; */',
      'const url = "http://example.com"; import { o } from "./o.js";',
    ].join("\n");
    expect(moduleRefs(src).map((r) => r.specifier).sort()).toEqual(
      ["./a.js", "../b.js", "node:fs", "crypto", "buffer", "../service/kms.js", "./i.js", "./j.js", "reflect-metadata", "node:os", "../store/store.js", "fs", "./o.js"].sort(),
    );
    expect(uncheckableDynamicImports("await import(name); await import('./x.js')")).toBe(1);
  });

  it("recognises Node built-ins with and without the node: prefix", () => {
    for (const s of ["node:fs", "fs", "fs/promises", "crypto", "buffer", "node:test", "path", "stream/web", "worker_threads"]) {
      expect(isNodeBuiltin(s), s).toBe(true);
    }
    for (const s of ["jose", "@peculiar/x509", "reflect-metadata", "./crypto.js", "../buffer.js"]) {
      expect(isNodeBuiltin(s), s).toBe(false);
    }
  });
});

describe("architecture: the isomorphic core", () => {
  it("has source files to check", () => {
    expect(files.length).toBeGreaterThan(5);
    expect(files.some((f) => rel(f).startsWith("src/client/"))).toBe(true);
    expect(files.some((f) => rel(f).startsWith("src/protocol/"))).toBe(true);
  });

  it("imports no Node built-in module (node:* nor bare fs, crypto, buffer, ...)", () => {
    const offenders = files.flatMap((f) =>
      moduleRefs(readFileSync(f, "utf8"))
        .filter((r) => isNodeBuiltin(r.specifier))
        .map((r) => `${rel(f)}: ${r.kind} import of '${r.specifier}'`),
    );
    expect(offenders).toEqual([]);
  });

  it("does not reach into server-only directories", () => {
    const serverOnly = SERVER_ONLY_DIRS.map((d) => join(REPO_ROOT, d));
    const offenders = files.flatMap((f) =>
      moduleRefs(readFileSync(f, "utf8"))
        .filter((r) => r.specifier.startsWith("."))
        .filter((r) => {
          const target = resolve(dirname(f), r.specifier);
          return serverOnly.some((d) => target === d || target.startsWith(d + sep));
        })
        .map((r) => `${rel(f)}: ${r.kind} import of '${r.specifier}'`),
    );
    expect(offenders).toEqual([]);
  });

  it("does not import the package by a bare self-reference or absolute path into server code", () => {
    const offenders = files.flatMap((f) =>
      moduleRefs(readFileSync(f, "utf8"))
        .filter((r) => /^(?:keyward(?:\/|$)|\/|src\/)/.test(r.specifier))
        .map((r) => `${rel(f)}: '${r.specifier}'`),
    );
    expect(offenders).toEqual([]);
  });

  it("has no dynamic import with a computed (uncheckable) specifier", () => {
    const offenders = files.filter((f) => uncheckableDynamicImports(readFileSync(f, "utf8")) > 0).map(rel);
    expect(offenders).toEqual([]);
  });

  it("uses no Buffer identifier and no process.* (Node globals)", () => {
    const offenders: string[] = [];
    for (const f of files) {
      const code = blankStrings(stripComments(readFileSync(f, "utf8")));
      code.split("\n").forEach((line, i) => {
        if (/(?<![\w$])Buffer(?![\w$])/.test(line)) offenders.push(`${rel(f)}:${i + 1}: Buffer`);
        if (/(?<![\w$])process\s*(?:\?\.|\.|\[)/.test(line)) offenders.push(`${rel(f)}:${i + 1}: process`);
        if (/\bglobalThis\s*(?:\?\.|\.)\s*(?:process|Buffer)\b/.test(line)) offenders.push(`${rel(f)}:${i + 1}: globalThis.process/Buffer`);
      });
    }
    expect(offenders).toEqual([]);
  });

  it("type-checks without Node's types (npx tsc -p tsconfig.isomorphic.json)", async () => {
    const { code, output } = await new Promise<{ code: number | null; output: string }>((resolveRun, reject) => {
      const child = spawn("npx", ["tsc", "-p", "tsconfig.isomorphic.json"], { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] });
      let output = "";
      child.stdout.setEncoding("utf8").on("data", (d: string) => (output += d));
      child.stderr.setEncoding("utf8").on("data", (d: string) => (output += d));
      child.once("error", reject);
      child.once("exit", (c) => resolveRun({ code: c, output }));
    });
    expect(output).toBe("");
    expect(code).toBe(0);
  }, 120_000);
});
