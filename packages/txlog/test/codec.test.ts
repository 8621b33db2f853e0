import { randomBytes } from 'node:crypto';
import {
  decodeRecord,
  encodeFrame,
  encodeRecord,
  type LogRecord,
  makeTxId,
  scanFrames,
  TxlogError,
} from '@pfs/txlog';
import { describe, expect, it } from 'vitest';

const sample: LogRecord = {
  txid: makeTxId(7, 42),
  kind: 'put',
  path: 'dir/new\nline ü 日本.txt',
  size: 4096n,
  mtimeNs: 1_732_000_000_123_456_789n,
  sha256: 'ab'.repeat(32),
  previousTxid: 0n,
};

describe('record codec', () => {
  it('round-trips every kind', () => {
    const records: LogRecord[] = [
      sample,
      { ...sample, kind: 'delete', sha256: '', size: 0n },
      { ...sample, kind: 'end-of-generation', path: '', sha256: '', previousTxid: makeTxId(6, 9) },
    ];
    for (const record of records) expect(decodeRecord(encodeRecord(record))).toEqual(record);
  });

  it('refuses NUL, oversized paths and a missing hash', () => {
    expect(() => encodeRecord({ ...sample, path: 'a\0b' })).toThrow(TxlogError);
    expect(() => encodeRecord({ ...sample, path: 'x'.repeat(4097) })).toThrow(TxlogError);
    expect(() => encodeRecord({ ...sample, sha256: '' })).toThrow(TxlogError);
  });

  it('keeps a path that starts with U+FEFF as it is', () => {
    const record = { ...sample, path: '\uFEFFa' };
    expect(decodeRecord(encodeRecord(record))).toEqual(record);
  });

  it('refuses a payload with unknown flags or a path that is not UTF-8', () => {
    const flagged = encodeRecord(sample);
    flagged[1] = 1;
    expect(decodeRecord(flagged)).toBe('unknown record flags 1');
    const path = encodeRecord({ ...sample, path: 'ab' });
    path[path.length - 1] = 0xff;
    expect(decodeRecord(path)).toBe('path is not UTF-8');
  });

  it('scans frames back to back', () => {
    const frames = Buffer.concat(
      [1, 2, 3].map((seq) => encodeFrame(encodeRecord({ ...sample, txid: makeTxId(7, seq) }))),
    );
    const { records, end } = scanFrames(frames, 0);
    expect(records.map((r) => r.record.txid)).toEqual([makeTxId(7, 1), makeTxId(7, 2), makeTxId(7, 3)]);
    expect(end).toEqual({ kind: 'clean', offset: frames.length });
  });

  it('calls a flipped length bit corruption, whatever lost sector follows it', () => {
    const frames = Buffer.concat(
      Array.from({ length: 40 }, (_, i) =>
        encodeFrame(encodeRecord({ ...sample, txid: makeTxId(7, i + 1) })),
      ),
    );
    const second = scanFrames(frames, 0).records[1]!.offset;
    const bad = Buffer.from(frames);
    bad[second]! ^= 0x01;
    bad.fill(0, 1024, 1536);
    expect(scanFrames(bad, 0).end).toMatchObject({ kind: 'corrupt', offset: second });
  });

  it('calls a head crossing a sector boundary with only zeros before it a torn append', () => {
    // The second frame starts 6 bytes before the first sector boundary.
    const first = encodeFrame(encodeRecord({ ...sample, txid: makeTxId(7, 1), path: 'p'.repeat(426) }));
    expect(first.length).toBe(506);
    const frames = Buffer.concat([
      first,
      ...[2, 3].map((seq) => encodeFrame(encodeRecord({ ...sample, txid: makeTxId(7, seq) }))),
    ]);
    const torn = Buffer.from(frames);
    torn.fill(0, 506, 512);
    expect(scanFrames(torn, 0)).toMatchObject({
      records: [{ offset: 0 }],
      end: { kind: 'torn', offset: 506 },
    });
  });

  it('never throws on random bytes', () => {
    for (let i = 0; i < 3000; i++) {
      const junk = randomBytes(Math.floor(Math.random() * 400));
      const result = scanFrames(junk, 0);
      expect(['clean', 'torn', 'corrupt']).toContain(result.end.kind);
    }
  });

  it('never throws on a valid log with random bytes flipped', () => {
    const frames = Buffer.concat(
      Array.from({ length: 5 }, (_, seq) =>
        encodeFrame(encodeRecord({ ...sample, txid: makeTxId(7, seq + 1) })),
      ),
    );
    for (let i = 0; i < 3000; i++) {
      const copy = Buffer.from(frames);
      const at = Math.floor(Math.random() * copy.length);
      copy[at] = copy[at]! ^ (1 + Math.floor(Math.random() * 255));
      const result = scanFrames(copy, 0);
      // Every single-byte change is caught by one of the two checksums.
      expect(result.end.kind === 'clean' && result.records.length === 5).toBe(false);
    }
  });
});
