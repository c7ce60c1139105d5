/**
 * Diagnostic (not part of `npm run bench:channel`): the KMS core without HTTP. Builds a real KMS
 * (temp data dir, SQLite, dev IdP token) in this process and calls `kms.core.handle()` directly
 * with N messages in flight, so that the HTTP binding's share of a ping can be told apart.
 *
 *   taskset -c 0 node --import tsx bench/channel/core-inprocess.ts [data dir parent, default tmpdir] [in flight, default 32] [ecdhe]
 */
import { createCipheriv, randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CompactEncrypt, compactVerify, exportJWK, importJWK, type JWK } from "jose";
import { resolveConfig } from "../../src/config/config.js";
import { issueDevToken, startDevIdp } from "../../src/identity/dev-idp.js";
import { DATA_FILES, initDataDir } from "../../src/server/data-dir.js";
import { createLogger } from "../../src/server/logger.js";
import { kmsFromConfig } from "../../src/service/start.js";
import { deriveEphemeralKey, generateEphemeralKeyPair, importEcdhPublicKey } from "../../src/protocol/jose/ephemeral-key.js";

const parent = mkdtempSync(join(process.argv[2] ?? tmpdir(), "keyward-core-"));
const inFlight = Number(process.argv[3] ?? 32);
const dataDir = join(parent, "data");
await initDataDir({ dir: dataDir, authority: "localhost", domain: "example.com" });
const idp = await startDevIdp({ dataDir, host: "127.0.0.1", port: 0, audience: "kms://localhost" });
const config = resolveConfig(dataDir, { ...JSON.parse(readFileSync(join(dataDir, DATA_FILES.config), "utf8")), oauthIssuer: idp.issuer, oauthJwksUri: idp.jwksUri }, {});
const kms = await kmsFromConfig(config, { logger: createLogger("warn") });
const token = await issueDevToken({ dataDir, issuer: idp.issuer, audience: config.oauthAudience, user: "alice@example.com" });
const { x5c: _x5c, ...publicJwk } = (kms.wellKnown() as { jwk: JWK }).jwk;
const encryptTo = await importJWK(publicJwk, "ECDH-ES+A256KW");
const verifyWith = await importJWK(publicJwk, "ES256");
const client = { clientId: "keyward-bench", credential: { bearer: token } };
let seq = 0;

async function ecdheRequest(): Promise<{ message: string; pair: CryptoKeyPair }> {
  const pair = await generateEphemeralKeyPair();
  const { kty, crv, x, y } = await exportJWK(pair.publicKey);
  const payload = { client, method: "create", uri: "/ecdhe", requestId: `e${seq++}`, jwk: { kty, crv, x, y } };
  const message = await new CompactEncrypt(new TextEncoder().encode(JSON.stringify(payload)))
    .setProtectedHeader({ alg: "ECDH-ES+A256KW", enc: "A256GCM", kid: "kms://localhost" })
    .encrypt(encryptTo);
  return { message, pair };
}

const { message, pair } = await ecdheRequest();
const reply = JSON.parse(new TextDecoder().decode((await compactVerify(await kms.core.handle(message), verifyWith)).payload)) as { key: { uri: string; jwk: JWK } };
const key = Buffer.from(await deriveEphemeralKey(pair.privateKey, await importEcdhPublicKey(reply.key.jwk)));
const h = Buffer.from(JSON.stringify({ alg: "dir", enc: "A256GCM", kid: reply.key.uri })).toString("base64url");

function ping(): string {
  const iv = randomBytes(12);
  const c = createCipheriv("aes-256-gcm", key, iv);
  c.setAAD(Buffer.from(h));
  const ct = Buffer.concat([c.update(JSON.stringify({ client, method: "update", uri: "/ping", requestId: `p${seq++}` })), c.final()]);
  return `${h}..${iv.toString("base64url")}.${ct.toString("base64url")}.${c.getAuthTag().toString("base64url")}`;
}

async function run(name: string, messages: string[], ms: number): Promise<void> {
  let i = 0;
  let n = 0;
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (performance.now() - t0 < ms && i < messages.length) {
        await kms.core.handle(messages[i++]!);
        n++;
      }
    }),
  );
  const wall = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(c0);
  console.log(`${name}: ${(n / wall).toFixed(0)}/s (core only, ${inFlight} in flight), process CPU ${(((cpu.user + cpu.system) / 1e6 / wall) * 100).toFixed(0)}%, ${((cpu.user + cpu.system) / n).toFixed(0)} µs CPU/op`);
}

await run("ping (warm-up)", Array.from({ length: 20_000 }, ping), 1000);
await run("ping", Array.from({ length: 60_000 }, ping), 4000);
if (process.argv[4] === "ecdhe") {
  const messages: string[] = [];
  for (let k = 0; k < 3000; k++) messages.push((await ecdheRequest()).message);
  await run("ecdhe", messages, 4000);
}
await kms.close();
await idp.close();
rmSync(parent, { recursive: true, force: true });
