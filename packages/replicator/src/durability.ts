import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { open, readdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';

/**
 * Making received files durable and checking them (the one file of the replicator that reads
 * the store's bytes): per-file fdatasync for small batches, one syncfs for large ones.
 */
export async function fsyncParents(root: string, paths: readonly string[]): Promise<void> {
  const dirs = new Set(paths.map((p) => dirname(join(root, p))));
  await Promise.all(
    [...dirs].map(async (dir) => {
      const handle = await open(dir, 'r').catch(() => undefined);
      if (handle === undefined) return;
      try {
        await handle.sync();
      } finally {
        await handle.close();
      }
    }),
  );
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

/** syncfs(2) of the file system holding `dir`, through coreutils `sync -f`; false if that failed. */
export function syncFileSystem(dir: string): Promise<boolean> {
  return new Promise((resolve) => {
    const child = spawn('sync', ['-f', dir], { stdio: 'ignore' });
    child.once('error', () => resolve(false));
    child.once('exit', (code) => resolve(code === 0));
  });
}

/** A bulk bootstrap (rsync --delete) is only for a store holding nothing but its own metadata. */
export async function storeIsEmpty(root: string): Promise<boolean> {
  const names = await readdir(root).catch(() => [] as string[]);
  return names.every((name) => name === '.pfs');
}

/**
 * sha-256 and size of a received file, which is also fdatasync'ed on the way: the checkpoint may
 * only pass it once its bytes are durable. Undefined when the file is missing.
 */
export async function hashAndSync(
  file: string,
  sync: boolean,
): Promise<{ sha256: string; size: bigint } | undefined> {
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(file, 'r');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  try {
    const info = await handle.stat();
    if (!info.isFile()) return undefined;
    const hash = createHash('sha256');
    const buffer = Buffer.allocUnsafe(Math.min(Math.max(info.size, 1), 1024 * 1024));
    let size = 0n;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, null);
      if (bytesRead === 0) break;
      hash.update(buffer.subarray(0, bytesRead));
      size += BigInt(bytesRead);
    }
    if (sync) await handle.datasync();
    return { sha256: hash.digest('hex'), size };
  } finally {
    await handle.close();
  }
}
