/**
 * Builds the browser bundle of the Keyward SDK: one minified ESM file of `src/client/index.ts`
 * (with `src/protocol`, `src/primitives` and jose, @peculiar/x509 inlined) for `<script
 * type="module">` or an app's own bundler. The build fails when anything in the graph reaches for
 * a Node built-in (`node:*`, `fs`, `crypto`, ...): the SDK is isomorphic, and a polyfilled or
 * silently stubbed built-in would only break at run time in a user's browser.
 *
 * Run: `npm run build:browser` (writes `dist/browser/keyward.js`), or
 * `node --import tsx scripts/build-browser-sdk.ts [outDir]`.
 */
import { builtinModules } from "node:module";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { gzipSync } from "node:zlib";
import { build, type Metafile, type Plugin } from "esbuild";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
/** The SDK's entry point. */
export const SDK_ENTRY = join(ROOT, "src/client/index.ts");

/** What one browser build produced. */
export interface BrowserBuild {
  /** The bundle's path. */
  readonly file: string;
  /** Its size in bytes (minified). */
  readonly bytes: number;
  /** Its size gzip-compressed (level 9), the figure a web server would send. */
  readonly gzipBytes: number;
  /** esbuild's metafile: every input module and import. */
  readonly metafile: Metafile;
}

/** Thrown when the bundle would contain (or import) a Node built-in. */
export class NodeBuiltinInBundleError extends Error {
  constructor(readonly offenders: readonly string[]) {
    super(`the browser bundle must not use Node built-ins, but it reaches: ${offenders.join(", ")}`);
    this.name = "NodeBuiltinInBundleError";
  }
}

const BUILTINS = new Set(builtinModules.flatMap((m) => [m, `node:${m}`]));

/** A Node built-in module specifier (`node:fs`, `fs`, `fs/promises`, ...)? */
export function isNodeBuiltin(specifier: string): boolean {
  return specifier.startsWith("node:") || BUILTINS.has(specifier) || BUILTINS.has(specifier.split("/")[0]!);
}

/**
 * Refuses every import of a Node built-in while resolving, naming the importer: esbuild on
 * `platform: "browser"` would otherwise honour a package's `browser` field stubs or, for an
 * `external` list, leave a bare `import "fs"` in the output.
 */
const refuseNodeBuiltins: Plugin = {
  name: "refuse-node-builtins",
  setup(b) {
    b.onResolve({ filter: /.*/ }, (args) => {
      if (args.kind === "entry-point" || !isNodeBuiltin(args.path)) return undefined;
      return { errors: [{ text: `Node built-in '${args.path}' imported by ${args.importer || "(entry)"}: not allowed in the browser bundle` }] };
    });
  },
};

/**
 * The Node built-ins a metafile shows (inputs named `node:*`, imports of built-ins, and any
 * import left in the output): empty for a clean bundle. The second line of defence after the resolve plugin.
 *
 * @example
 * const { metafile } = await buildBrowserBundle({ outFile });
 * nodeBuiltinsIn(metafile) // []
 */
export function nodeBuiltinsIn(metafile: Metafile): string[] {
  const found = new Set<string>();
  for (const [path, input] of Object.entries(metafile.inputs)) {
    if (isNodeBuiltin(path)) found.add(path);
    // An input's `external` import is not proof of a leak: esbuild also lists, as external, a
    // TypeScript import it dropped for being type-only. What survives shows in the outputs.
    for (const imp of input.imports) if (isNodeBuiltin(imp.path)) found.add(`${imp.path} (from ${path})`);
  }
  for (const output of Object.values(metafile.outputs)) {
    for (const imp of output.imports) if (isNodeBuiltin(imp.path) || imp.external) found.add(`${imp.path} (in output)`);
  }
  return [...found].sort();
}

/**
 * Bundles one entry (or inline ESM source) for browsers: ESM, minified, `platform: "browser"`,
 * ES2022, no Node built-ins (a NodeBuiltinInBundleError otherwise, or esbuild's error naming
 * the import). Returns the sizes and the metafile.
 *
 * @example
 * const sdk = await buildBrowserBundle({ outFile: "dist/browser/keyward.js" });
 * const jose = await buildBrowserBundle({ source: 'export * from "jose";', outFile: "/tmp/jose.js" });
 * console.log(sdk.bytes, sdk.gzipBytes, jose.gzipBytes);
 */
export async function buildBrowserBundle(opts: { outFile: string; entry?: string; source?: string; sourcemap?: boolean }): Promise<BrowserBuild> {
  mkdirSync(dirname(opts.outFile), { recursive: true });
  const result = await build({
    ...(opts.source !== undefined
      ? { stdin: { contents: opts.source, resolveDir: ROOT, sourcefile: "inline-entry.ts", loader: "ts" as const } }
      : { entryPoints: [opts.entry ?? SDK_ENTRY] }),
    outfile: opts.outFile,
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    minify: true,
    sourcemap: opts.sourcemap ?? false,
    legalComments: "none",
    metafile: true,
    logLevel: "silent",
    plugins: [refuseNodeBuiltins],
  });
  const offenders = nodeBuiltinsIn(result.metafile);
  if (offenders.length > 0) throw new NodeBuiltinInBundleError(offenders);
  const code = readFileSync(opts.outFile);
  return { file: opts.outFile, bytes: code.length, gzipBytes: gzipSync(code, { level: 9 }).length, metafile: result.metafile };
}

/** Builds the SDK and, for comparison, jose alone the same way; prints both sizes. */
async function main(): Promise<void> {
  const outDir = resolve(process.argv[2] ?? join(ROOT, "dist/browser"));
  const sdk = await buildBrowserBundle({ outFile: join(outDir, "keyward.js"), sourcemap: true });
  const jose = await buildBrowserBundle({ source: 'export * from "jose";', outFile: join(outDir, ".jose-only.js") });
  const kb = (n: number) => `${(n / 1024).toFixed(1)} KiB`;
  const line = (name: string, b: BrowserBuild) => `${name.padEnd(22)} ${kb(b.bytes).padStart(10)} min  ${kb(b.gzipBytes).padStart(10)} gzip`;
  writeFileSync(join(outDir, "sizes.txt"), [line("keyward.js", sdk), line("jose alone (same way)", jose)].join("\n") + "\n");
  console.log(line("keyward.js", sdk));
  console.log(line("jose alone (same way)", jose));
  console.log(`wrote ${sdk.file}`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main().catch((e: unknown) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}
