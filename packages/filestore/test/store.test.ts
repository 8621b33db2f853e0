import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import {
  compareStorePaths,
  deleteFile,
  escapeNameBytes,
  type FilestoreError,
  hashFile,
  initStore,
  listStore,
  openStoreFile,
  putFile,
  quarantineFile,
  SENTINEL_FILE,
  stageFile,
  statFile,
  walkStore,
} from '@pfs/filestore';
import { afterEach, describe, expect, it } from 'vitest';
import { oddNames } from './odd-names.ts';

const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});
async function store(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'pfs-store-'));
  dirs.push(dir);
  await initStore(dir);
  return dir;
}
async function codeOf(promise: Promise<unknown>): Promise<string> {
  const error = (await promise.then(
    () => undefined,
    (e) => e,
  )) as FilestoreError | undefined;
  return error?.code ?? 'no error';
}
async function* chunks(...parts: string[]) {
  for (const part of parts) yield Buffer.from(part);
}
const sha = (text: string) => createHash('sha256').update(text).digest('hex');

describe('file store', () => {
  it('skips names that are not UTF-8 in a walk, telling where each is', async () => {
    const root = await store();
    const latin1 = Buffer.from([0x63, 0x61, 0x66, 0xe9]); // "café" in Latin-1
    const inRoot = Buffer.concat([Buffer.from(`${root}/`), latin1]);
    await writeFile(inRoot, 'unnamable');
    await mkdir(join(root, 'd'));
    await mkdir(Buffer.concat([Buffer.from(`${root}/d/`), latin1]));
    await writeFile(Buffer.concat([Buffer.from(`${root}/d/`), latin1, Buffer.from('/inside')]), 'x');
    await putFile(root, 'd/ok', Buffer.from('ok'));
    // UTF-8 names beside them, read the same way: a leading BOM kept, a U+FFFD of their own.
    await putFile(root, '\uFEFFbom', Buffer.from('b'));
    await putFile(root, 'caf\uFFFD', Buffer.from('r'));
    const told: [string, string][] = [];
    const listed: string[] = [];
    for await (const entry of walkStore(root, '', {
      onNameNotUtf8: (under, name) => told.push([under, escapeNameBytes(name)]),
    }))
      listed.push(entry.path);
    expect(listed.sort()).toEqual(['caf\uFFFD', 'd/ok', '\uFEFFbom']);
    const page = await listStore(root, { limit: 10 });
    expect(page.entries.map((e) => e.path).sort()).toEqual(['caf\uFFFD', 'd/ok', '\uFEFFbom']);
    expect(told).toEqual([
      ['', 'caf\\xe9'],
      ['d', 'caf\\xe9'],
    ]);
    expect(escapeNameBytes(Buffer.from("a\\b\n\u00e9'"))).toBe('a\\x5cb\\x0a\\xc3\\xa9\\x27');
  });

  it('round-trips every accepted odd name byte for byte, then deletes it', async () => {
    const root = await store();
    for (const name of oddNames.accept) {
      const put = await putFile(root, name, Buffer.from(`content of ${name}`));
      expect(put.sha256).toBe(sha(`content of ${name}`));
      expect(await readFile(join(root, name), 'utf8')).toBe(`content of ${name}`);
    }
    const listed = [];
    for await (const entry of walkStore(root)) listed.push(entry.path);
    expect(listed.sort()).toEqual([...oddNames.accept].sort());
    for (const name of oddNames.accept) await deleteFile(root, name);
    const left = [];
    for await (const entry of walkStore(root)) left.push(entry.path);
    expect(left).toEqual([]);
  });

  it('refuses every rejected name and stores nothing', async () => {
    const root = await store();
    for (const { path } of oddNames.reject) {
      expect(await codeOf(putFile(root, path, Buffer.from('x')))).toMatch(/^PATH_/);
    }
    expect((await readdir(root)).sort()).toEqual(['.pfs']);
  });

  it('replaces a file atomically from a stream and reports size, hash and mtime', async () => {
    const root = await store();
    await putFile(root, 'dir/a.txt', Buffer.from('old'));
    const staged = await stageFile(root, 'dir/a.txt', chunks('new ', 'content'));
    expect(await readFile(join(root, 'dir/a.txt'), 'utf8')).toBe('old');
    expect(staged).toMatchObject({ size: 11n, sha256: sha('new content') });
    const info = await staged.commit();
    expect(info.size).toBe(11n);
    expect(info.mtimeNs).toBeGreaterThan(0n);
    expect(await readFile(join(root, 'dir/a.txt'), 'utf8')).toBe('new content');
    expect(await readdir(join(root, 'dir'))).toEqual(['a.txt']);
    expect(await hashFile(root, 'dir/a.txt')).toEqual({ sha256: sha('new content'), size: 11n });
    expect(await statFile(root, 'dir/a.txt')).toMatchObject({ size: 11n });
    expect(await statFile(root, 'dir/none')).toBeUndefined();
  });

  it('accepts an empty file', async () => {
    const root = await store();
    const put = await putFile(root, 'empty', Buffer.alloc(0));
    expect(put.size).toBe(0n);
    expect(put.sha256).toBe(sha(''));
  });

  it('leaves no temp file and the old content when a write fails', async () => {
    const root = await store();
    await putFile(root, 'a', Buffer.from('keep'));
    expect(await codeOf(putFile(root, 'a', chunks('123', '456'), { maxBytes: 4 }))).toBe('FILE_TOO_LARGE');
    expect(await codeOf(putFile(root, 'a', Buffer.from('x'), { expectedSha256: sha('y') }))).toBe(
      'CONTENT_MISMATCH',
    );
    const controller = new AbortController();
    controller.abort();
    expect(await codeOf(putFile(root, 'a', chunks('z'), { signal: controller.signal }))).toBe('ABORTED');
    async function* broken() {
      yield Buffer.from('partial');
      throw new Error('client went away');
    }
    await expect(putFile(root, 'a', broken())).rejects.toThrow('client went away');
    expect(await readFile(join(root, 'a'), 'utf8')).toBe('keep');
    expect((await readdir(root)).sort()).toEqual(['.pfs', 'a']);
  });

  it('never writes or deletes through a symlink', async () => {
    const root = await store();
    const outside = await mkdtemp(join(tmpdir(), 'pfs-outside-'));
    dirs.push(outside);
    await writeFile(join(outside, 'victim'), 'safe');
    await symlink(outside, join(root, 'link'));
    expect(await codeOf(putFile(root, 'link/victim', Buffer.from('pwned')))).toBe('PATH_THROUGH_SYMLINK');
    expect(await codeOf(putFile(root, 'link/new', Buffer.from('x')))).toBe('PATH_THROUGH_SYMLINK');
    expect(await codeOf(deleteFile(root, 'link/victim'))).toBe('PATH_THROUGH_SYMLINK');
    expect(await readFile(join(outside, 'victim'), 'utf8')).toBe('safe');
    expect(await readdir(outside)).toEqual(['victim']);
    await symlink(join(outside, 'victim'), join(root, 'file-link'));
    expect(await hashFile(root, 'file-link')).toBeUndefined();
  });

  it('never reads through a symlinked directory, nor waits on a FIFO', async () => {
    const root = await store();
    const outside = await mkdtemp(join(tmpdir(), 'pfs-outside-'));
    dirs.push(outside);
    await writeFile(join(outside, 'secret'), 'not in the store');
    await symlink(outside, join(root, 'etc'));
    expect(await openStoreFile(root, 'etc/secret')).toBeUndefined();
    expect(await hashFile(root, 'etc/secret')).toBeUndefined();
    execFileSync('mkfifo', [join(root, 'pipe')]);
    expect(await openStoreFile(root, 'pipe')).toBeUndefined();
    // A name that looks like what the kernel appends to a deleted file's path is still a name.
    await putFile(root, 'd/photo (deleted)', Buffer.from('kept'));
    const opened = await openStoreFile(root, 'd/photo (deleted)');
    expect(opened?.stat.size).toBe(4n);
    await opened?.handle.close();
  });

  it('notices a parent replaced by a symlink after puts went through it', async () => {
    const root = await store();
    await putFile(root, 'x/y/first', Buffer.from('1'));
    const outside = await mkdtemp(join(tmpdir(), 'pfs-outside-'));
    dirs.push(outside);
    await rm(join(root, 'x', 'y'), { recursive: true });
    await symlink(outside, join(root, 'x', 'y'));
    expect(await codeOf(putFile(root, 'x/y/second', Buffer.from('2')))).toBe('PATH_THROUGH_SYMLINK');
    expect(await readdir(outside)).toEqual([]);
  });

  it('works in a store whose own path goes through a symlink', async () => {
    const real = await store();
    const alias = join(await mkdtemp(join(tmpdir(), 'pfs-alias-')), 'store');
    dirs.push(dirname(alias));
    await symlink(real, alias);
    await putFile(alias, 'p/q/one', Buffer.from('1'));
    await putFile(alias, 'p/q/two', Buffer.from('2'));
    expect((await readdir(join(real, 'p', 'q'))).sort()).toEqual(['one', 'two']);
  });

  it('resolves a symlinked store path afresh on every put', async () => {
    const first = await store();
    const second = await store();
    const alias = join(await mkdtemp(join(tmpdir(), 'pfs-alias-')), 'store');
    dirs.push(dirname(alias));
    await symlink(first, alias);
    await putFile(alias, 'a/one', Buffer.from('1'));
    // The alias now leads to another store, whose "a" is a symlink back into the first one.
    await rm(alias);
    await symlink(second, alias);
    await symlink(join(first, 'a'), join(second, 'a'));
    expect(await codeOf(putFile(alias, 'a/two', Buffer.from('2')))).toBe('PATH_THROUGH_SYMLINK');
    expect(await readdir(join(first, 'a'))).toEqual(['one']);
  });

  it('names conflicts between files and directories', async () => {
    const root = await store();
    await putFile(root, 'a', Buffer.from('file'));
    expect(await codeOf(putFile(root, 'a/b', Buffer.from('x')))).toBe('PATH_CONFLICT');
    await putFile(root, 'dir/file', Buffer.from('x'));
    const nested = (await putFile(root, 'dir/file/below', Buffer.from('x')).catch((e) => e)) as Error;
    expect(nested.message).toBe('cannot write "dir/file/below": "dir/file" is a file, not a directory');
    await mkdir(join(root, 'd', 'e'), { recursive: true });
    await writeFile(join(root, 'd', 'e', 'f'), 'a file below');
    expect(await codeOf(putFile(root, 'd/e', Buffer.from('x')))).toBe('PATH_IS_DIRECTORY');
    expect((await readdir(join(root, 'd'))).sort()).toEqual(['e']);
    expect(await codeOf(putFile(root, 'd', Buffer.from('x')))).toBe('PATH_IS_DIRECTORY');
    expect(await codeOf(deleteFile(root, 'd'))).toBe('PATH_IS_DIRECTORY');
    expect(await codeOf(deleteFile(root, 'missing'))).toBe('NOT_FOUND');
  });

  it('puts a file in place of a directory holding no file, as deleting the last files under it leaves', async () => {
    const root = await store();
    await putFile(root, 'a/b/c/d', Buffer.from('below'));
    await putFile(root, 'a/b/e', Buffer.from('beside'));
    await deleteFile(root, 'a/b/c/d');
    await deleteFile(root, 'a/b/e');
    expect(await readdir(join(root, 'a', 'b'))).toEqual(['c']);
    await putFile(root, 'a/b', Buffer.from('file'));
    expect(await readFile(join(root, 'a', 'b'), 'utf8')).toBe('file');
    // Not a directory that still holds a file, however deep.
    await putFile(root, 'x/y/z', Buffer.from('kept'));
    const error = (await putFile(root, 'x', Buffer.from('file')).catch((e) => e)) as FilestoreError;
    expect(error.code).toBe('PATH_IS_DIRECTORY');
    expect(error.message).toBe(
      'cannot replace directory "x" with a file: it is not empty; delete the files under it first',
    );
    expect(await readFile(join(root, 'x', 'y', 'z'), 'utf8')).toBe('kept');
    // The refused put left no temp file beside it.
    expect((await readdir(root)).filter((name) => name.startsWith('.pfs-tmp'))).toEqual([]);
  });

  it('names a path too long for the file system under its store directory', async () => {
    // A store directory of ~3300 bytes: with a 1000-byte path, over Linux's 4095.
    const root = join(await store(), ...Array.from({ length: 13 }, (_, i) => `${i}`.padEnd(250, 'r')));
    await mkdir(root, { recursive: true });
    const path = `${'d'.repeat(250)}/`.repeat(3) + 'f'.repeat(240);
    const error = (await putFile(root, path, Buffer.from('x')).catch((e) => e)) as FilestoreError;
    expect(error.code).toBe('PATH_TOO_LONG');
    expect(error.message).toMatch(
      / with this node's store directory is too long for the file system: use a shorter path$/,
    );
    // No such file can be there: a read finds none, rather than failing.
    expect(await openStoreFile(root, path)).toBeUndefined();
  });

  it('keeps its sentinel and hides internal files from the walk', async () => {
    const root = await store();
    await initStore(root);
    expect(await readFile(join(root, SENTINEL_FILE), 'utf8')).toContain('pfs');
    await writeFile(join(root, '.pfs-tmp.leftover'), 'x');
    await putFile(root, 'x', Buffer.from('1'));
    const seen = [];
    for await (const entry of walkStore(root)) seen.push(entry.path);
    expect(seen).toEqual(['x']);
  });

  it('removes, when asked, the temp files of writes older than a time, and only those', async () => {
    const root = await store();
    await putFile(root, 'album/kept.jpg', Buffer.from('data'));
    const hourAgo = new Date(Date.now() - 3_600_000);
    for (const path of ['.pfs-tmp.old1', 'album/.pfs-tmp.old2']) {
      await writeFile(join(root, path), 'half a write');
      await utimes(join(root, path), hourAgo, hourAgo);
    }
    await writeFile(join(root, 'album/.pfs-tmp.current'), 'a write in progress');
    // Internal files that are not temp files stay, however old.
    await utimes(join(root, SENTINEL_FILE), hourAgo, hourAgo);
    const removed: [string, bigint][] = [];
    const seen: string[] = [];
    const before = Date.now() - 60_000;
    for await (const entry of walkStore(root, '', {
      staleTempFiles: { before, onRemoved: (path, size) => removed.push([path, size]) },
    }))
      seen.push(entry.path);
    expect(seen).toEqual(['album/kept.jpg']);
    expect(removed.sort()).toEqual([
      ['.pfs-tmp.old1', 12n],
      ['album/.pfs-tmp.old2', 12n],
    ]);
    expect((await readdir(join(root, 'album'))).sort()).toEqual(['.pfs-tmp.current', 'kept.jpg']);
    expect(await readFile(join(root, SENTINEL_FILE), 'utf8')).toContain('pfs');
    // Without the option, a walk removes nothing.
    await writeFile(join(root, '.pfs-tmp.old3'), 'x');
    await utimes(join(root, '.pfs-tmp.old3'), hourAgo, hourAgo);
    for await (const _ of walkStore(root));
    expect(await readdir(root)).toContain('.pfs-tmp.old3');
  });

  it('walks regular files only, in order, whatever changes behind it', async () => {
    const root = await store();
    const outside = await mkdtemp(join(tmpdir(), 'pfs-outside-'));
    dirs.push(outside);
    await writeFile(join(outside, 'secret'), 'not in the store');
    // More entries than the walk takes between two turns of the event loop.
    const many = Array.from({ length: 600 }, (_, i) => `many/f${String(i).padStart(3, '0')}`);
    for (const name of ['a/x', 'b/y', 'c/z', 'd/w', ...many]) await putFile(root, name, Buffer.from(name));
    await symlink(join(outside, 'secret'), join(root, 'link-to-file'));
    await symlink(outside, join(root, 'link-to-dir'));
    execFileSync('mkfifo', [join(root, 'fifo')]);
    const walked: string[] = [];
    // The walk lets the event loop turn within a large directory.
    let turned = false;
    let turnedBy: string | undefined;
    for await (const entry of walkStore(root)) {
      walked.push(entry.path);
      if (entry.path === 'many/f000') setImmediate(() => (turned = true));
      if (turned && turnedBy === undefined) turnedBy = entry.path;
      if (entry.path === 'a/x') {
        // Behind the walk: a directory becomes a symlink out of the store, another a file.
        await rm(join(root, 'b'), { recursive: true });
        await symlink(outside, join(root, 'b'));
        await rm(join(root, 'c'), { recursive: true });
        await writeFile(join(root, 'c'), 'now a file');
      }
    }
    expect(walked).toEqual(['a/x', 'c', 'd/w', ...many]);
    expect(many.indexOf(turnedBy!)).toBeGreaterThan(0);
    expect(many.indexOf(turnedBy!)).toBeLessThan(300);
    // A directory that is a file by the time the walk gets to it has nothing in it.
    const underFile = [];
    for await (const entry of walkStore(root, 'c')) underFile.push(entry.path);
    expect(underFile).toEqual([]);
  });

  it('quarantines by moving, never deleting', async () => {
    const root = await store();
    const quarantine = await mkdtemp(join(tmpdir(), 'pfs-q-'));
    dirs.push(quarantine);
    await putFile(root, 'dir/new\nline', Buffer.from('divergent'));
    const moved = await quarantineFile(root, join(quarantine, '3'), 'dir/new\nline');
    expect(moved).toBe(join(quarantine, '3', 'dir/new\nline'));
    expect(await readFile(moved!, 'utf8')).toBe('divergent');
    expect(await statFile(root, 'dir/new\nline')).toBeUndefined();
    expect(await quarantineFile(root, join(quarantine, '3'), 'absent')).toBeUndefined();
    await putFile(root, 'dir/new\nline', Buffer.from('second'));
    const again = await quarantineFile(root, join(quarantine, '3'), 'dir/new\nline');
    expect(again).toBe(join(quarantine, '3', 'dir/new\nline.1'));
    expect(await readFile(moved!, 'utf8')).toBe('divergent');
  });
});

