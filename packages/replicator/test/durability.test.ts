import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { fsyncParents } from '../src/durability.ts';

const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

describe('fsyncParents', () => {
  it('skips a directory that is gone, and fails on one it cannot open', async () => {
    const root = await mkdtemp(join(tmpdir(), 'pfs-durability-'));
    dirs.push(root);
    await mkdir(join(root, 'here'));
    await writeFile(join(root, 'here', 'x'), 'x');
    await writeFile(join(root, 'file'), 'f');
    await expect(fsyncParents(root, ['here/x', 'gone/x', 'file/x'])).resolves.toBeUndefined();
    // A directory whose fsync cannot be done must not pass for one that was.
    await symlink('loop', join(root, 'loop'));
    await expect(fsyncParents(root, ['loop/x'])).rejects.toMatchObject({ code: 'ELOOP' });
  });
});
