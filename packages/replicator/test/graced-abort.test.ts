import { afterEach, describe, expect, it, vi } from 'vitest';
import { gracedAbort } from '../src/graced-abort.ts';

afterEach(() => {
  vi.useRealTimers();
});

describe('gracedAbort', () => {
  it('follows the parent at once until relaxed', () => {
    const parent = new AbortController();
    const graced = gracedAbort(parent.signal, 100);
    parent.abort(new Error('fenced'));
    expect(graced.signal.aborted).toBe(true);
    expect((graced.signal.reason as Error).message).toBe('fenced');
  });

  it('once relaxed, aborts only after the grace', () => {
    vi.useFakeTimers();
    const parent = new AbortController();
    const graced = gracedAbort(parent.signal, 100);
    graced.relax();
    parent.abort();
    vi.advanceTimersByTime(99);
    expect(graced.signal.aborted).toBe(false);
    vi.advanceTimersByTime(1);
    expect(graced.signal.aborted).toBe(true);
  });

  it('never aborts after dispose, and starts aborted under an aborted parent', () => {
    vi.useFakeTimers();
    const parent = new AbortController();
    const graced = gracedAbort(parent.signal, 100);
    graced.relax();
    parent.abort();
    graced.dispose();
    vi.advanceTimersByTime(1000);
    expect(graced.signal.aborted).toBe(false);
    expect(vi.getTimerCount()).toBe(0);
    expect(gracedAbort(parent.signal, 100).signal.aborted).toBe(true);
  });
});
