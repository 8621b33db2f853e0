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
 * Whether an `If-None-Match` header matches the current version's `etag` (pure): `*`, or a list
 * naming it, weak or not (RFC 9110 13.1.2 compares weakly). A cache holding a weak validator, or
 * asking with several, then gets its 304 as a cache holding exactly this one does.
 */
export function noneMatchHits(header: string | undefined, etag: string): boolean {
  if (header === undefined) return false;
  if (header.trim() === '*') return true;
  // ETags hold no comma here (a quoted hex digest), so a list splits on commas.
  return header.split(',').some((tag) => tag.trim().replace(/^W\//, '') === etag);
}
