/**
 * Preconditions of a write (RFC 9110, section 13): reading `If-Match` and
 * `If-None-Match`, and judging them against a key's current entity tag.
 * Pure functions; the key handler (`key.ts`) reads the headers, the store
 * judges inside its per-key lock, right before the write becomes visible.
 *
 *     If-Match: *                  the key exists
 *     If-Match: "a", "b"           its current tag is one of these (strong comparison: W/ tags never match)
 *     If-None-Match: *             the key is absent (create only)
 *     If-None-Match: "a", W/"b"    its current tag is none of these (weak comparison)
 *
 * A header that breaks the grammar (`garbage`, an unterminated quote, `*`
 * inside a list) is a `400`: the request is malformed (RFC 9110, 15.5.1). A
 * well-formed one that does not hold is a `412`. The length of a list is
 * bounded by the server's header limit (16 KiB, else `431`); judging it is
 * linear in its length.
 */

/** One entity tag of a list: its opaque part with the quotes (`"abc"`), and whether it was weak (`W/"abc"`). */
export interface EntityTag {
  readonly opaque: string;
  readonly weak: boolean;
}

/** A parsed `If-Match` or `If-None-Match`: `*`, or a list of tags (possibly empty). */
export type TagList = "*" | readonly EntityTag[];

/** The preconditions of one request; a header that was absent is `null`. */
export interface Preconditions {
  readonly ifMatch: TagList | null;
  readonly ifNoneMatch: TagList | null;
}

/** The grammar in words, for `400` answers. */
export const TAG_LIST_RULE = 'expected * or a comma-separated list of quoted entity tags such as "abc" or W/"abc"';

/**
 * Parses a field value of `If-Match` or `If-None-Match`
 * (`"*" / #entity-tag`): the list, or a one-line reason when it is malformed.
 */
export function parseTagList(value: string): TagList | { error: string } {
  const text = trimOws(value);
  if (text === "*") return "*";
  const tags: EntityTag[] = [];
  let at = 0;
  for (;;) {
    // Empty list elements (",,") are allowed and ignored (RFC 9110, 5.6.1).
    while (at < text.length && (text[at] === "," || isOws(text.charCodeAt(at)))) at++;
    if (at >= text.length) return tags;
    const start = at;
    const weak = text.startsWith("W/", at);
    if (weak) at += 2;
    if (text[at] !== '"') return { error: `${TAG_LIST_RULE}; found ${show(text, start)}` };
    let end = at + 1;
    while (end < text.length && isEtagc(text.charCodeAt(end))) end++;
    if (text[end] !== '"') {
      return {
        error: `${end >= text.length ? "unterminated entity tag" : "invalid character in entity tag"} ` +
          `at ${show(text, start)}; ${TAG_LIST_RULE}`,
      };
    }
    tags.push({ opaque: text.slice(at, end + 1), weak });
    at = end + 1;
    while (at < text.length && isOws(text.charCodeAt(at))) at++;
    if (at < text.length && text[at] !== ",")
      return { error: `entity tags must be separated by commas; found ${show(text, at)}` };
  }
}

/**
 * Reads the preconditions of a request's headers: `null` when there are none,
 * the parsed headers, or `{ error }` with a one-line reason (a `400`).
 */
export function readPreconditions(headers: {
  "if-match"?: string;
  "if-none-match"?: string;
}): Preconditions | { error: string } | null {
  const match = headers["if-match"];
  const noneMatch = headers["if-none-match"];
  if (match === undefined && noneMatch === undefined) return null;
  const ifMatch = match === undefined ? null : parseTagList(match);
  if (ifMatch !== null && isError(ifMatch)) return { error: `malformed If-Match: ${ifMatch.error}` };
  const ifNoneMatch = noneMatch === undefined ? null : parseTagList(noneMatch);
  if (ifNoneMatch !== null && isError(ifNoneMatch)) return { error: `malformed If-None-Match: ${ifNoneMatch.error}` };
  return { ifMatch, ifNoneMatch };
}

/**
 * Judges `pre` for a key whose current strong entity tag is `current`
 * (`undefined`: the key is absent), in the order of RFC 9110, 13.2.2:
 * `null` when the write may go ahead, else one line saying why not (naming
 * the current tag, or that the key is absent).
 */
export function evaluatePreconditions(pre: Preconditions, key: string, current: string | undefined): string | null {
  const { ifMatch, ifNoneMatch } = pre;
  if (ifMatch !== null) {
    const holds =
      current !== undefined && (ifMatch === "*" || ifMatch.some((tag) => !tag.weak && tag.opaque === current));
    if (!holds) {
      return current === undefined
        ? `precondition failed: If-Match needs a current value, and ${key} is absent`
        : `precondition failed: If-Match does not match ${key}, whose current entity tag is ${current}`;
    }
  }
  if (ifNoneMatch !== null && current !== undefined) {
    if (ifNoneMatch === "*")
      return `precondition failed: If-None-Match: * and ${key} exists, with entity tag ${current}`;
    if (ifNoneMatch.some((tag) => tag.opaque === current)) {
      return `precondition failed: If-None-Match names ${key}'s current entity tag ${current}`;
    }
  }
  return null;
}

function isError(parsed: TagList | { error: string }): parsed is { error: string } {
  return typeof parsed === "object" && !Array.isArray(parsed);
}

/** `OWS = *( SP / HTAB )` */
function isOws(code: number): boolean {
  return code === 0x20 || code === 0x09;
}

/** `etagc = %x21 / %x23-7E / obs-text` */
function isEtagc(code: number): boolean {
  return code === 0x21 || (code >= 0x23 && code <= 0x7e) || (code >= 0x80 && code <= 0xff);
}

function trimOws(text: string): string {
  let start = 0;
  let end = text.length;
  while (start < end && isOws(text.charCodeAt(start))) start++;
  while (end > start && isOws(text.charCodeAt(end - 1))) end--;
  return start === 0 && end === text.length ? text : text.slice(start, end);
}

/** A short, printable excerpt of `text` from `at`, for an error line. */
function show(text: string, at: number): string {
  const excerpt = text.slice(at, at + 20);
  return JSON.stringify(excerpt.length < text.length - at ? `${excerpt}...` : excerpt).replace(/[^\x20-\x7e]/g, "?");
}
