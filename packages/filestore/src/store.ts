import { createHash, randomBytes } from 'node:crypto';
import { type BigIntStats, constants, lstatSync, readlinkSync, realpathSync, type Stats } from 'node:fs';
import {
  type FileHandle,
  lstat,
  mkdir,
  open,
  readdir,
  realpath,
  rename,
  rm,
  rmdir,
  stat,
  unlink,
  writeFile,
} from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fsyncDir } from '@pfs/txlog';
import { FilestoreError, quote } from './errors.ts';
import { STORE_META_DIR, TEMP_PREFIX, validateNewStorePath, validateStorePath } from './path-rules.ts';
import { syncDirectory } from './shared-sync.ts';

/**
 * Disk side of the store. Invariants: a put replaces the whole file or nothing (temp file in the
 * same directory, fsync, rename, fsync the directory); nothing is ever written through a symlink;
 * a failed write leaves no temp file behind.
 */
export const SENTINEL_FILE = `${STORE_META_DIR}/sentinel`;

export interface FileStat {
  size: bigint;
  mtimeNs: bigint;
  ino: bigint;
  ctimeNs: bigint;
}

export interface StagedFile {
  readonly path: string;
  readonly size: bigint;
  readonly sha256: string;
  /**
   * Renames the staged bytes into place and fsyncs the directory. Refused with
   * `PATH_IS_DIRECTORY` (a directory holding files is at the path), it keeps them staged: commit
   * again once the way may be clear, or discard. Any other failure discards them.
   */
  commit(): Promise<FileStat>;
  /** Removes the temp file; safe after commit and twice. */
  discard(): Promise<void>;
}

export interface StageOptions {
  signal?: AbortSignal;
  maxBytes?: number;
  /** Refuse the write unless the content hashes to this (lower-case hex sha-256). */
  expectedSha256?: string;
}

/**
 * Whether the store's sentinel is in place. An unmounted store (an empty mount point) or one
 * moved away looks like a store whose files were all deleted: whatever would log a delete, or a
 * write that the real store would then hide, checks this first. Synchronous: one lstat of a
 * cached entry, cheaper than a thread-pool round trip.
 */
export function storeIsInPlace(root: string): boolean {
  try {
    return lstatSync(join(root, SENTINEL_FILE), { throwIfNoEntry: false })?.isFile() === true;
  } catch {
    return false; // ENOTDIR, EACCES, EIO: no usable store either
  }
}

/** Throws STORE_MISSING unless the store's sentinel is in place (see storeIsInPlace). */
export function assertStoreInPlace(root: string): void {
  if (storeIsInPlace(root)) return;
  throw new FilestoreError(
    'STORE_MISSING',
    `${root} has no ${SENTINEL_FILE}: the store looks unmounted or replaced; mount it, or put the sentinel back if this is the right store`,
  );
}

/** Creates the store root and its sentinel (checked by replicas before they delete anything). */
export async function initStore(root: string): Promise<void> {
  await mkdir(join(root, STORE_META_DIR), { recursive: true });
  try {
    await writeFile(join(root, SENTINEL_FILE), 'pfs file store\n', { flag: 'wx' });
    await fsyncDir(join(root, STORE_META_DIR));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
}

function translate(error: unknown, path: string): unknown {
  if (error instanceof FilestoreError) return error;
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new FilestoreError(
      'DISK_FULL',
      `disk full while writing ${quote(path)}: free space; nothing was replaced`,
      {
        path,
        cause: error,
      },
    );
  }
  if (code === 'ENAMETOOLONG') {
    return new FilestoreError(
      'PATH_TOO_LONG',
      `${quote(path)} with this node's store directory is too long for the file system: use a shorter path`,
      { path, cause: error },
    );
  }
  if (code === 'ENOTDIR') {
    return new FilestoreError('PATH_CONFLICT', `cannot write ${quote(path)}: a parent of it is a file`, {
      path,
      cause: error,
    });
  }
  return error;
}

