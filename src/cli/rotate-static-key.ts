import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { Option, type Command } from "commander";
import { rotateStaticKey } from "../server/data-dir.js";

/**
 * `keyward rotate-static-key --dir DIR [--key-type ec|rsa] [--key FILE --cert FILE]`: a new KMS
 * static key and certificate for a data dir; the old ones are archived in previous-static-keys/
 * (still published and verifiable). Restart every node afterwards. docs/static-key-rotation.md.
 *
 * @example
 * registerRotateStaticKeyCommand(program);
 */
export function registerRotateStaticKeyCommand(program: Command): void {
  program
    .command("rotate-static-key")
    .description("issue a new KMS static key and certificate; the old ones are archived and still verify (restart the KMS afterwards)")
    .requiredOption("--dir <dir>", "the data directory")
    .addOption(new Option("--key-type <type>", "type of the new key when the data dir's CA issues it (default: the current key's type)").choices(["ec", "rsa"]))
    .option("--key <file>", "your own new private key (PEM), when your CA issues the certificate")
    .option("--cert <file>", "the certificate chain of --key (PEM, leaf first)")
    .action(async (o: { dir: string; keyType?: "ec" | "rsa"; key?: string; cert?: string }) => {
      if (o.keyType && o.key) throw new Error("--key-type is for a key the data dir's CA issues; with --key the key's own type is used");
      const dir = resolve(o.dir);
      const r = await rotateStaticKey({
        dir,
        ...(o.keyType ? { keyType: o.keyType } : {}),
        ...(o.key !== undefined ? { keyPem: readFileSync(o.key, "utf8") } : {}),
        ...(o.cert !== undefined ? { certPem: readFileSync(o.cert, "utf8") } : {}),
      });
      console.log(`rotated the static key of ${r.kid} in ${dir}: new ${r.type} key, certificate for ${r.dnsNames.join(", ")}`);
      console.log(`  previous key archived: ${r.archivedKey} (certificate ${r.archivedCert}); it stays published in /.well-known/kms previousKeys`);
      console.log("  next: restart every KMS node of this data dir (they load the new key at start-up)");
    });
}
