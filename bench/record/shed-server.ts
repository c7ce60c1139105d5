/**
 * `keyward dev` with a lower load-shedding threshold, for the overload part of `npm run bench`.
 * The server has no setting for the HTTP binding's `maxInFlight` (fixed at 4096 in
 * src/server/kms.ts), so this process builds the same KMS from the data dir as `keyward dev`
 * does, with the compiled code (dist/: `kmsFromConfig`, `startDevIdp`), and serves it through the
 * same HTTP binding (`createHttpHandler`) with `maxInFlight` = argv[3] instead of 4096. Everything
 * else (core, store, barrier, token cache) is the server's own code.
 *
 *   node --import tsx bench/record/shed-server.ts <data dir> <maxInFlight>
 */
import http from "node:http";
import { join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const ROOT = resolve(fileURLToPath(import.meta.url), "../../..");
const dist = async <T>(path: string): Promise<T> => (await import(pathToFileURL(join(ROOT, "dist", path)).href)) as T;

const dir = resolve(process.argv[2]!);
const maxInFlight = Number(process.argv[3]);
if (!Number.isSafeInteger(maxInFlight) || maxInFlight < 1) throw new Error("usage: shed-server.ts <data dir> <maxInFlight>");

const { loadConfig } = await dist<typeof import("../../src/config/config.js")>("config/config.js");
const { kmsFromConfig } = await dist<typeof import("../../src/server/start.js")>("server/start.js");
const { startDevIdp } = await dist<typeof import("../../src/identity/dev-idp.js")>("identity/dev-idp.js");
const { createHttpHandler } = await dist<typeof import("../../src/transport/http/http-binding.js")>("transport/http/http-binding.js");

const config = loadConfig(dir);
if (!config.devIdp) throw new Error(`${dir} is not a keyward dev data dir`);
const idp = await startDevIdp({ dataDir: dir, host: config.devIdp.listenHost, port: config.devIdp.listenPort, audience: config.oauthAudience });
const kms = await kmsFromConfig(config);
const server = http.createServer(
  { keepAliveTimeout: 65_000 },
  createHttpHandler({
    handle: (m) => kms.core.handle(m),
    wellKnown: () => kms.wellKnown(),
    ready: async () => {},
    metrics: async () => ({ contentType: "text/plain", body: "" }),
    maxMessageBytes: config.maxMessageBytes,
    maxBatchMessages: config.maxBatchMessages,
    maxInFlight,
  }),
);
await new Promise<void>((r) => server.listen(config.listenPort, config.listenHost, () => r()));
console.log(`shed-server: listening on ${config.listenHost}:${config.listenPort}, maxInFlight ${maxInFlight}`);
const stop = () => {
  server.close();
  server.closeAllConnections();
  void Promise.all([kms.close(), idp.close()]).finally(() => process.exit(0));
};
process.once("SIGTERM", stop);
process.once("SIGINT", stop);
