import type { Logger } from "pino";
import type { AuthenticatedIdentity, Authenticator } from "../identity/authenticator.js";
import type { RequestPayload } from "../protocol/messages.js";
import type { ResolvedUri } from "../protocol/uri.js";
import type { ChannelRecord, Store } from "../store/store.js";
import type { Barrier } from "./barrier/barrier.js";
import type { PeerContext } from "./federation/acting-for.js";
import type { StaticKey } from "./static-key.js";

/** Settings the core reads (a subset of the full config, so that tests can build a core directly). */
export interface CoreSettings {
  readonly authority: string;
  readonly ephemeralKeyLifetimeSeconds: number;
  readonly clockSkewSeconds: number;
  /** §5: messages per channel before it is exhausted. */
  readonly channelMessageLimit: number;
  /** §7: the domain whose entities this KMS keeps keys for (WebFinger/JWKS). */
  readonly domain: string;
  /** §10 limits. */
  readonly maxBlocksPerAppend: number;
  readonly maxOperationsPerBlock: number;
  /** §10: unrevoked keys per entity, and signature checks one append may cost. */
  readonly maxKeysPerEntity: number;
  readonly maxSignatureChecksPerAppend: number;
  /** §9: the KMS-wide membership policy for fetching bound GKs. */
  readonly policy: 1 | 2 | 3;
  /** §8: who may read a chain. */
  readonly gmbcReaders: "members" | "members-and-former";
  /**
   * §12: the peers this KMS federates with (authority lower-cased, url an http(s) origin) and the
   * WebFinger origin per domain (default `https://<domain>`). Absent: no federation.
   */
  readonly federation?: {
    readonly peers: readonly { readonly authority: string; readonly url: string }[];
    readonly webfinger: Readonly<Record<string, string>>;
  };
}

/** What every handler may use. */
export interface CoreServices {
  readonly settings: CoreSettings;
  readonly store: Store;
  readonly barrier: Barrier;
  readonly staticKey: StaticKey;
  readonly authenticator: Authenticator;
  readonly logger: Logger;
  readonly now: () => Date;
}

/** One authenticated request, routed. */
export interface RequestContext {
  readonly services: CoreServices;
  readonly request: RequestPayload;
  readonly identity: AuthenticatedIdentity;
  readonly target: ResolvedUri;
  /** The channel the request came on (absent for key agreement). */
  readonly channel?: ChannelRecord;
  /**
   * Set when a federation peer acts for a user (§12): `identity.entity` is then that user, and
   * this is the peer it came through. GKs are then wrapped to `peer.jwk` only.
   */
  readonly peer?: PeerContext;
}

/** A handler's answer: a status and the operation's fields; the core adds requestId and encrypts. */
export interface HandlerResult {
  readonly status: number;
  readonly [field: string]: unknown;
}

export type Handler = (ctx: RequestContext) => Promise<HandlerResult>;
