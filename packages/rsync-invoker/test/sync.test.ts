import { readFileSync } from 'node:fs';
import { chmod, readdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { listTopLevel, type Progress, rsyncVersion, syncTree } from '@pfs/rsync-invoker';
import { startRsyncDaemon, stopAll } from '@pfs/testkit';
import { execa } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';
import { snapshot, tempDir, writeTree } from './helpers.ts';

afterAll(stopAll);

describe('syncTree', { timeout: 30_000 }, () => {
  it('copies a tree of 200 files from a daemon, reports progress, deletes extraneous files', async () => {
    const src = await tempDir();
    const files: Record<string, string> = {};
    for (let i = 0; i < 200; i++) files[`d${i % 10}/sub${i % 3}/f${i}.bin`] = `${i}`.repeat(i * 20 + 1);
    files['#odd name\n.txt'] = 'odd';
    files['skip.tmp'] = 'excluded';
    await writeTree(src, files);
    const daemon = await startRsyncDaemon({ modules: { store: src } });
    const dest = await tempDir();
    await writeTree(dest, { 'extraneous.txt': 'gone after sync', 'd0/stale.bin': 'x' });

    const events: Progress[] = [];
    const result = await syncTree({
      source: daemon.url('store'),
      dest,
      exclude: ['*.tmp'],
      onProgress: (p) => events.push(p),
    });
    expect(result).toMatchObject({ exitCode: 0, vanished: false });
    expect(events.length).toBeGreaterThan(0);
    expect(events.at(-1)).toMatchObject({ percent: 100, total: expect.any(Number) });
    expect(result.lastProgress).toEqual(events.at(-1));

    const expected = await snapshot(src);
    expected.delete(Buffer.from('skip.tmp').toString('hex'));
    expect(await snapshot(dest)).toEqual(expected);
  });

  it("reports the newest progress line of a piece of output, even when a later line holds a '%'", async () => {
    // A stand-in for rsync printing, in one write, its last progress line and then the itemized
    // line of a directory whose name holds a '%'.
    const dir = await tempDir();
    const fake = join(dir, 'fake-rsync');
    await writeFile(
      fake,
      "#!/bin/sh\nprintf '      1,000 100%%    1.00MB/s    0:00:01 (xfr#1, to-chk=0/2)\\ncd+++++++++ 0 a%%20b/\\n'\n",
    );
    await chmod(fake, 0o755);
    const events: Progress[] = [];
    const result = await syncTree({
      source: 'rsync://127.0.0.1:1/unused/',
      dest: await tempDir(),
      rsyncBin: fake,
      onProgress: (p) => events.push(p),
    });
    expect(events).toEqual([
      expect.objectContaining({ bytes: 1000, percent: 100, transferredFiles: 1, total: 2 }),
    ]);
    expect(result.lastProgress).toEqual(events[0]);
  });

  it('says when each received file is in place, exactly once, odd names included', async () => {
    const src = await tempDir();
    const files: Record<string, string> = {};
    for (let i = 0; i < 300; i++) files[`d${i % 7}/f${i}.bin`] = `${i}:`.repeat(i * 50 + 1);
    files['#odd name\n.txt'] = 'odd';
    files['-dash\r.bin'] = 'dash';
    await writeTree(src, files);
    const daemon = await startRsyncDaemon({ modules: { store: src } });
    const dest = await tempDir();
    const seen: string[] = [];
    const wrong: string[] = [];
    await syncTree({
      source: daemon.url('store'),
      dest,
      fsync: false,
      onFileInPlace: (path) => {
        seen.push(path);
        // Checked synchronously, inside the callback: the file must already be whole.
        let content: string | undefined;
        try {
          content = readFileSync(join(dest, path), 'utf8');
        } catch {}
        if (content !== files[path]) wrong.push(path);
      },
    });
    expect(wrong).toEqual([]);
    expect(seen.sort()).toEqual(Object.keys(files).sort());
  });

  it('lists the top of a source, then copies disjoint parts of it side by side', async () => {
    const src = await tempDir();
    const files: Record<string, string> = {};
    for (let i = 0; i < 120; i++) files[`d${i % 6}/sub${i % 2}/f${i}.bin`] = `${i}`.repeat(i + 1);
    files['#odd name\n.txt'] = 'odd';
    files['top.bin'] = 'top';
    files['skip.tmp'] = 'excluded';
    await writeTree(src, files);
    const daemon = await startRsyncDaemon({ modules: { store: src } });
    const listed = await listTopLevel({ source: daemon.url('store'), exclude: ['*.tmp'] });
    expect(listed.map((e) => `${e.kind} ${e.name}`).sort()).toEqual([
      'directory d0',
      'directory d1',
      'directory d2',
      'directory d3',
      'directory d4',
      'directory d5',
      'file #odd name\n.txt',
      'file top.bin',
    ]);
    const dest = await tempDir();
    const inPlace: string[] = [];
    const names = listed.map((e) => e.name);
    await Promise.all(
      [names.filter((_, i) => i % 2 === 0), names.filter((_, i) => i % 2 === 1)].map((only) =>
        syncTree({
          source: daemon.url('store'),
          dest,
          exclude: ['*.tmp'],
          only,
          onFileInPlace: (path) => inPlace.push(path),
        }),
      ),
    );
    const expected = await snapshot(src);
    expected.delete(Buffer.from('skip.tmp').toString('hex'));
    expect(await snapshot(dest)).toEqual(expected);
    expect(inPlace).toHaveLength(122);
    expect(new Set(inPlace).size).toBe(122);
    // An entry removed at the source after it was listed is no failure.
    const later = await tempDir();
    await syncTree({ source: daemon.url('store'), dest: later, only: ['d0', 'gone since the listing'] });
    expect((await snapshot(later)).size).toBeGreaterThan(0);
  });

  it('works from a local directory and is a no-op the second time', async () => {
    const src = await tempDir();
    await writeTree(src, ['a', 'b/c']);
    const dest = await tempDir();
    await syncTree({ source: src, dest });
    await writeFile(join(src, 'a'), 'changed size');
    const again = await syncTree({ source: src, dest });
    expect(again.exitCode).toBe(0);
    expect(await readFile(join(dest, 'a'), 'utf8')).toBe('changed size');
    expect(await snapshot(dest)).toEqual(await snapshot(src));
  });

  it('copies regular files and directories only: no symlink, FIFO or device', async () => {
    const src = await tempDir();
    await writeTree(src, ['d/kept.txt']);
    await symlink('/etc', join(src, 'd', 'etc'));
    await symlink('kept.txt', join(src, 'd', 'link.txt'));
    await execa('mkfifo', [join(src, 'fifo')]);
    const daemon = await startRsyncDaemon({ modules: { store: src } });
    const dest = await tempDir();
    await syncTree({ source: daemon.url('store'), dest });
    const entries = await readdir(dest, { recursive: true, withFileTypes: true });
    const kinds = entries.map(
      (e) =>
        `${join(relative(dest, e.parentPath), e.name)} ${e.isFile() ? 'file' : e.isDirectory() ? 'dir' : 'other'}`,
    );
    expect(kinds.sort()).toEqual(['d dir', 'd/kept.txt file']);
  });

  it('fails after rsync ends if onProgress throws', async () => {
    const src = await tempDir();
    await writeTree(src, ['a']);
    const boom = new Error('boom');
    await expect(
      syncTree({
        source: src,
        dest: await tempDir(),
        onProgress: () => {
          throw boom;
        },
      }),
    ).rejects.toBe(boom);
  });
});

describe('rsyncVersion', () => {
  it('reports the installed version', async () => {
    const { stdout } = await execa('rsync', ['--version']);
    const version = await rsyncVersion();
    expect(version).toMatch(/^\d+\.\d+\.\d+/);
    expect(stdout.split('\n')[0]).toContain(`version ${version}`);
  });
});
