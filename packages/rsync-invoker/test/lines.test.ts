import { describe, expect, it } from 'vitest';
import { LineSplitter } from '../src/lines.ts';

function split(chunks: (string | Buffer)[], separators?: number[], maxLineBytes?: number): string[] {
  const lines: string[] = [];
  const splitter = new LineSplitter((line) => lines.push(line.toString('utf8')), separators, maxLineBytes);
  for (const chunk of chunks) splitter.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
  splitter.end();
  return lines;
}

describe('LineSplitter', () => {
  it('splits on every separator, in order, whichever comes first', () => {
    expect(split(['a\rb\nc\r\nd'], [0x0d, 0x0a])).toEqual(['a', 'b', 'c', '', 'd']);
    // Many of one separator and none of the other, and the other way round.
    expect(split(['1\n2\n3\n4\n'], [0x0d, 0x0a])).toEqual(['1', '2', '3', '4']);
    expect(split(['1\r2\r3\r'], [0x0d, 0x0a])).toEqual(['1', '2', '3']);
    expect(split(['x\ry\rz\n'], [0x0a])).toEqual(['x\ry\rz']);
  });

  it('joins a line cut between chunks, a multi-byte character included', () => {
    const bytes = Buffer.from('pré\nvu\n');
    // Cut inside the two bytes of "é".
    expect(split([bytes.subarray(0, 3), bytes.subarray(3, 5), bytes.subarray(5)])).toEqual(['pré', 'vu']);
    expect(split(['ab', 'c', '\n', '\nd', 'e'])).toEqual(['abc', '', 'de']);
  });

  it('emits a last line without separator only at the end, and nothing for an empty stream', () => {
    const lines: string[] = [];
    const splitter = new LineSplitter((line) => lines.push(line.toString()));
    splitter.push(Buffer.from('one\ntwo'));
    expect(lines).toEqual(['one']);
    splitter.end();
    expect(lines).toEqual(['one', 'two']);
    expect(split([])).toEqual([]);
  });

  it('cuts a line longer than the limit and goes on with the next one', () => {
    expect(split(['abcdef', 'gh\nok\n'], [0x0a], 4)).toEqual(['abcd', 'ok']);
  });
});
