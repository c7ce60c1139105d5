/**
 * Configuration errors: {@link ConfigError} and the messages it carries, naming the key or
 * environment variable at fault, echoing the offending value unless the key is secret, and
 * suggesting the nearest key for a misspelt one ("did you mean"). Server-only.
 *
 * @example
 * throw fileError("policy", "must be 1, 2 or 3", 7); // config.json: 'policy': must be 1, 2 or 3 (got 7)
 */
import { CONFIG_KEY_NAMES, CONFIG_KEYS, isConfigKey, type ConfigKeyInfo } from "./schema.js";

/**
 * A configuration problem. `key` names what is wrong: a config key (`"policy"`, `"devIdp.listen"`)
 * when the value came from `config.json`, the environment variable (`"KEYWARD_POLICY"`) when it
 * came from the environment, or `"config.json"` when the file itself is missing or unreadable.
 *
 * @example
 * try { loadConfig(dir, { KEYWARD_POLICY: "7" }); }
 * catch (e) { if (e instanceof ConfigError) console.error(e.message); } // config: KEYWARD_POLICY: must be 1, 2 or 3 (got "7")
 */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
  constructor(
    readonly key: string,
    message: string,
  ) {
    super(message);
  }
}

function shown(value: unknown, secret: boolean): string {
  if (secret || value === undefined) return "";
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  if (text.length > 80) text = text.slice(0, 77) + "...";
  return ` (got ${text})`;
}

function isSecret(path: string): boolean {
  return isConfigKey(path) && (CONFIG_KEYS[path] as ConfigKeyInfo).secret === true;
}

/**
 * A problem with a value from `config.json` (or given to `writeConfigFile`), at a dotted path.
 *
 * @example
 * fileError("policy", "must be 1, 2 or 3", 7).message // "config.json: 'policy': must be 1, 2 or 3 (got 7)"
 */
export function fileError(path: string, reason: string, value: unknown): ConfigError {
  return new ConfigError(path, `config.json: '${path}': ${reason}${shown(value, isSecret(path))}`);
}

/**
 * A problem with a value from an environment variable; `path` is the key it overrides (to know
 * whether the value may be shown).
 *
 * @example
 * envError("KEYWARD_POLICY", "policy", "must be 1, 2 or 3", "7").message // 'config: KEYWARD_POLICY: must be 1, 2 or 3 (got "7")'
 */
export function envError(envName: string, path: string, reason: string, raw: string): ConfigError {
  return new ConfigError(envName, `config: ${envName}: ${reason}${shown(raw, isSecret(path))}`);
}

/** Levenshtein distance, for "did you mean" hints on misspelt keys. */
function distance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j]!;
      prev[j] = Math.min(up + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = up;
    }
  }
  return prev[b.length]!;
}

/**
 * An unknown top-level key, with the nearest known key as a hint when it is close enough.
 *
 * @example
 * unknownKeyError("polciy").message // "config.json: 'polciy': unknown key (did you mean 'policy'?)"
 */
export function unknownKeyError(key: string): ConfigError {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const k of CONFIG_KEY_NAMES) {
    const d = distance(key.toLowerCase(), k.toLowerCase());
    if (d < bestDistance) [best, bestDistance] = [k, d];
  }
  const hint = best !== undefined && bestDistance <= Math.max(2, Math.floor(key.length / 4)) ? ` (did you mean '${best}'?)` : "";
  return new ConfigError(key, `config.json: '${key}': unknown key${hint}`);
}
