import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestKms, type TestKms } from "../helpers/harness.js";
import { rawHttp } from "../helpers/fuzz-http.js";

/**
 * The minimal counterexamples the fuzzers in this folder found, each as a plain test, so that
 * they stay fixed whatever seed the properties run with.
 */
describe("fuzz regressions", () => {
  let kms: TestKms;
  let port: number;
  beforeAll(async () => {
    kms = await startTestKms();
    port = Number(new URL(kms.url).port);
  });
  afterAll(async () => {
    await kms?.close();
  });

  const get = async (target: string) => {
    const ex = await rawHttp(port, Buffer.from(`GET ${target} HTTP/1.1\r\nHost: kms.example.com\r\n\r\n`, "latin1"));
    expect(ex.responses.length).toBeGreaterThan(0);
    return ex.responses[0]!;
  };

  // http-bytes.test.ts "random requests", shrunk to `GET //`: the discovery routes parsed the
  // request target with `new URL(target, base)`, which throws for an empty authority, and the
  // binding turned the exception into a 500.
  it.each(["//", "//:99999", "//["])("GET %s → 404, not 500; the server keeps answering", async (target) => {
    const res = await get(target);
    expect(res.status).toBe(404);
    expect((await get("/healthz")).status).toBe(200);
  });
});
