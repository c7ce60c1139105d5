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
import { CONFIG_KEY_NAMES, CONFIG_KEYS, isConfigKey, isPlainObject, type ConfigKey, type ConfigKeyInfo } from "./schema.js";

/**
 * Environment variables read by Keyward that are not configuration keys (documented in the reference).
 *
 * @example
 * ENV_ONLY.map((v) => v.env) // ["KEYWARD_MASTER_KEY"]
 */
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

/** An environment variable's text as the key's value (integers parsed strictly); a ConfigError naming the variable otherwise. */
function parseEnvValue(key: ConfigKey, info: ConfigKeyInfo, raw: string): unknown {
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
    case "json":
      try {
        return JSON.parse(raw) as unknown;
      } catch {
        throw envError(info.env, key, "must be JSON", raw);
      }
  }
}

/**
 * Configuration values with the environment's `KEYWARD_*` overrides applied (an empty variable
 * counts as unset; `KEYWARD_DEV_IDP_LISTEN` sets `devIdp.listen`), and where each overridden (dotted)
 * path came from, so that a validation error can name the variable rather than `config.json`.
 * Throws a ConfigError when a variable's text is not of its key's type.
 *
 * @example
 * const { merged, fromEnv } = applyEnvOverrides({ policy: 1 }, { KEYWARD_POLICY: "2" });
 * merged.policy              // 2
 * fromEnv.get("policy")?.env // "KEYWARD_POLICY"
 */
export function applyEnvOverrides(
  values: Record<string, unknown>,
  env: Record<string, string | undefined>,
): { merged: Record<string, unknown>; fromEnv: Map<string, { env: string; raw: string }> } {
  const merged: Record<string, unknown> = { ...values };
  const fromEnv = new Map<string, { env: string; raw: string }>();
  for (const key of CONFIG_KEY_NAMES) {
    const info: ConfigKeyInfo = CONFIG_KEYS[key];
    const raw = env[info.env];
    if (raw === undefined || raw === "") continue;
    const value = parseEnvValue(key, info, raw);
    if (key === "devIdp") {
      merged.devIdp = { ...(isPlainObject(merged.devIdp) ? merged.devIdp : {}), listen: value };
      fromEnv.set("devIdp.listen", { env: info.env, raw });
    } else {
      merged[key] = value;
      fromEnv.set(key, { env: info.env, raw });
    }
  }
  return { merged, fromEnv };
}

/**
 * The master key from `KEYWARD_MASTER_KEY` (an environment-only variable: never a configuration
 * key, so never written to `config.json`), or undefined when it is unset or empty.
 *
 * @example
 * readMasterKeyFromEnv({ KEYWARD_MASTER_KEY: "" }) // undefined
 */
export function readMasterKeyFromEnv(env: Record<string, string | undefined>): string | undefined {
  const value = env.KEYWARD_MASTER_KEY;
  return value === undefined || value === "" ? undefined : value;
}
