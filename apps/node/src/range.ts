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

/**
 * The precondition of a PUT or DELETE that this server does not evaluate, or undefined (pure).
 * Writes honour `If-None-Match: *` on a PUT only; any other precondition is refused rather than
 * ignored, since a client that sent one (`If-Match` for a compare-and-swap) expects the write not
 * to happen unless it holds.
 */
export function unsupportedWritePrecondition(
  method: 'PUT' | 'DELETE',
  headers: Readonly<Record<string, string | string[] | undefined>>,
): string | undefined {
  for (const name of ['if-match', 'if-unmodified-since', 'if-modified-since', 'if-range']) {
    if (headers[name] !== undefined) return name;
  }
  const noneMatch = headers['if-none-match'];
  if (noneMatch !== undefined && (method !== 'PUT' || noneMatch !== '*')) return 'if-none-match';
  return undefined;
}
