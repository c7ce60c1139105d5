import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { decodeProtectedHeader } from "jose";
import { GroupKeys, KmsRequestError } from "../client/index.js";
import { connectionOptions, withGroups, type ConnectionFlags } from "./group.js";

/** A GroupKeys client for the CLI user, with its Groups as `chains`; the channel is closed afterwards. */
function withGroupKeys<T>(o: ConnectionFlags, fn: (gks: GroupKeys, user: string) => Promise<T>): Promise<T> {
  return withGroups(o, (groups, { kms, user, device }) => fn(new GroupKeys(kms, { user, device, chains: groups }), user));
}

function readInput(file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (e) {
    throw new Error(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** Writes bytes to stdout and waits until they are handed to the OS (binary safe). */
function writeStdout(data: Uint8Array | string): Promise<void> {
  return new Promise((done, fail) => {
    process.stdout.write(data, (e) => (e ? fail(e) : done()));
  });
}

/** A KMS refusal as a sentence that says who was refused what. */
function explain(e: unknown, user: string, what: string): unknown {
  if (e instanceof KmsRequestError) return new Error(`${user} may not ${what}: ${e.status} ${e.reason || "refused"}`, { cause: e });
  return e;
}

/**
 * Adds `keyward encrypt` and `keyward decrypt`: end-to-end encryption of files with Group Keys
 * (§9). `encrypt` seals a file with a GK bound to the group's current tail (a new GK is created
 * for each run) and prints the compact JWE (`kid` = the GK's URI); `decrypt` fetches the GK the
 * JWE names (if the KMS's policy lets the user) and writes the original bytes.
 *
 * @example
 * registerCryptCommands(program);
 * // keyward encrypt --user alice@example.com --group kms://localhost/blocks/... report.pdf > report.pdf.jwe
 * // keyward decrypt --user bob@example.com report.pdf.jwe > report.pdf
 */
export function registerCryptCommands(program: Command): void {
  connectionOptions(program.command("encrypt").description("encrypt FILE for a group (prints a compact JWE; redirect it to FILE.jwe)"))
    .requiredOption("--group <group>", "the group URI (kms://.../blocks/...)")
    .option("--content-type <type>", "a content type to record in the JWE header (cty)")
    .argument("<file>", "the file to encrypt")
    .action(async (file: string, o: ConnectionFlags & { group: string; contentType?: string }) => {
      const plaintext = readInput(file);
      const jwe = await withGroupKeys(o, async (gks, user) => {
        try {
          return await gks.encryptFor(o.group, new Uint8Array(plaintext.buffer, plaintext.byteOffset, plaintext.byteLength), o.contentType);
        } catch (e) {
          throw explain(e, user, `encrypt for ${o.group}`);
        }
      });
      await writeStdout(jwe + "\n");
    });

  connectionOptions(program.command("decrypt").description("decrypt a JWE written by `keyward encrypt` (writes the original bytes to stdout)"))
    .argument("<file>", "the encrypted file (compact JWE)")
    .action(async (file: string, o: ConnectionFlags) => {
      const jwe = readInput(file).toString("utf8").trim();
      let kid: unknown;
      try {
        kid = decodeProtectedHeader(jwe).kid;
      } catch {
        throw new Error(`${file} is not an encrypted file (a compact JWE as written by keyward encrypt)`);
      }
      if (jwe.split(".").length !== 5) throw new Error(`${file} is not an encrypted file (a compact JWE as written by keyward encrypt)`);
      if (typeof kid !== "string") throw new Error(`${file} names no group key (its JWE header has no kid)`);
      const plaintext = await withGroupKeys(o, async (gks, user) => {
        try {
          return (await gks.decrypt(jwe)).plaintext;
        } catch (e) {
          if (e instanceof KmsRequestError) throw explain(e, user, `fetch group key ${kid}`);
          if (e instanceof Error && /decrypt|authenticat/i.test(e.message)) throw new Error(`${file} does not decrypt with group key ${kid}: it was altered or is corrupt`, { cause: e });
          throw e;
        }
      });
      await writeStdout(plaintext);
    });
}
