import cluster from "node:cluster";
import { loadConfig, type KeywardConfig } from "../config/config.js";
import { BearerJwtValidator } from "../identity/bearer-jwt.js";
import { readFileSync } from "node:fs";
import { CertificateCredentialValidator } from "../identity/certificate-credential.js";
import { CredentialAuthenticator } from "../identity/credential-authenticator.js";
import { TokenIntrospector } from "../identity/introspection.js";
import { CHANNEL_MESSAGE_LIMIT } from "../protocol/constants.js";
import { openStore } from "../store/open-store.js";
import { createLogger } from "../server/logger.js";
import { loadMasterKey, loadStaticKey } from "../server/data-dir.js";
import { XmppBinding } from "../transport/xmpp/xmpp-binding.js";
import { Kms } from "./kms.js";

/**
 * Set by `serve --workers N`'s primary in each worker's environment (src/service/cluster.ts): the
 * worker's slot, 0..N-1, the same across restarts.
 *
 * @example
 * cluster.fork({ [WORKER_SLOT_ENV]: "0" });
 */
export const WORKER_SLOT_ENV = "KEYWARD_CLUSTER_WORKER_SLOT";

/**
 * Builds a KMS from a resolved configuration: master key, static key, store, token validation.
 *
 * @example
 * const kms = await kmsFromConfig(loadConfig("/var/lib/keyward"));
 * await kms.listen("127.0.0.1", 8484);
 */
export async function kmsFromConfig(config: KeywardConfig, overrides: { logger?: ReturnType<typeof createLogger> } = {}): Promise<Kms> {
  const logger = overrides.logger ?? createLogger(config.logLevel);
  const masterKey = loadMasterKey(config);
  const staticKey = await loadStaticKey(config, masterKey);
  const store = await openStore(config.store);
  const bearer = new BearerJwtValidator({
    issuer: config.oauthIssuer,
    audience: config.oauthAudience,
    jwksUri: config.oauthJwksUri,
    entityClaim: config.oauthEntityClaim,
    leewaySeconds: config.oauthLeeway,
  });
  const introspection = config.oauthIntrospectionUrl
    ? new TokenIntrospector({
        url: config.oauthIntrospectionUrl,
        clientId: config.oauthClientId ?? "",
        clientSecret: config.oauthClientSecret ?? "",
        issuer: config.oauthIssuer,
        audience: config.oauthAudience,
        entityClaim: config.oauthEntityClaim,
        leewaySeconds: config.oauthLeeway,
        cacheSeconds: config.oauthIntrospectionCache,
      })
    : undefined;
  // No trust roots configured = certificate credentials refused (§6, issue #5).
  const certificates = config.trustRoots
    ? new CertificateCredentialValidator({ trustRootsPem: readFileSync(config.trustRoots, "utf8") })
    : undefined;
  const kms = await Kms.create({
    settings: {
      authority: config.authority,
      ephemeralKeyLifetimeSeconds: config.ephemeralKeyLifetime,
      clockSkewSeconds: config.clockSkew,
      channelMessageLimit: CHANNEL_MESSAGE_LIMIT,
      domain: config.domain,
      maxBlocksPerAppend: config.maxBlocksPerAppend,
      maxOperationsPerBlock: config.maxOperationsPerBlock,
      maxKeysPerEntity: config.maxKeysPerEntity,
      maxSignatureChecksPerAppend: config.maxSignatureChecksPerAppend,
      gmbcReaders: config.gmbcReaders,
      policy: config.policy,
      ...(config.federation ? { federation: config.federation } : {}),
      ...(config.publicUrl ? { publicUrl: config.publicUrl } : {}),
      maxMessageBytes: config.maxMessageBytes,
      maxBatchMessages: config.maxBatchMessages,
      maxInFlight: config.maxInFlight,
      maxEventLoopLagMs: config.maxEventLoopLag,
      bodyReadTimeoutSeconds: config.bodyReadTimeout,
      corsOrigins: config.corsOrigins,
    },
    store,
    masterKey,
    staticKey,
    authenticator: new CredentialAuthenticator({
      jwt: bearer,
      ...(introspection ? { introspection } : {}),
      ...(certificates ? { certificates } : {}),
    }),
    logger,
  });
  // The XMPP binding (§3): the KMS dials the XMPP server as a component and keeps the link up. An
  // XMPP server takes one connection per component JID (Prosody refuses a second one with
  // <conflict/>), so of `serve --workers N` only worker slot 0 holds it.
  if (config.xmpp && (!cluster.isWorker || process.env[WORKER_SLOT_ENV] === "0")) {
    kms.attach(
      XmppBinding.start({
        service: config.xmpp.service,
        domain: config.xmpp.domain,
        secret: config.xmpp.secret,
        handle: (m) => kms.core.handle(m),
        wellKnown: () => kms.wellKnown(),
        refuse: (status, reason) => staticKey.sign({ status, reason }),
        maxMessageBytes: config.maxMessageBytes,
        maxStanzaBytes: config.xmpp.maxStanzaBytes,
        maxInFlight: config.maxInFlight,
        logger,
        registry: kms.registry,
      }),
    );
  }
  return kms;
}

/** `keyward serve --dir DIR`: load, build, listen. */
export async function serveDataDir(dataDir: string, env: NodeJS.ProcessEnv = process.env): Promise<{ kms: Kms; url: string; config: KeywardConfig }> {
  const config = loadConfig(dataDir, env);
  const kms = await kmsFromConfig(config);
  const { url } = await kms.listen(config.listenHost, config.listenPort);
  return { kms, url, config };
}
