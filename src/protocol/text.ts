/**
 * Text a KMS can hold and compare exactly: no C0 control character or DEL, and well-formed UTF-16
 * (no lone surrogate). PostgreSQL cannot store NUL in a text column at all (the query fails), and a
 * lone surrogate becomes U+FFFD on its way to UTF-8, so that "\ud800" and "\udfff" would name the
 * same row; identifiers (URIs, entities, kids) with such characters are refused instead.
 *
 * @example
 * isSafeIdentifierText("alice@example.com") // true
 * isSafeIdentifierText("a\u0000b")          // false
 * isSafeIdentifierText("\ud800")            // false
 */
export function isSafeIdentifierText(value: string): boolean {
  return !UNSAFE.test(value);
}

const UNSAFE = /[\u0000-\u001f\u007f]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
