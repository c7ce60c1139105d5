import { existsSync } from "node:fs";
import { resolve, join } from "node:path";
import { Command, Option } from "commander";
import { DEFAULT_DEV_IDP_LISTEN, loadConfig, parseListen, type KeywardConfig } from "../config/config.js";
import { createLogger } from "../server/logger.js";
import { devIdpIssuer, issueDevToken, startDevIdp } from "../identity/dev-idp.js";
import { DATA_FILES, initDataDir } from "../server/data-dir.js";
import { serveDataDir } from "../service/start.js";
import { serveWorkers } from "../service/cluster.js";
import { connectionOptions, openKmsClient, registerGroupCommands, type ConnectionFlags } from "./group.js";
import { registerCryptCommands } from "./crypt.js";
import { registerMigrateCommand } from "./migrate.js";
import { registerAuditCommands } from "./audit.js";
import { registerRotateStaticKeyCommand } from "./rotate-static-key.js";
import { registerBackupCommands } from "./backup.js";

/** The `keyward` command line. Each command is a thin shell over a library function. */
const program = new Command("keyward").description("Keyward: a key management service for end-to-end encrypted groups").showHelpAfterError();

program
  .command("init")
  .description("create a data directory: config, development PKI, static key, master key")
  .requiredOption("--dir <dir>", "the data directory to create")
  .requiredOption("--authority <host>", "the KMS authority (kms://<host>)")
  .addOption(new Option("--key-type <type>", "static key type").choices(["ec", "rsa"]).default("ec"))
  .option("--domain <domain>", "the domain of the users this KMS serves (default: the authority)")
  .action(async (o: { dir: string; authority: string; keyType: "ec" | "rsa"; domain?: string }) => {
    const dir = resolve(o.dir);
    const { kid } = await initDataDir({ dir, authority: o.authority, keyType: o.keyType, ...(o.domain ? { domain: o.domain } : {}) });
    console.log(`initialised ${dir} for ${kid} (${o.keyType.toUpperCase()} static key)`);
    console.log(`  trust root for clients: ${join(dir, DATA_FILES.caCert)}`);
    console.log(`  master key: ${process.env.KEYWARD_MASTER_KEY ? "from KEYWARD_MASTER_KEY (not written)" : join(dir, DATA_FILES.masterKey) + " (mode 0600: back it up, keep it apart from the database)"}`);
    console.log(`  next: set oauthIssuer/oauthJwksUri in ${join(dir, DATA_FILES.config)} (or KEYWARD_OAUTH_*), then keyward serve --dir ${o.dir}`);
  });

program
  .command("serve")
  .description("serve the KMS of a data directory")
  .requiredOption("--dir <dir>", "the data directory")
  .option("--workers <n>", "worker processes (default: KEYWARD_WORKERS or config `workers`, else one per CPU); 1 serves in this process")
  .action(async (o: { dir: string; workers?: string }) => {
    if (o.workers !== undefined && !/^[1-9]\d{0,3}$/.test(o.workers)) throw new Error(`--workers must be a positive integer (got ${JSON.stringify(o.workers)})`);
    warnWithoutPublicUrl(loadConfig(resolve(o.dir)));
    // Prints `keyward: KMS kms://<authority> listening on <url> (N workers)` once every worker listens.
    const served = await serveWorkers(resolve(o.dir), o.workers === undefined ? undefined : Number(o.workers));
    onSignal(() => served.close());
  });

