import { link, lstat, mkdir, readdir, rename, rm, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { STORE_META_DIR } from '@pfs/filestore';

/**
 * A new replica's bulk copy is received into `<store>/.pfs/bulk-copy/` and moved into the store
 * only once it is complete. rsync writes each file beside its target under a temp name (a
 * `--temp-dir` shared by 50 000 new files made the copy 2–3× slower: ext4 allocates each new
 * inode near its directory's); a SIGKILLed rsync leaves that temp file behind, and in the store
 * nothing would tell it from a user's `.bashrc.backup`. Under `.pfs/` nothing walks, watches or
 * logs it, and a copy that does not complete is thrown away whole.
 */
export function bulkCopyStagingOf(fileStoreDir: string): string {
  return join(fileStoreDir, STORE_META_DIR, 'bulk-copy');
}

const DISCARDED_PREFIX = 'bulk-copy.discarded.';

/** Creates an empty staging directory; one left by an earlier copy is discarded first. */
export async function freshBulkCopyStaging(
  fileStoreDir: string,
): Promise<{ staging: string; removed: Promise<void> }> {
  const { removed } = await discardBulkCopyStaging(fileStoreDir);
  const staging = bulkCopyStagingOf(fileStoreDir);
  await mkdir(staging, { recursive: true });
  return { staging, removed };
}

/**
 * Renames the staging directory, if any, out of the way (`.pfs/bulk-copy.discarded.<…>`), and
 * resolves once that is done, with `removed`: the removal of it and of any set aside earlier,
 * which may take its time while a new copy starts (under `.pfs/`, nothing else looks at them).
 * Only while no copy writes into the staging directory.
 */
export async function discardBulkCopyStaging(fileStoreDir: string): Promise<{ removed: Promise<void> }> {
  const meta = join(fileStoreDir, STORE_META_DIR);
  const aside = `${DISCARDED_PREFIX}${Date.now()}.${process.pid}.${Math.random().toString(36).slice(2, 8)}`;
  try {
    await rename(bulkCopyStagingOf(fileStoreDir), join(meta, aside));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  const removed = (async () => {
    const names = await readdir(meta).catch(() => [] as string[]);
    await Promise.all(
      names
        .filter((name) => name.startsWith(DISCARDED_PREFIX))
        .map((name) => rm(join(meta, name), { recursive: true, force: true, maxRetries: 3 })),
    );
  })();
  return { removed };
}

/**
 * Moves what `staging` holds into `root` without replacing anything `root` has: a directory that
 * `root` lacks moves in one rename, one it has is merged entry by entry, and a file moves by
 * link() then unlink(), which fails rather than replace a file written there meanwhile (the
 * copy's bytes are then older). Resolves the paths (relative) left in `staging` because `root`
 * had something there.
 */
export async function moveIntoStore(staging: string, root: string, under = ''): Promise<string[]> {
  const kept: string[] = [];
  for (const name of await readdir(under === '' ? staging : join(staging, under))) {
    const path = under === '' ? name : `${under}/${name}`;
    const from = join(staging, path);
    const to = join(root, path);
    const info = await lstat(from);
    if (info.isDirectory()) {
      const there = await lstat(to).catch(() => undefined);
      if (there === undefined) {
        try {
          // Onto nothing, or onto an empty directory made meanwhile (which it replaces).
          await rename(from, to);
          continue;
        } catch (error) {
          const code = (error as NodeJS.ErrnoException).code;
          if (code !== 'ENOTEMPTY' && code !== 'EEXIST' && code !== 'ENOTDIR') throw error;
        }
      }
      const now = there ?? (await lstat(to).catch(() => undefined));
      if (now?.isDirectory() === true) kept.push(...(await moveIntoStore(staging, root, path)));
      else kept.push(path);
      continue;
    }
    try {
      await link(from, to);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') {
        kept.push(path);
        continue;
      }
      throw error;
    }
    await unlink(from);
  }
  return kept;
}
