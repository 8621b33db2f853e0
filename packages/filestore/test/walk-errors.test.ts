import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';

// An lstat that fails with EIO for one path: what a failing disk (or, for a user other than
// root, a directory without its execute bit) gives, and what no test as root can make happen.
const failing = { path: '' };
vi.mock('node:fs', async (importOriginal) => {
  const fs = await importOriginal<typeof import('node:fs')>();
  const lstatSync = ((path: string, options?: object) => {
    if (path === failing.path)
      throw Object.assign(new Error(`EIO: i/o error, lstat '${path}'`), { code: 'EIO' });
    return fs.lstatSync(path, options as never);
  }) as typeof fs.lstatSync;
  return { ...fs, default: { ...fs, lstatSync }, lstatSync };
});

const { listStore, walkStore } = await import('../src/walk.ts');

const dirs: string[] = [];
afterEach(async () => {
  failing.path = '';
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

describe('a store walk that cannot stat an entry', () => {
  it('fails with the error instead of skipping the entry as if it were gone', async () => {
    const root = await mkdtemp(join(tmpdir(), 'pfs-walk-errors-'));
    dirs.push(root);
    for (const name of ['a', 'b', 'c']) await writeFile(join(root, name), name);
    const walked = async () => {
      const paths: string[] = [];
      for await (const entry of walkStore(root)) paths.push(entry.path);
      return paths;
    };
    expect(await walked()).toEqual(['a', 'b', 'c']);
    failing.path = join(root, 'b');
    await expect(walked()).rejects.toMatchObject({ code: 'EIO' });
    await expect(listStore(root, { limit: 10 })).rejects.toMatchObject({ code: 'EIO' });
  });
});
