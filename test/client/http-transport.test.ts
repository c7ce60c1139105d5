import { createServer } from "node:net";
import { describe, expect, it } from "vitest";
import { HttpTransport, KmsClient, KmsTransportError } from "../../src/client/index.js";

/** A loopback port nothing listens on (bound, then released). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe("HttpTransport: a KMS it cannot reach", () => {
  it("is a KmsTransportError ERR_TRANSPORT (not fetch's bare TypeError) for send and discover, and for KmsClient.ping", async () => {
    const origin = `http://127.0.0.1:${await closedPort()}`;
    const transport = new HttpTransport(origin);
    for (const attempt of [() => transport.send("a.b.c.d.e"), () => transport.discover()]) {
      const err = await attempt().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(KmsTransportError);
      expect(err).toMatchObject({ code: "ERR_TRANSPORT", message: expect.stringContaining(`could not reach the KMS at ${origin}/`) });
    }
    const client = new KmsClient({ transport, user: "alice@example.com", token: "unused", trustRoots: [] });
    await expect(client.ping()).rejects.toBeInstanceOf(KmsTransportError);
  });

  it("says what a browser's blocked cross-origin request looks like (fetch rejects with a bare TypeError)", async () => {
    const blocked = (() => Promise.reject(new TypeError("Failed to fetch"))) as typeof fetch;
    const err = await new HttpTransport("https://kms.example.com", blocked).discover().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KmsTransportError);
    expect((err as Error).message).toMatch(/Failed to fetch .*corsOrigins/);
  });
});
