import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { AUDIT_GENESIS_HASH, auditHash, canonicalJson, nextAuditRecord, verifyAuditChain } from "../../src/store/audit.js";

describe("audit record format (docs/audit.md)", () => {
  it("canonical JSON: keys sorted, no whitespace, undefined members left out, nested too", () => {
    expect(canonicalJson({ b: 1, a: [true, "x", { d: null, c: undefined, b: "é\n" }], A: -0.5 })).toBe('{"A":-0.5,"a":[true,"x",{"b":"é\\n","d":null}],"b":1}');
  });

  it("canonical JSON refuses what JSON cannot hold", () => {
    expect(() => canonicalJson({ x: Number.NaN })).toThrow(TypeError);
    expect(() => canonicalJson({ x: Infinity })).toThrow(TypeError);
    expect(() => canonicalJson({ x: 1n })).toThrow(TypeError);
  });

  it("hash = SHA-256(previous hash as 64 hex characters || canonical JSON), from 64 zeros", () => {
    const { record, json } = nextAuditRecord({ seq: 0, hash: AUDIT_GENESIS_HASH }, { time: new Date(0), operation: "gk.get", actor: "a@x.example", status: 200, recipients: ["k1"] });
    expect(json).toBe('{"actor":"a@x.example","operation":"gk.get","recipients":["k1"],"seq":1,"status":200,"time":"1970-01-01T00:00:00.000Z"}');
    expect(record.prev).toBe("0".repeat(64));
    expect(record.hash).toBe(createHash("sha256").update("0".repeat(64) + json).digest("hex"));
    expect(auditHash(record.prev, json)).toBe(record.hash);
    expect(verifyAuditChain([record])).toEqual({ ok: true, count: 1, head: { seq: 1, hash: record.hash } });
  });
});
