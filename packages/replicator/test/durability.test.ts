import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { directoriesToSync, fsyncParents, syncFileSystem } from '../src/durability.ts';
import { testDir } from './harness.ts';

describe('fsyncParents', () => {
  it("syncs each path's parent and every ancestor up to the store, each once", () => {
    expect(directoriesToSync('/s', ['a/b/c/photo.jpg', 'a/x', 'a/b/y', 'top']).sort()).toEqual([
      '/s',
      '/s/a',
      '/s/a/b',
      '/s/a/b/c',
    ]);
    expect(directoriesToSync('/s', [])).toEqual([]);
  });

  it('skips a directory that is gone, and fails on one it cannot open', async () => {
    const root = await testDir('pfs-durability-');
    await mkdir(join(root, 'here'));
    await writeFile(join(root, 'here', 'x'), 'x');
    await writeFile(join(root, 'file'), 'f');
    await expect(fsyncParents(root, ['here/x', 'gone/x', 'file/x'])).resolves.toBeUndefined();
    // A directory whose fsync cannot be done must not pass for one that was.
    await symlink('loop', join(root, 'loop'));
    await expect(fsyncParents(root, ['loop/x'])).rejects.toMatchObject({ code: 'ELOOP' });
  });
});

describe('syncFileSystem', () => {
  it('tells a sync that reported an error from one that could not run at all', async () => {
    const dir = await testDir('pfs-syncfs-');
    expect(await syncFileSystem(dir)).toBe('synced');
    const path = process.env.PATH;
    try {
      // No `sync` to run: nothing is known about the disk, and callers sync file by file.
      process.env.PATH = join(dir, 'empty');
      expect(await syncFileSystem(dir)).toBe('unavailable');
      // One that fails, as `sync -f` does after a writeback error.
      await mkdir(join(dir, 'bin'));
      await writeFile(join(dir, 'bin', 'sync'), '#!/bin/sh\nexit 1\n', { mode: 0o755 });
      process.env.PATH = join(dir, 'bin');
      expect(await syncFileSystem(dir)).toBe('failed');
    } finally {
      process.env.PATH = path;
    }
  });
});
