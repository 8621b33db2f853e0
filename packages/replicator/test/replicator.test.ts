import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import {
  type FileHandle,
  lstat,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  rm,
  unlink,
  writeFile,
} from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ChangelogGenerator } from '@pfs/changelog-generator';
import { initStore, stageFile, walkStore } from '@pfs/filestore';
import {
  type AppliedBatch,
  type BootstrapDone,
  type BootstrapProgress,
  createReplicator,
  httpFeedSource,
  planBatch,
  type RecordSource,
  type Replicator,
  ReplicatorError,
  rsyncTempDirOf,
  StoreGate,
} from '@pfs/replicator';
import { sleep, startRsyncDaemon, stopAll } from '@pfs/testkit';
import { makeTxId, readCheckpoint, TxLog } from '@pfs/txlog';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { bulkCopyStagingOf } from '../src/bulk-copy-staging.ts';
import { allRecords, startTestMaster, type TestMaster, tempDir, until } from './harness.ts';

const oddNames: { accept: string[] } = JSON.parse(
  await readFile(new URL('../../../testdata/odd-names.json', import.meta.url), 'utf8'),
);
const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});
afterAll(() => stopAll());

async function replicaDir() {
  const { dir, remove } = await tempDir('pfs-replica-');
  await initStore(join(dir, 'filestore'));
  cleanups.push(remove);
  return dir;
}

async function master(): Promise<TestMaster> {
  const m = await startTestMaster();
  cleanups.push(() => m.close());
  return m;
}

async function replicate(
  m: TestMaster,
  dir: string,
  extra: Partial<Parameters<typeof createReplicator>[0]> = {},
) {
  const replicator = await createReplicator({
    // The test master serves its one log whatever partition a feed URL names.
    source: {
      feedUrl: m.feedUrl.replace('/partitions/0/', `/partitions/${extra.partition ?? 0}/`),
      filesSource: m.filesSource,
    },
    fileStoreDir: join(dir, 'filestore'),
    ...(extra.log === undefined ? { changeLogDir: join(dir, 'changelog', '0') } : {}),
    checkpointDir: join(dir, 'checkpoint'),
    pollWaitMs: 2000,
    ...extra,
  });
  const errors: Error[] = [];
  replicator.on('error', (e: Error) => errors.push(e));
  cleanups.push(() => replicator.stop());
  return { replicator, errors };
}

/** Partition `partition` of the store at `dir`, from `m`, sharing the store through `storeGate`; not started. */
function replicatePartition(m: TestMaster, dir: string, partition: number, storeGate: StoreGate) {
  return replicate(m, dir, {
    changeLogDir: join(dir, 'changelog', String(partition)),
    partition,
    storeGate,
    follow: false,
  });
}

/** Processes whose parent is `pid`. */
function childrenOf(pid: number): number[] {
  const children: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) children.push(Number(entry));
    } catch {}
  }
  return children;
}

/**
 * rsync processes (client side) whose destination is this replica's store; with `waiting`, only
 * those started ahead for the next batch (their --max-delete is the replicator's 64, where a
 * one-file batch's own rsync has 1).
 */
function rsyncsInto(dir: string, options: { waiting?: boolean } = {}): number {
  return rsyncPidsInto(dir, options).length;
}

/** The pids of the processes rsyncsInto counts. */
function rsyncPidsInto(dir: string, options: { waiting?: boolean } = {}): number[] {
  const dest = join(dir, 'filestore');
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let cmdline: string[];
    let stat: string;
    try {
      cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    // The client is the process whose parent is not an rsync of the same command line.
    if (!cmdline[0]?.endsWith('rsync') || !cmdline.some((arg) => arg.startsWith(dest))) continue;
    if (options.waiting === true && !cmdline.includes('--max-delete=64')) continue;
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    const parent = (() => {
      try {
        return readFileSync(`/proc/${ppid}/cmdline`, 'utf8');
      } catch {
        return '';
      }
    })();
    if (parent.split('\0').join('\0') !== cmdline.join('\0')) pids.push(Number(entry));
  }
  return pids;
}

/** Sends `signal` to `pid` (a group if negative); false if it has exited meanwhile. */
function signalIfAlive(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(pid, signal);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw error;
  }
}

/** The process group of `pid`, or undefined once it has exited. */
function groupOf(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2]);
  } catch {
    return undefined;
  }
}

/**
 * After a one-file batch, until its own rsync has ended and the one started ahead for the next
 * batch is the only rsync into `dir`, connected to the master's daemon.
 */
async function untilOnlyWaitingRsync(m: TestMaster, dir: string): Promise<void> {
  await until(
    () =>
      rsyncsInto(dir) === 1 &&
      rsyncsInto(dir, { waiting: true }) === 1 &&
      childrenOf(m.daemon.pid).length === 1,
    'one rsync waiting',
  );
}

async function snapshot(root: string): Promise<Map<string, string>> {
  const files = new Map<string, string>();
  for await (const entry of walkStore(root))
    files.set(entry.path, await readFile(join(root, entry.path), 'latin1'));
  return files;
}

describe('planBatch', () => {
  it('keeps the last record per path', () => {
    const put = (path: string, seq: number, sha = 'a') => ({
      txid: makeTxId(1, seq),
      kind: 'put' as const,
      path,
      size: 1n,
      mtimeNs: 0n,
      sha256: sha.repeat(64),
      previousTxid: 0n,
    });
    const plan = planBatch([
      put('x', 1),
      put('y', 2),
      { ...put('x', 3), kind: 'delete', sha256: '' },
      put('y', 4, 'b'),
    ]);
    expect(plan.paths).toEqual(['x', 'y']);
    expect(plan.expected.get('x')).toEqual({ kind: 'delete', txid: makeTxId(1, 3) });
    expect(plan.expected.get('y')).toMatchObject({
      kind: 'put',
      sha256: 'b'.repeat(64),
      txid: makeTxId(1, 4),
    });
  });
});

