import { describe, expect, it } from 'vitest';
import { coalescingSync } from '../src/shared-sync.ts';

/** A sync whose runs finish only when the test says so. */
function controlledSync() {
  const runs: { key: string; finish: (error?: Error) => void }[] = [];
  const sync = coalescingSync(
    (key) =>
      new Promise<void>((resolve, reject) => {
        runs.push({ key, finish: (error) => (error === undefined ? resolve() : reject(error)) });
      }),
  );
  return { sync, runs };
}

const settled = () => new Promise((resolve) => setImmediate(resolve));

describe('coalescingSync', () => {
  it('runs one sync for a lone caller', async () => {
    const { sync, runs } = controlledSync();
    const done = sync('/d');
    expect(runs).toHaveLength(1);
    runs[0]!.finish();
    await done;
  });

  it('makes callers that arrive during a sync wait for one sync started after them, shared', async () => {
    const { sync, runs } = controlledSync();
    const first = sync('/d');
    const resolved: number[] = [];
    const later = [1, 2, 3, 4].map((n) => sync('/d').then(() => resolved.push(n)));
    expect(runs).toHaveLength(1);
    runs[0]!.finish();
    await first;
    await settled();
    // The first sync may have started before their changes: they are still waiting, on one new sync.
    expect(resolved).toEqual([]);
    expect(runs).toHaveLength(2);
    runs[1]!.finish();
    await Promise.all(later);
    expect(resolved.sort()).toEqual([1, 2, 3, 4]);
    expect(runs).toHaveLength(2);
  });

  it('syncs different keys independently', async () => {
    const { sync, runs } = controlledSync();
    const a = sync('/a');
    const b = sync('/b');
    expect(runs.map((r) => r.key)).toEqual(['/a', '/b']);
    runs[1]!.finish();
    await b;
    runs[0]!.finish();
    await a;
  });

  it('fails the callers of a failed sync and those queued behind it, then starts afresh', async () => {
    const { sync, runs } = controlledSync();
    const first = sync('/d');
    const second = sync('/d');
    runs[0]!.finish(new Error('EIO'));
    // The queued caller's change may have been in the failed writeback: it must not succeed on
    // a retry that the file system, having reported the error once, would let pass.
    await expect(first).rejects.toThrow('EIO');
    await expect(second).rejects.toThrow('EIO');
    expect(runs).toHaveLength(1);
    const third = sync('/d');
    expect(runs).toHaveLength(2);
    runs[1]!.finish();
    await third;
  });
});
