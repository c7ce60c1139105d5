/**
 * The environment mapping: which `KEYWARD_*` variable overrides which configuration key
 * ({@link envNameOf}), the variables that are not configuration keys (`KEYWARD_MASTER_KEY`), and how
 * an environment string is read as a configuration value (strict integers, policy numbers).
 * Server-only.
 *
 * @example
 * envNameOf("oauthJwksUri") // "KEYWARD_OAUTH_JWKS_URI"
 */
import { envError } from "./errors.js";
import { CONFIG_KEYS, isConfigKey, type ConfigKey, type ConfigKeyInfo } from "./schema.js";

/** Environment variables read by Keyward that are not configuration keys (documented in the reference). */
export const ENV_ONLY = [
  { env: "KEYWARD_MASTER_KEY", description: "The master key itself, supplied through the environment instead of `masterKeyFile`. Never written to files." },
] as const;

/**
 * The environment variable overriding a configuration key: the table's name for known keys
 * (`devIdp` → `KEYWARD_DEV_IDP_LISTEN`), otherwise `KEYWARD_` + the key in SCREAMING_SNAKE_CASE
 * (a dotted path's dots become underscores).
 *
 * @example
 * envNameOf("oauthJwksUri")  // "KEYWARD_OAUTH_JWKS_URI"
 * envNameOf("devIdp.listen") // "KEYWARD_DEV_IDP_LISTEN"
 */
export function envNameOf(key: string): string {
  if (isConfigKey(key)) return CONFIG_KEYS[key].env;
  const snake = key
    .replace(/\./g, "_")
    .replace(/([a-z0-9])([A-Z])/g, "$1_$2")
    .toUpperCase();
  return `KEYWARD_${snake}`;
}

export function parseEnvValue(key: ConfigKey, info: ConfigKeyInfo, raw: string): unknown {
  switch (info.envType) {
    case "string":
      return raw;
    case "integer": {
      const n = Number(raw);
      if (!/^-?\d+$/.test(raw) || !Number.isSafeInteger(n)) throw envError(info.env, key, "must be an integer", raw);
      return n;
    }
    case "policy":
      if (raw !== "1" && raw !== "2" && raw !== "3") throw envError(info.env, key, "must be 1, 2 or 3", raw);
      return Number(raw);
  }
}
