import { randomBytes } from "node:crypto";
import type { Store } from "../../store/store.js";
import { SealingKey } from "./master-key.js";

const KEYRING_AAD = "keyward:keyring:v1";

/**
 * The barrier (envelope encryption): a data-encryption key (DEK), sealed under the master key and
 * kept in the store's keyring, seals every secret before it reaches the store. Rotating the master
 * key re-seals one row, not every secret.
 *
 * @example
 * const barrier = await Barrier.open(store, masterKey);
 * const sealed = barrier.seal(`ecdhe:${uri}`, kEphemeral);
 */
export class Barrier {
  private constructor(private readonly dek: SealingKey) {}

  static async open(store: Store, masterKey: Uint8Array): Promise<Barrier> {
    const master = new SealingKey(masterKey);
    let sealed = await store.getKeyring();
    if (sealed === undefined) {
      // First start on this store: whichever node stores its keyring first wins; all use that one.
      sealed = await store.initKeyring(master.seal(KEYRING_AAD, randomBytes(32)));
    }
    let dek: Uint8Array;
    try {
      dek = master.open(KEYRING_AAD, sealed);
    } catch {
      throw new Error("the master key does not open this store's keyring (wrong KEYWARD_MASTER_KEY or master.key?)");
    }
    return new Barrier(new SealingKey(dek));
  }

  seal(aad: string, plaintext: Uint8Array): string {
    return this.dek.seal(aad, plaintext);
  }

  open(aad: string, sealed: string): Uint8Array {
    return this.dek.open(aad, sealed);
  }
}