describe('replicator against a real rsync daemon', () => {
  it('replicates creates, overwrites, deletes and odd names with the master txids', async () => {
    const m = await master();
    const dir = await replicaDir();
    const { replicator, errors } = await replicate(m, dir);
    for (const name of oddNames.accept) await m.put(name, `v1 ${name}`);
    await m.put('dir/sub/over', 'first');
    await m.put('dir/sub/over', 'second, longer');
    await m.put('gone', 'soon deleted');
    await m.remove('gone');
    await m.remove(oddNames.accept[0]!);
    await until(() => replicator.applied === m.log.lastTxid, 'replica to catch up');
    expect(await snapshot(join(dir, 'filestore'))).toEqual(await snapshot(m.root));
    await replicator.stop();
    const replicaLog = await TxLog.open(join(dir, 'changelog', '0'));
    expect(await allRecords(replicaLog)).toEqual(await allRecords(m.log));
    await replicaLog.close();
    expect(await readCheckpoint(join(dir, 'checkpoint', '0'))).toBe(m.log.lastTxid);
    expect(errors.filter((e) => (e as ReplicatorError).code !== 'CONTENT_MISMATCH')).toEqual([]);
  });

  it('never advances the checkpoint while rsync fails, then catches up on a good source', async () => {
    const m = await master();
    const dir = await replicaDir();
    await m.put('a', 'A');
    await m.put('b', 'B');
    const deadDaemon = await startRsyncDaemon({ modules: { filestore: m.root } });
    const deadSource = deadDaemon.url('filestore');
    await deadDaemon.stop();
    const { replicator, errors } = await replicate(m, dir, {
      source: { feedUrl: m.feedUrl, filesSource: deadSource },
    });
    await until(() => errors.length >= 2, 'rsync failures');
    expect(replicator.applied).toBe(0n);
    expect(await readCheckpoint(join(dir, 'checkpoint', '0'))).toBe(0n);
    expect((await readdir(join(dir, 'filestore'))).sort()).toEqual(['.pfs']);
    replicator.switchSource({ feedUrl: m.feedUrl, filesSource: m.filesSource });
    await until(() => replicator.applied === m.log.lastTxid, 'catch-up after switching source');
    expect(await readFile(join(dir, 'filestore', 'b'), 'utf8')).toBe('B');
  });

  it('keeps its unsettled-paths file from its start, empty while nothing is unsettled', async () => {
    const m = await master();
    const dir = await replicaDir();
    // Each save then renames over a file: a file new after a power loss could come back empty.
    await replicate(m, dir, { follow: false });
    expect(await readFile(join(dir, 'checkpoint', '0.unsettled'), 'utf8')).toBe('');
  });

  it('follows past a damaged checkpoint, rewriting it from the log', async () => {
    const m = await master();
    const dir = await replicaDir();
    await m.put('a', 'A');
    await mkdir(join(dir, 'checkpoint'), { recursive: true });
    await writeFile(join(dir, 'checkpoint', '0'), 'pfs-checkp');
    const { replicator } = await replicate(m, dir);
    expect(await readCheckpoint(join(dir, 'checkpoint', '0'))).toBe(0n);
    await until(() => replicator.applied === m.log.lastTxid, 'catch-up');
    expect(await readFile(join(dir, 'filestore', 'a'), 'utf8')).toBe('A');
  });

  it('refuses bytes that do not match the record and does not advance', async () => {
    const m = await master();
    const dir = await replicaDir();
    await m.put('photo.jpg', 'the real bytes');
    const { dir: forged, remove } = await tempDir('pfs-forged-');
    cleanups.push(remove);
    await initStore(forged);
    await writeFile(join(forged, 'photo.jpg'), 'forged bytes!!');
    const { replicator, errors } = await replicate(m, dir, {
      source: { feedUrl: m.feedUrl, filesSource: `${forged}/` },
    });
    await until(() => errors.some((e) => (e as ReplicatorError).code === 'CONTENT_MISMATCH'), 'mismatch');
    expect(replicator.applied).toBe(0n);
    expect(await readCheckpoint(join(dir, 'checkpoint', '0'))).toBe(0n);
  });

  it('ends a drain at the first record it is told the cluster never agreed to', async () => {
    const m = await master();
    const dir = await replicaDir();
    await m.put('agreed', 'kept');
    const end = m.log.lastTxid;
    await m.put('written after the successor took over', 'not kept');
    await m.put('also after', 'not kept either');
    const { replicator } = await replicate(m, dir, { follow: false });
    expect(await replicator.drain(undefined, { accepts: (record) => record.txid <= end })).toEqual({
      applied: end,
      unverified: [],
    });
    expect(await readFile(join(dir, 'filestore', 'agreed'), 'utf8')).toBe('kept');
    expect((await readdir(join(dir, 'filestore'))).sort()).toEqual(['.pfs', 'agreed']);
  });

  it('drains past bytes that match no record when asked to, and names those paths', async () => {
    const m = await master();
    const dir = await replicaDir();
    await m.put('photo.jpg', 'the real bytes');
    await m.put('other.txt', 'fine');
    const { dir: forged, remove } = await tempDir('pfs-forged-');
    cleanups.push(remove);
    await initStore(forged);
    await writeFile(join(forged, 'photo.jpg'), 'renamed, never logged');
    await writeFile(join(forged, 'other.txt'), 'fine');
    const { replicator } = await replicate(m, dir, {
      source: { feedUrl: m.feedUrl, filesSource: `${forged}/` },
      follow: false,
    });
    expect(await replicator.drain(undefined, { tolerateMismatch: true })).toEqual({
      applied: m.log.lastTxid,
      unverified: ['photo.jpg'],
    });
    expect(await readFile(join(dir, 'filestore', 'photo.jpg'), 'utf8')).toBe('renamed, never logged');
    expect(await readCheckpoint(join(dir, 'checkpoint', '0'))).toBe(m.log.lastTxid);
  });

  it('catches up past a path rewritten more than one batch later (reads on instead of retrying forever)', async () => {
    const m = await master();
    const dir = await replicaDir();
    await m.put('hot', 'first version');
    for (let i = 0; i < 30; i++) await m.put(`filler-${i}`, `${i}`);
    await m.put('hot', 'second version, longer');
    // Batches of 10: the batch with the first put of "hot" gets the second version's bytes.
    const { replicator } = await replicate(m, dir, { maxBatchRecords: 10 });
    await until(() => replicator.applied === m.log.lastTxid, 'catch-up');
    expect(await readFile(join(dir, 'filestore', 'hot'), 'utf8')).toBe('second version, longer');
    expect(await snapshot(join(dir, 'filestore'))).toEqual(await snapshot(m.root));
  });

  it('catches up past a path rewritten further on than a batch may be extended', async () => {
    const m = await master();
    const dir = await replicaDir();
    await m.put('hot', 'first version');
    await m.put('gone', 'deleted much later');
    for (let i = 0; i < 40; i++) await m.put(`filler-${i}`, `${i}`);
    await m.put('hot', 'second version, longer');
    await m.remove('gone');
    const { replicator, errors } = await replicate(m, dir, {
      bootstrap: false,
      maxBatchRecords: 5,
      maxExtendedBatchRecords: 10,
    });
    await until(() => replicator.applied === m.log.lastTxid, 'catch-up');
    expect(await snapshot(join(dir, 'filestore'))).toEqual(await snapshot(m.root));
    // Held as unsettled while the log was behind them, then verified by their own records.
    expect(await readFile(join(dir, 'checkpoint', '0.unsettled'), 'utf8')).toBe('');
    expect(errors.filter((e) => (e as ReplicatorError).code === 'CONTENT_MISMATCH')).toEqual([]);
  });

  it('takes a path rewritten again and again as explained once found so, without reading through the source each time', async () => {
    const m = await master();
    const dir = await replicaDir();
    for (let round = 0; round < 20; round++) {
      await m.put('hot', `version ${round}`);
      for (let i = 0; i < 3; i++) await m.put(`filler-${round}-${i}`, `${i}`);
    }
    const feed = httpFeedSource({ feedUrl: m.feedUrl, filesSource: m.filesSource });
    let fetched = 0;
    const counting: RecordSource = {
      filesSource: feed.filesSource,
      description: feed.description,
      fetch: (after, options) => {
        fetched += 1;
        return feed.fetch(after, options);
      },
    };
    const { replicator } = await replicate(m, dir, {
      source: counting,
      bootstrap: false,
      maxBatchRecords: 2,
      maxExtendedBatchRecords: 4,
    });
    await until(() => replicator.applied === m.log.lastTxid, 'catch-up');
    expect(await snapshot(join(dir, 'filestore'))).toEqual(await snapshot(m.root));
    // A batch (2 records) and a long poll a record, give or take: 44 here. Reading through the
    // source again at each old version of "hot" took 80.
    expect(fetched).toBeLessThan(60);
  });

  it('reads on past a put whose directory is a file at the source by the time it pulls', async () => {
    const m = await master();
    await m.put('a/b', 'under a directory');
    await m.remove('a/b');
    await m.put('a', 'a file in its place');
    const dir = await replicaDir();
    // One record per batch: the first pulls "a/b", which rsync cannot stat at the source (ENOTDIR).
    const { replicator, errors } = await replicate(m, dir, { bootstrap: false, maxBatchRecords: 1 });
    await until(() => replicator.applied === m.log.lastTxid, 'catch-up');
    expect(errors).toEqual([]);
    expect(await readFile(join(dir, 'filestore', 'a'), 'utf8')).toBe('a file in its place');
    expect(await snapshot(join(dir, 'filestore'))).toEqual(await snapshot(m.root));
  });

  it('acknowledges only what it has applied, never a page read ahead of it', async () => {
    const m = await master();
    const dir = await replicaDir();
    await m.put('hot', 'first version');
    for (let i = 0; i < 30; i++) await m.put(`filler-${i}`, `${i}`);
    await m.put('hot', 'second version, longer');
    const feed = httpFeedSource({ feedUrl: m.feedUrl, filesSource: m.filesSource, replicaId: 'r1' });
    const calls: { after: bigint; acknowledges: boolean; applied: bigint }[] = [];
    let replicator: Replicator | undefined;
    const source: RecordSource = {
      filesSource: feed.filesSource,
      description: feed.description,
      fetch(after, options) {
        calls.push({
          after,
          acknowledges: options.acknowledges === true,
          applied: replicator?.applied ?? 0n,
        });
        return feed.fetch(after, options);
      },
    };
    // Batches of 10: the first put of "hot" does not match and the batch reads on past it.
    ({ replicator } = await replicate(m, dir, { source, maxBatchRecords: 10, bootstrap: false }));
    await until(() => replicator!.applied === m.log.lastTxid, 'catch-up');
    expect(calls.some((c) => !c.acknowledges && c.after > c.applied)).toBe(true);
    expect(calls.filter((c) => c.acknowledges && c.after > c.applied)).toEqual([]);
    // The follow loop's own requests do acknowledge: that is how the master learns progress.
    expect(calls.filter((c) => c.acknowledges).length).toBeGreaterThan(1);
  });

  it('bootstraps an empty replica with one bulk copy, then verifies the log instead of pulling it', async () => {
    const m = await master();
    const dir = await replicaDir();
    for (let i = 0; i < 50; i++) await m.put(`boot/${i}`, `file ${i}`);
    const { replicator } = await replicate(m, dir, { follow: false });
    const bootstrapped = new Promise<{ hashed: number; results: unknown[] }>((resolve) =>
      replicator.once('bootstrapped', resolve),
    );
    const pulled: number[] = [];
    const fromDigests: number[] = [];
    replicator.on('applied', (batch: AppliedBatch) => {
      pulled.push(batch.paths);
      fromDigests.push(batch.verifiedByBootstrap);
    });
    replicator.start();
    const done = await bootstrapped;
    expect(done.hashed).toBe(50);
    // One top-level entry (boot/): nothing to split, one rsync.
    expect(done.results).toHaveLength(1);
    await until(() => replicator.applied === m.log.lastTxid, 'replay after bootstrap');
    // Every file was already in place: the replay transferred nothing, and checked every file
    // against the hashes taken during the copy instead of reading it again.
    expect(pulled.reduce((a, b) => a + b, 0)).toBe(0);
    expect(fromDigests.reduce((a, b) => a + b, 0)).toBe(50);
    expect(await snapshot(join(dir, 'filestore'))).toEqual(await snapshot(m.root));
    await m.put('boot/late', 'after the bootstrap');
    await until(() => replicator.applied === m.log.lastTxid, 'follow after bootstrap');
    expect(await readFile(join(dir, 'filestore', 'boot/late'), 'utf8')).toBe('after the bootstrap');
  });

  it('splits the bootstrap copy among two rsyncs by top-level entry, odd names included', async () => {
    const m = await master();
    const dir = await replicaDir();
    const names = ['#top', 'plain', 'new\nline', ...Array.from({ length: 40 }, (_, i) => `d${i % 5}/f${i}`)];
    for (const name of names) await m.put(name, `bytes of ${name}`);
    const { replicator } = await replicate(m, dir, { follow: false });
    const bootstrapped = new Promise<{ hashed: number; results: unknown[] }>((resolve) =>
      replicator.once('bootstrapped', resolve),
    );
    const parts = new Set<number>();
    replicator.on('bootstrap-progress', (progress: { part: number }) => parts.add(progress.part));
    let pulled = 0;
    replicator.on('applied', (batch: AppliedBatch) => {
      pulled += batch.paths;
    });
    replicator.start();
    const done = await bootstrapped;
    expect(done.results).toHaveLength(2);
    expect([...parts].sort()).toEqual([0, 1]);
    expect(done.hashed).toBe(names.length);
    await until(() => replicator.applied === m.log.lastTxid, 'replay after bootstrap');
    expect(pulled).toBe(0);
    expect(await snapshot(join(dir, 'filestore'))).toEqual(await snapshot(m.root));
  });

  /** Bootstraps a replica of `files` files, noting in order each feed request and the copy's end. */
  async function bootstrapOrder(files: number, maxBatchRecords: number): Promise<string[]> {
    const m = await master();
    const dir = await replicaDir();
    for (let i = 0; i < files; i++) await m.put(`order/${i}`, `file ${i}`);
    const events: string[] = [];
    const feed = httpFeedSource({ feedUrl: m.feedUrl, filesSource: m.filesSource });
    const source: RecordSource = {
      filesSource: feed.filesSource,
      description: feed.description,
      fetch(after, options) {
        events.push(`fetch after ${after}`);
        return feed.fetch(after, options);
      },
    };
    const { replicator } = await replicate(m, dir, { source, follow: false, maxBatchRecords });
    replicator.once('bootstrapped', () => events.push('bootstrapped'));
    replicator.start();
    await until(() => replicator.applied === m.log.lastTxid, 'replay after bootstrap');
    return events;
  }

  it('says when it abandons a bootstrap copy paused half-way, and copies again when started again', async () => {
    const m = await master();
    const dir = await replicaDir();
    for (let i = 0; i < 200; i++) await m.put(`many/f${i}`, `file ${i} `.repeat(200));
    const { replicator } = await replicate(m, dir, { follow: false });
    const abandoned = new Promise<unknown>((resolve) => replicator.once('bootstrap-abandoned', resolve));
    let bootstrapped = false;
    replicator.once('bootstrapped', () => {
      bootstrapped = true;
    });
    let started = false;
    replicator.once('bootstrap-started', () => {
      started = true;
    });
    let paused: Promise<void> | undefined;
    let startedBeforeProgress: boolean | undefined;
    let firstProgress: BootstrapProgress | undefined;
    // rsync reports progress after each file it received, before its exit is known. (Checked
    // after: a failed expect in here would surface as the copy's error.)
    replicator.once('bootstrap-progress', (progress: BootstrapProgress) => {
      startedBeforeProgress = started;
      firstProgress = progress;
      paused = replicator.pause();
    });
    replicator.start();
    expect(await abandoned).toMatchObject({ code: 'RSYNC_ABORTED' });
    expect(startedBeforeProgress).toBe(true);
    expect(firstProgress).toMatchObject({ part: 0, bytes: expect.any(Number), percent: expect.any(Number) });
    await paused;
    expect(bootstrapped).toBe(false);
    expect(replicator.applied).toBe(0n);
    // Nothing of the abandoned copy reached the store: it is still empty, and copied afresh.
    expect(readdirSync(join(dir, 'filestore'))).toEqual(['.pfs']);
    replicator.start();
    await until(() => replicator.applied === m.log.lastTxid, 'replay after the second copy');
    expect(bootstrapped).toBe(true);
    expect(await snapshot(join(dir, 'filestore'))).toEqual(await snapshot(m.root));
  });

  it('leaves nothing of a bulk copy killed half-way in the store, and makes the copy again', async () => {
    const m = await master();
    for (let i = 0; i < 10; i++) await m.put(`many/f${i}`, `file ${i} `.repeat(2000));
    // Last in the copy, and more than the socket buffers hold: once the source is frozen, the
    // copy cannot end.
    await m.put('zz-large', Buffer.alloc(32 * 1024 * 1024, 7));
    // The kill must come while the copy runs: on a loaded machine it may have ended first, and
    // then the scenario is tried again with a new replica.
    for (let tries = 1; ; tries++) {
      const dir = await replicaDir();
      const store = join(dir, 'filestore');
      const { replicator } = await replicate(m, dir, { follow: false, bootstrapCopies: 1 });
      const frozen: number[] = [];
      cleanups.push(async () => {
        for (const pid of frozen) signalIfAlive(pid, 'SIGKILL');
      });
      // Watched for from here rather than from rsync's progress output, which may come in one
      // piece at the end: the large file's temp name shows that rsync is receiving it.
      let killed = false;
      const watch = setInterval(() => {
        let names: string[];
        try {
          names = readdirSync(bulkCopyStagingOf(store));
        } catch {
          return;
        }
        if (killed || !names.some((name) => name.startsWith('.zz-large.'))) return;
        killed = true;
        clearInterval(watch);
        // The source stops answering and the copy's rsync is SIGKILLed (an OOM killer, a lost
        // grace period): the file it was receiving stays under rsync's temp name. Another is
        // planted, as one left in a directory below.
        for (const pid of childrenOf(m.daemon.pid)) {
          if (signalIfAlive(pid, 'SIGSTOP')) frozen.push(pid);
        }
        writeFileSync(join(bulkCopyStagingOf(store), 'many', '.f9.Qx12Ab'), 'half a file');
        for (const pid of rsyncPidsInto(dir)) {
          const group = groupOf(pid);
          if (group !== undefined) signalIfAlive(-group, 'SIGKILL');
        }
      }, 1);
      cleanups.push(async () => clearInterval(watch));
      let inStoreWhenAbandoned: string[] | undefined;
      const first = new Promise<unknown>((resolve) => {
        replicator.once('bootstrap-abandoned', (error) => {
          inStoreWhenAbandoned = readdirSync(store);
          resolve(error);
        });
        replicator.once('bootstrapped', () => resolve('copied before the kill'));
      });
      const copiedAgain = new Promise<void>((resolve) =>
        replicator.on('bootstrapped', () => {
          if (inStoreWhenAbandoned !== undefined) resolve();
        }),
      );
      replicator.start();
      const outcome = await first;
      if (outcome === 'copied before the kill' && tries < 5) {
        clearInterval(watch);
        await replicator.stop();
        for (const pid of frozen.splice(0)) signalIfAlive(pid, 'SIGKILL');
        continue;
      }
      expect(outcome).toMatchObject({ code: 'RSYNC_KILLED' });
      expect(inStoreWhenAbandoned).toEqual(['.pfs']);
      for (const pid of frozen) signalIfAlive(pid, 'SIGKILL');
      // The store is still empty: the copy is made again, and nothing of the first reaches it.
      await copiedAgain;
      await until(() => replicator.applied === m.log.lastTxid, 'replay after the second copy');
      expect(await snapshot(store)).toEqual(await snapshot(m.root));
      await until(
        () => readdirSync(join(store, '.pfs')).every((name) => !name.startsWith('bulk-copy')),
        'the staging directories removed',
      );
      return;
    }
  });

  it('keeps what this node wrote into the store during a bulk copy, and checks that path in the replay', async () => {
    const m = await master();
    const dir = await replicaDir();
    const store = join(dir, 'filestore');
    for (let i = 0; i < 200; i++) await m.put(`many/f${i}`, `file ${i} `.repeat(200));
    const { replicator } = await replicate(m, dir, { follow: false });
    // Written into the store while the copy runs, as a PUT of this node as master would be.
    let written = false;
    replicator.on('bootstrap-progress', () => {
      if (written) return;
      written = true;
      mkdirSync(join(store, 'many'), { recursive: true });
      writeFileSync(join(store, 'many', 'f150'), 'written here during the copy');
    });
    const bootstrapped = new Promise<BootstrapDone>((resolve) => replicator.once('bootstrapped', resolve));
    replicator.start();
    await bootstrapped;
    expect(readFileSync(join(store, 'many', 'f150'), 'utf8')).toBe('written here during the copy');
    // The copy's hash of its own many/f150 no longer says what the store holds: the replay
    // finds the difference and pulls the record's bytes.
    await until(() => replicator.applied === m.log.lastTxid, 'replay after the copy');
    expect(await snapshot(store)).toEqual(await snapshot(m.root));
  });

  it('makes one bulk copy into a store two partitions share, and applies no batch while it runs', async () => {
    const m0 = await master();
    const m1 = await master();
    for (let i = 0; i < 30; i++) {
      await m0.put(`zero/${i}`, `partition 0, file ${i}`);
      await m1.put(`one/${i}`, `partition 1, file ${i}`);
    }
    const dir = await replicaDir();
    const storeGate = new StoreGate();
    const started: number[] = [];
    const events: string[] = [];
    const follow = async (m: TestMaster, partition: number) => {
      const { replicator } = await replicatePartition(m, dir, partition, storeGate);
      replicator.on('bootstrap-started', () => started.push(partition));
      replicator.on('bootstrapped', () => events.push(`${partition} copied`));
      replicator.on('applied', () => events.push(`${partition} applied`));
      return replicator;
    };
    const r0 = await follow(m0, 0);
    const r1 = await follow(m1, 1);
    r0.start();
    r1.start();
    await until(() => r0.applied === m0.log.lastTxid && r1.applied === m1.log.lastTxid, 'both caught up');
    // Both found the store empty; the first to get it alone copied, the other then replayed.
    expect(started).toHaveLength(1);
    const copier = started[0]!;
    const copied = events.indexOf(`${copier} copied`);
    expect(copied).toBeGreaterThanOrEqual(0);
    expect(events.slice(0, copied).filter((e) => e.endsWith('applied'))).toEqual([]);
    const expected = new Map([...(await snapshot(m0.root)), ...(await snapshot(m1.root))]);
    expect(await snapshot(join(dir, 'filestore'))).toEqual(expected);
  });

  it("cuts another partition's bulk copy short for a drain, rather than wait for it", async () => {
    const m0 = await master();
    const m1 = await master();
    // ~6 MB: the copy must still be running when its first progress report arrives and the
    // test freezes it (with ~120 KB, a loaded machine once saw it end first, and nothing cut).
    for (let i = 0; i < 100; i++) await m0.put(`zero/${i}`, `partition 0, file ${i} `.repeat(3000));
    for (let i = 0; i < 5; i++) await m1.put(`one/${i}`, `partition 1, file ${i}`);
    const dir = await replicaDir();
    const storeGate = new StoreGate();
    const { replicator: r0 } = await replicatePartition(m0, dir, 0, storeGate);
    const { replicator: r1 } = await replicatePartition(m1, dir, 1, storeGate);
    const events: string[] = [];
    r0.once('bootstrap-abandoned', (error: { code?: string }) =>
      events.push(`copy abandoned: ${error.code}`),
    );
    // The copy freezes once it has begun: its source stops answering (rsync would wait 10 s).
    const frozen: number[] = [];
    const copying = new Promise<void>((resolve) =>
      r0.once('bootstrap-progress', () => {
        for (const pid of childrenOf(m0.daemon.pid)) {
          if (signalIfAlive(pid, 'SIGSTOP')) frozen.push(pid);
        }
        resolve();
      }),
    );
    cleanups.push(async () => {
      for (const pid of frozen) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {}
      }
    });
    r0.start();
    await copying;
    const drained = await r1.drain();
    events.push('drained');
    expect(drained.applied).toBe(m1.log.lastTxid);
    expect(events).toEqual(['copy abandoned: RSYNC_ABORTED', 'drained']);
    for (const pid of frozen) signalIfAlive(pid, 'SIGCONT');
    // The copy is not made again (the store is no longer empty): the replay brings the rest.
    await until(() => r0.applied === m0.log.lastTxid, 'partition 0 caught up');
    const expected = new Map([...(await snapshot(m0.root)), ...(await snapshot(m1.root))]);
    expect(await snapshot(join(dir, 'filestore'))).toEqual(expected);
  });

  it("asks for the replay's first page while the bootstrap copy still runs", async () => {
    // Pages of 5 and 20 files: the first page is full, so it is used.
    const events = await bootstrapOrder(20, 5);
    expect(events.slice(0, 2)).toEqual(['fetch after 0', 'bootstrapped']);
    // The page read during the copy is the one the replay applied: no second read of it.
    expect(events.filter((e) => e === 'fetch after 0')).toHaveLength(1);
  });

  it('reads a short first page again after the copy: records written during it are on the next', async () => {
    const events = await bootstrapOrder(3, 10);
    expect(events.slice(0, 3)).toEqual(['fetch after 0', 'bootstrapped', 'fetch after 0']);
  });

  it('does not trust a bootstrap copy that disagrees with the log, and converges once the source logs it', async () => {
    const m = await master();
    const dir = await replicaDir();
    await m.put('same-size', 'one');
    await m.put('other', 'fine');
    // Changed on the master's disk behind the log's back, same size: the bulk copy gets "two"
    // while the log still says "one".
    await writeFile(join(m.root, 'same-size'), 'two');
    const { replicator, errors } = await replicate(m, dir, { follow: false });
    const bootstrapped = new Promise<{ hashed: number }>((resolve) =>
      replicator.once('bootstrapped', resolve),
    );
    replicator.start();
    expect((await bootstrapped).hashed).toBe(2);
    await until(
      () => errors.some((e) => e instanceof ReplicatorError && e.code === 'CONTENT_MISMATCH'),
      'mismatch refused',
    );
    expect(replicator.applied).toBe(0n);
    await m.put('same-size', 'two');
    await until(() => replicator.applied === m.log.lastTxid, 'converge');
    expect(await snapshot(join(dir, 'filestore'))).toEqual(await snapshot(m.root));
  });

  it('goes on with a small batch once its files are in place, before its rsync has ended', async () => {
    const m = await master();
    const dir = await replicaDir();
    const { replicator } = await replicate(m, dir, { bootstrap: false });
    const batches: AppliedBatch[] = [];
    replicator.on('applied', (batch: AppliedBatch) => batches.push(batch));
    // One file per batch: rsync ends 10–40 ms after its last rename, the check looks every 2 ms.
    // Whether the check or rsync's exit is seen first depends on the machine's load, so files are
    // written until one batch has gone on early.
    for (let i = 0; i < 30 && !batches.some((b) => b.rsyncStillEnding); i++) {
      await m.put(`early/${i}`, `content ${i}`);
      await until(() => replicator.applied === m.log.lastTxid, `file ${i}`);
    }
    expect(batches.filter((b) => b.rsyncStillEnding).length).toBeGreaterThan(0);
    await replicator.pause();
    expect(await snapshot(join(dir, 'filestore'))).toEqual(await snapshot(m.root));
  });

  it("starts the next small batch's rsync ahead of it, and ends it when writes pause", async () => {
    const m = await master();
    const dir = await replicaDir();
    const { replicator } = await replicate(m, dir, { bootstrap: false });
    const batches: AppliedBatch[] = [];
    replicator.on('applied', (batch: AppliedBatch) => batches.push(batch));
    for (let i = 0; i < 6; i++) {
      await m.put(`ahead/${i}`, `content ${i}`);
      await until(() => replicator.applied === m.log.lastTxid, `file ${i}`);
    }
    // The first batch starts its own rsync; each later one finds one waiting.
    const pulling = batches.filter((b) => b.paths > 0);
    expect(pulling).toHaveLength(6);
    expect(pulling[0]!.rsyncStartedAhead).toBe(false);
    expect(pulling.slice(1).every((b) => b.rsyncStartedAhead)).toBe(true);
    expect(await snapshot(join(dir, 'filestore'))).toEqual(await snapshot(m.root));
    // One rsync waits for the next batch (the last batch's may still be ending); with no writes
    // it is ended 3 s (PRIMED_IDLE_MS) after it was started, long before its own 10 s timeout
    // would end it with an error. It is started before its batch is reported applied.
    const lastAppliedAt = performance.now();
    await until(
      () => performance.now() - lastAppliedAt > 3000 && rsyncsInto(dir) === 0,
      'the waiting rsync ended',
      6000,
    );
    // Writes after the pause start a fresh one again.
    const firstLate = batches.length;
    // Paused the moment a batch is applied while its rsync, gone on early, is still ending and
    // the next one is waiting (see gracedAbort for why neither is killed outright). Whether a
    // batch's files are seen in place before its rsync exits depends on the machine's load, so
    // files are written one at a time until one is.
    let paused: Promise<void> | undefined;
    const pauseWhileEnding = (batch: AppliedBatch) => {
      if (paused === undefined && batch.rsyncStillEnding) paused = replicator.pause();
    };
    replicator.on('applied', pauseWhileEnding);
    for (let i = 0; i < 30 && paused === undefined; i++) {
      await m.put(`ahead/late-${i}`, `late ${i}`);
      await until(() => replicator.applied === m.log.lastTxid, `late file ${i}`);
    }
    replicator.off('applied', pauseWhileEnding);
    expect(batches[firstLate]!.rsyncStartedAhead).toBe(false);
    expect(paused).toBeDefined();
    await paused;
    expect(rsyncsInto(dir)).toBe(0);
  });

  it("does not wait out rsync's timeout for a waiting rsync whose source froze", async () => {
    const m = await master();
    const dir = await replicaDir();
    const { replicator } = await replicate(m, dir, { bootstrap: false });
    await m.put('before', 'B');
    await until(() => replicator.applied === m.log.lastTxid, 'first file');
    await untilOnlyWaitingRsync(m, dir);
    // The daemon's children serve the connections: stopped, they answer nothing (a frozen host).
    const children = childrenOf(m.daemon.pid);
    for (const pid of children) process.kill(pid, 'SIGSTOP');
    try {
      // rsync would wait out its --timeout (10 s) for an answer to the empty list; the pause
      // stops it (SIGTERM, SIGKILL a second later). Only the pause is timed, against that 10 s.
      const pausing = performance.now();
      await replicator.pause();
      expect(performance.now() - pausing).toBeLessThan(9000);
      expect(rsyncsInto(dir)).toBe(0);
    } finally {
      for (const pid of children) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {}
      }
    }
  });

  it('never deletes a directory found where the master puts a file: it fails until the directory is moved', async () => {
    const m = await master();
    const dir = await replicaDir();
    const { replicator, errors } = await replicate(m, dir, { bootstrap: false });
    await m.put('warm', 'W');
    await until(() => replicator.applied === m.log.lastTxid, 'first file');
    await untilOnlyWaitingRsync(m, dir);
    // A directory of files on the replica where the master now writes a file. rsync would delete
    // its contents: the waiting rsync (--max-delete=64) in one go, a cold one a bit more on each
    // retry.
    const d = join(dir, 'filestore', 'd');
    await mkdir(d);
    await writeFile(join(d, 'a'), 'a');
    await writeFile(join(d, 'b'), 'b');
    await m.put('d', 'now a file');
    const inTheWay = () => errors.filter((e) => (e as { code?: string }).code === 'DIRECTORY_IN_THE_WAY');
    await until(() => inTheWay().length >= 3, 'the batch refused three times');
    expect(inTheWay()[0]!.message).toMatch(
      /"d" is a directory of 2 item\(s\) here.*move it out of the store/,
    );
    expect((await readdir(d)).sort()).toEqual(['a', 'b']);
    expect(replicator.applied).toBeLessThan(m.log.lastTxid);
    // Moved away by an operator: the file arrives.
    await rename(d, join(dir, 'moved-d'));
    await until(() => replicator.applied === m.log.lastTxid, 'the file after the directory moved');
    expect(await readFile(join(dir, 'filestore', 'd'), 'utf8')).toBe('now a file');
  });

  it("sets a directory in a file's way aside with its contents, then pulls the file", async () => {
    const m = await master();
    const dir = await replicaDir();
    const setAside: [string, bigint, string][] = [];
    const { replicator, errors } = await replicate(m, dir, {
      bootstrap: false,
      setAside: async (path, txid, kind) => {
        setAside.push([path, txid, kind]);
        await rename(join(dir, 'filestore', path), join(dir, 'aside'));
      },
    });
    await mkdir(join(dir, 'filestore', 'd', 'sub'), { recursive: true });
    await writeFile(join(dir, 'filestore', 'd', 'sub', 'kept'), 'kept');
    // An empty directory needs no setting aside: rsync replaces it (one deletion). Nor does one
    // holding only empty directories, as deleting the last files under it leaves.
    await mkdir(join(dir, 'filestore', 'e'));
    await mkdir(join(dir, 'filestore', 'f', 'g', 'h'), { recursive: true });
    await m.put('d', 'now a file');
    await m.put('e', 'another file');
    await m.put('f', 'a third file');
    await until(() => replicator.applied === m.log.lastTxid, 'every file');
    expect(setAside).toEqual([['d', makeTxId(1, 1), 'directory']]);
    expect(await readFile(join(dir, 'aside', 'sub', 'kept'), 'utf8')).toBe('kept');
    expect(await readFile(join(dir, 'filestore', 'd'), 'utf8')).toBe('now a file');
    expect(await readFile(join(dir, 'filestore', 'e'), 'utf8')).toBe('another file');
    expect(await readFile(join(dir, 'filestore', 'f'), 'utf8')).toBe('a third file');
    expect(errors).toEqual([]);
  });

  it('keeps a file found where the master needs a directory: set aside, or the batch fails until it is moved', async () => {
    const m = await master();
    const dir = await replicaDir();
    const { replicator, errors } = await replicate(m, dir, { bootstrap: false });
    await writeFile(join(dir, 'filestore', 'album'), 'a file only this replica has');
    await m.put('album/1.jpg', 'one');
    const inTheWay = () => errors.filter((e) => (e as { code?: string }).code === 'FILE_IN_THE_WAY');
    await until(() => inTheWay().length >= 2, 'the batch refused twice');
    expect(inTheWay()[0]!.message).toMatch(/"album" is a file here but a directory on the source/);
    expect(await readFile(join(dir, 'filestore', 'album'), 'utf8')).toBe('a file only this replica has');
    await rename(join(dir, 'filestore', 'album'), join(dir, 'moved-album'));
    await until(() => replicator.applied === m.log.lastTxid, 'the file once the other was moved');
    expect(await readFile(join(dir, 'filestore', 'album', '1.jpg'), 'utf8')).toBe('one');

    const other = await replicaDir();
    // In the way before the replicator starts: written later, it could come after the batch.
    await writeFile(join(other, 'filestore', 'album'), 'in the way');
    const setAside: string[] = [];
    const second = await replicate(m, other, {
      bootstrap: false,
      setAside: async (path, _txid, kind) => {
        setAside.push(`${kind} ${path}`);
        await rename(join(other, 'filestore', path), join(other, 'aside'));
      },
    });
    await until(() => second.replicator.applied === m.log.lastTxid, 'the second replica');
    expect(setAside).toEqual(['file album']);
    expect(await readFile(join(other, 'aside'), 'utf8')).toBe('in the way');
    expect(await readFile(join(other, 'filestore', 'album', '1.jpg'), 'utf8')).toBe('one');
  });

  it('sets nothing aside when the batch itself deletes the file a directory replaces', async () => {
    const m = await master();
    await m.put('x', 'a file first');
    await m.remove('x');
    await m.put('x/y', 'then a directory');
    const dir = await replicaDir();
    // This replica still has the file: the batch deletes it before putting x/y.
    await writeFile(join(dir, 'filestore', 'x'), 'a file first');
    const setAside: string[] = [];
    const { replicator, errors } = await replicate(m, dir, {
      bootstrap: false,
      setAside: async (path) => {
        setAside.push(path);
      },
    });
    await until(() => replicator.applied === m.log.lastTxid, 'the batch');
    expect(setAside).toEqual([]);
    expect(errors).toEqual([]);
    expect(await readFile(join(dir, 'filestore', 'x', 'y'), 'utf8')).toBe('then a directory');
  });

  // Partitions share one store and replicate each in its own order: what another partition has
  // in a record's way may be that partition's current file.
  const ours = (path: string) => path !== 'theirs' && !path.endsWith('/theirs');

  it.each([
    {
      where: 'in a directory where a put goes',
      theirs: 'd/theirs',
      put: 'd',
      message:
        /^"d" is a directory here holding "d\/theirs", a file of another partition, where this partition's record 1:1 puts a file: waiting for that partition/,
    },
    {
      where: 'where a put needs a directory',
      theirs: 'theirs',
      put: 'theirs/1.jpg',
      message:
        /^"theirs" is a file of another partition here, where this partition's record 1:1 puts "theirs\/1.jpg" below it: waiting for that partition/,
    },
  ])(
    "never sets aside another partition's file $where: it waits until that partition removes it",
    async ({ theirs, put, message }) => {
      const m = await master();
      const dir = await replicaDir();
      await mkdir(dirname(join(dir, 'filestore', theirs)), { recursive: true });
      await writeFile(join(dir, 'filestore', theirs), 'current in its own partition');
      const setAside: string[] = [];
      const { replicator, errors } = await replicate(m, dir, {
        bootstrap: false,
        ownsPath: ours,
        setAside: async (path) => {
          setAside.push(path);
        },
      });
      await m.put(put, 'ours');
      const held = () => errors.filter((e) => (e as { code?: string }).code === 'HELD_BY_ANOTHER_PARTITION');
      await until(() => held().length >= 2, 'the batch waiting twice');
      expect(held()[0]!.message).toMatch(message);
      expect(await readFile(join(dir, 'filestore', theirs), 'utf8')).toBe('current in its own partition');
      expect(setAside).toEqual([]);
      expect(replicator.applied).toBeLessThan(m.log.lastTxid);
      // The other partition catches up and deletes it: the way is clear.
      await unlink(join(dir, 'filestore', theirs));
      await until(() => replicator.applied === m.log.lastTxid, 'the file once the other partition moved on');
      expect(await readFile(join(dir, 'filestore', put), 'utf8')).toBe('ours');
      expect(setAside).toEqual([]);
    },
  );

  it("applies what comes before a record another partition holds, so that two partitions each held by the other's stale file both go on", async () => {
    // The masters' order: 1 puts c/d; 2 puts a/b; 2 deletes a/b; 1 puts a; 1 deletes c/d; 2 puts c.
    const owns1 = (path: string) => path === 'a' || path.startsWith('c/');
    const m1 = await master();
    const m2 = await master();
    const dir = await replicaDir();
    const storeGate = new StoreGate();
    const setAside: string[] = [];
    const follow = async (m: TestMaster, partition: number, owns: (path: string) => boolean) => {
      const { replicator, errors } = await replicate(m, dir, {
        bootstrap: false,
        changeLogDir: join(dir, 'changelog', String(partition)),
        partition,
        storeGate,
        ownsPath: owns,
        setAside: async (path) => {
          setAside.push(path);
        },
      });
      return { replicator, errors };
    };
    await m1.put('c/d', 'one, for a while');
    await m2.put('a/b', 'two, for a while');
    const one = await follow(m1, 1, owns1);
    const two = await follow(m2, 2, (path) => !owns1(path));
    await until(
      () => one.replicator.applied === m1.log.lastTxid && two.replicator.applied === m2.log.lastTxid,
      'both at their first record',
    );
    await Promise.all([one.replicator.pause(), two.replicator.pause()]);
    await m2.remove('a/b');
    await m1.put('a', 'one');
    await m1.remove('c/d');
    await m2.put('c', 'two');
    // Each batch is now [put a, delete c/d] and [delete a/b, put c]: held by each other as a whole.
    one.replicator.start();
    two.replicator.start();
    await until(
      () => one.replicator.applied === m1.log.lastTxid && two.replicator.applied === m2.log.lastTxid,
      'both caught up',
    );
    expect(await readFile(join(dir, 'filestore', 'a'), 'utf8')).toBe('one');
    expect(await readFile(join(dir, 'filestore', 'c'), 'utf8')).toBe('two');
    expect(setAside).toEqual([]);
  });

  it("sets another partition's file aside in a drain rather than promote without the rest of the records", async () => {
    const m = await master();
    await m.put('first', '1');
    await m.put('d', 'now a file');
    const dir = await replicaDir();
    await mkdir(join(dir, 'filestore', 'd'));
    await writeFile(join(dir, 'filestore', 'd', 'theirs'), 'current in its own partition');
    const setAside: string[] = [];
    const { replicator } = await replicate(m, dir, {
      bootstrap: false,
      follow: false,
      ownsPath: ours,
      setAside: async (path) => {
        setAside.push(path);
        await rename(join(dir, 'filestore', path), join(dir, 'aside'));
      },
    });
    expect(await replicator.drain(undefined, { tolerateMismatch: true })).toEqual({
      applied: m.log.lastTxid,
      unverified: [],
    });
    expect(setAside).toEqual(['d']);
    expect(await readFile(join(dir, 'aside', 'theirs'), 'utf8')).toBe('current in its own partition');
    expect(await readFile(join(dir, 'filestore', 'd'), 'utf8')).toBe('now a file');
  });

  it('reads on past a put whose way another partition holds, when a later record of its own clears it', async () => {
    const m = await master();
    // A replica behind: the master put "d", deleted it, and the other partition then made "d/"
    // a directory, which this replica already has.
    await m.put('d', 'a file for a while');
    await m.remove('d');
    await m.put('e', 'after');
    const dir = await replicaDir();
    await mkdir(join(dir, 'filestore', 'd'));
    await writeFile(join(dir, 'filestore', 'd', 'theirs'), 'current in its own partition');
    const setAside: string[] = [];
    const { replicator, errors } = await replicate(m, dir, {
      bootstrap: false,
      maxBatchRecords: 1,
      ownsPath: ours,
      setAside: async (path) => {
        setAside.push(path);
      },
    });
    await until(() => replicator.applied === m.log.lastTxid, 'every record');
    expect(errors).toEqual([]);
    expect(setAside).toEqual([]);
    expect(await readFile(join(dir, 'filestore', 'd', 'theirs'), 'utf8')).toBe(
      'current in its own partition',
    );
    expect(await readFile(join(dir, 'filestore', 'e'), 'utf8')).toBe('after');
  });

  it("keeps rsync's temp files out of the store, and clears those a killed rsync left", async () => {
    const m = await master();
    const dir = await replicaDir();
    const temp = rsyncTempDirOf(join(dir, 'filestore'), 0);
    // What a SIGKILLed rsync leaves: its temp file, named after the file it was receiving.
    await mkdir(temp, { recursive: true });
    await writeFile(join(temp, 'photo.jpg.Xy12Ab'), 'half a photo');
    const { replicator } = await replicate(m, dir, { bootstrap: false });
    await m.put('photo.jpg', 'a whole photo');
    await until(() => replicator.applied === m.log.lastTxid, 'first file');
    expect(await readdir(temp)).toEqual([]);
    // Every rsync into the store writes its temp files there, the one waiting for the next batch too.
    await untilOnlyWaitingRsync(m, dir);
    const cmdlines = readdirSync('/proc')
      .filter((entry) => /^\d+$/.test(entry))
      .map((entry) => {
        try {
          return readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
        } catch {
          return [];
        }
      })
      .filter((cmdline) => cmdline[0]?.endsWith('rsync') && cmdline.includes(join(dir, 'filestore/')));
    expect(cmdlines.length).toBeGreaterThan(0);
    for (const cmdline of cmdlines) expect(cmdline).toContain(`--temp-dir=${temp}`);
    expect(await snapshot(join(dir, 'filestore'))).toEqual(await snapshot(m.root));
  });

  it('never uses an rsync started for another source', async () => {
    const m = await master();
    const dir = await replicaDir();
    const { replicator } = await replicate(m, dir, { bootstrap: false });
    const batches: AppliedBatch[] = [];
    replicator.on('applied', (batch: AppliedBatch) => batches.push(batch));
    await m.put('a', 'A');
    await until(() => replicator.applied === m.log.lastTxid, 'first file');
    await untilOnlyWaitingRsync(m, dir);
    replicator.switchSource({ feedUrl: m.feedUrl, filesSource: m.filesSource });
    await m.put('b', 'B');
    await until(() => replicator.applied === m.log.lastTxid, 'after the switch');
    expect(batches.at(-1)!.rsyncStartedAhead).toBe(false);
    await replicator.stop();
    expect(rsyncsInto(dir)).toBe(0);
  });

  it('goes on replicating when the checkpoint cannot be written, and says so', async () => {
    const m = await master();
    const dir = await replicaDir();
    const { replicator, errors } = await replicate(m, dir);
    await m.put('before', 'B');
    await until(() => replicator.applied === m.log.lastTxid, 'first file');
    // A directory where the checkpoint file should be: every later write of it fails.
    const checkpoint = join(dir, 'checkpoint', '0');
    await until(async () => (await readCheckpoint(checkpoint)) === m.log.lastTxid, 'first checkpoint');
    await rm(checkpoint);
    await mkdir(join(checkpoint, 'blocked'), { recursive: true });
    for (let i = 0; i < 5; i++) await m.put(`after/${i}`, `content ${i}`);
    await until(() => replicator.applied === m.log.lastTxid, 'files after the checkpoint broke');
    await until(
      () => errors.some((e) => e instanceof ReplicatorError && e.code === 'CHECKPOINT_FAILED'),
      'the failed checkpoint reported',
    );
    await replicator.pause();
    expect(await snapshot(join(dir, 'filestore'))).toEqual(await snapshot(m.root));
  });

  it('refuses a source writing in a generation older than the cluster', async () => {
    const m = await master();
    const dir = await replicaDir();
    await m.put('a', 'A');
    const { replicator, errors } = await replicate(m, dir, { minGeneration: () => 2n });
    await until(
      () => errors.some((e) => e instanceof ReplicatorError && e.code === 'STALE_SOURCE'),
      'stale refusal',
    );
    expect(replicator.applied).toBe(0n);
  });

  it('resumes after kill -9 with no duplicate or missing record', async () => {
    const m = await master();
    const dir = await replicaDir();
    for (let i = 0; i < 60; i++) await m.put(`f/${i}`, `content ${i}`.repeat(50));
    const script = fileURLToPath(new URL('./fixtures/run-replicator.ts', import.meta.url));
    const run = (...extra: string[]) =>
      spawn(process.execPath, ['--import', 'tsx', script, m.feedUrl, m.filesSource, dir, ...extra], {
        cwd: fileURLToPath(new URL('..', import.meta.url)),
        stdio: ['ignore', 'pipe', 'inherit'],
      });
    // SIGKILLed by itself right after its second batch of 7 records.
    const first = run('2');
    // Killed even when the test fails before it would be.
    cleanups.push(async () => {
      first.kill('SIGKILL');
    });
    let applied = 0;
    first.stdout.on('data', (chunk: Buffer) => {
      applied += chunk
        .toString()
        .split('\n')
        .filter((l) => l.startsWith('applied')).length;
    });
    // 'close', not 'exit': its output is read by then.
    const killedBy = await new Promise((resolve) => first.once('close', (_code, signal) => resolve(signal)));
    expect(killedBy).toBe('SIGKILL');
    expect(applied).toBe(2);
    // A restart resumes from the end of the replica's log; the checkpoint is never ahead of it.
    const killedLog = await TxLog.open(join(dir, 'changelog', '0'));
    const partial = killedLog.lastTxid;
    await killedLog.close();
    expect(partial).toBeGreaterThan(0n);
    expect(partial).toBeLessThan(m.log.lastTxid);
    expect(await readCheckpoint(join(dir, 'checkpoint', '0'))).toBeLessThanOrEqual(partial);
    for (let i = 60; i < 70; i++) await m.put(`f/${i}`, `late ${i}`);
    const second = run();
    cleanups.push(async () => {
      second.kill('SIGKILL');
    });
    await until(
      async () => (await readCheckpoint(join(dir, 'checkpoint', '0'))) === m.log.lastTxid,
      'resume',
    );
    second.kill('SIGKILL');
    await new Promise((resolve) => second.once('exit', resolve));
    const replicaLog = await TxLog.open(join(dir, 'changelog', '0'));
    expect(await allRecords(replicaLog)).toEqual(await allRecords(m.log));
    await replicaLog.close();
    expect(await snapshot(join(dir, 'filestore'))).toEqual(await snapshot(m.root));
  });

  it("follows from its log's end after this node wrote as master, not from where it had stopped", async () => {
    const m = await master();
    const dir = await replicaDir();
    for (let i = 0; i < 3; i++) await m.put(`before/${i}`, `${i}`);
    const log = await TxLog.open(join(dir, 'changelog', '0'));
    cleanups.push(() => log.close());
    const { replicator } = await replicate(m, dir, { log });
    await until(() => replicator.applied === m.log.lastTxid, 'replica to catch up');
    const stoppedAt = replicator.applied;
    // Promoted: its replicator paused, it opens generation 2 and writes as master; then fenced,
    // it follows its successor, which drained all of it and goes on in generation 3.
    await replicator.pause();
    const generator = new ChangelogGenerator({ root: join(dir, 'filestore'), partitionCount: 1 });
    await generator.attach(0, log);
    await log.startGeneration(2n);
    for (let i = 0; i < 3; i++)
      await generator.commitPut(
        await stageFile(join(dir, 'filestore'), `as-master/${i}`, Buffer.from(`${i}`)),
      );
    await generator.detach(0);
    const asked: bigint[] = [];
    const successor: RecordSource = {
      filesSource: m.filesSource,
      description: 'the successor',
      async fetch(after, options) {
        asked.push(after);
        await sleep(Math.min(options.waitMs, 20));
        return { records: [], generation: 3n, lastTxid: log.lastTxid };
      },
    };
    replicator.switchSource(successor);
    replicator.start();
    await until(() => asked.length > 0, 'a fetch from the successor');
    expect(asked[0]).toBe(log.lastTxid);
    expect(asked[0]).toBeGreaterThan(stoppedAt);
    expect(replicator.applied).toBe(log.lastTxid);
    await replicator.pause();
    expect(await readCheckpoint(join(dir, 'checkpoint', '0'))).toBe(log.lastTxid);
    // A drain starts there too.
    await log.startGeneration(4n);
    asked.length = 0;
    expect(await (replicator as Replicator).drain()).toEqual({ applied: log.lastTxid, unverified: [] });
    expect(asked).toEqual([log.lastTxid]);
  });

  it('pulls a file again whose fdatasync failed, rather than pass it on the retry from the page cache', async () => {
    const m = await master();
    const dir = await replicaDir();
    const store = join(dir, 'filestore');
    const probe = await open(join(dir, 'probe'), 'w');
    const fileHandle = Object.getPrototypeOf(probe) as FileHandle;
    await probe.close();
    const datasync = fileHandle.datasync;
    // The first fdatasync of the replica's x fails, as after a writeback error: Linux then marks
    // its pages clean, so a later fdatasync succeeds and a read finds the right bytes in memory.
    let failed = false;
    const spy = vi.spyOn(fileHandle, 'datasync').mockImplementation(async function (this: FileHandle) {
      if (!failed) {
        const own = await this.stat({ bigint: true });
        const target = await lstat(join(store, 'x'), { bigint: true }).catch(() => undefined);
        if (target?.ino === own.ino && target.dev === own.dev) {
          failed = true;
          throw Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
        }
      }
      return datasync.call(this);
    });
    cleanups.push(async () => spy.mockRestore());
    // Batches, not a bulk copy (which syncs the whole file system once).
    const { replicator, errors } = await replicate(m, dir, { bootstrap: false });
    const batches: AppliedBatch[] = [];
    replicator.on('applied', (batch: AppliedBatch) => batches.push(batch));
    const record = await m.put('x', 'bytes that must reach the disk');
    await until(() => replicator.applied === m.log.lastTxid, 'replica to catch up');
    expect(failed).toBe(true);
    expect(errors.map((e) => e.message)).toContain('EIO: i/o error, fdatasync');
    // The batch that logged x transferred it again.
    expect(batches.find((b) => b.from < record.txid && b.to >= record.txid)).toMatchObject({ paths: 1 });
    expect(await readFile(join(store, 'x'), 'utf8')).toBe('bytes that must reach the disk');
  });

  it('throws away a bulk copy whose syncfs failed, and batches whose syncfs failed pull their files again', async () => {
    const m = await master();
    for (let i = 0; i < 70; i++) await m.put(`f${i}`, `${i}`);
    const dir = await replicaDir();
    // A `sync` that fails, as `sync -f` does after a writeback error on the file system.
    const bin = join(dir, 'bin');
    await mkdir(bin);
    await writeFile(join(bin, 'sync'), '#!/bin/sh\nexit 1\n', { mode: 0o755 });
    const path = process.env.PATH;
    process.env.PATH = `${bin}:${path}`;
    cleanups.push(async () => {
      process.env.PATH = path;
    });
    const { replicator, errors } = await replicate(m, dir);
    const abandoned: Error[] = [];
    replicator.on('bootstrap-abandoned', (error: Error) => abandoned.push(error));
    await until(() => abandoned.length >= 1, 'the copy to be thrown away');
    expect(abandoned[0]).toMatchObject({ code: 'SYNC_FAILED' });
    expect(abandoned[0]!.message).toMatch(
      /syncfs of .* failed during the bulk copy: the copy is made again; check the disk$/,
    );
    expect((await readdir(join(dir, 'filestore'))).sort()).toEqual(['.pfs']);
    // Its batches of 70 files (a syncfs each) keep failing the same way, and log nothing.
    await until(
      () => errors.filter((e) => (e as ReplicatorError).code === 'SYNC_FAILED').length >= 4,
      'batches failing',
    );
    expect(replicator.applied).toBe(0n);
    process.env.PATH = path;
    await until(() => replicator.applied === m.log.lastTxid, 'catch-up once syncfs works');
    expect(await snapshot(join(dir, 'filestore'))).toEqual(await snapshot(m.root));
  });

  it.each([
    { path: 'lost', nextMaster: 'has nothing there' },
    // rsync fails such a path (ENOTDIR) rather than take it for missing.
    { path: 'lost/below', nextMaster: 'has a file where it needs a directory' },
  ])(
    "makes what a cut-short pull left the next master's, even across a restart, before following it: $path, where the next master $nextMaster",
    async ({ path }) => {
      const m = await master();
      const dir = await replicaDir();
      await m.put('kept', 'logged everywhere');
      const first = await replicate(m, dir, { bootstrap: false });
      await until(() => first.replicator.applied === m.log.lastTxid, 'replica to catch up');
      const applied = first.replicator.applied;
      // The next master's store: all that was logged so far, and nothing after.
      const { dir: next, remove } = await tempDir('pfs-next-master-');
      cleanups.push(remove);
      execFileSync('cp', ['-a', `${m.root}/.`, next]);
      if (path !== 'lost') await writeFile(join(next, 'lost'), 'a file of the next master');
      const nextDaemon = await startRsyncDaemon({ modules: { filestore: next } });
      cleanups.push(() => nextDaemon.stop());
      // A record whose pull lands bytes but never passes (the file no longer matches it), and
      // which the next master never gets: the old one dies with it.
      await first.replicator.pause();
      await m.put(path, 'logged on the old master only');
      await writeFile(join(m.root, path), 'and changed there since');
      first.replicator.start();
      await until(
        () => first.errors.some((e) => (e as ReplicatorError).code === 'CONTENT_MISMATCH'),
        'the pull to fail',
      );
      await first.replicator.stop();
      const store = join(dir, 'filestore');
      expect(await readFile(join(store, path), 'utf8')).toBe('and changed there since');
      expect(first.replicator.applied).toBe(applied);
      expect(await readFile(join(dir, 'checkpoint', '0.unsettled'), 'utf8')).toBe(path);
      // Restarted, following the next master, which has nothing new.
      const successor: RecordSource = {
        filesSource: nextDaemon.url('filestore'),
        description: 'the next master',
        async fetch(_after, options) {
          await sleep(Math.min(options.waitMs, 20));
          return { records: [], generation: 2n, lastTxid: applied };
        },
      };
      await replicate(m, dir, { bootstrap: false, source: successor });
      await until(
        async () => (await lstat(join(store, path)).catch(() => undefined)) === undefined,
        'the lost bytes gone',
      );
      expect(await readFile(join(store, 'kept'), 'utf8')).toBe('logged everywhere');
      // Still listed, as the next master's now: what it brought may be a record's it never comes
      // to log, which a later master's settle must undo; a batch of its records clears it.
      expect(await readFile(join(dir, 'checkpoint', '0.unsettled'), 'utf8')).toBe(path);
    },
  );

  it('writes nothing into a store that is not mounted, and goes on once it is', async () => {
    const m = await master();
    const dir = await replicaDir();
    const store = join(dir, 'filestore');
    await m.put('a', 'A');
    const { replicator, errors } = await replicate(m, dir, { bootstrap: false });
    await until(() => replicator.applied === m.log.lastTxid, 'replica to catch up');
    // Unmounted: an empty mount point where the store was.
    await rename(store, join(dir, 'mounted'));
    await mkdir(store);
    await m.put('b', 'B');
    await until(
      () => errors.some((e) => (e as { code?: string }).code === 'STORE_MISSING'),
      'a refused batch',
    );
    expect(await readdir(store)).toEqual([]);
    const before = replicator.applied;
    expect(before).toBeLessThan(m.log.lastTxid);
    await rm(store, { recursive: true });
    await rename(join(dir, 'mounted'), store);
    await until(() => replicator.applied === m.log.lastTxid, 'catch-up once mounted');
    expect(await readFile(join(store, 'b'), 'utf8')).toBe('B');
    await replicator.stop();
    // Started on it unmounted, with records in its log: refused, and nothing made there.
    await rename(store, join(dir, 'mounted'));
    await mkdir(store);
    await expect(replicate(m, dir, { bootstrap: false })).rejects.toThrow(
      `${store} has no .pfs/sentinel but the log holds records: mount the store, or remove the log and checkpoint to start this replica afresh`,
    );
    expect(await readdir(store)).toEqual([]);
  });

  it('drains what a source has and resolves, without waiting for more', async () => {
    const m = await master();
    const dir = await replicaDir();
    for (let i = 0; i < 5; i++) await m.put(`d${i}`, `${i}`);
    // With a one-minute long poll, a drain that waited for more would outlive the test timeout.
    const { replicator } = await replicate(m, dir, { follow: false, pollWaitMs: 60_000 });
    expect(await (replicator as Replicator).drain()).toEqual({ applied: m.log.lastTxid, unverified: [] });
    expect(await readFile(join(dir, 'filestore', 'd4'), 'utf8')).toBe('4');
  });
});
