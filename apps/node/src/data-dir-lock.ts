import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { lockDirectory } from '@pfs/txlog';

export class DataDirInUseError extends Error {
  readonly code = 'DATA_DIR_IN_USE';
}

/**
 * Holds `dataDir` for this process: a second agent on the same directory would open the same
 * logs (cutting what it takes for the other's torn tail, appending the same records again),
 * stop the other's rsync daemon and rewrite its config. See lockDirectory for what the lock is
 * and what it does not cover.
 */
export async function lockDataDir(dataDir: string, holder: string): Promise<{ release(): Promise<void> }> {
  const lock = await lockDirectory(dataDir, 'data-dir');
  if (lock === undefined) {
    const other = await readFile(join(dataDir, 'run', 'agent.pid'), 'utf8').catch(() => '');
    throw new DataDirInUseError(
      `data dir ${dataDir} is in use by another PFS agent on this machine${other.trim() === '' ? '' : ` (${other.trim()})`}: stop it, or give this node a data dir of its own (--data-dir)`,
    );
  }
  // Named for the message of a second agent; best effort, the socket is the lock.
  await writeFile(join(dataDir, 'run', 'agent.pid'), `pid ${process.pid}, node ${holder}\n`).catch(() => {});
  return lock;
}
