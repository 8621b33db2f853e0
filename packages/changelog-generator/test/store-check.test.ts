import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ChangelogGenerator,
  findUnloggedChanges,
  findUnloggedChangesOf,
  type LogCheckOutcome,
} from '@pfs/changelog-generator';
import { hashFile, initStore, stageFile } from '@pfs/filestore';
import { TxLog } from '@pfs/txlog';
import { afterEach, describe, expect, it, vi } from 'vitest';

// hashFile as it is, unless a test makes it fail or act for one path.
vi.mock('@pfs/filestore', async (importOriginal) => {
  const actual = await importOriginal<typeof import('@pfs/filestore')>();
  return { ...actual, hashFile: vi.fn(actual.hashFile) };
});
const realHashFile = (await vi.importActual<typeof import('@pfs/filestore')>('@pfs/filestore')).hashFile;
afterEach(() => {
  vi.mocked(hashFile).mockImplementation(realHashFile);
});

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const sha = (text: string) => createHash('sha256').update(text).digest('hex');

/** A store and the log of its one partition, mastered by a generator (removed after the test). */
async function masterStore() {
  const base = await mkdtemp(join(tmpdir(), 'pfs-check-'));
  const root = join(base, 'filestore');
  await initStore(root);
  const log = await TxLog.open(join(base, 'changelog'));
  cleanups.push(async () => {
    await log.close();
    await rm(base, { recursive: true, force: true });
  });
  await log.startGeneration(1n);
  const generator = new ChangelogGenerator({ root, partitionCount: 1 });
  await generator.attach(0, log);
  return { base, root, log, generator };
}

