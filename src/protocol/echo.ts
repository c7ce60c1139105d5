/** The most characters of any one request-supplied value a reason repeats (§10 hardening). */
export const ECHO_MAX_CHARS = 64;

/**
 * A request-supplied value as a refusal's reason may repeat it: at most 64 characters (whole code
 * points, so a surrogate pair is never split), then "…", with control characters shown as "?".
 * Reasons go into replies and into logs; without this bound an attacker chooses how much of both
 * it writes (a 1 MiB uri echoed back and logged per request).
 *
 * @example
 * echo("x".repeat(100)) // "xxxx…x…" (64 x, then …)
 * echo("a\nb")          // "a?b"
 */
export function echo(value: unknown): string {
  const text = typeof value === "string" ? value : String(value);
  let out = "";
  let count = 0;
  for (const ch of text) {
    if (count === ECHO_MAX_CHARS) return out + "…";
    const code = ch.codePointAt(0)!;
    out += code < 0x20 || (code >= 0x7f && code < 0xa0) || (code >= 0xd800 && code <= 0xdfff) ? "?" : ch;
    count++;
  }
  return out;
}
