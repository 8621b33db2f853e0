import { isUtf8 } from 'node:buffer';
import { type BigIntStats, lstatSync, unlinkSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { isInternalPath, TEMP_PREFIX } from './path-rules.ts';
import { type FileStat, fileStatOf } from './store.ts';

/** Walking and listing the store: every regular file, internal files and symlinks skipped. */
export interface StoreEntry {
  path: string;
  stat: FileStat;
}

export interface WalkOptions {
  /**
   * Removes each temp file of a write (`.pfs-tmp.*`) last modified before `before` (ms since
   * the epoch) that the walk passes, and tells `onRemoved`: a write in progress keeps its temp
   * file's mtime at or after its own start, so with the writing process's start time, what is
   * older is what a killed process left.
   */
  staleTempFiles?: { before: number; onRemoved?: (path: string, size: bigint) => void } | undefined;
  /**
   * Told of each name that is not UTF-8 (`under` is the store path of its directory): no store
   * path can name it, so the walk skips it, and what it holds is neither logged nor replicated.
   */
  onNameNotUtf8?: ((under: string, name: Buffer) => void) | undefined;
}

/** How many entries the walk looks at between two turns of the event loop. */
const ENTRIES_PER_TURN = 256;

/**
 * Every regular file in the store (internal files and symlinks skipped), depth first.
 *
 * Entries are stat'ed synchronously: a store walk is a stat per file (reconcile after a
 * promotion, a former master's check), and on a local file system a promise-based lstat costs
 * ~32 µs of CPU for its thread-pool round trip against ~4 µs for lstatSync, and ~45 µs of wall
 * time one after the other. The walk yields to the event loop every ENTRIES_PER_TURN entries
 * (~1 ms), so a large directory does not hold up requests or lease keepalives. Each entry is
 * stat'ed right before it is yielded or descended into, not typed by readdir ahead of time: a
 * directory replaced by a symlink meanwhile is then skipped rather than followed.
 */
export async function* walkStore(
  root: string,
  under = '',
  options: WalkOptions = {},
): AsyncGenerator<StoreEntry> {
  const dir = under === '' ? root : join(root, under);
  let names: string[];
  try {
    names = await namesIn(dir, under, options.onNameNotUtf8);
  } catch (error) {
    // Gone, or replaced by a file, since its parent was read: nothing to walk there.
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return;
    throw error;
  }
  names.sort();
  let looked = 0;
  for (const name of names) {
    if (++looked % ENTRIES_PER_TURN === 0) await new Promise((resolve) => setImmediate(resolve));
    const path = under === '' ? name : `${under}/${name}`;
    if (isInternalPath(path)) {
      if (options.staleTempFiles !== undefined && name.startsWith(TEMP_PREFIX))
        removeIfStale(root, path, options.staleTempFiles);
      continue;
    }
    // Gone since readdir: skipped, as if the walk had come a moment later.
    const info = statIfThere(join(root, path));
    if (info === undefined) continue;
    if (info.isDirectory()) yield* walkStore(root, path, options);
    else if (info.isFile()) yield { path, stat: fileStatOf(info) };
  }
}

/**
 * The path of the first regular file below `under` (in walk order) that `wanted` accepts; the
 * walk goes no further. Undefined if there is none, or `under` is not a directory.
 */
export async function findInStore(
  root: string,
  under: string,
  wanted: (path: string) => boolean,
): Promise<string | undefined> {
  for await (const { path } of walkStore(root, under)) if (wanted(path)) return path;
  return undefined;
}

function removeIfStale(root: string, path: string, stale: NonNullable<WalkOptions['staleTempFiles']>): void {
  const info = statIfThere(join(root, path));
  if (info === undefined || !info.isFile() || Number(info.mtimeMs) >= stale.before) return;
  try {
    unlinkSync(join(root, path));
  } catch {
    return; // gone meanwhile, or not ours to remove: the next walk tries again
  }
  stale.onRemoved?.(path, info.size);
}

/**
 * The entry's lstat, or undefined if it is gone. Any other failure (EACCES, EIO) throws: skipped,
 * the file would look deleted to a reconcile and be logged so.
 */
function statIfThere(path: string): BigIntStats | undefined {
  try {
    return lstatSync(path, { bigint: true, throwIfNoEntry: false });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOTDIR') return undefined;
    throw error;
  }
}

/**
 * The names in `dir` (the store path `under`) that are UTF-8; each other one is told to
 * `onNameNotUtf8` and left out. A string readdir shows such a name with U+FFFD in place of its
 * bad bytes, a name no file has: only a directory where one shows U+FFFD is read again as bytes
 * (reading every one so cost a walk ~25 % more).
 */
async function namesIn(
  dir: string,
  under: string,
  onNameNotUtf8?: WalkOptions['onNameNotUtf8'],
): Promise<string[]> {
  const names = await readdir(dir);
  if (!names.some((name) => name.includes('\uFFFD'))) return names;
  const utf8: string[] = [];
  for (const raw of await readdir(dir, { encoding: 'buffer' })) {
    if (isUtf8(raw)) utf8.push(raw.toString('utf8'));
    else onNameNotUtf8?.(under, raw);
  }
  return utf8;
}

/** Orders store paths the way walkStore visits them: component by component (pure). */
export function compareStorePaths(a: string, b: string): number {
  const x = a.split('/');
  const y = b.split('/');
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] !== y[i]) {
      // A directory's contents come where the directory's name sorts among its siblings.
      return x[i]! < y[i]! ? -1 : 1;
    }
  }
  return x.length - y.length;
}

