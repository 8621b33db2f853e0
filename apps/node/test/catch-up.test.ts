import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RecordSource } from '@pfs/replicator';
import { type TxId, TxLog } from '@pfs/txlog';
import { afterEach, describe, expect, it } from 'vitest';
import { catchUpWith } from '../src/catch-up.ts';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A master's log with `records` puts, and a replica's log holding the first `held` of them. */
async function logs(records: number, held: number) {
  const dir = await mkdtemp(join(tmpdir(), 'pfs-catch-up-'));
  const master = await TxLog.open(join(dir, 'master'));
  const replica = await TxLog.open(join(dir, 'replica'));
  cleanups.push(async () => {
    await master.close();
    await replica.close();
    await rm(dir, { recursive: true, force: true });
  });
  await master.startGeneration(1n);
  for (let i = 0; i < records; i++)
    await master.appendChange({ kind: 'put', path: `f${i}`, size: 1n, mtimeNs: 0n, sha256: 'ab'.repeat(32) });
  const all = await master.readAfter(0n, records + 1);
  for (const record of all.slice(0, held + 1)) await replica.appendRecord(record);
  return { master, replica, rest: all.slice(held + 1) };
}

/** The master as a replica sees it: what fetch answers is its last txid. */
function source(lastTxid: () => TxId | undefined, asked: TxId[] = []): RecordSource {
  return {
    filesSource: 'unused',
    description: 'the master',
    async fetch(after) {
      asked.push(after);
      return { records: [], generation: 1n, lastTxid: lastTxid() } as Awaited<
        ReturnType<RecordSource['fetch']>
      >;
    },
  };
}

describe('catchUpWith', () => {
  it("waits for the replica's log to reach the txid the master has now", async () => {
    const { master, replica, rest } = await logs(5, 2);
    const asked: TxId[] = [];
    const caughtUp = catchUpWith(
      source(() => master.lastTxid, asked),
      replica,
      2000,
      new AbortController().signal,
    );
    setTimeout(async () => {
      for (const record of rest) await replica.appendRecord(record);
    }, 50);
    expect(await caughtUp).toBe(true);
    expect(replica.lastTxid).toBe(master.lastTxid);
    expect(asked).toEqual([(1n << 32n) | 2n]);
  });

  it('says so at once when the replica is there already (a wait would outlast the test)', async () => {
    const { master, replica } = await logs(3, 3);
    const never = new AbortController().signal;
    expect(
      await catchUpWith(
        source(() => master.lastTxid),
        replica,
        60_000,
        never,
      ),
    ).toBe(true);
  });

  it('gives up at the deadline, or when the master names no last txid or cannot be asked', async () => {
    const { master, replica } = await logs(4, 1);
    const never = new AbortController().signal;
    expect(
      await catchUpWith(
        source(() => master.lastTxid),
        replica,
        100,
        never,
      ),
    ).toBe(false);
    expect(
      await catchUpWith(
        source(() => undefined),
        replica,
        100,
        never,
      ),
    ).toBe(false);
    const down: RecordSource = {
      filesSource: 'unused',
      description: 'a master that is down',
      fetch: async () => {
        throw new Error('connect ECONNREFUSED');
      },
    };
    expect(await catchUpWith(down, replica, 100, never)).toBe(false);
    const stopped = new AbortController();
    stopped.abort();
    expect(
      await catchUpWith(
        source(() => master.lastTxid),
        replica,
        5000,
        stopped.signal,
      ),
    ).toBe(false);
  });
});
