import { stat } from 'node:fs/promises';
import { createServer } from 'node:net';

/** Held until released, or until its process ends however it ends. */
export interface DirectoryLock {
  release(): Promise<void>;
}

/**
 * Takes `dir` for this holder, or resolves undefined when another holder (another process, or
 * another holder in this one) has it. The lock is a Linux abstract unix socket named after the
 * directory's device and inode, not a file: the kernel frees it whatever way the process ends
 * (a kill -9 leaves no stale lock to clear by hand), and the same directory reached by another
 * path (a symlink, a bind mount) gets the same name. It covers the processes of one network
 * namespace, and abstract sockets have no permissions: it keeps apart the agents and tools of
 * one machine that mean well, not every process that could reach the directory. `kind` keeps
 * the locks of different uses of one directory apart.
 */
export async function lockDirectory(dir: string, kind: string): Promise<DirectoryLock | undefined> {
  const { dev, ino } = await stat(dir, { bigint: true });
  const server = createServer((socket) => socket.destroy());
  const taken = await new Promise<boolean>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) =>
      error.code === 'EADDRINUSE' ? resolve(false) : reject(error),
    );
    server.listen({ path: `\0pfs-${kind}:${dev}:${ino}` }, () => resolve(true));
  });
  if (!taken) return undefined;
  // Not a reason to keep the process alive.
  server.unref();
  let released: Promise<void> | undefined;
  return {
    release: () => {
      released ??= new Promise<void>((resolve) => server.close(() => resolve()));
      return released;
    },
  };
}
