import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, readlink, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  bulkCopyStagingOf,
  discardBulkCopyStaging,
  freshBulkCopyStaging,
  moveIntoStore,
} from '../src/bulk-copy-staging.ts';
import { testDir } from './harness.ts';

async function storeDir(): Promise<string> {
  const dir = await testDir('pfs-staging-');
  const store = join(dir, 'filestore');
  await mkdir(join(store, '.pfs'), { recursive: true });
  return store;
}

async function write(root: string, files: Record<string, string>): Promise<void> {
  for (const [path, text] of Object.entries(files)) {
    await mkdir(join(root, path, '..'), { recursive: true });
    await writeFile(join(root, path), text);
  }
}

describe('moveIntoStore', () => {
  it('moves a copy into the store, replacing nothing the store already has', async () => {
    const store = await storeDir();
    const { staging } = await freshBulkCopyStaging(store);
    await write(staging, {
      'new/1': 'copy',
      'new/deep/2': 'copy',
      'shared/theirs': 'copy',
      'shared/mine': 'copy',
      top: 'copy',
      'written-meanwhile': 'copy',
      'file-here/x': 'copy',
      'dir-here': 'copy',
    });
    await symlink('new/1', join(staging, 'link'));
    // Written into the store while the copy ran (this node as master of another partition).
    await write(store, {
      'shared/theirs': 'written here',
      'written-meanwhile': 'written here',
      'file-here': 'a file',
      'dir-here/y': 'a file in a directory',
    });
    const inode = (await stat(join(staging, 'new'))).ino;
    const kept = await moveIntoStore(staging, store);
    expect(kept.sort()).toEqual(['dir-here', 'file-here', 'shared/theirs', 'written-meanwhile']);
    // A symlink moves as the link itself (the store's walks skip it).
    expect(await readlink(join(store, 'link'))).toBe('new/1');
    // A directory the store lacked moved whole, in one rename.
    expect((await stat(join(store, 'new'))).ino).toBe(inode);
    for (const [path, text] of Object.entries({
      'new/1': 'copy',
      'new/deep/2': 'copy',
      'shared/mine': 'copy',
      top: 'copy',
      'shared/theirs': 'written here',
      'written-meanwhile': 'written here',
      'file-here': 'a file',
      'dir-here/y': 'a file in a directory',
    })) {
      expect(await readFile(join(store, path), 'utf8'), path).toBe(text);
    }
    // What is left in staging is what was not moved.
    expect((await readdir(staging)).sort()).toEqual(['dir-here', 'file-here', 'shared', 'written-meanwhile']);
  });
});

describe('discardBulkCopyStaging', () => {
  it('sets the staging directory aside at once and removes it and earlier ones in the background', async () => {
    const store = await storeDir();
    // One an earlier removal did not finish.
    await write(join(store, '.pfs', 'bulk-copy.discarded.1.2.abc'), { 'x/y': 'left over' });
    const first = await freshBulkCopyStaging(store);
    await first.removed;
    expect(await readdir(join(store, '.pfs'))).toEqual(['bulk-copy']);
    await write(first.staging, { 'a/.b.Xy12Ab': 'half a file', 'a/c': 'whole' });
    const { removed } = await discardBulkCopyStaging(store);
    expect(existsSync(bulkCopyStagingOf(store))).toBe(false);
    await removed;
    expect(await readdir(join(store, '.pfs'))).toEqual([]);
    // Nothing to discard: fine.
    await (await discardBulkCopyStaging(store)).removed;
  });

  it('makes a fresh staging directory empty, whatever an earlier copy left there', async () => {
    const store = await storeDir();
    await write(bulkCopyStagingOf(store), { 'a/.b.Xy12Ab': 'half a file' });
    const { staging, removed } = await freshBulkCopyStaging(store);
    expect(await readdir(staging)).toEqual([]);
    await removed;
    expect(await readdir(join(store, '.pfs'))).toEqual(['bulk-copy']);
  });
});
