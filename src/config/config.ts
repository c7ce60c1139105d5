/**
 * Keyward configuration: `<dataDir>/config.json`, validated with zod, every key overridable from
 * the environment (`KEYWARD_<KEY_IN_SCREAMING_SNAKE_CASE>`). Server-only.
 *
 * Precedence, highest first: environment variable, `config.json`, built-in default. An environment
 * variable set to the empty string counts as unset.
 *
 * This module is the configuration's public face: it re-exports what the rest of Keyward uses from
 * the modules that hold each concern, so importers need not know how it is split:
 * - `schema.ts`: value parsers, the zod schema, the key table (`CONFIG_KEYS`);
 * - `env.ts`: the `KEYWARD_*` environment mapping;
 * - `errors.ts`: `ConfigError` and its messages;
 * - `resolve.ts`: env over file, validation, resolution into `KeywardConfig`;
 * - `file.ts`: reading and writing `config.json`;
 * - `reference.ts`: the README configuration table.
 *
 * @example
 * const config = loadConfig("/var/lib/keyward");
 * server.listen(config.listenPort, config.listenHost);
 */
export { envNameOf } from "./env.js";
export { ConfigError } from "./errors.js";
export { loadConfig, writeConfigFile } from "./file.js";
export { configReferenceMarkdown } from "./reference.js";
export { resolveConfig, type KeywardConfig, type StoreLocation, type XmppConfig } from "./resolve.js";
export {
  CONFIG_KEYS,
  configSchema,
  DEFAULT_DEV_IDP_LISTEN,
  LOG_LEVELS,
  parseListen,
  type ConfigFileValues,
  type ConfigKey,
  type ConfigKeyInfo,
  type FederationConfig,
} from "./schema.js";
