import type { FileHandle } from 'node:fs/promises';
import fsPromises, { mkdir, mkdtemp, open, readFile, rm, rmdir, writeFile } from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deleteFile, initStore, stageFile } from '@pfs/filestore';
import { afterEach, describe, expect, it, vi } from 'vitest';

const dirs: string[] = [];
afterEach(async () => {
  vi.restoreAllMocks();
  syncBuiltinESMExports();
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

async function store(): Promise<string> {
  const root = join(await mkdtemp(join(tmpdir(), 'pfs-after-')), 'store');
  dirs.push(join(root, '..'));
  await initStore(root);
  return root;
}

/** Makes every fsync of a directory fail with `code` while `during` runs. */
async function failingDirectorySyncs<T>(root: string, code: string, during: () => Promise<T>): Promise<T> {
  const probe = await open(join(root, '.pfs'), 'r');
  const prototype = Object.getPrototypeOf(probe) as FileHandle;
  await probe.close();
  const { sync } = prototype;
  vi.spyOn(prototype, 'sync').mockImplementation(async function (this: FileHandle) {
    if ((await this.stat()).isDirectory())
      throw Object.assign(new Error(`${code}: directory fsync`), { code });
    return sync.call(this);
  });
  try {
    return await during();
  } finally {
    vi.restoreAllMocks();
  }
}

describe('a change that is in place when something after it fails', () => {
  it('is reported as NOT_DURABLE, not as a put that replaced nothing', async () => {
    const root = await store();
    const staged = await stageFile(root, 'a.txt', Buffer.from('new bytes'));
    const error = await failingDirectorySyncs(root, 'ENOSPC', () => staged.commit().catch((e: unknown) => e));
    expect(error).toMatchObject({
      code: 'NOT_DURABLE',
      message:
        '"a.txt" was put in place, but making that durable failed (ENOSPC: directory fsync): it may not survive a crash',
    });
    expect(await readFile(join(root, 'a.txt'), 'utf8')).toBe('new bytes');
  });

  it('is reported as NOT_DURABLE for a delete too', async () => {
    const root = await store();
    await writeFile(join(root, 'a.txt'), 'old');
    const error = await failingDirectorySyncs(root, 'EIO', () =>
      deleteFile(root, 'a.txt').catch((e: unknown) => e),
    );
    expect(error).toMatchObject({ code: 'NOT_DURABLE' });
    await expect(readFile(join(root, 'a.txt'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('a delete syncs the nearest directory still there when a put replaced its emptied parent with a file', async () => {
    const root = await store();
    await mkdir(join(root, 'a'));
    await writeFile(join(root, 'a', 'b'), 'under a');
    const { unlink } = fsPromises;
    // Another partition's put of `a` runs right after the unlink: it removes the empty `a/`
    // and puts its file there.
    vi.spyOn(fsPromises, 'unlink').mockImplementation(async (path) => {
      await unlink(path);
      if (path === join(root, 'a', 'b')) {
        await rmdir(join(root, 'a'));
        await writeFile(join(root, 'a'), 'a file now');
      }
    });
    syncBuiltinESMExports();
    await deleteFile(root, 'a/b');
    expect(await readFile(join(root, 'a'), 'utf8')).toBe('a file now');
  });
});
