import { open, readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { TxLog } from '@pfs/txlog';
import { describe, expect, it } from 'vitest';
import { SEGMENT_MAGIC, scanSegment } from '../src/segment.ts';
import { put, tempDir } from './helpers.ts';

const SEGMENT = '0000000100000000.log';

/** A one-segment log of `n` records; returns its directory, bytes and frame offsets. */
async function segment(n: number) {
  const dir = await tempDir();
  const log = await TxLog.open(dir);
  await log.startGeneration(1n);
  for (let i = 0; i < n; i++) await log.appendChange(put(`record/${i}${'x'.repeat(i % 17)}`, i));
  await log.close();
  const bytes = await readFile(join(dir, SEGMENT));
  const whole = await scanSegment(dir, 1n << 32n);
  return { dir, bytes, offsets: whole.records.map((r) => r.offset) };
}

describe('scanSegment in chunks', () => {
  it('finds what a whole-file scan finds, however the file is damaged and however small the chunks', async () => {
    const { dir, bytes, offsets } = await segment(40);
    const file = join(dir, SEGMENT);
    const mid = offsets[20]!;
    const damaged: [string, Buffer][] = [
      ['intact', bytes],
      ['torn mid-frame', bytes.subarray(0, offsets[39]! + 30)],
      ['torn in a frame header', bytes.subarray(0, offsets[39]! + 5)],
      ['zero-filled tail', Buffer.concat([bytes, Buffer.alloc(700)])],
      [
        'zeros in the middle',
        Buffer.concat([bytes.subarray(0, mid), Buffer.alloc(300), bytes.subarray(mid)]),
      ],
      ['flipped payload byte mid-file', flip(bytes, mid + 30)],
      ['flipped payload byte of the last frame', flip(bytes, offsets[39]! + 30)],
      ['flipped length byte', flip(bytes, mid)],
    ];
    for (const [what, content] of damaged) {
      await writeFile(file, content);
      const whole = await scanSegment(dir, 1n << 32n);
      for (const chunkBytes of [1, 13, 90, 101, 256, 700, 1 << 20]) {
        for (const fromOffset of [undefined, SEGMENT_MAGIC.length, offsets[10]!]) {
          const expected = whole.records.filter((r) => r.offset >= (fromOffset ?? 0));
          const chunked = await scanSegment(dir, 1n << 32n, fromOffset, 1000, chunkBytes);
          expect({ what, chunkBytes, records: chunked.records, end: chunked.end }).toEqual({
            what,
            chunkBytes,
            records: expected,
            end: whole.end,
          });
          expect(chunked.size).toBe(content.length);
        }
      }
    }
  });

  it('stops after maxRecords, ending clean where it stopped', async () => {
    const { dir, offsets } = await segment(30);
    const scan = await scanSegment(dir, 1n << 32n, offsets[5], 7, 64);
    expect(scan.records.map((r) => r.offset)).toEqual(offsets.slice(5, 12));
    expect(scan.end).toEqual({ kind: 'clean', offset: offsets[12] });
  });

  it('ends where the file now ends when it is cut while being read', async () => {
    const { dir, offsets } = await segment(30);
    const file = join(dir, SEGMENT);
    // Cut the segment right after the scan has taken its size, as a concurrent truncateAfter can.
    const probe = await open(file, 'r');
    const proto = Object.getPrototypeOf(probe) as { stat: (...args: unknown[]) => Promise<unknown> };
    await probe.close();
    const realStat = proto.stat;
    proto.stat = async function (this: unknown, ...args: unknown[]) {
      const info = await realStat.apply(this, args);
      proto.stat = realStat;
      await truncate(file, offsets[10]!);
      return info;
    };
    try {
      const scan = await scanSegment(dir, 1n << 32n, undefined, 1000, 64);
      expect(scan.records.map((r) => r.offset)).toEqual(offsets.slice(0, 10));
      expect(scan.end).toEqual({ kind: 'clean', offset: offsets[10] });
    } finally {
      proto.stat = realStat;
    }
  });

  it('refuses a file without the magic', async () => {
    const { dir, bytes } = await segment(2);
    await writeFile(join(dir, SEGMENT), flip(bytes, 2));
    await expect(scanSegment(dir, 1n << 32n, undefined, 10, 64)).rejects.toMatchObject({
      code: 'TXLOG_CORRUPT',
    });
    await writeFile(join(dir, SEGMENT), bytes.subarray(0, 3));
    await expect(scanSegment(dir, 1n << 32n, undefined, 10, 64)).rejects.toMatchObject({
      code: 'TXLOG_CORRUPT',
    });
  });
});

function flip(bytes: Buffer, at: number): Buffer {
  const copy = Buffer.from(bytes);
  copy[at]! ^= 0x40;
  return copy;
}
