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

/** Whether `check` holds within `ms` (polled). */
async function within(ms: number, check: () => boolean): Promise<boolean> {
  const deadline = performance.now() + ms;
  while (!check()) {
    if (performance.now() > deadline) return false;
    await sleep(5);
  }
  return true;
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

  it('waits for the partitions expected to ask, but only so long', async () => {
    const { walks, find } = fakeWalks();
    const timing = { gatherMs: 100, expectedWaitMs: 1500, expectationsLifetimeMs: 10_000 };
    const checks = new StoreChecks({ root: '/nowhere', partitionOf: () => 0, find, timing });
    checks.expect(0);
    checks.expect(1);
    checks.expect(2);
    const zero = checks.check(0, log('log 0'), running());
    await sleep(300);
    // Partitions 1 and 2 have not asked yet: no walk.
    expect(walks).toHaveLength(0);
    const one = checks.check(1, log('log 1'), running());
    // Partition 2 never asks: the walk goes without it once it has waited for it.
    await until(() => walks.length === 1);
    expect([...walks[0]!.logs.keys()]).toEqual([0, 1]);
    walks[0]!.finish();
    expect(await Promise.all([zero, one])).toEqual([changeOf(0), changeOf(1)]);
    // ... and is no longer waited for.
    const next = checks.check(3, log('log 3'), running());
    expect(await within(1000, () => walks.length === 2)).toBe(true);
    walks[1]!.finish();
    expect(await next).toEqual(changeOf(3));
    await checks.close();
  });

  it('no longer waits for an expected partition once the start is long past', async () => {
    const { walks, find } = fakeWalks();
    const timing = { gatherMs: 100, expectedWaitMs: 5000, expectationsLifetimeMs: 300 };
    const checks = new StoreChecks({ root: '/nowhere', partitionOf: () => 0, find, timing });
    checks.expect(5);
    await sleep(400);
    const late = checks.check(4, log('log 4'), running());
    expect(await within(2500, () => walks.length === 1)).toBe(true);
    walks[0]!.finish();
    expect(await late).toEqual(changeOf(4));
    await checks.close();
  });

  it('waits for a walk in progress when it closes', async () => {
    const { walks, find } = fakeWalks();
    const checks = new StoreChecks({ root: '/nowhere', partitionOf: () => 0, find });
    const walked = checks.check(0, log('log 0'), running());
    await until(() => walks.length === 1);
    let closed = false;
    const closing = checks.close().then(() => {
      closed = true;
    });
    await sleep(50);
    expect(closed).toBe(false);
    walks[0]!.finish();
    await closing;
    expect(await walked).toEqual(changeOf(0));
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
