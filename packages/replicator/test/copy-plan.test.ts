import { describe, expect, it } from 'vitest';
import { splitCopy } from '../src/copy-plan.ts';

const dir = (name: string) => ({ name, kind: 'directory' as const });
const file = (name: string) => ({ name, kind: 'file' as const });

describe('splitCopy', () => {
  it('deals sorted top-level names round-robin among the copies', () => {
    expect(splitCopy([dir('d2'), dir('d0'), file('a'), dir('d1'), dir('d3')], 2)).toEqual([
      ['a', 'd1', 'd3'],
      ['d0', 'd2'],
    ]);
    expect(splitCopy([dir('x'), dir('y')], 4)).toEqual([['x'], ['y']]);
  });

  it('copies the whole tree with one rsync when a split would not help or could change what is copied', () => {
    expect(splitCopy(undefined, 2)).toBeUndefined();
    expect(splitCopy([], 2)).toBeUndefined();
    expect(splitCopy([dir('only')], 2)).toBeUndefined();
    expect(splitCopy([dir('a'), dir('b')], 1)).toBeUndefined();
    expect(splitCopy([dir('a'), { name: 'link', kind: 'other' }], 2)).toBeUndefined();
  });
});
