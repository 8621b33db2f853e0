import { describe, expect, it } from 'vitest';
import {
  namesAnyVersion,
  noneMatchHits,
  parseRange,
  unsupportedWritePrecondition,
  writePreconditionOf,
} from '../src/range.ts';

describe('parseRange', () => {
  it.each([
    [undefined, 10, undefined],
    ['bytes=0-3', 10, { start: 0, end: 3 }],
    ['bytes=4-', 10, { start: 4, end: 9 }],
    ['bytes=-3', 10, { start: 7, end: 9 }],
    ['bytes=-30', 10, { start: 0, end: 9 }],
    ['bytes=5-100', 10, { start: 5, end: 9 }],
    ['bytes=10-', 10, 'unsatisfiable'],
    ['bytes=5-2', 10, 'unsatisfiable'],
    ['bytes=-0', 10, 'unsatisfiable'],
    ['bytes=0-1,3-4', 10, undefined],
    ['items=0-1', 10, undefined],
    ['bytes=-', 10, undefined],
  ] as const)('%s of %d bytes', (header, size, want) => {
    expect(parseRange(header, size)).toEqual(want);
  });
});

describe('noneMatchHits', () => {
  const sha256 = 'ab12';
  it.each([
    [undefined, false],
    ['"ab12"', true],
    ['*', true],
    [' * ', true],
    ['W/"ab12"', true],
    ['"x", "ab12"', true],
    ['"x",W/"ab12"', true],
    ['"x"', false],
    ['"ab1"', false],
    ['ab12', false],
    ['', false],
  ] as const)('%s', (header, want) => {
    expect(noneMatchHits(header, sha256)).toBe(want);
  });
});

describe('namesAnyVersion', () => {
  it.each([
    [undefined, false],
    ['*', true],
    [' * ', true],
    ['"x", *', true],
    ['"*"', false],
    ['W/"x"', false],
  ] as const)('%s', (header, want) => {
    expect(namesAnyVersion(header)).toBe(want);
  });
});

describe('unsupportedWritePrecondition', () => {
  it.each([
    [{}, undefined],
    [{ 'if-none-match': '*' }, undefined],
    [{ 'if-match': '"ab12"' }, undefined],
    [{ 'if-unmodified-since': 'Tue, 01 Jan 2030 00:00:00 GMT' }, 'if-unmodified-since'],
    [{ 'if-modified-since': 'Tue, 01 Jan 2030 00:00:00 GMT' }, 'if-modified-since'],
    [{ 'if-range': '"ab12"' }, 'if-range'],
  ] as const)('%j', (headers, want) => {
    expect(unsupportedWritePrecondition(headers)).toBe(want);
  });
});

describe('writePreconditionOf', () => {
  const a = 'a'.repeat(64);
  const b = 'b'.repeat(64);
  // What each precondition says of: no file, a file holding a, a file holding b.
  it.each([
    ['PUT', {}, undefined],
    ['PUT', { 'if-none-match': '*' }, undefined],
    ['PUT', { 'if-match': `"${a}"` }, [false, true, false]],
    ['PUT', { 'if-match': `"${b}", "${a}"` }, [false, true, true]],
    ['PUT', { 'if-match': `W/"${a}"` }, [false, false, false]],
    ['PUT', { 'if-match': '*' }, [false, true, true]],
    ['PUT', { 'if-none-match': `W/"${a}"` }, [true, false, true]],
    ['DELETE', { 'if-match': `"${a}"` }, [false, true, false]],
    ['DELETE', { 'if-none-match': '*' }, [true, false, false]],
    ['DELETE', { 'if-none-match': '"x", *' }, [true, false, false]],
    ['PUT', { 'if-none-match': '*, "x"' }, undefined],
    // Unquoted, as a write's answer gives the sha-256, and in capitals: the same tag.
    ['PUT', { 'if-match': a }, [false, true, false]],
    ['PUT', { 'if-match': `"${a.toUpperCase()}"` }, [false, true, false]],
    ['PUT', { 'if-match': 'not-a-tag' }, [false, false, false]],
    ['PUT', { 'if-match': `"${a}"`, 'if-none-match': `"${a}"` }, [false, false, false]],
  ] as const)('%s with %j', (method, headers, want) => {
    const check = writePreconditionOf(method, headers);
    expect(check === undefined ? undefined : [check(undefined), check(a), check(b)]).toEqual(want);
  });
});
