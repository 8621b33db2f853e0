import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTxId, TxLog } from '@pfs/txlog';
import { describe, expect, it } from 'vitest';
import {
  agreedByHistory,
  cutDivergentSuffix,
  divergencePoint,
  foreignFileInTheWay,
  listQuarantine,
  setAsideInTheWay,
} from '../src/divergence.ts';

describe('divergencePoint', () => {
  const history = new Map([
    [1n, makeTxId(1, 8)],
    [2n, makeTxId(2, 3)],
  ]);
  it.each([
    ['an empty log', 0n, 3n, undefined],
    ['a replica behind the end of its generation', makeTxId(1, 5), 3n, undefined],
    ['a log ending exactly at the recorded end', makeTxId(1, 8), 3n, undefined],
    ['an old master past the end of generation 1', makeTxId(1, 10), 3n, makeTxId(1, 8)],
    ['an old master past the end of generation 2', makeTxId(2, 4), 3n, makeTxId(2, 3)],
    ['records of the current generation', makeTxId(3, 9), 3n, undefined],
    ['a generation without recorded end', makeTxId(5, 1), 7n, undefined],
  ])('%s', (_, last, current, want) => {
    expect(divergencePoint(last, history, current)).toBe(want);
  });
});

describe('agreedByHistory', () => {
  const history = new Map([[2n, makeTxId(2, 3)]]);
  it.each([
    ['a record up to the recorded end of its generation', makeTxId(2, 3), true],
    ['a record past it (written by a fenced old master)', makeTxId(2, 4), false],
    ['the marker that opens the next generation', makeTxId(3, 0), true],
    ['a record of the current generation', makeTxId(3, 7), true],
    ['a record of an older generation without a recorded end', makeTxId(1, 99), true],
  ])('%s', (_, txid, want) => {
    expect(agreedByHistory({ txid }, history, 3n)).toBe(want);
  });
});

describe('foreignFileInTheWay', () => {
  it("names another partition's file at a parent of the path, or anywhere under a directory at it", async () => {
    const fileStore = await mkdtemp(join(tmpdir(), 'pfs-foreign-'));
    try {
      const ours = (path: string) => path.startsWith('ours');
      await mkdir(join(fileStore, 'dir', 'sub', 'deeper'), { recursive: true });
      await writeFile(join(fileStore, 'dir', 'sub', 'ours-1'), '');
      await writeFile(join(fileStore, 'dir', 'sub', 'deeper', 'theirs'), '');
      await writeFile(join(fileStore, 'file'), '');
      await writeFile(join(fileStore, 'ours-file'), '');
      expect(await foreignFileInTheWay(fileStore, 'dir', ours)).toBe('dir/sub/deeper/theirs');
      expect(await foreignFileInTheWay(fileStore, 'file/x', ours)).toBe('file');
      expect(await foreignFileInTheWay(fileStore, 'ours-file/x', ours)).toBeUndefined();
      expect(await foreignFileInTheWay(fileStore, 'missing/x', ours)).toBeUndefined();
      expect(await foreignFileInTheWay(fileStore, 'dir/sub/ours-1', ours)).toBeUndefined();
    } finally {
      await rm(fileStore, { recursive: true, force: true });
    }
  });
});

