import { appendFile, mkdir, mkdtemp, rename, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initStore, putFile, statFile } from '@pfs/filestore';
import { listStoreFiles, type StoreEvent, type StoreWatcher, watchStore } from '@pfs/watcher';
import { afterEach, describe, expect, it, vi } from 'vitest';

// statFile as it is, unless a test makes it fail.
vi.mock('@pfs/filestore', async (importOriginal) => {
  const actual = await importOriginal<typeof import('@pfs/filestore')>();
  return { ...actual, statFile: vi.fn(actual.statFile) };
});

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(settleMs = 30) {
  const root = await mkdtemp(join(tmpdir(), 'pfs-watch-'));
  await initStore(root);
  const events: StoreEvent[] = [];
  const errors: Error[] = [];
  const watcher: StoreWatcher = watchStore({
    root,
    settleMs,
    onEvent: (e) => events.push(e),
    onError: (e) => errors.push(e),
  });
  cleanups.push(async () => {
    await watcher.close();
    await rm(root, { recursive: true, force: true });
  });
  await watcher.ready;
  return { root, events, errors, watcher };
}

async function until(check: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const start = Date.now();
  while (!check()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const has = (events: StoreEvent[], type: string, path: string) =>
  events.some((e) => e.type === type && e.path === path);

describe('watchStore', () => {
  it('reports add, change and unlink in nested dirs with odd names', async () => {
    const { root, events, errors } = await setup();
    const names = ['top.txt', 'a/b/c/deep.bin', 'with space.txt', 'ünï/日本.txt', 'new\nline.txt', '#hash'];
    for (const name of names) {
      await mkdir(join(root, name, '..'), { recursive: true });
      await writeFile(join(root, name), 'v1');
    }
    for (const name of names) await until(() => has(events, 'add', name), `add ${JSON.stringify(name)}`);
    for (const name of names) await appendFile(join(root, name), '+v2');
    for (const name of names)
      await until(() => has(events, 'change', name), `change ${JSON.stringify(name)}`);
    for (const name of names) await unlink(join(root, name));
    for (const name of names)
      await until(() => has(events, 'unlink', name), `unlink ${JSON.stringify(name)}`);
    expect(errors).toEqual([]);
  });

  it('settles a burst of writes to one path into one event after the writes', async () => {
    // A settle window far above the gaps between the writes, even on a loaded machine (with
    // 80 ms, a full test suite's load once stretched a gap past it and split the burst in two).
    const { root, events } = await setup(500);
    for (let i = 0; i < 10; i++) await appendFile(join(root, 'burst'), `chunk ${i}\n`);
    await until(() => has(events, 'add', 'burst'), 'add burst');
    await new Promise((r) => setTimeout(r, 200));
    expect(events.filter((e) => e.path === 'burst')).toEqual([{ type: 'add', path: 'burst' }]);
  });

  it('reports the unlink of a path removed before it was first reported', async () => {
    // A put through the file server (logged at once) removed by hand within the settle window:
    // only the unlink tells the log's owner that the path it recorded is gone.
    const { root, events } = await setup(300);
    await putFile(root, 'brief', Buffer.from('x'));
    await unlink(join(root, 'brief'));
    await until(() => has(events, 'unlink', 'brief'), 'unlink brief');
    expect(events.filter((e) => e.path === 'brief')).toEqual([{ type: 'unlink', path: 'brief' }]);
  });

  it('ignores the store temp files and its own metadata, and sees renamed-in files', async () => {
    const { root, events } = await setup();
    await putFile(root, 'via-store.txt', Buffer.from('x'));
    await writeFile(join(root, 'staging'), 'y');
    await rename(join(root, 'staging'), join(root, 'renamed'));
    await until(() => has(events, 'add', 'via-store.txt') && has(events, 'add', 'renamed'), 'adds');
    await new Promise((r) => setTimeout(r, 100));
    expect(events.some((e) => e.path.includes('.pfs'))).toBe(false);
  });

  it('lists existing files for the reconcile scan without reporting them as events', async () => {
    const root = await mkdtemp(join(tmpdir(), 'pfs-watch-'));
    cleanups.push(() => rm(root, { recursive: true, force: true }));
    await initStore(root);
    await putFile(root, 'old/one', Buffer.from('1'));
    await putFile(root, 'two', Buffer.from('2'));
    const events: StoreEvent[] = [];
    const watcher = watchStore({ root, settleMs: 20, onEvent: (e) => events.push(e) });
    cleanups.push(() => watcher.close());
    await watcher.ready;
    expect(await listStoreFiles(root)).toEqual(['old/one', 'two']);
    await unlink(join(root, 'two'));
    await until(() => has(events, 'unlink', 'two'), 'unlink of a pre-existing file');
    expect(events).toEqual([{ type: 'unlink', path: 'two' }]);
  });

  it('stops on abort and close is idempotent', async () => {
    const root = await mkdtemp(join(tmpdir(), 'pfs-watch-'));
    cleanups.push(() => rm(root, { recursive: true, force: true }));
    const controller = new AbortController();
    const events: StoreEvent[] = [];
    const watcher = watchStore({
      root,
      settleMs: 10,
      onEvent: (e) => events.push(e),
      signal: controller.signal,
    });
    await watcher.ready;
    controller.abort();
    // No close(): the abort alone stops it.
    await writeFile(join(root, 'late'), 'x');
    await new Promise((r) => setTimeout(r, 150));
    expect(events).toEqual([]);
    // Closing after it, and again, is harmless.
    await Promise.all([watcher.close(), watcher.close()]);
  });
});

describe('watchStore and chokidar throttling', () => {
  it('reports a rewrite that lands right after a reported change (chokidar drops it)', async () => {
    const root = await mkdtemp(join(tmpdir(), 'pfs-watch-'));
    const events: StoreEvent[] = [];
    const watcher = watchStore({ root, settleMs: 10, onEvent: (e) => events.push(e) });
    cleanups.push(async () => {
      await watcher.close();
      await rm(root, { recursive: true, force: true });
    });
    await watcher.ready;
    // Each version lands in one system call (renamed in, then overwritten in place with content of
    // the same length): a truncating write could be seen empty first and reported twice.
    // Staged beside the watched directory, on the same file system.
    await writeFile(`${root}.staged`, 'round 0');
    await rename(`${root}.staged`, join(root, 'hot'));
    await until(() => events.length > 0, 'event 0');
    for (let round = 1; round < 5; round++) {
      await writeFile(join(root, 'hot'), `round ${round}`, { flag: 'r+' });
      await until(() => events.length > round, `event ${round}`);
    }
    // Every rewrite reached the listener even though some came within 50 ms of the one before.
    expect(events.map((e) => e.type)).toEqual(['add', 'change', 'change', 'change', 'change']);
  });
  it('looks again at a path whose stat failed, rather than drop its change', async () => {
    const { root, events, errors } = await setup();
    vi.mocked(statFile).mockRejectedValueOnce(
      Object.assign(new Error('EIO: i/o error, lstat'), { code: 'EIO' }),
    );
    await writeFile(join(root, 'flaky'), 'x');
    await until(() => errors.length > 0, 'the failed stat');
    await until(() => has(events, 'add', 'flaky'), 'the add, once the stat works again', 10_000);
  }, 15_000);
});
