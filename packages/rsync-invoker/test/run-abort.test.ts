import { afterEach, describe, expect, it, vi } from 'vitest';
import type { LaunchedProcess, LaunchRequest } from '../src/launcher.ts';

/** The launcher's reply for the one run under test, settled by the test. */
const reply: { pid?: (value: number) => void; fail?: (error: Error) => void } = {};
const killLauncher = vi.fn();

vi.mock('../src/launcher.ts', () => ({
  launch: (_request: LaunchRequest): LaunchedProcess => {
    const pid = new Promise<number>((resolve, reject) => {
      reply.pid = resolve;
      reply.fail = reject;
    });
    return {
      pid,
      exited: new Promise(() => {}),
      endStdin: () => {},
      killLauncher,
    } as unknown as LaunchedProcess;
  },
}));

const { KILL_AFTER_MS, runRsync } = await import('../src/run.ts');

afterEach(() => {
  vi.useRealTimers();
  killLauncher.mockClear();
});

describe('runRsync aborted before its process started', () => {
  it('does not kill the launcher when the start failed in the turn its grace ran out', async () => {
    // Only timers: the check that kills the launcher runs in a setImmediate after them.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const abort = new AbortController();
    const run = runRsync({ bin: 'rsync', args: [], signal: abort.signal });
    const settled = run.catch((error: Error) => error);
    abort.abort();
    vi.advanceTimersByTime(KILL_AFTER_MS);
    // The launcher answers that the start failed (EAGAIN under load) just then.
    reply.fail?.(Object.assign(new Error('spawn EAGAIN'), { code: 'EAGAIN' }));
    expect(await settled).toMatchObject({ code: 'RSYNC_ABORTED' });
    await new Promise((resolve) => setImmediate(resolve));
    // Other runs share the launcher: killing it would fail them all.
    expect(killLauncher).not.toHaveBeenCalled();
  });

  it('kills a launcher that has not answered by then', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const abort = new AbortController();
    const run = runRsync({ bin: 'rsync', args: [], signal: abort.signal }).catch((error: Error) => error);
    abort.abort();
    vi.advanceTimersByTime(KILL_AFTER_MS);
    await new Promise((resolve) => setImmediate(resolve));
    expect(killLauncher).toHaveBeenCalledTimes(1);
    // What the launcher's death then does to the run.
    reply.fail?.(new Error('the launcher died'));
    expect(await run).toMatchObject({ code: 'RSYNC_ABORTED' });
  });
});