/**
 * Makes the parent directories of `path`, refusing symlinks and files on the way.
 *
 * One realpath(3) checks every existing parent at once: it equals the resolved root joined with
 * the parents only when each component exists and none is a symlink. That is two concurrent
 * thread-pool round trips per put instead of one lstat per component after another. Anything
 * else (a missing, symlinked or file parent) takes the walk below, which creates what is missing
 * and names what is wrong. A parent that is a file passes realpath; the open inside it then fails
 * with ENOTDIR and stageFile walks again for the precise error.
 */
async function ensureParents(root: string, path: string): Promise<void> {
  const parent = dirname(path);
  if (parent === '.') return;
  // The root is resolved each time, alongside: a symlink on its own path may be retargeted
  // while the store runs, and a remembered resolution would then vouch for the wrong tree.
  const [realRoot, resolved] = await Promise.all([
    realpath(root).catch(() => undefined),
    realpath(join(root, parent)).catch(() => undefined),
  ]);
  if (realRoot !== undefined && resolved === join(realRoot, parent)) return;
  await walkParents(root, path);
}

async function walkParents(root: string, path: string): Promise<void> {
  const parts = path.split('/').slice(0, -1);
  let current = root;
  for (let i = 0; i < parts.length; i++) {
    const next = join(current, parts[i]!);
    let info: Awaited<ReturnType<typeof lstat>> | undefined;
    try {
      info = await lstat(next);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
    if (info === undefined) {
      try {
        await mkdir(next);
        await fsyncDir(current);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
        i--; // raced with another writer: look at what is there now
        continue;
      }
    } else if (info.isSymbolicLink()) {
      throw new FilestoreError(
        'PATH_THROUGH_SYMLINK',
        `refusing ${quote(path)}: ${quote(parts.slice(0, i + 1).join('/'))} is a symlink, and the store never writes through one`,
        { path },
      );
    } else if (!info.isDirectory()) {
      throw new FilestoreError(
        'PATH_CONFLICT',
        `cannot write ${quote(path)}: ${quote(parts.slice(0, i + 1).join('/'))} is a file, not a directory`,
        { path },
      );
    }
    current = next;
  }
}

/**
 * Streams `source` into a temp file next to `path`, hashing and fsyncing it. Nothing is visible
 * at `path` until `commit()`.
 */
export async function stageFile(
  root: string,
  path: string,
  source: AsyncIterable<Uint8Array> | Uint8Array,
  options: StageOptions = {},
): Promise<StagedFile> {
  validateNewStorePath(path);
  const target = join(root, path);
  const temp = join(dirname(target), `${TEMP_PREFIX}${randomBytes(6).toString('hex')}`);
  const hash = createHash('sha256');
  let size = 0;
  try {
    await ensureParents(root, path);
    const handle = await open(temp, 'wx', 0o644).catch(async (error: NodeJS.ErrnoException) => {
      // A parent is a file (or was swapped since the check): the walk names which, or retries.
      if (error.code === 'ENOTDIR' || error.code === 'ENOENT') {
        await walkParents(root, path);
        return open(temp, 'wx', 0o644);
      }
      throw error;
    });
    try {
      const chunks = source instanceof Uint8Array ? [source] : source;
      for await (const chunk of chunks) {
        if (options.signal?.aborted) {
          throw new FilestoreError('ABORTED', `write of ${quote(path)} was cancelled`, { path });
        }
        size += chunk.byteLength;
        if (options.maxBytes !== undefined && size > options.maxBytes) {
          throw new FilestoreError(
            'FILE_TOO_LARGE',
            `${quote(path)} is over the ${options.maxBytes}-byte limit: split it or raise maxFileBytes`,
            { path },
          );
        }
        hash.update(chunk);
        let written = 0;
        while (written < chunk.byteLength) {
          written += (await handle.write(chunk, written, chunk.byteLength - written)).bytesWritten;
        }
      }
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch (error) {
    await rm(temp, { force: true }).catch(() => {});
    throw translate(error, path);
  }
  const sha256 = hash.digest('hex');
  if (options.expectedSha256 !== undefined && options.expectedSha256.toLowerCase() !== sha256) {
    await rm(temp, { force: true }).catch(() => {});
    throw new FilestoreError(
      'CONTENT_MISMATCH',
      `content of ${quote(path)} hashes to ${sha256}, not the expected ${options.expectedSha256}: resend it`,
      { path },
    );
  }
  let done = false;
  return {
    path,
    size: BigInt(size),
    sha256,
    async commit() {
      try {
        await renameIntoPlace(temp, target, path);
        done = true;
        await syncDirectory(dirname(target));
        return await statFileAt(target);
      } catch (error) {
        // In place already: whatever failed, the file was replaced (see notDurable).
        if (done) throw notDurable(path, 'put in place', error);
        const keep = error instanceof FilestoreError && error.code === 'PATH_IS_DIRECTORY';
        if (!keep) await rm(temp, { force: true }).catch(() => {});
        throw translate(error, path);
      }
    },
    async discard() {
      if (!done) await rm(temp, { force: true }).catch(() => {});
      done = true;
    },
  };
}

/**
 * rename(2), which refuses to put a file over a directory (EISDIR): no lstat needed first. A
 * directory holding no file, only maybe empty directories, is what deleting the last files under
 * it leaves (deletes do not prune): the file takes its place, as on replicas. rmdir(2) refuses
 * (ENOTEMPTY) once anything was put under it meanwhile, and a put that made it again since is
 * refused as well.
 */
async function renameIntoPlace(temp: string, target: string, path: string): Promise<void> {
  const refuse = (error: NodeJS.ErrnoException) => {
    if (error.code !== 'EISDIR') throw error;
    throw new FilestoreError(
      'PATH_IS_DIRECTORY',
      `cannot replace directory ${quote(path)} with a file: it is not empty; delete the files under it first`,
      { path, cause: error },
    );
  };
  await rename(temp, target).catch(async (error: NodeJS.ErrnoException) => {
    if (error.code !== 'EISDIR') throw error;
    if (!(await removeEmptyTree(target))) refuse(error);
    await rename(temp, target).catch(refuse);
  });
}

/**
 * Removes `dir` if it holds nothing but directories, deepest first. False at the first entry that
 * is anything else (a temp file of a put in progress included), or that rmdir refuses: the empty
 * directories removed until then are as a delete left them, and a put into one makes it again.
 */
export async function removeEmptyTree(dir: string): Promise<boolean> {
  const names = await readdir(dir).catch(() => undefined);
  if (names === undefined) return false;
  for (const name of names) {
    const child = join(dir, name);
    const info = await lstat(child).catch(() => undefined);
    if (info === undefined) continue;
    if (!info.isDirectory() || !(await removeEmptyTree(child))) return false;
  }
  return rmdir(dir).then(
    () => true,
    () => false,
  );
}

/** Stages and commits in one step. */
export async function putFile(
  root: string,
  path: string,
  source: AsyncIterable<Uint8Array> | Uint8Array,
  options: StageOptions = {},
): Promise<FileStat & { sha256: string }> {
  const staged = await stageFile(root, path, source, options);
  try {
    const info = await staged.commit();
    return { ...info, sha256: staged.sha256 };
  } catch (error) {
    await staged.discard();
    throw error;
  }
}

/**
 * The first of the directories on the way to `path` (under `root`) that is something else (a
 * file, a symlink), with its lstat; undefined when each is a directory, or the first that is not
 * is missing (and so is `path`).
 */
export async function firstParentNotADirectory(
  root: string,
  path: string,
): Promise<{ parent: string; info: Stats } | undefined> {
  const parts = path.split('/');
  for (let depth = 1; depth < parts.length; depth++) {
    const parent = parts.slice(0, depth).join('/');
    const info = await lstat(join(root, parent)).catch(() => undefined);
    if (info === undefined) return undefined;
    if (!info.isDirectory()) return { parent, info };
  }
  return undefined;
}

async function assertNoSymlinkParents(root: string, path: string): Promise<void> {
  if ((await firstParentNotADirectory(root, path))?.info.isSymbolicLink()) {
    throw new FilestoreError('PATH_THROUGH_SYMLINK', `refusing ${quote(path)}: a parent of it is a symlink`, {
      path,
    });
  }
}

/**
 * fsyncs the directory that holds, or held, the entry of `path`: its parent, or the nearest
 * ancestor still there when the parent went too (a removed tree's entry is in the first
 * directory that stayed). A change someone made by hand (a file dropped in, a delete) is made
 * durable so before it is logged: a record of it must not outlive it in a crash.
 */
export async function syncParentOf(root: string, path: string): Promise<void> {
  for (let dir = dirname(path); ; dir = dirname(dir)) {
    try {
      await syncDirectory(dir === '.' ? root : join(root, dir));
      return;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if ((code !== 'ENOENT' && code !== 'ENOTDIR') || dir === '.') throw error;
    }
  }
}

/** Deletes `path`; NOT_FOUND when there is no such file. */
export async function deleteFile(root: string, path: string): Promise<void> {
  validateStorePath(path);
  await assertNoSymlinkParents(root, path);
  const target = join(root, path);
  const info = await lstat(target).catch(() => undefined);
  if (info === undefined)
    throw new FilestoreError('NOT_FOUND', `no file ${quote(path)} in the store`, { path });
  if (info.isDirectory()) {
    throw new FilestoreError('PATH_IS_DIRECTORY', `${quote(path)} is a directory, not a file`, { path });
  }
  await unlink(target);
  // The nearest directory still there: a put may have replaced the emptied parent with a file.
  await syncParentOf(root, path).catch((error: unknown) => {
    throw notDurable(path, 'deleted', error);
  });
}

/**
 * A change made in the store whose durability could not be ensured after it (a failed directory
 * fsync, a failed stat): it is in place, unlike what every other error says, and may or may not
 * survive a crash. Callers must not answer "nothing was changed".
 */
function notDurable(path: string, done: string, error: unknown): FilestoreError {
  return new FilestoreError(
    'NOT_DURABLE',
    `${quote(path)} was ${done}, but making that durable failed (${(error as Error).message}): it may not survive a crash`,
    { path, cause: error },
  );
}

/** The fields of a bigint stat that say which version of a file it is. */
export function fileStatOf(info: BigIntStats): FileStat {
  return { size: info.size, mtimeNs: info.mtimeNs, ino: info.ino, ctimeNs: info.ctimeNs };
}

async function statFileAt(target: string): Promise<FileStat> {
  const info = await stat(target, { bigint: true });
  return fileStatOf(info);
}

/**
 * Stat of a regular file at `path` (never following a symlink), or undefined if there is none.
 * Any other failure (EACCES, EIO) throws: callers log a delete for a path that is not there.
 */
export async function statFile(root: string, path: string): Promise<FileStat | undefined> {
  const info = await lstat(join(root, path), { bigint: true }).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT' || error.code === 'ENOTDIR') return undefined;
    throw error;
  });
  if (info === undefined || !info.isFile()) return undefined;
  return fileStatOf(info);
}

/**
 * The regular file at `path`, opened for reading without following a symlink in its last
 * component, with its stat; undefined if there is none (a symlink or a directory counts as none).
 * The caller closes the handle.
 */
export async function openStoreFile(
  root: string,
  path: string,
): Promise<{ handle: FileHandle; stat: FileStat } | undefined> {
  let handle: FileHandle;
  try {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, holding a
    // thread-pool thread (four of them stall every file operation of the node).
    handle = await open(join(root, path), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ELOOP' || code === 'ENOTDIR' || code === 'ENAMETOOLONG')
      return undefined;
    throw error;
  }
  try {
    const info = await handle.stat({ bigint: true });
    if (info.isFile() && (await openedInStore(root, path, handle))) {
      return { handle, stat: fileStatOf(info) };
    }
  } catch (error) {
    await handle.close();
    throw error;
  }
  await handle.close();
  return undefined;
}

/**
 * Whether `handle` is the file at `path` in the store, reached through directories only:
 * O_NOFOLLOW guards the last component alone, and a symlinked directory on the way would lead
 * out of the store (`etc -> /etc`). Asks the kernel where the opened file is (/proc/self/fd),
 * one system call; without /proc, walks the parents.
 */
async function openedInStore(root: string, path: string, handle: FileHandle): Promise<boolean> {
  let where: string;
  try {
    where = readlinkSync(`/proc/self/fd/${handle.fd}`);
  } catch {
    return (await firstParentNotADirectory(root, path)) === undefined;
  }
  // A file replaced by a put or deleted since it was opened reads "<path> (deleted)": still the
  // file that was at the path.
  const expected = (realRoot: string) => {
    const at = join(realRoot, path);
    return where === at || where === `${at} (deleted)`;
  };
  // The root is resolved afresh each time (a few system calls on cached entries), as for a put:
  // a symlink on its own path may have been retargeted, and a remembered resolution would vouch
  // for a file reached through a symlink in the new tree.
  return expected(realpathSync.native(root));
}

/** sha-256 (lower-case hex) and size of an open file's bytes, read from offset 0. */
export async function hashHandle(
  handle: FileHandle,
  sizeHint: number,
): Promise<{ sha256: string; size: bigint }> {
  const hash = createHash('sha256');
  const buffer = Buffer.allocUnsafe(Math.min(Math.max(sizeHint, 1), 1024 * 1024));
  let position = 0;
  for (;;) {
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, position);
    if (bytesRead === 0) break;
    hash.update(buffer.subarray(0, bytesRead));
    position += bytesRead;
  }
  return { sha256: hash.digest('hex'), size: BigInt(position) };
}

/**
 * sha-256 (lower-case hex) and size of the regular file at `path`, or undefined if there is none
 * (a symlink counts as none). With `datasync`, the file is also fdatasync'ed on the way, for
 * callers that must know its bytes are durable before they rely on them.
 */
export async function hashFile(
  root: string,
  path: string,
  options: { datasync?: boolean } = {},
): Promise<{ sha256: string; size: bigint } | undefined> {
  const opened = await openStoreFile(root, path);
  if (opened === undefined) return undefined;
  const { handle, stat: info } = opened;
  try {
    const hashed = await hashHandle(handle, Number(info.size));
    if (options.datasync) await handle.datasync();
    return hashed;
  } finally {
    await handle.close();
  }
}

/**
 * Moves `path` to `<destinationDir>/<path>` (never deletes; an earlier file there is kept and the
 * new one gets a `.1`, `.2`, … suffix). Returns the new location, or undefined when there was
 * nothing to move. `beforeMove` learns the location first (to record it where a crash between
 * the two cannot leave a moved entry unrecorded).
 */
export async function quarantineFile(
  root: string,
  destinationDir: string,
  path: string,
  options: { beforeMove?: (destination: string) => Promise<void> } = {},
): Promise<string | undefined> {
  validateStorePath(path);
  const source = join(root, path);
  if ((await lstat(source).catch(() => undefined)) === undefined) return undefined;
  let destination = join(destinationDir, path);
  for (let n = 1; (await lstat(destination).catch(() => undefined)) !== undefined; n++) {
    destination = `${join(destinationDir, path)}.${n}`;
  }
  await options.beforeMove?.(destination);
  await mkdir(dirname(destination), { recursive: true });
  await rename(source, destination);
  await fsyncDir(dirname(destination));
  await fsyncDir(dirname(source));
  return destination;
}
