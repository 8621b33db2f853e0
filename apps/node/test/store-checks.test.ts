import type { findUnloggedChangesOf, LogCheckOutcome, LogToCheck } from '@pfs/changelog-generator';
import type { TxLog } from '@pfs/txlog';
import { describe, expect, it } from 'vitest';
import { StoreChecks } from '../src/store-checks.ts';

/**
 * A stand-in for the walk: records which logs each walk had and answers when told to, with one
 * change per partition, or the error `failing` names for it.
 */
function fakeWalks(failing = new Map<number, Error>()) {
  const walks: { logs: ReadonlyMap<number, LogToCheck>; finish(): void }[] = [];
  const find = ((options: { logs: ReadonlyMap<number, LogToCheck> }) =>
    new Promise((resolve) => {
      walks.push({
        logs: options.logs,
        finish: () => {
          const outcomes = new Map<number, LogCheckOutcome>();
          for (const [partition, { signal }] of options.logs) {
            const error = signal?.aborted ? signal.reason : failing.get(partition);
            outcomes.set(
              partition,
              error === undefined
                ? { changes: [{ path: `only-in-${partition}`, onDisk: undefined }] }
                : { error },
            );
          }
          resolve(outcomes);
        },
      });
    })) as unknown as typeof findUnloggedChangesOf;
  return { walks, find };
}

const log = (name: string) => ({ dir: name }) as unknown as TxLog;
const changeOf = (partition: number) => [{ path: `only-in-${partition}`, onDisk: undefined }];
const running = () => new AbortController().signal;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(check: () => boolean): Promise<void> {
  while (!check()) await sleep(5);
}

describe('StoreChecks', () => {
  it('walks once for the partitions that ask together, and again for one that asks during a walk', async () => {
    const { walks, find } = fakeWalks();
    const walked: number[][] = [];
    const checks = new StoreChecks({
      root: '/nowhere',
      partitionOf: () => 0,
      find,
      onWalk: (p) => walked.push(p),
    });
    const first = [0, 1, 2].map((p) => checks.check(p, log(`log ${p}`), running()));
    await until(() => walks.length === 1);
    expect([...walks[0]!.logs.keys()]).toEqual([0, 1, 2]);
    const late = checks.check(3, log('log 3'), running());
    walks[0]!.finish();
    expect(await Promise.all(first)).toEqual([0, 1, 2].map(changeOf));
    await until(() => walks.length === 2);
    expect([...walks[1]!.logs.keys()]).toEqual([3]);
    walks[1]!.finish();
    expect(await late).toEqual(changeOf(3));
    expect(walked).toEqual([[0, 1, 2], [3]]);
    await checks.close();
  });

  it('fails only the check whose part failed, and ends an aborted check at once', async () => {
    const { walks, find } = fakeWalks(new Map([[2, new Error('log 2 is corrupt')]]));
    const checks = new StoreChecks({ root: '/nowhere', partitionOf: () => 0, find });
    const stop = new AbortController();
    const kept = checks.check(0, log('log 0'), running());
    const stopped = checks.check(1, log('log 1'), stop.signal);
    const corrupt = checks.check(2, log('log 2'), running());
    await until(() => walks.length === 1);
    stop.abort(new Error('partition 1 is stopping'));
    await expect(stopped).rejects.toThrow('partition 1 is stopping');
    walks[0]!.finish();
    expect(await kept).toEqual(changeOf(0));
    await expect(corrupt).rejects.toThrow('log 2 is corrupt');
    // Aborted before its walk started: it is not in one.
    const gone = new AbortController();
    const never = checks.check(3, log('log 3'), gone.signal);
    gone.abort(new Error('never mind'));
    await expect(never).rejects.toThrow('never mind');
    await sleep(150);
    expect(walks).toHaveLength(1);
    await checks.close();
  });

  it('waits for the partitions expected to ask, but not past its deadline', async () => {
    const { walks, find } = fakeWalks();
    const checks = new StoreChecks({ root: '/nowhere', partitionOf: () => 0, find });
    checks.expect(0);
    checks.expect(1);
    const zero = checks.check(0, log('log 0'), running());
    await sleep(300);
    // Partition 1 has not asked yet: no walk.
    expect(walks).toHaveLength(0);
    const one = checks.check(1, log('log 1'), running());
    await until(() => walks.length === 1);
    expect([...walks[0]!.logs.keys()]).toEqual([0, 1]);
    walks[0]!.finish();
    expect(await Promise.all([zero, one])).toEqual([changeOf(0), changeOf(1)]);

    // One that never asks holds the first walk only until the deadline, and no later one.
    const late = new StoreChecks({ root: '/nowhere', partitionOf: () => 0, find });
    late.expect(5);
    const alone = late.check(4, log('log 4'), running());
    await until(() => walks.length === 2);
    walks[1]!.finish();
    expect(await alone).toEqual(changeOf(4));
    const next = late.check(6, log('log 6'), running());
    await sleep(300);
    expect(walks).toHaveLength(3);
    walks[2]!.finish();
    expect(await next).toEqual(changeOf(6));
    await Promise.all([checks.close(), late.close()]);
  });

  it('ends the checks not walked yet when it closes, and refuses new ones', async () => {
    const { walks, find } = fakeWalks();
    const checks = new StoreChecks({ root: '/nowhere', partitionOf: () => 0, find });
    const pending = checks.check(0, log('log 0'), running());
    await checks.close();
    await expect(pending).rejects.toThrow('the node is stopping');
    await expect(checks.check(1, log('log 1'), running())).rejects.toThrow('the node is stopping');
    await sleep(150);
    expect(walks).toHaveLength(0);
  });
});
