import { KmsClient } from "../../src/client/index.js";
import { startDemoKms as startKms, type DemoKms as BaseDemoKms } from "../lib/demo-kms.js";

/** The example's KMS (examples/lib/demo-kms.ts), with an HTTP SDK client per user. */
export interface DemoKms extends BaseDemoKms {
  /** A client for `user` (a fresh dev-IdP token each time one is needed). */
  client(user: string): KmsClient;
}

/**
 * Starts the file-sharing example's KMS under the chosen GK policy. Users are `*@example.com`; the
 * KMS is `kms://kms.example.com`.
 *
 * @example
 * const kms = await startDemoKms({ policy: 1 });
 * await kms.client("alice@example.com").ping();
 */
export async function startDemoKms(opts: { policy: 1 | 2 | 3 }): Promise<DemoKms> {
  const kms = await startKms({ policy: opts.policy, prefix: "keyward-file-sharing-" });
  return {
    ...kms,
    client: (user) => new KmsClient({ url: kms.url, user, token: () => kms.token(user), trustRoots: [kms.caPem] }),
  };
}
