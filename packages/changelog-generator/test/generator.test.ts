import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import {
  type FileHandle,
  mkdir,
  mkdtemp,
  open,
  readdir,
  rename,
  rm,
  symlink,
  unlink,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { ChangelogGenerator, followWatcher } from '@pfs/changelog-generator';
import { initStore, stageFile } from '@pfs/filestore';
import { type LogRecord, TxLog, TxlogError } from '@pfs/txlog';
import { afterEach, describe, expect, it, vi } from 'vitest';

const oddNames: { accept: string[] } = JSON.parse(
  readFileSync(new URL('../../../testdata/odd-names.json', import.meta.url), 'utf8'),
);
const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(partitionCount = 1, owned: number[] = [0]) {
  const base = await mkdtemp(join(tmpdir(), 'pfs-gen-'));
  const root = join(base, 'filestore');
  await initStore(root);
  const generator = new ChangelogGenerator({ root, partitionCount });
  const logs = new Map<number, TxLog>();
  for (const p of owned) {
    const log = await TxLog.open(join(base, 'changelog', String(p)));
    await log.startGeneration(1n);
    logs.set(p, log);
    await generator.attach(p, log);
  }
  cleanups.push(async () => {
    for (const log of logs.values()) await log.close();
    await rm(base, { recursive: true, force: true });
  });
  return { base, root, generator, logs };
}

/** A node started again: partition 0's log reopened in generation 2, replayed by a new generator. */
async function restart(base: string, root: string, logs: Map<number, TxLog>) {
  await logs.get(0)!.close();
  const log = await TxLog.open(join(base, 'changelog', '0'));
  logs.set(0, log);
  await log.startGeneration(2n);
  const generator = new ChangelogGenerator({ root, partitionCount: 1 });
  await generator.attach(0, log);
  return { generator, log };
}

async function records(log: TxLog): Promise<LogRecord[]> {
  const out: LogRecord[] = [];
  for await (const r of log.readFrom(0n)) if (r.kind !== 'end-of-generation') out.push(r);
  return out;
}

async function until(check: () => Promise<boolean> | boolean, what: string): Promise<void> {
  const start = Date.now();
  while (!(await check())) {
    if (Date.now() - start > 5000) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('ChangelogGenerator', () => {
  it('logs a file-server write once even though the watcher sees it too', async () => {
    const { root, generator, logs } = await setup();
    const appended: bigint[] = [];
    generator.onAppend((_, record) => appended.push(record.txid));
    const watcher = followWatcher(generator, { settleMs: 20 });
    cleanups.push(() => watcher.close());
    await watcher.ready;
    const record = await generator.commitPut(await stageFile(root, 'api.txt', Buffer.from('hello')));
    expect(record).toMatchObject({ kind: 'put', path: 'api.txt', size: 5n });
    await new Promise((r) => setTimeout(r, 250));
    expect((await records(logs.get(0)!)).map((r) => r.path)).toEqual(['api.txt']);
    expect(appended).toEqual([record.txid]);
    const deleted = await generator.commitDelete('api.txt');
    await new Promise((r) => setTimeout(r, 250));
    expect((await records(logs.get(0)!)).map((r) => `${r.kind} ${r.path}`)).toEqual([
      'put api.txt',
      'delete api.txt',
    ]);
    expect(deleted.txid).toBeGreaterThan(record.txid);
  });

  it('lets one of two puts naming the same version through, and hashes a file the index cannot vouch for', async () => {
    const { base, root, generator, logs } = await setup();
    const sha = (text: string) => createHash('sha256').update(text).digest('hex');
    await generator.commitPut(await stageFile(root, 'cas', Buffer.from('v1')));
    const ifV1 = (current: string | undefined) => current === sha('v1');
    const outcomes = await Promise.allSettled([
      generator.commitPut(await stageFile(root, 'cas', Buffer.from('a2')), { precondition: ifV1 }),
      generator.commitPut(await stageFile(root, 'cas', Buffer.from('b2')), { precondition: ifV1 }),
    ]);
    expect(outcomes.map((o) => o.status).sort()).toEqual(['fulfilled', 'rejected']);
    // After a restart the index knows no ctime: a rewrite that kept the size and put the mtime
    // back is told by the bytes, not taken for the version the log recorded.
    const { generator: restarted } = await restart(base, root, logs);
    const logged = readFileSync(join(root, 'cas'), 'utf8');
    // touch -r keeps the nanoseconds, which utimes' seconds-and-fraction would round.
    execFileSync('touch', ['-r', join(root, 'cas'), join(base, 'mtime-ref')]);
    writeFileSync(join(root, 'cas'), 'zz');
    execFileSync('touch', ['-r', join(base, 'mtime-ref'), join(root, 'cas')]);
    expect(statSync(join(root, 'cas'), { bigint: true }).mtimeNs).toBe(
      statSync(join(base, 'mtime-ref'), { bigint: true }).mtimeNs,
    );
    await expect(
      restarted.commitPut(await stageFile(root, 'cas', Buffer.from('v3')), {
        precondition: (current) => current === sha(logged),
      }),
    ).rejects.toMatchObject({ code: 'PRECONDITION_FAILED' });
    await restarted.commitPut(await stageFile(root, 'cas', Buffer.from('v3')), {
      precondition: (current) => current === sha('zz'),
    });
    expect(readFileSync(join(root, 'cas'), 'utf8')).toBe('v3');
  });

  it('says nothing of a path that is neither logged nor on disk, whatever its name', async () => {
    const { generator } = await setup();
    // What a watcher reports as unlinked after a hand writer renamed its temp file away.
    expect(await generator.observe(`${`${'x'.repeat(200)}/`.repeat(6)}f.tmp`)).toBeUndefined();
    expect(await generator.observe('a\\*b')).toBeUndefined();
  });

  it('tells of names that are not UTF-8 on its reconcile walk, logging the rest', async () => {
    const { base, root } = await setup();
    const told: string[] = [];
    const generator = new ChangelogGenerator({
      root,
      partitionCount: 1,
      onNameNotUtf8: (under, name) => told.push(`${under}|${name.toString('hex')}`),
    });
    const log = await TxLog.open(join(base, 'changelog', 'other'));
    cleanups.push(() => log.close());
    await log.startGeneration(1n);
    await generator.attach(0, log);
    await writeFile(Buffer.concat([Buffer.from(`${root}/`), Buffer.from([0xff, 0x61])]), 'x');
    await writeFile(join(root, 'fine'), 'y');
    expect(await generator.reconcile()).toBe(1);
    expect(told).toEqual(['|ff61']);
    expect((await records(log)).map((r) => r.path)).toEqual(['fine']);
  });

  it('puts and deletes only when the precondition accepts what the path holds, seen under its lock', async () => {
    const { root, generator, logs } = await setup();
    const sha = (text: string) => createHash('sha256').update(text).digest('hex');
    await generator.commitPut(await stageFile(root, 'cas', Buffer.from('v1')));
    const seen: (string | undefined)[] = [];
    const only = (wanted: string | undefined) => (current: string | undefined) => {
      seen.push(current);
      return current === wanted;
    };
    await expect(
      generator.commitPut(await stageFile(root, 'cas', Buffer.from('v2')), { precondition: only(sha('v0')) }),
    ).rejects.toMatchObject({ code: 'PRECONDITION_FAILED' });
    await expect(generator.commitDelete('cas', { precondition: only(undefined) })).rejects.toMatchObject({
      code: 'PRECONDITION_FAILED',
    });
    expect(readFileSync(join(root, 'cas'), 'utf8')).toBe('v1');
    // The refused put's staged file is gone, not left beside the store's files.
    expect((await readdir(root)).filter((name) => name !== '.pfs')).toEqual(['cas']);
    // Changed behind the index's back (same size, another mtime): the precondition sees the bytes.
    writeFileSync(join(root, 'cas'), 'v9');
    utimesSync(join(root, 'cas'), new Date(2_000_000_000_000), new Date(2_000_000_000_000));
    await generator.commitPut(await stageFile(root, 'cas', Buffer.from('v3')), {
      precondition: only(sha('v9')),
    });
    expect(readFileSync(join(root, 'cas'), 'utf8')).toBe('v3');
    await generator.commitDelete('cas', { precondition: only(sha('v3')) });
    await generator.commitPut(await stageFile(root, 'new', Buffer.from('n')), {
      precondition: only(undefined),
    });
    expect(seen).toEqual([sha('v1'), sha('v1'), sha('v9'), sha('v3'), undefined]);
    expect((await records(logs.get(0)!)).map((r) => `${r.kind} ${r.path}`)).toEqual([
      'put cas',
      'put cas',
      'delete cas',
      'put new',
    ]);
  });

  it('logs files dropped into the store: add, change, unlink with their hashes', async () => {
    const { root, generator, logs } = await setup();
    const watcher = followWatcher(generator, { settleMs: 20 });
    cleanups.push(() => watcher.close());
    await watcher.ready;
    const log = logs.get(0)!;
    // Each version lands in one system call (renamed in from beside the store, then overwritten
    // in place by longer content): a truncating write could be seen empty and logged in between.
    await writeFile(`${root}.staged`, 'v1');
    await rename(`${root}.staged`, join(root, 'dropped.txt'));
    await until(async () => (await records(log)).length === 1, 'put');
    await writeFile(join(root, 'dropped.txt'), 'version 2', { flag: 'r+' });
    await until(async () => (await records(log)).length === 2, 'second put');
    await unlink(join(root, 'dropped.txt'));
    await until(async () => (await records(log)).length === 3, 'delete');
    const all = await records(log);
    expect(all.map((r) => `${r.kind} ${r.size}`)).toEqual(['put 2', 'put 9', 'delete 0']);
    expect(all[1]!.sha256).toBe(createHash('sha256').update('version 2').digest('hex'));
  });

  it('makes a file dropped in by hand, and its removal, durable before logging them', async () => {
    const { root, generator, logs } = await setup();
    const log = logs.get(0)!;
    const probe = await open(join(root, 'probe'), 'w');
    const fileHandle = Object.getPrototypeOf(probe) as FileHandle;
    await probe.close();
    await unlink(join(root, 'probe'));
    await mkdir(join(root, 'album'));
    await writeFile(join(root, 'album', 'dropped.jpg'), 'bytes never synced by their writer');
    await new Promise((r) => setTimeout(r, 30)); // past the clock tick of the write
    // Which handle each fdatasync and fsync was on, in the order they came, and when the log's
    // own fdatasync (the record's) came.
    const calls: string[] = [];
    const datasync = vi.spyOn(fileHandle, 'datasync').mockImplementation(async function (this: FileHandle) {
      calls.push(`datasync ${(await this.stat()).isDirectory() ? 'dir' : (await this.stat()).size}`);
    });
    const sync = vi.spyOn(fileHandle, 'sync').mockImplementation(async function (this: FileHandle) {
      calls.push(`sync ${(await this.stat()).isDirectory() ? 'dir' : 'file'}`);
    });
    try {
      await generator.observe('album/dropped.jpg');
      // The file's bytes, its directory, then the record in the log.
      expect(calls.slice(0, 2)).toEqual(['datasync 34', 'sync dir']);
      expect(calls).toHaveLength(3);
      expect(calls[2]).toMatch(/^datasync \d+$/);
      calls.length = 0;
      await rm(join(root, 'album'), { recursive: true });
      await generator.observe('album/dropped.jpg');
      // The removal (the store root held the directory's entry), then the record.
      expect(calls).toEqual(['sync dir', expect.stringMatching(/^datasync \d+$/)]);
    } finally {
      datasync.mockRestore();
      sync.mockRestore();
    }
    expect((await records(log)).map((r) => `${r.kind} ${r.path}`)).toEqual([
      'put album/dropped.jpg',
      'delete album/dropped.jpg',
    ]);
  });

  it('says a change it made on disk but could not log is not replicated, rather than failed', async () => {
    const { root, generator, logs } = await setup();
    await generator.commitPut(await stageFile(root, 'kept', Buffer.from('v1')));
    const log = logs.get(0)!;
    let append = vi.spyOn(log, 'appendChange').mockRejectedValue(new Error('EIO: i/o error, write'));
    try {
      const staged = await stageFile(root, 'kept', Buffer.from('v2'));
      await expect(generator.commitPut(staged)).rejects.toMatchObject({
        code: 'NOT_LOGGED',
        message:
          '"kept" was replaced on this master, but logging it failed (EIO: i/o error, write): it is not replicated until it is logged; fix the log\'s disk, then read the path back before relying on it',
      });
      expect(readFileSync(join(root, 'kept'), 'utf8')).toBe('v2');
      // Logged by a reconcile once the log takes records again, so that the next write is taken.
      append.mockRestore();
      expect(await generator.reconcile()).toBe(1);
      append = vi.spyOn(log, 'appendChange').mockRejectedValue(new Error('EIO: i/o error, write'));
      await expect(generator.commitDelete('kept')).rejects.toMatchObject({
        code: 'NOT_LOGGED',
        message: expect.stringMatching(/^"kept" was deleted on this master, but logging it failed/),
      });
    } finally {
      append.mockRestore();
    }
  });

  it('says a change whose directory fsync failed after it is in place, and logs it once it can', async () => {
    const { root, generator, logs } = await setup();
    await generator.commitPut(await stageFile(root, 'kept', Buffer.from('v1')));
    const staged = await stageFile(root, 'kept', Buffer.from('v2'));
    const probe = await open(join(root, '.pfs'), 'r');
    const prototype = Object.getPrototypeOf(probe) as FileHandle;
    await probe.close();
    const { sync } = prototype;
    const failing = vi.spyOn(prototype, 'sync').mockImplementation(async function (this: FileHandle) {
      if ((await this.stat()).isDirectory())
        throw Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' });
      return sync.call(this);
    });
    try {
      await expect(generator.commitPut(staged)).rejects.toMatchObject({
        code: 'NOT_LOGGED',
        message:
          '"kept" was replaced on this master, but making that durable failed (EIO: i/o error, fsync): it is not replicated until it is logged; fix the disk, then read the path back before relying on it',
      });
    } finally {
      failing.mockRestore();
    }
    expect(readFileSync(join(root, 'kept'), 'utf8')).toBe('v2');
    // Not a failed append: the next write is taken, and a reconcile logs what this one left.
    expect(generator.appendFailed(0)).toBeUndefined();
    expect(await generator.reconcile()).toBe(1);
    expect((await records(logs.get(0)!)).map((r) => `${r.kind} ${r.path} ${r.size}`)).toEqual([
      'put kept 2',
      'put kept 2',
    ]);
  });

  it('logs a replaced file whose record failed even when it is mastered again and the new version has the old size and mtime', async () => {
    const { root, generator, logs } = await setup();
    const log = logs.get(0)!;
    await generator.commitPut(await stageFile(root, 'kept', Buffer.from('v1')));
    const append = vi
      .spyOn(log, 'appendChange')
      .mockRejectedValueOnce(new TxlogError('TXLOG_WRITE_FAILED', 'append failed (ENOSPC)'));
    try {
      await expect(
        generator.commitPut(await stageFile(root, 'kept', Buffer.from('v2'))),
      ).rejects.toMatchObject({
        code: 'NOT_LOGGED',
      });
    } finally {
      append.mockRestore();
    }
    // The new version written within the old one's clock tick: its mtime is the logged one's.
    const [logged] = await records(log);
    const ns = logged!.mtimeNs;
    execFileSync('touch', [
      '-m',
      '-d',
      `@${ns / 1_000_000_000n}.${String(ns % 1_000_000_000n).padStart(9, '0')}`,
      join(root, 'kept'),
    ]);
    // Stepped down and mastered again: the index is replayed from the log, without ctimes.
    await generator.detach(0);
    await generator.attach(0, log);
    expect(await generator.reconcile()).toBe(1);
    expect((await records(log)).map((r) => r.sha256)).toEqual([
      createHash('sha256').update('v1').digest('hex'),
      createHash('sha256').update('v2').digest('hex'),
    ]);
  });

  it('refuses to log a file whose mtime no record can hold, and goes on taking writes', async () => {
    const { root, generator } = await setup();
    writeFileSync(join(root, 'far-future'), 'bytes');
    // 2300-01-01: past what a signed 64-bit count of nanoseconds reaches (2262).
    utimesSync(join(root, 'far-future'), 10_413_792_000, 10_413_792_000);
    await expect(generator.observe('far-future')).rejects.toMatchObject({
      code: 'MTIME_OUT_OF_RANGE',
      message:
        '"far-future" has a modification time outside the years 1678 to 2262, which the log cannot hold, so it is not logged or replicated: touch it',
    });
    // Nothing wrong with the log: no reason to step down.
    expect(generator.appendFailed(0)).toBeUndefined();
    await generator.commitPut(await stageFile(root, 'next', Buffer.from('n')));
  });

  it('after an append that failed, changes nothing on disk until an append succeeds', async () => {
    const { root, generator, logs } = await setup();
    await generator.commitPut(await stageFile(root, 'kept', Buffer.from('v1')));
    const log = logs.get(0)!;
    // A full disk: the log takes the failed write back and stays appendable.
    const append = vi
      .spyOn(log, 'appendChange')
      .mockRejectedValueOnce(
        new TxlogError('TXLOG_WRITE_FAILED', 'append failed (ENOSPC: no space left on device, write)'),
      );
    try {
      await expect(
        generator.commitPut(await stageFile(root, 'kept', Buffer.from('v2'))),
      ).rejects.toMatchObject({
        code: 'NOT_LOGGED',
      });
      expect(log.appendable).toBe(true);
      expect(generator.appendFailed(0)?.message).toMatch(/ENOSPC/);
      // The next write is refused before it touches the disk.
      await expect(
        generator.commitPut(await stageFile(root, 'kept', Buffer.from('v3'))),
      ).rejects.toMatchObject({
        code: 'TXLOG_WRITE_FAILED',
        message: expect.stringMatching(
          /^the last append to log .* failed \(append failed \(ENOSPC: no space left on device, write\)\): nothing was changed; the master steps down$/,
        ),
      });
      await expect(generator.commitDelete('kept')).rejects.toMatchObject({ code: 'TXLOG_WRITE_FAILED' });
      expect(readFileSync(join(root, 'kept'), 'utf8')).toBe('v2');
      // A reconcile logs what the failed write left once the log takes records again.
      expect(await generator.reconcile()).toBe(1);
      expect(generator.appendFailed(0)).toBeUndefined();
      await generator.commitPut(await stageFile(root, 'kept', Buffer.from('v4')));
      expect(readFileSync(join(root, 'kept'), 'utf8')).toBe('v4');
    } finally {
      append.mockRestore();
    }
  });

  it('changes nothing on disk for a log it knows cannot take the record', async () => {
    const { root, generator, logs } = await setup();
    await generator.commitPut(await stageFile(root, 'kept', Buffer.from('v1')));
    await logs.get(0)!.close();
    await expect(generator.commitPut(await stageFile(root, 'kept', Buffer.from('v2')))).rejects.toMatchObject(
      {
        code: 'TXLOG_WRITE_FAILED',
      },
    );
    await expect(generator.commitDelete('kept')).rejects.toMatchObject({ code: 'TXLOG_WRITE_FAILED' });
    expect(readFileSync(join(root, 'kept'), 'utf8')).toBe('v1');
    expect((await readdir(root)).sort()).toEqual(['.pfs', 'kept']);
  });

  it('routes each path to its partition log and refuses writes for partitions it does not own', async () => {
    const { root, generator, logs } = await setup(4, [0, 1]);
    const byPartition = new Map<number, string[]>();
    for (let i = 0; i < 40; i++) {
      const path = `f${i}`;
      const p = generator.partitionOf(path);
      if (p <= 1) {
        await generator.commitPut(await stageFile(root, path, Buffer.from(path)));
        byPartition.set(p, [...(byPartition.get(p) ?? []), path]);
      } else {
        await expect(
          generator.commitPut(await stageFile(root, path, Buffer.from(path))),
        ).rejects.toMatchObject({
          code: 'NOT_MASTER',
          partition: p,
        });
        await writeFile(join(root, path), 'dropped on the wrong node');
        expect(await generator.observe(path)).toBeUndefined();
      }
    }
    for (const p of [0, 1]) {
      expect((await records(logs.get(p)!)).map((r) => r.path)).toEqual(byPartition.get(p));
    }
  });

  it('reconciles files added and removed while nobody watched, and nothing else after a restart', async () => {
    const { base, root, generator, logs } = await setup();
    await generator.commitPut(await stageFile(root, 'kept', Buffer.from('k')));
    await generator.commitPut(await stageFile(root, 'removed', Buffer.from('r')));
    await writeFile(join(root, 'appeared'), 'a');
    await unlink(join(root, 'removed'));
    expect(await generator.reconcile()).toBe(2);
    expect((await records(logs.get(0)!)).map((r) => `${r.kind} ${r.path}`)).toEqual([
      'put kept',
      'put removed',
      'put appeared',
      'delete removed',
    ]);
    const { generator: fresh } = await restart(base, root, logs);
    expect(await fresh.reconcile()).toBe(0);
  });

  it('logs no delete while the store is unmounted (its sentinel gone), and refuses writes into it', async () => {
    const { base, root, generator, logs } = await setup();
    for (const name of ['a', 'd/b'])
      await generator.commitPut(await stageFile(root, name, Buffer.from(name)));
    // The store's file system unmounted: an empty mount point where the store was.
    await rename(root, join(base, 'mounted'));
    await mkdir(root);
    await expect(generator.reconcile()).rejects.toMatchObject({ code: 'STORE_MISSING' });
    await expect(generator.observe('a')).rejects.toThrow(
      `${root} has no .pfs/sentinel: the store looks unmounted or replaced; mount it, or put the sentinel back if this is the right store`,
    );
    const staged = await stageFile(root, 'c', Buffer.from('c'));
    await expect(generator.commitPut(staged)).rejects.toMatchObject({ code: 'STORE_MISSING' });
    await expect(generator.commitDelete('a')).rejects.toMatchObject({ code: 'STORE_MISSING' });
    expect((await records(logs.get(0)!)).map((r) => `${r.kind} ${r.path}`)).toEqual(['put a', 'put d/b']);
    // Mounted again: nothing was lost, so nothing to log.
    await rm(root, { recursive: true });
    await rename(join(base, 'mounted'), root);
    expect(await generator.reconcile()).toBe(0);
  });

  it('does not log a file dropped in under a path longer than the API takes', async () => {
    const { root, generator, logs } = await setup();
    const dir = join(root, ...Array.from({ length: 5 }, () => 'd'.repeat(250)));
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'long'), 'too deep to replicate everywhere');
    await writeFile(join(root, 'short'), 'fine');
    await expect(generator.reconcile()).rejects.toThrow(
      /… is over 1024 bytes, so it is not logged or replicated: rename it$/,
    );
    expect((await records(logs.get(0)!)).map((r) => `${r.kind} ${r.path}`)).toEqual(['put short']);
  });

  it('does not log a file dropped in under a name rsync will not replicate', async () => {
    const { root, generator, logs } = await setup();
    await writeFile(join(root, 'photo\\*1.jpg'), 'a backslash before a wildcard');
    await writeFile(join(root, 'photo\\1.jpg'), 'a backslash before anything else');
    await expect(generator.reconcile()).rejects.toThrow(
      /^"photo\\\\\*1\.jpg" has a backslash right before "\*", "\?", "\[" or "\]", which rsync will not replicate, so it is not logged: rename it$/,
    );
    expect((await records(logs.get(0)!)).map((r) => `${r.kind} ${r.path}`)).toEqual(['put photo\\1.jpg']);
  });

  it('still follows a file logged under a longer path before that limit', async () => {
    const base = await mkdtemp(join(tmpdir(), 'pfs-gen-'));
    cleanups.push(() => rm(base, { recursive: true, force: true }));
    const root = join(base, 'filestore');
    await initStore(root);
    const path = `${Array.from({ length: 5 }, () => 'd'.repeat(250)).join('/')}/old`;
    await mkdir(join(root, dirname(path)), { recursive: true });
    await writeFile(join(root, path), 'stored before the limit');
    const log = await TxLog.open(join(base, 'changelog', '0'));
    cleanups.push(() => log.close());
    await log.startGeneration(1n);
    const sha256 = createHash('sha256').update('stored before the limit').digest('hex');
    await log.appendChange({ kind: 'put', path, size: 23n, mtimeNs: 0n, sha256 });
    const generator = new ChangelogGenerator({ root, partitionCount: 1 });
    await generator.attach(0, log);
    await unlink(join(root, path));
    expect(await generator.observe(path)).toMatchObject({ kind: 'delete', path });
  });

  it('hashes again a file rewritten in place within the clock tick its read began in', async () => {
    const { root, generator } = await setup();
    const file = join(root, 'same-tick');
    writeFileSync(file, 'A'.repeat(1000));
    const stamp = new Date();
    utimesSync(file, stamp, stamp);
    const observed = generator.observe('same-tick');
    // Rewritten in place, same size, its timestamps as they were: what a second write within
    // one tick of the file system's clock looks like to a stat.
    setTimeout(() => {
      writeFileSync(file, 'B'.repeat(1000));
      utimesSync(file, stamp, stamp);
    }, 5);
    const record = await observed;
    expect(record?.sha256).toBe(createHash('sha256').update('B'.repeat(1000)).digest('hex'));
  });

  it('hashes again a file rewritten in place with its mtime set back, told by its ctime', async () => {
    const { root, generator } = await setup();
    const file = join(root, 'mtime-kept');
    // Changed long ago as far as its mtime says, which its writer set.
    const longAgo = new Date(Date.now() - 3_600_000);
    writeFileSync(file, 'A'.repeat(1000));
    utimesSync(file, longAgo, longAgo);
    const observed = generator.observe('mtime-kept');
    setTimeout(() => {
      writeFileSync(file, 'B'.repeat(1000));
      utimesSync(file, longAgo, longAgo);
    }, 5);
    const record = await observed;
    expect(record?.sha256).toBe(createHash('sha256').update('B'.repeat(1000)).digest('hex'));
  });

  it('after a restart, tells a rewrite of the same size and mtime from the ctime its first reconcile saw', async () => {
    const { base, root, generator, logs } = await setup();
    // Whole seconds: set again below to exactly the same mtime.
    const pinned = new Date(Math.floor(Date.now() / 1000) * 1000 - 3_600_000);
    writeFileSync(join(root, 'pinned'), 'first');
    utimesSync(join(root, 'pinned'), pinned, pinned);
    expect(await generator.observe('pinned')).toMatchObject({
      kind: 'put',
      mtimeNs: BigInt(pinned.getTime()) * 1_000_000n,
    });
    const { generator: restarted, log: reopened } = await restart(base, root, logs);
    expect(await restarted.reconcile()).toBe(0);
    // `cp -p` of another version: same size, same mtime; only the ctime moved.
    await new Promise((r) => setTimeout(r, 30));
    writeFileSync(join(root, 'pinned'), 'other');
    utimesSync(join(root, 'pinned'), pinned, pinned);
    expect(await restarted.reconcile()).toBe(1);
    expect((await records(reopened)).at(-1)).toMatchObject({
      kind: 'put',
      path: 'pinned',
      sha256: createHash('sha256').update('other').digest('hex'),
    });
  });

  it('runs one reconcile at a time: calls meanwhile share one walk that starts after it, even when it fails', async () => {
    const { root, generator, logs } = await setup();
    await writeFile(join(root, 'before'), 'b');
    // Over the length the API takes: each walk logs the rest and then fails, naming it.
    const deep = join(root, ...Array.from({ length: 5 }, () => 'd'.repeat(250)));
    await mkdir(deep, { recursive: true });
    await writeFile(join(deep, 'long'), 'too long');
    const first = generator.reconcile();
    await writeFile(join(root, 'during'), 'd');
    const second = generator.reconcile();
    const third = generator.reconcile();
    expect(third).toBe(second);
    expect(second).not.toBe(first);
    await expect(first).rejects.toMatchObject({ code: 'PATH_TOO_LONG' });
    await expect(second).rejects.toMatchObject({ code: 'PATH_TOO_LONG' });
    expect((await records(logs.get(0)!)).map((r) => r.path).sort()).toEqual(['before', 'during']);
  });

  it("stops logging a partition without waiting for another partition's writes in flight", async () => {
    const { root, generator } = await setup(2, [0, 1]);
    const other = ['a', 'b', 'c', 'd', 'e', 'f'].find((path) => generator.partitionOf(path) === 1)!;
    const real = await stageFile(root, other, Buffer.from('slow'));
    let release!: () => void;
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    // A put of partition 1 whose commit does not end until released.
    const slow = generator.commitPut({
      ...real,
      path: real.path,
      size: real.size,
      sha256: real.sha256,
      commit: async () => {
        await released;
        return real.commit();
      },
      discard: () => real.discard(),
    });
    await new Promise((r) => setTimeout(r, 10));
    await generator.detach(0);
    expect(generator.isAttached(0)).toBe(false);
    release();
    expect(await slow).toMatchObject({ kind: 'put', path: other });
  });

  it('logs no delete for a path it cannot stat (ELOOP), only for one that is gone', async () => {
    const { root, generator, logs } = await setup();
    for (const name of ['d/x', 'gone'])
      await generator.commitPut(await stageFile(root, name, Buffer.from(name)));
    await rm(join(root, 'd'), { recursive: true });
    await symlink('d', join(root, 'd')); // every lookup through d/ loops
    await unlink(join(root, 'gone'));
    await expect(generator.observe('d/x')).rejects.toMatchObject({ code: 'ELOOP' });
    expect(await generator.observe('gone')).toMatchObject({ kind: 'delete', path: 'gone' });
    expect((await records(logs.get(0)!)).map((r) => `${r.kind} ${r.path}`)).toEqual([
      'put d/x',
      'put gone',
      'delete gone',
    ]);
  });

  it('reconciles many paths across partitions, reusing the slots of deleted ones', async () => {
    const { root, generator, logs } = await setup(2, [0, 1]);
    await mkdir(join(root, 'd'));
    for (let i = 0; i < 200; i++)
      await generator.commitPut(await stageFile(root, `d/f${i}`, Buffer.from(`${i}`)));
    for (let i = 0; i < 50; i++) await unlink(join(root, `d/f${i}`));
    for (let i = 50; i < 60; i++) await writeFile(join(root, `d/f${i}`), `changed ${i}`);
    for (let i = 200; i < 230; i++) await writeFile(join(root, `d/f${i}`), `new ${i}`);
    expect(await generator.reconcile()).toBe(90);
    expect(await generator.reconcile()).toBe(0);
    const all = [...(await records(logs.get(0)!)), ...(await records(logs.get(1)!))];
    const last = new Map(all.map((r) => [r.path, r]));
    for (let i = 0; i < 230; i++) {
      const record = last.get(`d/f${i}`)!;
      expect(record.kind).toBe(i < 50 ? 'delete' : 'put');
      if (i >= 50 && i < 60)
        expect(record.sha256).toBe(createHash('sha256').update(`changed ${i}`).digest('hex'));
    }
    // Deleted paths' slots now hold others; a reconcile must still see every path as it is.
    for (let i = 0; i < 50; i++) await writeFile(join(root, `d/f${i}`), `back ${i}`);
    await unlink(join(root, 'd/f229'));
    expect(await generator.reconcile()).toBe(51);
    expect(await generator.reconcile()).toBe(0);
  });

  it('logs every accepted odd name with its exact bytes', async () => {
    const { root, generator, logs } = await setup();
    for (const name of oddNames.accept)
      await generator.commitPut(await stageFile(root, name, Buffer.from(name)));
    expect((await records(logs.get(0)!)).map((r) => r.path)).toEqual(oddNames.accept);
  });
});