describe('cutDivergentSuffix', () => {
  it("leaves a directory at a divergent record's path: it holds other paths' files", async () => {
    const base = await mkdtemp(join(tmpdir(), 'pfs-cut-'));
    try {
      const fileStore = join(base, 'filestore');
      const log = await TxLog.open(join(base, 'changelog'));
      await log.startGeneration(1n);
      const put = (path: string) => ({
        kind: 'put' as const,
        path,
        size: 1n,
        mtimeNs: 0n,
        sha256: '0'.repeat(64),
      });
      await log.appendChange(put('kept'));
      await log.appendChange(put('a'));
      // Since the divergent file went, another partition made a directory there.
      await mkdir(join(fileStore, 'a'), { recursive: true });
      await writeFile(join(fileStore, 'a', 'theirs'), 'not this log');
      const cut = (options: { owns?: (path: string) => boolean; restored: string[] }) =>
        cutDivergentSuffix({
          log,
          history: new Map([[1n, makeTxId(1, 1)]]),
          currentGeneration: 2n,
          fileStore,
          quarantineDir: join(base, 'quarantine'),
          restore: async (paths) => {
            options.restored.push(...paths);
          },
          ...(options.owns === undefined ? {} : { owns: options.owns }),
        });
      // Knowing whose files are whose, it waits for the other partition to clear the way.
      const waited: string[] = [];
      await expect(cut({ owns: (path) => path !== 'a/theirs', restored: waited })).rejects.toThrow(
        /^"a" cannot be brought back as a file: "a\/theirs", a file of another partition, is in its way; waiting for that partition/,
      );
      expect(waited).toEqual([]);
      expect(log.lastTxid).toBe(makeTxId(1, 2));
      // Not knowing, it leaves the directory, and does not bring the path back over it either
      // (rsync --force would delete the directory).
      const restored: string[] = [];
      const removed = await cut({ restored });
      expect(removed.map((r) => r.path)).toEqual(['a']);
      expect(restored).toEqual([]);
      expect(await readFile(join(fileStore, 'a', 'theirs'), 'utf8')).toBe('not this log');
      expect((await listQuarantine(join(base, 'quarantine'))).map((e) => [e.path, e.quarantinedAs])).toEqual([
        ['a', null],
      ]);
      await log.close();
    } finally {
      await rm(base, { recursive: true, force: true });
    }
  });
  it('lists a file before moving it: a listing that fails leaves the file in the store and the log uncut', async () => {
    const base = await mkdtemp(join(tmpdir(), 'pfs-cut-'));
    try {
      const fileStore = join(base, 'filestore');
      const quarantineDir = join(base, 'quarantine');
      const log = await TxLog.open(join(base, 'changelog'));
      await log.startGeneration(1n);
      await log.appendChange({ kind: 'put', path: 'kept', size: 1n, mtimeNs: 0n, sha256: '0'.repeat(64) });
      await log.appendChange({ kind: 'put', path: 'a', size: 8n, mtimeNs: 0n, sha256: '0'.repeat(64) });
      await mkdir(fileStore, { recursive: true });
      await writeFile(join(fileStore, 'a'), 'divergent');
      // A directory where the manifest goes: listing fails, as a crash right there would stop it.
      await mkdir(join(quarantineDir, '1', 'MANIFEST.jsonl'), { recursive: true });
      const cut = () =>
        cutDivergentSuffix({
          log,
          history: new Map([[1n, makeTxId(1, 1)]]),
          currentGeneration: 2n,
          fileStore,
          quarantineDir,
          restore: async () => {},
        });
      await expect(cut()).rejects.toThrow(/EISDIR/);
      expect(await readFile(join(fileStore, 'a'), 'utf8')).toBe('divergent');
      expect(log.lastTxid).toBe(makeTxId(1, 2));
      // Once it can be listed, it is listed with where it went, and moved.
      await rm(join(quarantineDir, '1', 'MANIFEST.jsonl'), { recursive: true });
      expect((await cut()).map((r) => r.path)).toEqual(['a']);
      const [entry, ...rest] = await listQuarantine(quarantineDir);
      expect(rest).toEqual([]);
      expect(entry).toMatchObject({ path: 'a', quarantinedAs: join(quarantineDir, '1', 'files', 'a') });
      expect(await readFile(join(quarantineDir, '1', 'files', 'a'), 'utf8')).toBe('divergent');
      await log.close();
    } finally {
      await rm(base, { recursive: true, force: true });
    }
  });
});

