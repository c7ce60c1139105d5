/**
 * The configuration reference for the README: a markdown table generated from the key table
 * ({@link CONFIG_KEYS}) and the environment-only variables. Server-only.
 *
 * @example
 * const md = configReferenceMarkdown();
 */
import { ENV_ONLY } from "./env.js";
import { CONFIG_KEY_NAMES, CONFIG_KEYS, type ConfigKeyInfo } from "./schema.js";

/**
 * The configuration reference as a markdown table (key, environment variable, default, description),
 * generated from {@link CONFIG_KEYS}, for the README.
 *
 * @example
 * const md = configReferenceMarkdown();
 * md.split("\n")[0] // "| Key | Environment variable | Default | Description |"
 */
export function configReferenceMarkdown(): string {
  const cell = (s: string) => s.replace(/\|/g, "\\|").replace(/\n/g, " ");
  const lines = ["| Key | Environment variable | Default | Description |", "| --- | --- | --- | --- |"];
  for (const key of CONFIG_KEY_NAMES) {
    const info: ConfigKeyInfo = CONFIG_KEYS[key];
    const dflt = info.required ? "*required*" : info.default === undefined ? "—" : `\`${info.default}\``;
    lines.push(`| \`${key}\` | \`${info.env}\` | ${cell(dflt)} | ${cell(info.description)} |`);
  }
  for (const v of ENV_ONLY) lines.push(`| — | \`${v.env}\` | — | ${cell(v.description)} |`);
  return lines.join("\n") + "\n";
}