describe('findUnloggedChanges', () => {
  it('names files the log does not record, bytes that are not their record, and recorded files that are gone', async () => {
    const { root, log, generator } = await masterStore();
    for (const path of ['same', 'touched', 'rewritten', 'same-size', 'gone', 'dir/deep'])
      await generator.commitPut(await stageFile(root, path, Buffer.from(`v1 of ${path}`)));
    // As a node killed between a rename and its record leaves them:
    await writeFile(join(root, 'rewritten'), 'v2, never logged');
    // Same size, other bytes, in the same clock tick as its record (its exact mtime put back):
    // only the hash tells.
    const logged = (await generator.commitPut(await stageFile(root, 'same-size', Buffer.from('AAAA'))))
      .mtimeNs;
    await writeFile(join(root, 'same-size'), 'BBBB');
    const at = `@${logged / 1_000_000_000n}.${String(logged % 1_000_000_000n).padStart(9, '0')}`;
    execFileSync('touch', ['-m', '-d', at, join(root, 'same-size')]);
    expect((await stat(join(root, 'same-size'), { bigint: true })).mtimeNs).toBe(logged);
    // Rewritten with the same bytes: a new mtime, but nothing changed.
    await writeFile(join(root, 'touched'), 'v1 of touched');
    await writeFile(join(root, 'stray'), 'never logged');
    // Named like rsync's temp file for theirs.bin, which is not ours: no rsync writes its temp
    // files into the store (they go to .pfs/rsync-tmp/), so it is an unlogged file like any
    // other; and another whose name only looks like one.
    await writeFile(join(root, '.theirs.bin.a1B2c3'), 'half a file');
    await writeFile(join(root, '.env.sample'), 'looks like a temp file');
    await unlink(join(root, 'gone'));
    await mkdir(join(root, 'other'));
    await writeFile(join(root, 'other', 'x'), 'belongs elsewhere');

    const changes = await findUnloggedChanges({
      root,
      log,
      belongs: (path) => !path.startsWith('other/') && path !== 'theirs.bin',
    });
    expect(changes.sort((a, b) => a.path.localeCompare(b.path))).toEqual([
      { path: '.env.sample', onDisk: { size: 22n, sha256: sha('looks like a temp file') } },
      { path: '.theirs.bin.a1B2c3', onDisk: { size: 11n, sha256: sha('half a file') } },
      { path: 'gone', onDisk: undefined },
      { path: 'rewritten', onDisk: { size: 16n, sha256: sha('v2, never logged') } },
      { path: 'same-size', onDisk: { size: 4n, sha256: sha('BBBB') } },
      { path: 'stray', onDisk: { size: 12n, sha256: sha('never logged') } },
    ]);
  });

  it('refuses to check a store that is not in place, rather than find every logged file gone', async () => {
    const { root, log, generator } = await masterStore();
    await generator.commitPut(await stageFile(root, 'logged', Buffer.from('x')));
    // An empty mount point where the store was.
    await rm(root, { recursive: true });
    await mkdir(root);
    await expect(findUnloggedChanges({ root, log, belongs: () => true })).rejects.toMatchObject({
      code: 'STORE_MISSING',
    });
  });

  it('checks several logs in one walk, each against its own paths, and drops a log whose check was aborted', async () => {
    const base = await mkdtemp(join(tmpdir(), 'pfs-check-'));
    const root = join(base, 'filestore');
    await initStore(root);
    const logs = [
      await TxLog.open(join(base, 'changelog', '0')),
      await TxLog.open(join(base, 'changelog', '1')),
    ];
    cleanups.push(async () => {
      for (const log of logs) await log.close();
      await rm(base, { recursive: true, force: true });
    });
    const generator = new ChangelogGenerator({ root, partitionCount: 2 });
    for (const [p, log] of logs.entries()) {
      await log.startGeneration(1n);
      await generator.attach(p, log);
    }
    // Three names for each partition, found by trying; the third is never logged.
    const names: string[][] = [[], []];
    for (let i = 0; names[0]!.length < 3 || names[1]!.length < 3; i++) {
      const p = generator.partitionOf(`f${i}`);
      if (names[p]!.length < 3) names[p]!.push(`f${i}`);
    }
    const [[kept0, rewritten0, stray0], [kept1, gone1, stray1]] = names as [string[], string[]];
    for (const name of [kept0!, rewritten0!, kept1!, gone1!])
      await generator.commitPut(await stageFile(root, name, Buffer.from(`v1 of ${name}`)));
    await writeFile(join(root, rewritten0!), 'never logged');
    await writeFile(join(root, stray0!), 'never logged either');
    await unlink(join(root, gone1!));
    await writeFile(join(root, stray1!), 'partition 1 never logged this');

    const logOf = (path: string) => generator.partitionOf(path);
    const both = await findUnloggedChangesOf({
      root,
      logs: new Map(logs.map((log, p) => [p, { log }])),
      logOf,
    });
    const paths = (outcome: LogCheckOutcome | undefined) =>
      outcome !== undefined && 'changes' in outcome ? outcome.changes.map((c) => c.path).sort() : outcome;
    expect(paths(both.get(0))).toEqual([rewritten0, stray0].sort());
    expect(paths(both.get(1))).toEqual([gone1, stray1].sort());

    // A part that ends early ends only itself: an aborted one, one whose log cannot be read.
    const aborted = new AbortController();
    aborted.abort(new Error('partition 0 is master again'));
    const unreadable = Object.create(logs[0]!, {
      readAfter: { value: () => Promise.reject(new Error('log 2 is corrupt')) },
    }) as TxLog;
    const some = await findUnloggedChangesOf({
      root,
      logs: new Map([
        [0, { log: logs[0]!, signal: aborted.signal }],
        [1, { log: logs[1]! }],
        [2, { log: unreadable }],
      ]),
      logOf: (path) => (generator.partitionOf(path) === 0 ? 2 : 1),
    });
    expect(some.get(0)).toEqual({ error: new Error('partition 0 is master again') });
    expect(some.get(2)).toEqual({ error: new Error('log 2 is corrupt') });
    expect(paths(some.get(1))).toEqual(paths(both.get(1)));
    await expect(
      findUnloggedChanges({ root, log: logs[0]!, belongs: () => true, signal: aborted.signal }),
    ).rejects.toThrow('partition 0 is master again');

    // A file that cannot be read fails its own log's part only.
    vi.mocked(hashFile).mockImplementation(async (at, path, options) => {
      if (path === stray0) throw Object.assign(new Error(`EIO reading ${path}`), { code: 'EIO' });
      return realHashFile(at, path, options);
    });
    const unread = await findUnloggedChangesOf({
      root,
      logs: new Map(logs.map((log, p) => [p, { log }])),
      logOf,
    });
    expect(unread.get(0)).toEqual({
      error: expect.objectContaining({ code: 'EIO', message: `EIO reading ${stray0}` }),
    });
    expect(paths(unread.get(1))).toEqual(paths(both.get(1)));

    // An abort while the walk's last file is hashed still ends the check.
    await writeFile(join(root, 'zz-last'), 'unrecorded, hashed last');
    const late = new AbortController();
    vi.mocked(hashFile).mockImplementation(async (at, path, options) => {
      if (path === 'zz-last') late.abort(new Error('stopped at the end'));
      return realHashFile(at, path, options);
    });
    await expect(
      findUnloggedChanges({ root, log: logs[0]!, belongs: () => true, signal: late.signal }),
    ).rejects.toThrow('stopped at the end');
  });
});
