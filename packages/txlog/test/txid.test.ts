import {
  compareTxId,
  firstTxIdOf,
  formatTxId,
  generationOf,
  MAX_U32,
  makeTxId,
  nextTxId,
  parseTxId,
  sequenceOf,
  TxlogError,
  txIdToHex,
} from '@pfs/txlog';
import { describe, expect, it } from 'vitest';

describe('TxId', () => {
  it('packs generation high and sequence low', () => {
    const id = makeTxId(2, 17);
    expect(id).toBe((2n << 32n) | 17n);
    expect(generationOf(id)).toBe(2n);
    expect(sequenceOf(id)).toBe(17n);
    expect(formatTxId(id)).toBe('2:17');
  });

  it('handles the 32-bit boundaries', () => {
    const max = makeTxId(MAX_U32, MAX_U32);
    expect(max).toBe(0xffff_ffff_ffff_ffffn);
    expect(generationOf(max)).toBe(MAX_U32);
    expect(sequenceOf(max)).toBe(MAX_U32);
    expect(txIdToHex(max)).toBe('ffffffffffffffff');
    expect(txIdToHex(makeTxId(1, 1))).toBe('0000000100000001');
    expect(() => makeTxId(MAX_U32 + 1n, 0)).toThrow(TxlogError);
    expect(() => makeTxId(0, MAX_U32 + 1n)).toThrow(TxlogError);
    expect(() => makeTxId(-1, 0)).toThrow(TxlogError);
  });

  it('refuses to wrap the sequence into the next generation', () => {
    expect(nextTxId(makeTxId(3, 5))).toBe(makeTxId(3, 6));
    expect(nextTxId(makeTxId(3, MAX_U32 - 1n))).toBe(makeTxId(3, MAX_U32));
    expect(() => nextTxId(makeTxId(3, MAX_U32))).toThrow(
      expect.objectContaining({ code: 'TXLOG_SEQUENCE_OVERFLOW' }),
    );
  });

  it('parses both wire forms and rejects everything else', () => {
    expect(parseTxId('2:17')).toBe(makeTxId(2, 17));
    expect(parseTxId(String(makeTxId(2, 17)))).toBe(makeTxId(2, 17));
    expect(parseTxId('18446744073709551615')).toBe(0xffff_ffff_ffff_ffffn);
    for (const bad of [
      '',
      '-1',
      '1:',
      ':1',
      '18446744073709551616',
      '4294967296:0',
      '1.5',
      'abc',
      '0x10',
      ' 1',
    ]) {
      expect(() => parseTxId(bad), bad).toThrow(TxlogError);
    }
  });

  it('orders ids across generations', () => {
    expect(compareTxId(makeTxId(1, MAX_U32), firstTxIdOf(2))).toBe(-1);
    expect(compareTxId(firstTxIdOf(2), makeTxId(1, MAX_U32))).toBe(1);
    expect(compareTxId(firstTxIdOf(2), firstTxIdOf(2))).toBe(0);
  });
});