describe('setAsideInTheWay', () => {
  it('moves the directory with its contents into quarantine and lists it', async () => {
    const base = await mkdtemp(join(tmpdir(), 'pfs-aside-'));
    try {
      const fileStore = join(base, 'filestore');
      const quarantineDir = join(base, 'quarantine');
      await mkdir(join(fileStore, 'a', 'd', 'sub'), { recursive: true });
      await writeFile(join(fileStore, 'a', 'd', 'sub', 'kept'), 'kept');
      const txid = makeTxId(3, 7);
      const at = await setAsideInTheWay({ fileStore, quarantineDir, path: 'a/d', txid, kind: 'directory' });
      expect(at).toBe(join(quarantineDir, '3', 'files', 'a', 'd'));
      expect(await readFile(join(at!, 'sub', 'kept'), 'utf8')).toBe('kept');
      expect(await readdir(join(fileStore, 'a'))).toEqual([]);
      const [entry, ...rest] = await listQuarantine(quarantineDir);
      expect(rest).toEqual([]);
      expect(entry).toMatchObject({
        generation: '3',
        txid: txid.toString(),
        kind: 'directory',
        path: 'a/d',
        quarantinedAs: at,
      });
      // Nothing there (any more): nothing moved, nothing listed.
      expect(
        await setAsideInTheWay({ fileStore, quarantineDir, path: 'a/d', txid, kind: 'directory' }),
      ).toBeUndefined();
      expect(await listQuarantine(quarantineDir)).toHaveLength(1);
    } finally {
      await rm(base, { recursive: true, force: true });
    }
  });

  it('lists entries after a line torn by a crash, on a line of their own, and reads older joined ones', async () => {
    const base = await mkdtemp(join(tmpdir(), 'pfs-aside-'));
    try {
      const fileStore = join(base, 'filestore');
      const quarantineDir = join(base, 'quarantine');
      const manifest = join(quarantineDir, '3', 'MANIFEST.jsonl');
      const torn = '{"generation":"3","txid":"128849';
      await mkdir(join(quarantineDir, '3'), { recursive: true });
      await writeFile(manifest, torn);
      // A torn last line alone: nothing listed, and no error.
      expect(await listQuarantine(quarantineDir)).toEqual([]);
      await mkdir(join(fileStore, 'a', 'd'), { recursive: true });
      await writeFile(join(fileStore, 'a', 'd', 'kept'), 'kept');
      const txid = makeTxId(3, 7);
      const at = await setAsideInTheWay({ fileStore, quarantineDir, path: 'a/d', txid, kind: 'directory' });
      expect((await readFile(manifest, 'utf8')).startsWith(`${torn}\n{`)).toBe(true);
      expect((await listQuarantine(quarantineDir)).map((e) => [e.path, e.quarantinedAs])).toEqual([
        ['a/d', at],
      ]);
      // As an older manifest may hold it: the next entry joined to the torn line.
      const entry = (await readFile(manifest, 'utf8')).split('\n')[1]!;
      await writeFile(manifest, `${torn}${entry}\n`);
      expect((await listQuarantine(quarantineDir)).map((e) => e.path)).toEqual(['a/d']);
    } finally {
      await rm(base, { recursive: true, force: true });
    }
  });

  it('lists the directory before moving it: a move that fails leaves it listed and in the store', async () => {
    const base = await mkdtemp(join(tmpdir(), 'pfs-aside-'));
    try {
      const fileStore = join(base, 'filestore');
      const quarantineDir = join(base, 'quarantine');
      await mkdir(join(fileStore, 'a', 'd'), { recursive: true });
      await writeFile(join(fileStore, 'a', 'd', 'kept'), 'kept');
      // A file where the move needs a directory: it fails after the destination was chosen.
      await mkdir(join(quarantineDir, '3', 'files'), { recursive: true });
      await writeFile(join(quarantineDir, '3', 'files', 'a'), 'in the way');
      await expect(
        setAsideInTheWay({ fileStore, quarantineDir, path: 'a/d', txid: makeTxId(3, 7), kind: 'directory' }),
      ).rejects.toThrow();
      expect(await readFile(join(fileStore, 'a', 'd', 'kept'), 'utf8')).toBe('kept');
      expect((await listQuarantine(quarantineDir)).map((e) => e.path)).toEqual(['a/d']);
    } finally {
      await rm(base, { recursive: true, force: true });
    }
  });
});
