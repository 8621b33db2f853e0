import { constants } from 'node:fs';
import { mkdir, open, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';

/**
 * fsync a directory so that a rename or create inside it survives a crash. O_DIRECTORY: a path
 * that has become a file fails (ENOTDIR) instead of syncing that file.
 */
export async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * mkdir -p whose new directories survive a crash: each one created is fsynced into its parent.
 * A log directory that vanished with the power would take every record in it along.
 */
export async function mkdirDurable(dir: string): Promise<void> {
  const first = await mkdir(dir, { recursive: true });
  if (first === undefined) return;
  const created: string[] = [];
  for (let d = dir; d.length >= first.length; d = dirname(d)) created.unshift(d);
  for (const d of created) await fsyncDir(dirname(d));
}

/**
 * Replaces `file` with `data` so that a crash leaves either the old or the new content:
 * write `<file>.tmp`, fsync, rename over `file`, fsync the directory.
 * `beforeRename` exists so tests can simulate a crash between write and rename.
 */
export async function writeFileAtomic(
  file: string,
  data: string | Buffer,
  hooks: { beforeRename?: () => void | Promise<void> } = {},
): Promise<void> {
  const tmp = `${file}.tmp`;
  const handle = await open(tmp, 'w', 0o644);
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    await hooks.beforeRename?.();
    await rename(tmp, file);
  } catch (error) {
    await rm(tmp, { force: true }).catch(() => {});
    throw error;
  }
  await fsyncDir(dirname(file));
}
