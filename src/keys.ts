/**
 * Key rules: which names may be stored, and nothing else.
 *
 * A key is 1–200 characters of `A–Z a–z 0–9 . _ -` and does not start with
 * `.` (names starting with `.` are the store's own temporary files). The rule
 * is checked after URL decoding, so no encoding of `/`, `..`, NUL or unicode
 * can reach the file system.
 */

/** The longest key, in characters (one byte each). */
export const MAX_KEY_LENGTH = 200;

/** The rule in words, as it appears in `400` answers. */
export const KEY_RULE = "a key is 1-200 characters of A-Z a-z 0-9 . _ - and does not start with '.'";

const KEY_PATTERN = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$/;

/** True when `name` may be stored as a key. */
export function isValidKey(name: string): boolean {
  return KEY_PATTERN.test(name);
}

/**
 * Decodes the key part of a request path (`/get/KEY`, `/set/KEY`) and checks
 * it: the key, or `null` when the path segment is malformed or breaks the rule.
 */
export function keyFromPath(segment: string): string | null {
  let name = segment;
  if (segment.includes("%")) {
    try {
      name = decodeURIComponent(segment);
    } catch {
      return null;
    }
  }
  return isValidKey(name) ? name : null;
}
