import { type LogRecord, makeTxId } from '@pfs/txlog';
import { describe, expect, it } from 'vitest';
import { checkContinues } from '../src/batch.ts';

const put = (txid: bigint): LogRecord => ({
  txid,
  kind: 'put',
  path: 'a',
  size: 1n,
  mtimeNs: 0n,
  sha256: '0'.repeat(64),
  previousTxid: 0n,
});
const marker = (generation: number, previousTxid: bigint): LogRecord => ({
  txid: makeTxId(generation, 0),
  kind: 'end-of-generation',
  path: '',
  size: 0n,
  mtimeNs: 0n,
  sha256: '',
  previousTxid,
});

describe('checkContinues', () => {
  it('takes records in increasing order, and a new generation opened where this log ends', () => {
    expect(() =>
      checkContinues(makeTxId(1, 50), [marker(2, makeTxId(1, 50)), put(makeTxId(2, 1))]),
    ).not.toThrow();
    expect(() =>
      checkContinues(makeTxId(1, 49), [put(makeTxId(1, 50)), marker(2, makeTxId(1, 50))]),
    ).not.toThrow();
    expect(() => checkContinues(0n, [marker(1, 0n), put(makeTxId(1, 1))])).not.toThrow();
  });

  it('refuses a record that does not come after the last one', () => {
    expect(() => checkContinues(makeTxId(1, 5), [put(makeTxId(1, 5))])).toThrow(
      expect.objectContaining({ code: 'NOT_INCREASING' }),
    );
  });

  it('refuses a new generation opened after records this log holds and the source cut (a fenced master’s)', () => {
    // This log holds 1:51..1:60, which the source, since cut back to 1:50, never agreed to.
    expect(() => checkContinues(makeTxId(1, 60), [marker(2, makeTxId(1, 50)), put(makeTxId(2, 1))])).toThrow(
      expect.objectContaining({
        code: 'DIVERGED',
        message:
          "source's 2:0 follows 1:50 in its log, but 1:60 here: this log holds records the source's does not; they are cut when this node next follows a master",
      }),
    );
  });

  it("follows a marker the source's own log has after the same txid (a splice written before the check)", () => {
    const spliced = [put(makeTxId(1, 12)), marker(2, makeTxId(1, 10)), put(makeTxId(2, 1))];
    expect(() => checkContinues(makeTxId(1, 11), spliced)).toThrow(
      expect.objectContaining({ code: 'DIVERGED' }),
    );
    expect(() => checkContinues(makeTxId(1, 11), spliced, new Set([makeTxId(2, 0)]))).not.toThrow();
  });
});
