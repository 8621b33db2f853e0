/**
 * A single HTTP byte range (pure): `bytes=a-b`, `bytes=a-` or `bytes=-n` against a file of `size`
 * bytes. Returns the inclusive range, 'unsatisfiable' (416), or undefined to send the whole file
 * (no header, or a form this server does not serve, such as several ranges).
 */
export function parseRange(
  header: string | undefined,
  size: number,
): { start: number; end: number } | 'unsatisfiable' | undefined {
  if (header === undefined) return undefined;
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!match || (match[1] === '' && match[2] === '')) return undefined;
  if (match[1] === '') {
    const suffix = Number(match[2]);
    if (suffix === 0 || size === 0) return 'unsatisfiable';
    return { start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(match[1]);
  const end = match[2] === '' ? size - 1 : Math.min(Number(match[2]), size - 1);
  if (start >= size || end < start) return 'unsatisfiable';
  return { start, end };
}

/**
 * One member of an `If-Match` or `If-None-Match` list (pure): `*`, or an entity tag's value and
 * whether it is weak; undefined for what is neither. A bare sha-256 (64 hex digits, as a write's
 * answer gives it) counts as its quoted tag, in either case: a client that sent it unquoted
 * would otherwise never match, and be told its version is not the file's when it is.
 */
function parseTag(member: string): '*' | { value: string; weak: boolean } | undefined {
  let tag = member.trim();
  if (tag === '*') return '*';
  const weak = tag.startsWith('W/');
  if (weak) tag = tag.slice(2);
  let value: string;
  if (tag.length >= 2 && tag.startsWith('"') && tag.endsWith('"')) value = tag.slice(1, -1);
  else if (/^[0-9a-fA-F]{64}$/.test(tag)) value = tag;
  else return undefined;
  return { value: /^[0-9a-fA-F]{64}$/.test(value) ? value.toLowerCase() : value, weak };
}

/** The members of a list header; ETags here hold no comma (a quoted hex digest). */
function tagsOf(header: string): ReturnType<typeof parseTag>[] {
  return header.split(',').map(parseTag);
}

/** Whether an `If-None-Match` or `If-Match` header holds `*`, alone or in a list (pure). */
export function namesAnyVersion(header: string | undefined): boolean {
  return header !== undefined && tagsOf(header).includes('*');
}

/**
 * Whether an `If-None-Match` header matches the current version, the file's sha-256 (pure): `*`,
 * or a list naming its ETag, weak or not (RFC 9110 13.1.2 compares weakly). A cache holding a
 * weak validator, or asking with several, then gets its 304 as a cache holding exactly this one
 * does.
 */
export function noneMatchHits(header: string | undefined, sha256: string): boolean {
  if (header === undefined) return false;
  return tagsOf(header).some((tag) => tag === '*' || tag?.value === sha256);
}

/**
 * The precondition of a PUT or DELETE that this server does not evaluate, or undefined (pure):
 * the date-based ones and `If-Range`. They are refused rather than ignored, since a client that
 * sent one expects the write not to happen unless it holds.
 */
export function unsupportedWritePrecondition(
  headers: Readonly<Record<string, string | string[] | undefined>>,
): string | undefined {
  return ['if-unmodified-since', 'if-modified-since', 'if-range'].find((name) => headers[name] !== undefined);
}

/**
 * What a PUT's or DELETE's `If-Match` and `If-None-Match` ask of the file's current sha-256
 * (undefined: no file), or undefined when they ask nothing (pure). `If-Match` compares strongly
 * (a weak tag never matches) and `*` needs a file; `If-None-Match` compares weakly and `*`
 * needs none — but a PUT's `If-None-Match` holding `*` is left to the put itself (`ifAbsent`,
 * which answers 409 PATH_EXISTS as it always has).
 */
export function writePreconditionOf(
  method: 'PUT' | 'DELETE',
  headers: Readonly<Record<string, string | string[] | undefined>>,
): ((currentSha256: string | undefined) => boolean) | undefined {
  const checks: ((current: string | undefined) => boolean)[] = [];
  const ifMatch = headers['if-match'];
  if (typeof ifMatch === 'string') {
    const tags = tagsOf(ifMatch);
    checks.push(
      (current) =>
        current !== undefined &&
        tags.some((tag) => tag === '*' || (tag !== undefined && !tag.weak && tag.value === current)),
    );
  }
  const ifNoneMatch = headers['if-none-match'];
  if (typeof ifNoneMatch === 'string' && !(method === 'PUT' && namesAnyVersion(ifNoneMatch))) {
    checks.push((current) => current === undefined || !noneMatchHits(ifNoneMatch, current));
  }
  if (checks.length === 0) return undefined;
  return (current) => checks.every((check) => check(current));
}