/**
 * One page of the store's files whose paths start with `prefix`, in walk order, after the
 * cursor `after` (the last path of the previous page). `next` is the cursor of the next page, or
 * undefined at the end. With `include`, only the files it accepts count.
 */
export async function listStore(
  root: string,
  options: { prefix?: string; after?: string; limit: number; include?: (path: string) => boolean },
): Promise<{ entries: StoreEntry[]; next: string | undefined }> {
  const prefix = options.prefix ?? '';
  // A fractional limit would never equal a count, and the page would be the whole store.
  const limit = Math.max(1, Math.floor(options.limit));
  const entries: StoreEntry[] = [];
  const wanted = (dir: string) => `${dir}/`.startsWith(prefix) || prefix.startsWith(`${dir}/`);
  let looked = 0;
  async function* walk(under: string): AsyncGenerator<StoreEntry> {
    let names: string[];
    try {
      names = await namesIn(under === '' ? root : join(root, under), under);
    } catch {
      return;
    }
    names.sort();
    for (const name of names) {
      if (++looked % ENTRIES_PER_TURN === 0) await new Promise((resolve) => setImmediate(resolve));
      const path = under === '' ? name : `${under}/${name}`;
      if (isInternalPath(path)) continue;
      if (
        options.after !== undefined &&
        compareStorePaths(path, options.after) <= 0 &&
        !options.after.startsWith(`${path}/`)
      ) {
        continue;
      }
      // Synchronously, as in walkStore.
      const info = statIfThere(join(root, path));
      if (info === undefined) continue;
      if (info.isDirectory()) {
        if (wanted(path)) yield* walk(path);
      } else if (info.isFile() && path.startsWith(prefix) && (options.include?.(path) ?? true)) {
        yield {
          path,
          stat: fileStatOf(info),
        };
      }
    }
  }
  for await (const entry of walk('')) {
    if (entries.length >= limit) return { entries, next: entries.at(-1)!.path };
    entries.push(entry);
  }
  return { entries, next: undefined };
}

/**
 * A file name's bytes as printable ASCII (pure), every other byte (and `\` and `'`) as `\xNN`:
 * how a name that is not UTF-8 is shown in a message, which it could otherwise garble. Inside
 * `$'…'` it is a shell word naming the same bytes.
 */
export function escapeNameBytes(name: Uint8Array): string {
  let shown = '';
  for (const byte of name) {
    shown +=
      byte >= 0x20 && byte < 0x7f && byte !== 0x5c && byte !== 0x27
        ? String.fromCharCode(byte)
        : `\\x${byte.toString(16).padStart(2, '0')}`;
  }
  return shown;
}
