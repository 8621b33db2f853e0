import { closeSync, openSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { TestkitError } from './errors.ts';

export interface ExitInfo {
  exitCode: number | undefined;
  signal: string | undefined;
}

/**
 * A child started as the leader of its own process group, so that stopping it also stops
 * whatever it forked (rsync's per-connection daemons): execa only ever signals the direct child.
 */
export interface GroupProcess {
  readonly pid: number;
  /** Settles when the leader has exited and been reaped; never rejects. */
  readonly exited: Promise<ExitInfo>;
  hasExited(): boolean;
  /** Sends `signal` to the whole group; a group that is gone is ignored. */
  signal(signal: NodeJS.Signals): void;
  /** SIGTERM to the group, SIGKILL after graceMs, then waits until no member is left. */
  stop(graceMs?: number): Promise<void>;
}

const POLL_MS = 20;
const KILL_WAIT_MS = 5000;

export function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (error) {
    // EPERM means members exist that we may not signal: still alive for our purposes.
    return (error as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

export async function spawnGroup(
  bin: string,
  args: readonly string[],
  options: { logFile: string; what: string },
): Promise<GroupProcess> {
  const subprocess = spawnDetached(bin, args, options.logFile);
  const pid = subprocess.pid;
  if (pid === undefined) {
    const result = await subprocess;
    const missing = result.code === 'ENOENT' || (result.cause as NodeJS.ErrnoException)?.code === 'ENOENT';
    throw new TestkitError(
      missing ? 'TESTKIT_NOT_INSTALLED' : 'TESTKIT_START_FAILED',
      missing
        ? `${options.what} is not installed (${bin}): run scripts/bootstrap.sh`
        : `could not spawn ${options.what} (${bin}): ${result.shortMessage}`,
      { cause: result.cause },
    );
  }
  let leaderExited = false;
  let gone = false;
  const exited = subprocess.then((result): ExitInfo => {
    leaderExited = true;
    return { exitCode: result.exitCode, signal: result.signal };
  });

  const isGone = () => {
    // Once the group was seen empty its id may be reused by an unrelated process group.
    if (!gone && leaderExited && !groupAlive(pid)) gone = true;
    return gone;
  };
  const waitGone = async (ms: number) => {
    const deadline = performance.now() + ms;
    while (!isGone()) {
      if (performance.now() >= deadline) return false;
      await sleep(POLL_MS);
    }
    return true;
  };
  const signal = (sig: NodeJS.Signals) => {
    if (isGone()) return;
    try {
      process.kill(-pid, sig);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
    }
  };

  return {
    pid,
    exited,
    hasExited: () => leaderExited,
    signal,
    async stop(graceMs = 3000) {
      signal('SIGTERM');
      if (await waitGone(graceMs)) return;
      signal('SIGKILL');
      if (await waitGone(KILL_WAIT_MS)) return;
      throw new TestkitError(
        'TESTKIT_STOP_FAILED',
        `${options.what} (process group ${pid}) survived SIGKILL for ${KILL_WAIT_MS} ms: look for zombies (no reaper as PID 1?)`,
      );
    },
  };
}

function spawnDetached(bin: string, args: readonly string[], logFile: string) {
  // The child writes its log straight into a file descriptor of its own: with execa's
  // { file } target the output would be piped through this process, and the service would
  // die of SIGPIPE once the test worker exits.
  const fd = openSync(logFile, 'a');
  try {
    // execa accepts any fd at run time; its types only list 3..9, hence the cast.
    const log = fd as 3;
    return execa(bin, args, {
      detached: true,
      reject: false,
      cleanup: false,
      stdin: 'ignore',
      stdout: log,
      stderr: log,
      buffer: false,
    });
  } finally {
    // spawn() has duplicated the descriptor into the child by the time execa() returns.
    closeSync(fd);
  }
}