describe('listStore', () => {
  it('pages through a prefix in walk order with a cursor', async () => {
    const root = await store();
    const names = [
      'a.txt',
      'a/b',
      'a/c/d',
      'photos/2024/x.jpg',
      'photos/2024/y.jpg',
      'photos/2025/z.jpg',
      'photo-booth',
      'z',
    ];
    for (const name of names) await putFile(root, name, Buffer.from(name));
    const all = [];
    let after: string | undefined;
    for (;;) {
      const page = await listStore(root, { limit: 3, ...(after === undefined ? {} : { after }) });
      all.push(...page.entries.map((e) => e.path));
      if (page.next === undefined) break;
      after = page.next;
    }
    const walked = [];
    for await (const entry of walkStore(root)) walked.push(entry.path);
    expect(all).toEqual(walked);
    expect([...all].sort(compareStorePaths)).toEqual(all);
    const photos = await listStore(root, { prefix: 'photos/', limit: 2 });
    expect(photos.entries.map((e) => e.path)).toEqual(['photos/2024/x.jpg', 'photos/2024/y.jpg']);
    const rest = await listStore(root, { prefix: 'photos/', limit: 2, after: photos.next! });
    expect(rest).toMatchObject({ next: undefined });
    expect(rest.entries.map((e) => e.path)).toEqual(['photos/2025/z.jpg']);
    expect((await listStore(root, { prefix: 'photo', limit: 10 })).entries.map((e) => e.path)).toEqual([
      'photo-booth',
      'photos/2024/x.jpg',
      'photos/2024/y.jpg',
      'photos/2025/z.jpg',
    ]);
  });

  it('takes a fractional or non-positive limit as a whole number of at least one', async () => {
    const root = await store();
    for (const name of ['a', 'b', 'c']) await putFile(root, name, Buffer.from(name));
    const fractional = await listStore(root, { limit: 1.5 });
    expect(fractional).toMatchObject({ next: 'a' });
    expect(fractional.entries.map((e) => e.path)).toEqual(['a']);
    expect((await listStore(root, { limit: 0 })).entries.map((e) => e.path)).toEqual(['a']);
  });
});
