import { describe, expect, it } from 'vitest';
import { previousRows, summarizeResult } from '../src/report.ts';

describe('bench:report', () => {
  it('keeps the rows of scenarios that have no result in this checkout', () => {
    const table = [
      '',
      'Machine: 2 × some CPU, 24 GiB, Node v20; everything on loopback.',
      '',
      '| scenario | command | measured (ms unless named) | params | date |',
      '| --- | --- | --- | --- | --- |',
      '| scale | `pnpm bench scale` | rss: 263 | {} | 2026-11-25 |',
      '| lag-200 | `pnpm bench lag-200` | lagMs: p50 37 | {"files":1000} | 2026-11-24 |',
      '',
    ].join('\n');
    expect([...previousRows(table)]).toEqual([
      ['scale', '| scale | `pnpm bench scale` | rss: 263 | {} | 2026-11-25 |'],
      ['lag-200', '| lag-200 | `pnpm bench lag-200` | lagMs: p50 37 | {"files":1000} | 2026-11-24 |'],
    ]);
  });

  it('summarizes a result one value a line, stats as percentiles', () => {
    expect(
      summarizeResult({
        scenario: 'x',
        params: { a: 1 },
        lagMs: { count: 3, p50: 1, p95: 2, p99: 3, max: 4 },
        nested: { putsPerSecond: 5 },
      }),
    ).toEqual(['lagMs: p50 1, p95 2, p99 3, max 4 (n=3)', 'nested putsPerSecond: 5']);
  });
});
