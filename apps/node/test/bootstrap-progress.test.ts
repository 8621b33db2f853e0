import { describe, expect, it } from 'vitest';
import { BootstrapTracker, describeBootstrap } from '../src/bootstrap-progress.ts';

const update = (part: number, bytes: number, percent: number, transferredFiles?: number) => ({
  part,
  bytes,
  percent,
  rate: '1.00MB/s',
  elapsed: '0:00:01',
  ...(transferredFiles === undefined ? {} : { transferredFiles }),
});

describe('BootstrapTracker', () => {
  it('adds up the newest update of each rsync, in part order', () => {
    const tracker = new BootstrapTracker(1000, 5000);
    tracker.note(update(1, 500, 10, 5));
    tracker.note(update(0, 100, 3, 1));
    tracker.note(update(0, 2_000, 40, 20));
    expect(tracker.summary(3500)).toEqual({
      elapsedMs: 2500,
      files: 25,
      bytes: 2_500,
      parts: [
        { percent: 40, files: 20, bytes: 2_000 },
        { percent: 10, files: 5, bytes: 500 },
      ],
    });
  });

  it('counts no files for an update printed before the first file was done', () => {
    const tracker = new BootstrapTracker(0, 5000);
    tracker.note(update(0, 0, 0));
    expect(tracker.summary(10)).toMatchObject({ files: 0, bytes: 0, parts: [{ files: 0 }] });
  });

  it('has a log line due at the first update, then at most once per interval', () => {
    const tracker = new BootstrapTracker(0, 5000);
    expect(tracker.logDue(100)).toBe(true);
    expect(tracker.logDue(200)).toBe(false);
    expect(tracker.logDue(5099)).toBe(false);
    expect(tracker.logDue(5100)).toBe(true);
    expect(tracker.logDue(5200)).toBe(false);
  });
});

describe('describeBootstrap', () => {
  it("says files, megabytes, time and each rsync's percent", () => {
    expect(
      describeBootstrap({
        elapsedMs: 2_149,
        files: 12_000,
        bytes: 48_345_678,
        parts: [
          { percent: 40, files: 6_000, bytes: 0 },
          { percent: 45, files: 6_000, bytes: 0 },
        ],
      }),
    ).toBe('12000 files, 48.3 MB in 2.1 s (rsyncs at 40 %, 45 %)');
    expect(
      describeBootstrap({ elapsedMs: 0, files: 0, bytes: 0, parts: [{ percent: 0, files: 0, bytes: 0 }] }),
    ).toBe('0 files, 0.0 MB in 0.0 s (rsync at 0 %)');
    expect(describeBootstrap(new BootstrapTracker(0, 5000).summary(1_250))).toBe(
      'listing the store, 1.3 s so far',
    );
  });
});
