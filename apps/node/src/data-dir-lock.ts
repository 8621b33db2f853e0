import { readFile, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';

export class DataDirInUseError extends Error {
  readonly code = 'DATA_DIR_IN_USE';
}

/**
 * Holds `dataDir` for this process: a second agent on the same directory would open the same
 * logs (cutting what it takes for the other's torn tail, appending the same records again),
 * stop the other's rsync daemon and rewrite its config.
 *
 * The lock is a Linux abstract unix socket named after the directory's device and inode, not a
 * file: the kernel frees it whatever way the process ends (a kill -9 leaves no stale lock to
 * clear by hand), and the same directory reached by another path (a symlink, a bind mount)
 * gets the same name. It covers the processes of one network namespace: agents in containers
 * of their own that share a volume are not kept apart by it.
 */
export async function lockDataDir(dataDir: string, holder: string): Promise<{ release(): Promise<void> }> {
  const { dev, ino } = await stat(dataDir, { bigint: true });
  const server: Server = createServer((socket) => socket.destroy());
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ path: `\0pfs-data-dir:${dev}:${ino}` }, () => resolve());
    });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw error;
    const other = await readFile(join(dataDir, 'run', 'agent.pid'), 'utf8').catch(() => '');
    throw new DataDirInUseError(
      `data dir ${dataDir} is in use by another PFS agent on this machine${other.trim() === '' ? '' : ` (${other.trim()})`}: stop it, or give this node a data dir of its own (--data-dir)`,
    );
  }
  // Not a reason to keep the process alive.
  server.unref();
  // Named for the message of a second agent; best effort, the socket is the lock.
  await writeFile(join(dataDir, 'run', 'agent.pid'), `pid ${process.pid}, node ${holder}\n`).catch(() => {});
  return {
    release: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
