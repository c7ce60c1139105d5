import { isSafeIdentifierText } from "./text.js";

/**
 * Entities are acct URIs written `user@domain` (§1, §7): an `acct:` prefix is removed, the domain is
 * lower-cased, the local part kept as is (it is case-sensitive).
 *
 * @example
 * normalizeEntity("acct:Alice@Example.COM") // "Alice@example.com"
 * normalizeEntity("not an entity")          // undefined
 */
export function normalizeEntity(value: string): string | undefined {
  // Control characters and lone surrogates: no entity (a store could not hold or compare it exactly).
  if (!isSafeIdentifierText(value)) return undefined;
  const bare = value.startsWith("acct:") ? value.slice(5) : value;
  const at = bare.lastIndexOf("@");
  if (at <= 0 || at === bare.length - 1) return undefined;
  const local = bare.slice(0, at);
  const domain = bare.slice(at + 1).toLowerCase();
  if (/[\s@/]/.test(local) || !/^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/.test(domain)) {
    return undefined;
  }
  return `${local}@${domain}`;
}

/** The domain part of an entity, lower case; `undefined` when it is not an entity. */
export function entityDomain(value: string): string | undefined {
  const e = normalizeEntity(value);
  return e === undefined ? undefined : e.slice(e.lastIndexOf("@") + 1);
}
