import { FilestoreError, quote } from './errors.ts';

/**
 * Rules for a path inside the store (pure). A valid path is relative, already normalised
 * (no `.`/`..`/empty components, no trailing `/`), well-formed UTF-8 without NUL, each component
 * at most 255 bytes and the whole at most 4096 bytes (1024 for a new file, validateNewStorePath).
 * Names are never normalised (NFC/NFD or case): two spellings are two files. Two names are reserved for the store itself: the top-level `.pfs`
 * directory and any component starting with `.pfs-tmp.` (temp files of writes in progress).
 */
export const MAX_COMPONENT_BYTES = 255;
/** Longest path the store handles at all: reads, deletes, replication, quarantine. */
export const MAX_PATH_BYTES = 4096;
/**
 * Longest path a new file may get (a put, a file dropped in and logged). Linux caps an absolute
 * path at 4095 bytes, store directory included: a path the master could hold under its short
 * store directory could be one that no replica with a longer one ever can, and that replica would
 * stop at it for good. 1024 bytes (as S3 keys) leaves any node up to ~3000 bytes for its
 * directory, which the node checks at start. Longer paths already stored (up to MAX_PATH_BYTES)
 * are still read, deleted and replicated.
 */
export const MAX_NEW_PATH_BYTES = 1024;
export const TEMP_PREFIX = '.pfs-tmp.';
export const STORE_META_DIR = '.pfs';

export function validateStorePath(path: string): string {
  const fail = (code: ConstructorParameters<typeof FilestoreError>[0], why: string): never => {
    throw new FilestoreError(code, `bad path ${quote(path)}: ${why}`, { path });
  };
  if (typeof path !== 'string' || path.length === 0) fail('PATH_EMPTY', 'it is empty: name a file');
  if (path.includes('\0')) fail('PATH_NUL', 'it contains a NUL byte, which no file name may hold');
  if (!path.isWellFormed())
    fail('PATH_INVALID_UTF8', 'it is not valid UTF-8 (lone surrogate): send UTF-8 names');
  if (path.startsWith('/')) fail('PATH_ABSOLUTE', 'it is absolute: use a path relative to the store root');
  if (Buffer.byteLength(path, 'utf8') > MAX_PATH_BYTES) {
    fail('PATH_TOO_LONG', `it is over ${MAX_PATH_BYTES} bytes: use a shorter path`);
  }
  const components = path.split('/');
  for (const component of components) {
    if (component === '..') fail('PATH_TRAVERSAL', '".." would leave its directory: name the file directly');
  }
  for (const component of components) {
    if (component === '' || component === '.') {
      fail(
        'PATH_NOT_NORMALIZED',
        path.endsWith('/')
          ? 'it ends with "/", which names a directory: name a file'
          : 'it has an empty or "." component: write it normalised (a/b, not a//b or a/./b)',
      );
    }
    if (Buffer.byteLength(component, 'utf8') > MAX_COMPONENT_BYTES) {
      fail('PATH_COMPONENT_TOO_LONG', `a component is over ${MAX_COMPONENT_BYTES} bytes: shorten it`);
    }
    if (component.startsWith(TEMP_PREFIX)) {
      fail(
        'PATH_RESERVED',
        `names starting with "${TEMP_PREFIX}" are reserved for writes in progress: rename it`,
      );
    }
  }
  if (components[0] === STORE_META_DIR) {
    fail(
      'PATH_RESERVED',
      `the top-level "${STORE_META_DIR}" directory is reserved for the store: use another name`,
    );
  }
  return path;
}

/**
 * rsync (3.2.5 and later) checks each name a sender lists against patterns made from the names it
 * asked for, and reads a backslash before `*`, `?`, `[` or `]` there as escaping it: such a name
 * never matches itself, and every pull that lists it fails ("rejecting unrequested file-list
 * name"). Other backslashes are fine.
 */
const ESCAPED_WILDCARD = /\\[*?[\]]/;

/**
 * validateStorePath, and fit for a new file: short enough (MAX_NEW_PATH_BYTES), and a name rsync
 * can transfer (ESCAPED_WILDCARD), so that no replica stops at it for good.
 */
export function validateNewStorePath(path: string): string {
  validateStorePath(path);
  if (Buffer.byteLength(path, 'utf8') > MAX_NEW_PATH_BYTES) {
    throw new FilestoreError(
      'PATH_TOO_LONG',
      `bad path ${quote(path)}: it is over ${MAX_NEW_PATH_BYTES} bytes: use a shorter path`,
      { path },
    );
  }
  if (ESCAPED_WILDCARD.test(path)) {
    throw new FilestoreError(
      'PATH_ESCAPED_WILDCARD',
      `bad path ${quote(path)}: a backslash right before "*", "?", "[" or "]" is a name rsync will not replicate (it reads it as an escaped wildcard): drop the backslash or put another character between`,
      { path },
    );
  }
  return path;
}

/** True for names the store creates for itself and never logs or replicates. */
export function isInternalPath(relative: string): boolean {
  if (relative === STORE_META_DIR || relative.startsWith(`${STORE_META_DIR}/`)) return true;
  const base = relative.slice(relative.lastIndexOf('/') + 1);
  return base.startsWith(TEMP_PREFIX);
}
