import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, expectTypeOf, it, vi } from 'vitest';
import { createReplicator } from '../src/index.ts';
import { checkOptions } from '../src/options.ts';

const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

const source = {
  feedUrl: 'http://10.0.0.1:12001/v1/partitions/3/records',
  filesSource: 'rsync://10.0.0.1:22001/filestore/',
};
const good = {
  source,
  fileStoreDir: '/srv/copy/filestore',
  changeLogDir: '/srv/copy/changelog/3',
  checkpointDir: '/srv/copy/checkpoint',
};

/** A replicator of `from` into a new temp dir, not started. */
async function replicaOf(from: Parameters<typeof createReplicator>[0]['source'], extra = {}) {
  const dir = await mkdtemp(join(tmpdir(), 'pfs-options-'));
  dirs.push(dir);
  const replicator = await createReplicator({
    source: from,
    fileStoreDir: join(dir, 'filestore'),
    changeLogDir: join(dir, 'changelog'),
    checkpointDir: join(dir, 'checkpoint'),
    follow: false,
    ...extra,
  });
  return { dir, replicator };
}

/** A source that answers nothing until the asker's signal ends the wait; `onFetch` hears each ask. */
function silentSource(onFetch: (signal: AbortSignal) => void) {
  return {
    filesSource: '/nonexistent/',
    description: 'a source that never answers',
    fetch: (_after: bigint, { signal }: { signal: AbortSignal }) =>
      new Promise<never>((_resolve, reject) => {
        onFetch(signal);
        signal.addEventListener('abort', () => reject(signal.reason), { once: true });
      }),
  } as never;
}

describe('createReplicator options', () => {
  it.each([
    [
      { fileStoreDir: 'copy/filestore' },
      'fileStoreDir "copy/filestore" is relative, and would mean another directory from wherever the process runs: pass path.resolve() of it',
    ],
    [
      { source: { ...source, feedUrl: '10.0.0.1:12001/v1/partitions/3/records' } },
      'source.feedUrl "10.0.0.1:12001/v1/partitions/3/records" is not an http:// URL: give the master\'s feed, as http://HOST:PORT/v1/partitions/<p>/records',
    ],
    [
      { source: { ...source, filesSource: 'http://10.0.0.1:22001/filestore/' } },
      'source.filesSource "http://10.0.0.1:22001/filestore/" is neither an rsync:// URL nor an absolute path: give the master\'s rsync module, as rsync://HOST:PORT/filestore/',
    ],
    [
      { checkpointDir: '/srv/copy/filestore/checkpoint' },
      "checkpointDir /srv/copy/filestore/checkpoint is inside fileStoreDir /srv/copy/filestore, which the master's files fill: put it beside the store",
    ],
    [
      { changeLogDir: '/srv/copy/checkpoint' },
      'changeLogDir and checkpointDir are both /srv/copy/checkpoint: give each its own directory',
    ],
    [
      { partition: 2 },
      "source.feedUrl is partition 3's feed, and partition is 2: make them the same partition",
    ],
    [{ partition: -1 }, 'partition must be a whole number ≥ 0'],
    [{ log: {} }, 'give the log as either `log` (an open TxLog) or `changeLogDir`, one of them'],
  ])('refuses %j in one line naming the fix', (change, message) => {
    expect(() => checkOptions({ ...good, ...change })).toThrow(
      expect.objectContaining({ code: 'BAD_OPTIONS', message }),
    );
  });

  it("takes the partition from the feed URL when not given: its checkpoint files are that partition's", async () => {
    expect(checkOptions(good)).toEqual({ partition: 3 });
    const { dir, replicator } = await replicaOf(source);
    try {
      // Its unsettled-paths file, made at once, is partition 3's, not another partition's.
      expect(existsSync(join(dir, 'checkpoint', '3.unsettled'))).toBe(true);
      expect(existsSync(join(dir, 'checkpoint', '0.unsettled'))).toBe(false);
    } finally {
      await replicator.stop();
    }
  });

  it('is not made with a signal already aborted, and stops once for every stop(), after which it drains nothing', async () => {
    const reason = new Error('gave up before it began');
    await expect(replicaOf(source, { signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
    const { replicator } = await replicaOf(source);
    const stopping = replicator.stop();
    expect(replicator.stop()).toBe(stopping);
    await stopping;
    await expect(replicator.drain()).rejects.toMatchObject({ code: 'CLOSED' });
  });

  it('ends a drain under way when stopped, and resolves stop() only after it', async () => {
    let asked: () => void = () => {};
    const fetching = new Promise<void>((resolve) => {
      asked = resolve;
    });
    const { replicator } = await replicaOf(silentSource(() => asked()));
    let drainEnded = false;
    const draining = replicator.drain().finally(() => {
      drainEnded = true;
    });
    await fetching;
    await replicator.stop();
    expect(drainEnded).toBe(true);
    await expect(draining).rejects.toBeDefined();
  });

  it('has typed events: a misspelt event or a wrong payload does not compile (checked by typecheck)', async () => {
    const { replicator } = await replicaOf(source);
    try {
      replicator.on('applied', (batch) => {
        expectTypeOf(batch.to).toEqualTypeOf<bigint>();
      });
      replicator.on('error', (error) => {
        expectTypeOf(error.code).toEqualTypeOf<string | undefined>();
      });
      // @ts-expect-error: there is no such event
      replicator.on('caughtup', () => {});
      // @ts-expect-error: caught-up carries a txid, not a batch
      replicator.on('caught-up', (batch: { to: bigint }) => batch);
      expect(replicator.listenerCount('applied')).toBe(1);
    } finally {
      await replicator.stop();
    }
  });

  it('follows only once a drain under way has ended when started during it, and refuses a second drain beside it', async () => {
    const fetches: AbortSignal[] = [];
    const { replicator } = await replicaOf(silentSource((signal) => fetches.push(signal)));
    try {
      const ending = new AbortController();
      const draining = replicator.drain(ending.signal);
      await vi.waitFor(() => expect(fetches).toHaveLength(1));
      replicator.start();
      await expect(replicator.drain()).rejects.toMatchObject({ code: 'BUSY' });
      await new Promise((resolve) => setTimeout(resolve, 50));
      // Only the drain has asked the source.
      expect(fetches).toHaveLength(1);
      ending.abort(new Error('drain given up'));
      await expect(draining).rejects.toThrow('drain given up');
      // Now the loop follows.
      await vi.waitFor(() => expect(fetches).toHaveLength(2));
    } finally {
      await replicator.stop();
    }
  });
});
