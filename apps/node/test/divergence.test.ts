import { makeTxId } from '@pfs/txlog';
import { describe, expect, it } from 'vitest';
import { divergencePoint } from '../src/divergence.ts';

describe('divergencePoint', () => {
  const history = new Map([
    [1n, makeTxId(1, 8)],
    [2n, makeTxId(2, 3)],
  ]);
  it.each([
    ['an empty log', 0n, 3n, undefined],
    ['a replica behind the end of its generation', makeTxId(1, 5), 3n, undefined],
    ['a log ending exactly at the recorded end', makeTxId(1, 8), 3n, undefined],
    ['an old master past the end of generation 1', makeTxId(1, 10), 3n, makeTxId(1, 8)],
    ['an old master past the end of generation 2', makeTxId(2, 4), 3n, makeTxId(2, 3)],
    ['records of the current generation', makeTxId(3, 9), 3n, undefined],
    ['a generation without recorded end', makeTxId(5, 1), 7n, undefined],
  ])('%s', (_, last, current, want) => {
    expect(divergencePoint(last, history, current)).toBe(want);
  });
});
