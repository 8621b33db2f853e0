import { resolve } from 'node:path';

export type SourceKind = 'local' | 'daemon' | 'ssh';

/**
 * How rsync itself will read the source string: `rsync://…` and `host::module` reach a daemon,
 * a colon before the first slash (`user@host:/path`) means a remote shell, anything else is a
 * local path.
 */
export function sourceKind(source: string): SourceKind {
  if (/^rsync:\/\//i.test(source)) return 'daemon';
  const colon = source.indexOf(':');
  const slash = source.indexOf('/');
  if (colon > 0 && (slash === -1 || colon < slash)) return source[colon + 1] === ':' ? 'daemon' : 'ssh';
  return 'local';
}

/**
 * The source as rsync must receive it: with a trailing slash, so that the listed paths are
 * taken relative to the directory's contents. Local paths are made absolute, which also keeps
 * a relative name with a colon (`a:b/`) from being read as a remote host.
 */
export function normalizeSource(source: string): string {
  const path = sourceKind(source) === 'local' ? resolve(source) : source;
  return withSlash(path);
}

/** The destination is always a local directory; absolute, so it can never look like an option. */
export function normalizeDest(dest: string): string {
  return withSlash(resolve(dest));
}

function withSlash(path: string): string {
  return path.endsWith('/') ? path : `${path}/`;
}

/**
 * Prefixes rsync puts before a listed path when it names it in a message ("file has vanished:
 * …"): the absolute source dir for a local source, the part of a daemon URL after the module
 * (printed with and without a leading slash), the remote dir for ssh.
 */
export function messagePrefixes(source: string): string[] {
  const kind = sourceKind(source);
  if (kind === 'local') return [normalizeSource(source)];
  const normalized = normalizeSource(source);
  const sub =
    kind === 'daemon'
      ? (/^rsync:\/\/[^/]*\/[^/]*\/(.*)$/i.exec(normalized) ?? /^[^:]*::[^/]*\/(.*)$/.exec(normalized))?.[1]
      : normalized.slice(normalized.indexOf(':') + 1);
  if (!sub) return [];
  return [`/${sub}`, sub].filter((prefix) => prefix !== '/');
}
