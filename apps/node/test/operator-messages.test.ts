import { describe, expect, it } from 'vitest';
import { describeWatcherError, withFix } from '../src/agent.ts';
import { WarningThrottle } from '../src/warning-throttle.ts';

describe('WarningThrottle', () => {
  it('lets one warning of a kind through per interval, and counts those held back', () => {
    let now = 0;
    const throttle = new WarningThrottle(10_000, () => now);
    expect(throttle.take('ENOSPC')).toEqual({ due: true, heldBack: 0 });
    now = 1;
    expect(throttle.take('ENOSPC')).toEqual({ due: false, heldBack: 1 });
    // Another kind has an interval of its own.
    expect(throttle.take('EACCES')).toEqual({ due: true, heldBack: 0 });
    now = 9_999;
    expect(throttle.take('ENOSPC')).toEqual({ due: false, heldBack: 2 });
    now = 10_000;
    expect(throttle.take('ENOSPC')).toEqual({ due: true, heldBack: 2 });
    expect(throttle.take('ENOSPC')).toEqual({ due: false, heldBack: 1 });
    throttle.forget('ENOSPC');
    expect(throttle.take('ENOSPC')).toEqual({ due: true, heldBack: 0 });
  });
});

describe('describeWatcherError', () => {
  it("tells inotify's watch limit from a full disk, and says how to raise it", () => {
    const limit = Object.assign(
      new Error("ENOSPC: System limit for number of file watchers reached, watch '/s/a'"),
      {
        code: 'ENOSPC',
      },
    );
    expect(describeWatcherError(limit)).toMatch(
      /^ENOSPC: System limit for number of file watchers reached, watch '\/s\/a': the kernel's limit of inotify watches is reached, not the disk; raise it \(sysctl fs\.inotify\.max_user_watches=524288\)/,
    );
    expect(describeWatcherError(new Error('EACCES: permission denied'))).toBe('EACCES: permission denied');
  });
});

describe('withFix', () => {
  const errno = (code: string, syscall: string, path?: string) =>
    Object.assign(new Error(`${code}: ${syscall}${path === undefined ? '' : ` '${path}'`}`), {
      code,
      syscall,
      ...(path === undefined ? {} : { path }),
    });

  it('adds the fix to a file system error in the data dir, and to no other', () => {
    expect(withFix(errno('EROFS', 'open', '/srv/pfs/changelog/0/x.log'), '/srv/pfs')).toMatchObject({
      code: 'DATA_DIR_UNUSABLE',
      message:
        "EROFS: open '/srv/pfs/changelog/0/x.log': the file system is mounted read-only: remount it read-write, or give another --data-dir",
    });
    // A port below 1024 (no path), a file elsewhere, a sibling whose name starts the same.
    for (const other of [
      errno('EACCES', 'listen'),
      errno('EACCES', 'open', '/etc/pfs.json'),
      errno('EACCES', 'mkdir', '/srv/pfs-other/x'),
    ]) {
      expect(withFix(other, '/srv/pfs')).toBe(other);
    }
  });
});
