import { execFileSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type FilestoreError, initStore, putFile } from '@pfs/filestore';
import { afterEach, describe, expect, it } from 'vitest';

// A real full disk: a 1 MiB tmpfs (the suite runs as root, as CI does).
let mountPoint: string | undefined;
afterEach(async () => {
  if (mountPoint === undefined) return;
  execFileSync('umount', [mountPoint]);
  await rm(mountPoint, { recursive: true, force: true });
  mountPoint = undefined;
});

describe('a full disk', () => {
  it('fails the put with DISK_FULL, keeps the old content and leaves no temp file', async () => {
    expect(process.getuid?.(), 'this test mounts a tmpfs and must run as root').toBe(0);
    const dir = await mkdtemp(join(tmpdir(), 'pfs-full-'));
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', dir]);
    } catch (error) {
      await rm(dir, { recursive: true, force: true });
      throw error;
    }
    // Unmounted after the test only once mounted.
    mountPoint = dir;
    const root = join(mountPoint, 'store');
    await initStore(root);
    await putFile(root, 'keep.txt', Buffer.from('precious'));
    const error = (await putFile(root, 'keep.txt', Buffer.alloc(2 * 1024 * 1024, 1)).catch(
      (e) => e,
    )) as FilestoreError;
    expect(error.code).toBe('DISK_FULL');
    expect(error.message).toBe('disk full while writing "keep.txt": free space; nothing was replaced');
    expect(await readFile(join(root, 'keep.txt'), 'utf8')).toBe('precious');
    expect((await readdir(root)).sort()).toEqual(['.pfs', 'keep.txt']);
    await putFile(root, 'small.txt', Buffer.from('fits again'));
  });
});
