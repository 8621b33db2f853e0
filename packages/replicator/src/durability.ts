import { spawn } from 'node:child_process';
import { open, readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { storeIsInPlace } from '@pfs/filestore';

/**
 * Making received files durable: per-file fdatasync for small batches (filestore's hashFile
 * does it while verifying), one syncfs for large ones, directory fsyncs for renames.
 */
export async function fsyncParents(root: string, paths: readonly string[]): Promise<void> {
  await Promise.all(
    directoriesToSync(root, paths).map(async (dir) => {
      // Gone (the batch deleted it): nothing to make durable. Any other failure (EMFILE,
      // EACCES) fails the batch rather than log records whose renames may not be durable.
      const handle = await open(dir, 'r').catch((error: NodeJS.ErrnoException) => {
        if (error.code === 'ENOENT' || error.code === 'ENOTDIR') return undefined;
        throw error;
      });
      if (handle === undefined) return;
      try {
        await handle.sync();
      } finally {
        await handle.close();
      }
    }),
  );
}

/**
 * The directories whose entries `paths` (in the store at `root`) depend on (pure): each path's
 * parent and every ancestor of it up to `root`. rsync makes the directories a file needs, and a
 * new directory's own entry is durable only once its parent is synced (POSIX; ext4 happens to
 * commit it with the file). Syncing a directory nothing changed in costs little.
 */
export function directoriesToSync(root: string, paths: readonly string[]): string[] {
  const dirs = new Set<string>();
  for (const path of paths) {
    const parts = path.split('/');
    for (let depth = parts.length - 1; depth >= 0; depth--) {
      const dir = join(root, ...parts.slice(0, depth));
      // Its ancestors came in with it.
      if (dirs.has(dir)) break;
      dirs.add(dir);
    }
  }
  return [...dirs];
}

/**
 * Runs `check` (a read or fdatasync of a received file) and, should it fail, removes the file
 * before rethrowing. After a failed fdatasync Linux marks the pages clean and reports the error
 * once: a retry would read the cached bytes, find them right and sync nothing, and the log would
 * then claim bytes that never reached the disk. Removed, the file is pulled again.
 */
export async function removeOnFailure<T>(
  file: string,
  check: () => Promise<T>,
  beforeRemoving?: () => void,
): Promise<T> {
  try {
    return await check();
  } catch (error) {
    beforeRemoving?.();
    await unlink(file).catch(() => {});
    throw error;
  }
}

export async function syncFile(file: string): Promise<void> {
  const handle = await open(file, 'r');
  try {
    await handle.datasync();
  } finally {
    await handle.close();
  }
}

/** From this many paths in a batch on, one syncfs is cheaper than a fsync per file. */
export const SYNCFS_MIN_PATHS = 64;

/**
 * syncfs(2) of the file system holding `dir`, through coreutils `sync -f`: 'synced'; 'failed'
 * when it reported an error (a writeback error: bytes written before may not be on disk);
 * 'unavailable' when it could not run at all (no `sync` binary, no fork), which says nothing
 * about the disk, so callers fall back to per-file syncs.
 */
export function syncFileSystem(dir: string): Promise<'synced' | 'failed' | 'unavailable'> {
  return new Promise((resolve) => {
    let child: ReturnType<typeof spawn>;
    try {
      child = spawn('sync', ['-f', dir], { stdio: 'ignore' });
    } catch {
      // spawn throws, rather than emit 'error', for failures such as ENOMEM from fork.
      resolve('unavailable');
      return;
    }
    child.once('error', () => resolve('unavailable'));
    child.once('exit', (code) => resolve(code === 0 ? 'synced' : 'failed'));
  });
}

/**
 * A bulk bootstrap is only for a store holding nothing but its own metadata. A directory
 * without the store's sentinel is no empty store: most likely an empty mount point.
 */
export async function storeIsEmpty(root: string): Promise<boolean> {
  if (!storeIsInPlace(root)) return false;
  const names = await readdir(root).catch(() => [] as string[]);
  return names.every((name) => name === '.pfs');
}
