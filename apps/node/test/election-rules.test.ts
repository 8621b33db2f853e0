import { describe, expect, it } from 'vitest';
import { promotionRetryDelayMs, retryDelayMs } from '../src/partition-controller.ts';

describe('retryDelayMs', () => {
  it('retries a first failure soon and spaces out failures that keep coming, up to 5 s', () => {
    expect([1, 2, 3, 4, 5, 6, 7, 50].map(retryDelayMs)).toEqual([
      200, 400, 800, 1600, 3200, 5000, 5000, 5000,
    ]);
  });
});

describe('promotionRetryDelayMs', () => {
  it('keeps a node whose promotion failed out of elections for 2 s, doubling to 30 s', () => {
    expect([1, 2, 3, 4, 5, 6, 50].map(promotionRetryDelayMs)).toEqual([
      2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000,
    ]);
  });
});
