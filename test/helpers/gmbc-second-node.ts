/**
 * A second KMS process on the same data dir (same SQLite file, same master key) as a test KMS,
 * for the multi-node tests of §8 (two appends on one tail through two processes).
 *
 *   node --import tsx test/helpers/gmbc-second-node.ts <dataDir> <oauthIssuer> <oauthJwksUri>
 *
 * Prints `KEYWARD_SECOND_NODE_URL=<url>` once it listens; exits when stdin closes or on SIGTERM.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { resolveConfig } from "../../src/config/config.js";
import { DATA_FILES } from "../../src/server/data-dir.js";
import { kmsFromConfig } from "../../src/service/start.js";

const [dataDir, oauthIssuer, oauthJwksUri] = process.argv.slice(2);
if (!dataDir || !oauthIssuer || !oauthJwksUri) {
  process.stderr.write("usage: gmbc-second-node.ts <dataDir> <oauthIssuer> <oauthJwksUri>\n");
  process.exit(2);
}
const config = resolveConfig(
  dataDir,
  { ...JSON.parse(readFileSync(join(dataDir, DATA_FILES.config), "utf8")), listen: "127.0.0.1:0", oauthIssuer, oauthJwksUri, logLevel: "silent" },
  {},
);
const kms = await kmsFromConfig(config);
const { url } = await kms.listen("127.0.0.1", 0);
process.stdout.write(`KEYWARD_SECOND_NODE_URL=${url}\n`);

let closing = false;
const stop = () => {
  if (closing) return;
  closing = true;
  void kms.close().finally(() => process.exit(0));
};
process.on("SIGTERM", stop);
process.stdin.on("end", stop);
process.stdin.on("close", stop);
process.stdin.resume();
