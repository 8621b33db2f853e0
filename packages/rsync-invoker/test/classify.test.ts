import { classifyExit } from '@pfs/rsync-invoker';
import { describe, expect, it } from 'vitest';

describe('classifyExit', () => {
  it('treats 0 as done and 24 (vanished source files) as done with vanished', () => {
    expect(classifyExit(0, undefined)).toEqual({ ok: true, vanished: false });
    expect(classifyExit(24, undefined)).toEqual({ ok: true, vanished: true });
  });

  it.each([
    [1, 'RSYNC_SYNTAX_OR_CONFIG', false],
    [2, 'RSYNC_PROTOCOL', false],
    [3, 'RSYNC_FILE_SELECTION', false],
    [4, 'RSYNC_UNSUPPORTED', false],
    [5, 'RSYNC_START_FAILED', true],
    [10, 'RSYNC_SOCKET', true],
    [11, 'RSYNC_FILE_IO', false],
    [12, 'RSYNC_STREAM', true],
    [14, 'RSYNC_IPC', true],
    [20, 'RSYNC_KILLED', true],
    [22, 'RSYNC_NO_MEMORY', true],
    [23, 'RSYNC_PARTIAL', true],
    [25, 'RSYNC_MAX_DELETE', false],
    [30, 'RSYNC_TIMEOUT', true],
    [35, 'RSYNC_CONNECT_TIMEOUT', true],
    [127, 'RSYNC_NOT_INSTALLED', false],
    [255, 'RSYNC_REMOTE_SHELL', true],
    [42, 'RSYNC_FAILED', false],
  ] as const)('exit %i is %s (retryable %s)', (exitCode, code, retryable) => {
    const verdict = classifyExit(exitCode, undefined);
    expect(verdict).toMatchObject({ ok: false, code, retryable });
    if (verdict.ok) return;
    expect(verdict.message).not.toContain('\n');
    expect(verdict.message).toContain(`exit ${exitCode}`);
  });

  it('names cause and fix in one line', () => {
    const maxDelete = classifyExit(25, undefined);
    expect(!maxDelete.ok && maxDelete.message).toMatch(
      /^refusing to delete more than --max-delete files: check/,
    );
    const missing = classifyExit(127, undefined);
    expect(!missing.ok && missing.message).toMatch(
      /^rsync is not installed: run scripts\/bootstrap\.sh \(apt-get install rsync\)/,
    );
  });

  it('reports a death by signal as RSYNC_KILLED', () => {
    expect(classifyExit(undefined, 'SIGKILL')).toMatchObject({
      ok: false,
      code: 'RSYNC_KILLED',
      retryable: true,
    });
    expect(classifyExit(undefined, undefined)).toMatchObject({ ok: false, code: 'RSYNC_FAILED' });
  });
});
