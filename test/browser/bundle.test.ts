import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import type { Metafile } from "esbuild";
import { buildBrowserBundle, isNodeBuiltin, NodeBuiltinInBundleError, nodeBuiltinsIn } from "../../scripts/build-browser-sdk.js";

const dir = mkdtempSync(join(tmpdir(), "keyward-browser-bundle-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("the browser bundle of the SDK", () => {
  it("bundles src/client into one minified ESM file that reaches no Node built-in, and exports the SDK", async () => {
    const sdk = await buildBrowserBundle({ outFile: join(dir, "keyward.js") });
    const jose = await buildBrowserBundle({ source: 'export * from "jose";', outFile: join(dir, "jose.js") });
    expect(nodeBuiltinsIn(sdk.metafile)).toEqual([]);
    const inputs = Object.keys(sdk.metafile.inputs);
    expect(inputs).toContain("src/client/index.ts");
    expect(inputs.some((p) => p.startsWith("node:"))).toBe(false);
    // Everything is inlined: the output imports nothing at run time.
    for (const out of Object.values(sdk.metafile.outputs)) expect(out.imports).toEqual([]);
    const code = readFileSync(sdk.file, "utf8");
    // (A dependency's guarded `typeof Buffer` branch may remain: it is dead code in a browser.)
    expect(/from\s*["'](node:)?(fs|crypto|path|buffer|zlib|net|tls)["']/.test(code)).toBe(false);
    const mod = (await import(pathToFileURL(sdk.file).href)) as Record<string, unknown>;
    for (const name of ["KmsClient", "HttpTransport", "WebSocketTransport", "DeviceKey", "Groups", "GroupKeys", "KmsIdentityError", "KmsRequestError"]) {
      expect(typeof mod[name], name).toBe("function");
    }
    // Sizes, for the record (README / report): minified and gzip, the SDK next to jose alone.
    console.log(
      `browser bundle: keyward.js ${sdk.bytes} B min, ${sdk.gzipBytes} B gzip; jose alone ${jose.bytes} B min, ${jose.gzipBytes} B gzip`,
    );
    expect(sdk.gzipBytes).toBeLessThan(sdk.bytes);
    expect(sdk.bytes).toBeGreaterThan(jose.bytes);
  });

  it("fails the build when the graph imports a Node built-in (node: prefix or bare), naming it", async () => {
    for (const spec of ["node:fs", "crypto", "fs/promises"]) {
      const out = join(dir, `bad-${spec.replace(/\W/g, "_")}.js`);
      await expect(buildBrowserBundle({ source: `import * as m from "${spec}"; export const x = m;`, outFile: out })).rejects.toThrow(
        new RegExp(`Node built-in '${spec}'`),
      );
    }
  });

  it("finds Node built-ins in a metafile: a node: input, an import of a built-in, an import left in the output", () => {
    const metafile: Metafile = {
      inputs: {
        "src/a.ts": { bytes: 1, imports: [{ path: "node:buffer", kind: "import-statement", external: true }] },
        "src/b.ts": { bytes: 1, imports: [{ path: "some-lib", kind: "import-statement", external: true }] },
        "node:zlib": { bytes: 1, imports: [] },
      },
      outputs: {
        "out.js": { bytes: 1, inputs: {}, imports: [{ path: "ws", kind: "import-statement", external: true }], exports: [], entryPoint: "src/a.ts" },
      },
    };
    expect(nodeBuiltinsIn(metafile)).toEqual(["node:buffer (from src/a.ts)", "node:zlib", "ws (in output)"]);
    expect(() => {
      throw new NodeBuiltinInBundleError(nodeBuiltinsIn(metafile));
    }).toThrow(/must not use Node built-ins, but it reaches: node:buffer/);
    expect(isNodeBuiltin("node:test")).toBe(true);
    expect(isNodeBuiltin("stream/web")).toBe(true);
    expect(isNodeBuiltin("jose")).toBe(false);
    expect(isNodeBuiltin("@peculiar/x509")).toBe(false);
  });
});
