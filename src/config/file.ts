/**
 * `<dataDir>/config.json` on disk: {@link loadConfig} reads it and resolves it (with the
 * environment) into a `KeywardConfig`; {@link writeConfigFile} validates values and writes it
 * atomically, mode 0600. Server-only.
 *
 * @example
 * const config = loadConfig("/var/lib/keyward");
 */
import { chmodSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { ConfigError, fileError, unknownKeyError } from "./errors.js";
import { resolveConfig, type KeywardConfig } from "./resolve.js";
import { configSchema, isConfigKey, isPlainObject, type ConfigFileValues } from "./schema.js";

/** The file name of the configuration inside the data directory. */
const CONFIG_FILE = "config.json";

/**
 * Loads `<dataDir>/config.json`, refuses unknown keys, applies environment overrides (`KEYWARD_*`;
 * integers parsed strictly), validates, applies defaults and resolves paths against the data
 * directory. Every problem is a {@link ConfigError} naming the key (or environment variable).
 *
 * @example
 * const config = loadConfig("/var/lib/keyward");                      // uses process.env
 * const other = loadConfig("./data", { KEYWARD_LISTEN: "[::1]:9000" }); // explicit environment
 */
export function loadConfig(dataDir: string, env: Record<string, string | undefined> = process.env): KeywardConfig {
  const dir = resolve(dataDir);
  const file = join(dir, CONFIG_FILE);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === "ENOENT") {
      throw new ConfigError(
        CONFIG_FILE,
        `config: ${file} not found: the data directory ${dir} is not initialised (run \`keyward init\` to create it)`,
      );
    }
    throw new ConfigError(CONFIG_FILE, `config: cannot read ${file}: ${err.message}`);
  }
  let values: unknown;
  try {
    values = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(CONFIG_FILE, `config.json: not valid JSON (${file}): ${(e as Error).message}`);
  }
  if (!isPlainObject(values)) throw new ConfigError(CONFIG_FILE, `config.json: must contain a JSON object (${file})`);
  return resolveConfig(dir, values, env);
}

/**
 * Writes `<dataDir>/config.json` (pretty-printed, mode 0600: it may hold `oauthClientSecret` and a
 * `storeUrl` with a password) with exactly the given keys, replacing the file atomically, so a
 * rewrite also narrows the mode of an older 0644 file. Keys whose value is `undefined` are left out. Unknown keys and invalid values
 * are refused with a {@link ConfigError}; the master key is not a configuration key and so can never
 * be written. The data directory must exist.
 *
 * @example
 * writeConfigFile("/var/lib/keyward", {
 *   authority: "kms.example.com",
 *   oauthIssuer: "https://idp.example.com",
 *   oauthJwksUri: "https://idp.example.com/jwks",
 * });
 */
export function writeConfigFile(dataDir: string, values: Partial<ConfigFileValues>): void {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(values)) {
    if (!isConfigKey(key)) throw unknownKeyError(key);
    if (value === undefined) continue;
    const result = configSchema.shape[key].safeParse(value);
    if (!result.success) {
      const issue = result.error.issues[0]!;
      const path = [key, ...issue.path.map(String)].join(".");
      if (issue.code === "unrecognized_keys") throw new ConfigError(`${path}.${issue.keys[0] ?? "?"}`, `config.json: '${path}.${issue.keys[0] ?? "?"}': unknown key`);
      throw fileError(path, issue.message, value);
    }
    out[key] = value;
  }
  const file = join(resolve(dataDir), CONFIG_FILE);
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    // A fresh file ("wx"), created 0600: a stale temp file of another mode is never reused.
    rmSync(tmp, { force: true });
    writeFileSync(tmp, JSON.stringify(out, null, 2) + "\n", { mode: 0o600, flag: "wx" });
    chmodSync(tmp, 0o600);
    renameSync(tmp, file);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}
