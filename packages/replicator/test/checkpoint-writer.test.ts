import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { readCheckpoint } from '@pfs/txlog';
import { describe, expect, it, vi } from 'vitest';
import { CheckpointWriter } from '../src/checkpoint-writer.ts';
import { testDir, until } from './harness.ts';

/** How many checkpoint writes run at once, and the most seen. */
const writing = vi.hoisted(() => ({ now: 0, max: 0 }));
vi.mock('@pfs/txlog', async (importOriginal) => {
  const txlog = await importOriginal<typeof import('@pfs/txlog')>();
  return {
    ...txlog,
    writeCheckpoint: async (...args: Parameters<typeof txlog.writeCheckpoint>) => {
      writing.max = Math.max(writing.max, ++writing.now);
      try {
        await txlog.writeCheckpoint(...args);
      } finally {
        writing.now--;
      }
    },
  };
});

function checkpointDir(): Promise<string> {
  return testDir('pfs-checkpoint-');
}

describe('CheckpointWriter', () => {
  it('collapses txids noted during a write and ends at the last one, flushed or not', async () => {
    const file = join(await checkpointDir(), 'checkpoint');
    const errors: unknown[] = [];
    const writer = new CheckpointWriter(file, 0n, (error) => errors.push(error));
    // Notes land while a write runs (collapsed into the next) and after one has ended (a new one).
    for (let txid = 1n; txid <= 60n; txid++) {
      writer.note(txid);
      if (txid % 3n === 0n) await new Promise((resolve) => setTimeout(resolve, Number(txid % 4n)));
      else await new Promise((resolve) => setImmediate(resolve));
    }
    await until(async () => (await readCheckpoint(file)) === 60n, 'the last txid written without a flush');
    writer.note(61n);
    await writer.flush();
    expect(await readCheckpoint(file)).toBe(61n);
    expect(errors).toEqual([]);
  });

  it('reports a failing write once, keeps going, and writes again once the cause is gone', async () => {
    const dir = await checkpointDir();
    const file = join(dir, 'checkpoint');
    const errors: unknown[] = [];
    const writer = new CheckpointWriter(file, 0n, (error) => errors.push(error));
    writer.note(1n);
    await writer.flush();
    // A non-empty directory where the file goes: renaming the new checkpoint over it fails.
    await rm(file);
    await mkdir(join(file, 'blocked'), { recursive: true });
    for (let txid = 2n; txid <= 5n; txid++) {
      writer.note(txid);
      await writer.flush();
    }
    expect(errors).toHaveLength(1);
    await rm(file, { recursive: true });
    writer.note(6n);
    await writer.flush();
    expect(await readCheckpoint(file)).toBe(6n);
    // Failing again after a success is news again.
    await rm(file);
    await mkdir(join(file, 'blocked'), { recursive: true });
    writer.note(7n);
    await writer.flush();
    expect(errors).toHaveLength(2);
  });

  it('writes at most once per interval while txids keep coming, and at once when flushed', async () => {
    const file = join(await checkpointDir(), 'checkpoint');
    const writer = new CheckpointWriter(file, 0n, () => {}, { minIntervalMs: 60_000 });
    writer.note(1n);
    await until(async () => (await readCheckpoint(file)) === 1n, 'the first txid written at once');
    // A batch every few milliseconds: none of these may start a write of its own.
    for (let txid = 2n; txid <= 20n; txid++) {
      writer.note(txid);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    expect(await readCheckpoint(file)).toBe(1n);
    await writer.flush();
    expect(await readCheckpoint(file)).toBe(20n);
    // Nothing is left pending after a flush.
    writer.note(21n);
    await writer.flush();
    expect(await readCheckpoint(file)).toBe(21n);
  });

  it('writes a held-back txid once the interval has passed, without a flush', async () => {
    const file = join(await checkpointDir(), 'checkpoint');
    const writer = new CheckpointWriter(file, 0n, () => {}, { minIntervalMs: 200 });
    writer.note(1n);
    writer.note(2n);
    await until(async () => (await readCheckpoint(file)) === 2n, 'the held-back txid written');
  });

  it('never runs two writes of the checkpoint at once (they share its temp file)', async () => {
    const file = join(await checkpointDir(), 'checkpoint');
    const writer = new CheckpointWriter(file, 0n, () => {}, { minIntervalMs: 60_000 });
    writer.note(1n);
    await writer.flush();
    writing.max = 0;
    // Held back by the interval; then two flushes at once both find no write running.
    writer.note(2n);
    await Promise.all([writer.flush(), writer.flush()]);
    expect(writing.max).toBe(1);
    // A reset right after a flush that found a write held back.
    writer.note(3n);
    await Promise.all([writer.flush(), writer.reset(1n)]);
    expect(writing.max).toBe(1);
    expect(await readCheckpoint(file)).toBe(1n);
  });

  it('resets below what it wrote, after a write in flight', async () => {
    const file = join(await checkpointDir(), 'checkpoint');
    const writer = new CheckpointWriter(file, 0n, () => {});
    writer.note(9n);
    await writer.reset(4n);
    expect(await readCheckpoint(file)).toBe(4n);
    await writer.flush();
    expect(await readCheckpoint(file)).toBe(4n);
  });
});
