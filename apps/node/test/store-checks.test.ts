import type { findUnloggedChangesOf, LogToCheck, UnloggedChange } from '@pfs/changelog-generator';
import type { TxLog } from '@pfs/txlog';
import { describe, expect, it } from 'vitest';
import { StoreChecks } from '../src/store-checks.ts';

/** A stand-in for the walk: records which logs each walk had and answers when told to. */
function fakeWalks() {
  const walks: { logs: ReadonlyMap<number, LogToCheck>; finish(): void }[] = [];
  const find = ((options: { logs: ReadonlyMap<number, LogToCheck> }) =>
    new Promise((resolve, reject) => {
      walks.push({
        logs: options.logs,
        finish: () => {
          const found = new Map<number, UnloggedChange[]>();
          for (const [partition, { signal }] of options.logs)
            if (!signal?.aborted) found.set(partition, [{ path: `only-in-${partition}`, onDisk: undefined }]);
          if (found.size === 0) reject(new Error('every store check was aborted'));
          else resolve(found);
        },
      });
    })) as unknown as typeof findUnloggedChangesOf;
  return { walks, find };
}

const log = (name: string) => ({ dir: name }) as unknown as TxLog;

async function until(check: () => boolean): Promise<void> {
  while (!check()) await new Promise((resolve) => setTimeout(resolve, 5));
}

describe('StoreChecks', () => {
  it('walks once for the partitions that ask together, and again for one that asks during a walk', async () => {
    const { walks, find } = fakeWalks();
    const checks = new StoreChecks({ root: '/nowhere', partitionOf: () => 0, find });
    const signal = new AbortController().signal;
    const first = [0, 1, 2].map((p) => checks.check(p, log(`log ${p}`), signal));
    await until(() => walks.length === 1);
    expect([...walks[0]!.logs.keys()]).toEqual([0, 1, 2]);
    const late = checks.check(3, log('log 3'), signal);
    walks[0]!.finish();
    expect(await Promise.all(first)).toEqual(
      [0, 1, 2].map((p) => [{ path: `only-in-${p}`, onDisk: undefined }]),
    );
    await until(() => walks.length === 2);
    expect([...walks[1]!.logs.keys()]).toEqual([3]);
    walks[1]!.finish();
    expect(await late).toEqual([{ path: 'only-in-3', onDisk: undefined }]);
    checks.close();
  });

  it('ends an aborted check at once; the others of its walk go on', async () => {
    const { walks, find } = fakeWalks();
    const checks = new StoreChecks({ root: '/nowhere', partitionOf: () => 0, find });
    const stop = new AbortController();
    const kept = checks.check(0, log('log 0'), new AbortController().signal);
    const stopped = checks.check(1, log('log 1'), stop.signal);
    await until(() => walks.length === 1);
    stop.abort(new Error('partition 1 is stopping'));
    await expect(stopped).rejects.toThrow('partition 1 is stopping');
    walks[0]!.finish();
    expect(await kept).toEqual([{ path: 'only-in-0', onDisk: undefined }]);
    // Aborted before its walk started: it is not in one.
    const gone = new AbortController();
    const never = checks.check(2, log('log 2'), gone.signal);
    gone.abort(new Error('never mind'));
    await expect(never).rejects.toThrow('never mind');
    await new Promise((resolve) => setTimeout(resolve, 150));
    expect(walks).toHaveLength(1);
    checks.close();
  });
});
