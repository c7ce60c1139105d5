import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import { base64url } from "jose";
import { describe, expect, it } from "vitest";
import { decryptCommonMessage, encryptCommonMessage } from "../../src/protocol/jose/common-message.js";
import { openCommonMessage, sealCommonMessage } from "../../src/server/channel-codec.js";

const vectors = JSON.parse(readFileSync(fileURLToPath(new URL("../vectors/node-jose-vectors.json", import.meta.url)), "utf8"));

describe("server common-message codec (node:crypto) against jose and node-jose", () => {
  const key = base64url.decode(vectors.commonMessage.kEphemeralB64url);

  it("opens the node-jose vector", () => {
    expect(JSON.parse(openCommonMessage(key, vectors.commonMessage.compactJwe).toString())).toEqual(vectors.commonMessage.plaintext);
  });

  it("property: jose opens what the server seals, and the server opens what jose seals", async () => {
    await fc.assert(
      fc.asyncProperty(fc.jsonValue(), fc.string({ minLength: 1, maxLength: 80 }), async (payload, kid) => {
        const sealed = sealCommonMessage(key, kid, payload);
        const header = JSON.parse(Buffer.from(sealed.split(".")[0]!, "base64url").toString());
        expect(header).toEqual({ alg: "dir", enc: "A256GCM", kid });
        expect((await decryptCommonMessage(key, sealed)).payload).toEqual(JSON.parse(JSON.stringify(payload)));
        const fromJose = await encryptCommonMessage(key, kid, payload);
        expect(JSON.parse(openCommonMessage(key, fromJose).toString())).toEqual(JSON.parse(JSON.stringify(payload)));
      }),
      { numRuns: 200 },
    );
  });

  it("refuses any altered part, a wrong key, an encrypted key, bad IV or tag lengths", () => {
    const good = sealCommonMessage(key, "kms://kms.example.com/ecdhe/1", { hello: "world" });
    const parts = good.split(".");
    const flip = (i: number) => {
      const p = [...parts];
      const b = Buffer.from(p[i]!, "base64url");
      b[0] = b[0]! ^ 1;
      p[i] = b.toString("base64url");
      return p.join(".");
    };
    for (const i of [0, 2, 3, 4]) expect(() => openCommonMessage(key, flip(i))).toThrow();
    expect(() => openCommonMessage(new Uint8Array(32), good)).toThrow();
    expect(() => openCommonMessage(key, [parts[0], "AAAA", ...parts.slice(2)].join("."))).toThrow();
    expect(() => openCommonMessage(key, [parts[0], "", "AAAA", parts[3], parts[4]].join("."))).toThrow();
    expect(() => openCommonMessage(key, [parts[0], "", parts[2], parts[3], "AAAA"].join("."))).toThrow();
  });
});