program
  .command("dev")
  .description("initialise ./.keyward-dev if absent and serve it with a development identity provider (loopback only)")
  .option("--dir <dir>", "the development data directory", ".keyward-dev")
  .action(async (o: { dir: string }) => {
    const dir = resolve(o.dir);
    if (!existsSync(join(dir, DATA_FILES.config))) {
      // The issuer the KMS trusts must be where the dev IdP really listens (KEYWARD_DEV_IDP_LISTEN included).
      const listen = process.env.KEYWARD_DEV_IDP_LISTEN || DEFAULT_DEV_IDP_LISTEN;
      const idp = parseListen(listen);
      const issuer = devIdpIssuer(idp.host, idp.port);
      await initDataDir({
        dir,
        authority: "localhost",
        domain: "example.com",
        config: { oauthIssuer: issuer, oauthJwksUri: `${issuer}/jwks`, devIdp: { listen } },
      });
      console.log(`keyward dev: initialised ${dir}`);
    }
    const config = loadConfig(dir);
    if (!config.devIdp) throw new Error(`${dir} has no devIdp setting: it is not a development data dir (use keyward serve)`);
    const idp = await startDevIdp({ dataDir: dir, host: config.devIdp.listenHost, port: config.devIdp.listenPort, audience: config.oauthAudience });
    const { kms, url } = await serveDataDir(dir);
    const banner = [
      "",
      `  Keyward KMS kms://${config.authority} on ${url}  (users of ${config.domain})`,
      `  trust root: ${join(dir, DATA_FILES.caCert)}`,
      "",
      `  !! DEVELOPMENT identity provider on ${idp.issuer} (loopback only)`,
      "  !! It issues access tokens for ANY user without a login. Never use it in production.",
      `  a token:  npx keyward token alice@${config.domain}`,
      `  a ping:   npx keyward ping --user alice@${config.domain}`,
      "",
    ];
    console.log(banner.join("\n"));
    onSignal(async () => {
      await kms.close();
      await idp.close();
    });
  });

program
  .command("token")
  .description("print a development access token for USER (from the dev identity provider of `keyward dev`)")
  .argument("<user>", "user@domain")
  .option("--dir <dir>", "the development data directory", ".keyward-dev")
  .option("--lifetime <seconds>", "token lifetime", "3600")
  .action(async (user: string, o: { dir: string; lifetime: string }) => {
    const config = loadConfig(resolve(o.dir));
    if (!config.devIdp) throw new Error("tokens come from your identity provider; only a `keyward dev` data dir issues its own");
    console.log(await issueDevToken({ dataDir: config.dataDir, issuer: config.oauthIssuer, audience: config.oauthAudience, user, lifetimeSeconds: Number(o.lifetime) }));
  });

connectionOptions(program.command("ping").description("open a secure channel to a KMS with the SDK and ping it")).action(async (o: ConnectionFlags) => {
  const { kms, transport, close } = await openKmsClient(o);
  try {
    const started = performance.now();
    await kms.ping();
    const channel = kms.channel!;
    console.log(
      `ping ok over ${transport.kind}: channel ${channel.uri} for ${channel.userId}, expires ${channel.expiresAt.toISOString()} (${(performance.now() - started).toFixed(1)} ms with ECDHE)`,
    );
  } finally {
    await close();
  }
});

registerGroupCommands(program);
registerCryptCommands(program);
registerMigrateCommand(program);
registerAuditCommands(program);
registerRotateStaticKeyCommand(program);
registerBackupCommands(program);

/**
 * `keyward serve` in production: without `publicUrl`, the absolute URLs the KMS writes (the
 * WebFinger `href`, §7) come from each request's Host header, which any client chooses. One
 * structured warning at start-up (`keyward dev`, loopback only, does not warn).
 */
function warnWithoutPublicUrl(config: KeywardConfig): void {
  if (config.publicUrl !== undefined) return;
  createLogger(config.logLevel).warn(
    { setting: "publicUrl", env: "KEYWARD_PUBLIC_URL" },
    "publicUrl is not set: absolute URLs (the WebFinger href) are built from each request's Host header, which the client chooses; set publicUrl (KEYWARD_PUBLIC_URL) to the KMS's public origin, e.g. https://kms.example.com",
  );
}

function onSignal(stop: () => Promise<void>): void {
  const handler = () => {
    stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once("SIGINT", handler);
  process.once("SIGTERM", handler);
}

program.parseAsync(process.argv).catch((e: unknown) => {
  console.error(`keyward: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
});
