import { describe, expect, it } from 'vitest';
import { noneMatchHits, parseRange, unsupportedWritePrecondition } from '../src/range.ts';

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
  const etag = '"ab12"';
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
    expect(noneMatchHits(header, etag)).toBe(want);
  });
});

describe('unsupportedWritePrecondition', () => {
  it.each([
    ['PUT', {}, undefined],
    ['PUT', { 'if-none-match': '*' }, undefined],
    ['PUT', { 'if-none-match': '"ab12"' }, 'if-none-match'],
    ['PUT', { 'if-match': '"ab12"' }, 'if-match'],
    ['PUT', { 'if-match': '*' }, 'if-match'],
    ['PUT', { 'if-unmodified-since': 'Tue, 01 Jan 2030 00:00:00 GMT' }, 'if-unmodified-since'],
    ['DELETE', {}, undefined],
    ['DELETE', { 'if-none-match': '*' }, 'if-none-match'],
    ['DELETE', { 'if-match': '"ab12"' }, 'if-match'],
  ] as const)('%s with %j', (method, headers, want) => {
    expect(unsupportedWritePrecondition(method, headers)).toBe(want);
  });
});
