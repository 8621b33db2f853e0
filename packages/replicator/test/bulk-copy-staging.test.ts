import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  bulkCopyStagingOf,
  discardBulkCopyStaging,
  freshBulkCopyStaging,
  moveIntoStore,
} from '../src/bulk-copy-staging.ts';
import { tempDir } from './harness.ts';

const removals: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const remove of removals.splice(0)) await remove();
});

async function storeDir(): Promise<string> {
  const { dir, remove } = await tempDir('pfs-staging-');
  removals.push(remove);
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
    });
    // Written into the store while the copy ran (this node as master of another partition).
    await write(store, {
      'shared/theirs': 'written here',
      'written-meanwhile': 'written here',
      'file-here': 'a file',
    });
    const inode = (await stat(join(staging, 'new'))).ino;
    const kept = await moveIntoStore(staging, store);
    expect(kept.sort()).toEqual(['file-here', 'shared/theirs', 'written-meanwhile']);
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
    })) {
      expect(await readFile(join(store, path), 'utf8'), path).toBe(text);
    }
    // What is left in staging is what was not moved.
    expect((await readdir(staging)).sort()).toEqual(['file-here', 'shared', 'written-meanwhile']);
  });
});

describe('discardBulkCopyStaging', () => {
  it('sets the staging directory aside at once and removes it and earlier ones in the background', async () => {
    const store = await storeDir();
    const first = await freshBulkCopyStaging(store);
    await first.removed;
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
