import { closeSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { TestkitError } from './errors.ts';
import { which } from './which.ts';

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

/**
 * Whether process group `pgid` still has a member that is not a zombie. A zombie cannot act,
 * and children orphaned by the group leader wait for PID 1 to reap them, which some container
 * inits do only every second or so. Without a readable /proc every member counts.
 */
export function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
  } catch (error) {
    // EPERM means members exist that we may not signal: still alive for our purposes.
    if ((error as NodeJS.ErrnoException).code === 'ESRCH') return false;
  }
  const members = groupMembers(pgid);
  return members === undefined || members.some((m) => m.state !== 'Z');
}

/** Members of a process group with their state letter, from /proc; undefined without /proc. */
export function groupMembers(pgid: number): { pid: number; state: string }[] | undefined {
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return undefined;
  }
  const members: { pid: number; state: string }[] = [];
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    // "pid (comm) state ppid pgrp …": comm may contain spaces and parentheses.
    const [state, , pgrp] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(pgrp) === pgid) members.push({ pid: Number(entry), state: state ?? '?' });
  }
  return members;
}

export async function spawnGroup(
  bin: string,
  args: readonly string[],
  options: { logFile: string; what: string },
): Promise<GroupProcess> {
  const resolved = which(bin);
  if (resolved === undefined) {
    throw new TestkitError(
      'TESTKIT_NOT_INSTALLED',
      `${options.what} is not installed (${bin} not found): run scripts/bootstrap.sh`,
    );
  }
  const subprocess = spawnDetached(resolved, args, options.logFile);
  const pid = subprocess.pid;
  if (pid === undefined) {
    const result = await subprocess;
    throw new TestkitError(
      'TESTKIT_START_FAILED',
      `could not spawn ${options.what} (${bin}): ${result.shortMessage}`,
      {
        cause: result.cause,
      },
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
        `${options.what} (process group ${pid}) survived SIGKILL for ${KILL_WAIT_MS} ms: look for a member stuck in D state (ps -g ${pid})`,
      );
    },
  };
}

/**
 * vitest ends its fork workers with a signal, so their 'exit' handlers never run. Where
 * util-linux's setpriv exists, the child gets a parent-death signal (PR_SET_PDEATHSIG, kept
 * across exec): it is sent `signal` when this process dies, whatever the way. Returns the file
 * and arguments to spawn.
 */
export function withParentDeathSignal(
  bin: string,
  args: readonly string[],
  signal: 'KILL' | 'TERM',
): [string, string[]] {
  setpriv ??= which('setpriv') ?? null;
  return setpriv ? [setpriv, ['--pdeathsig', signal, '--', bin, ...args]] : [bin, [...args]];
}

let setpriv: string | null | undefined;

function spawnDetached(bin: string, args: readonly string[], logFile: string) {
  const [file, argv] = withParentDeathSignal(bin, args, 'KILL');
  // The child writes its log straight into a file descriptor of its own: with execa's
  // { file } target the output would be piped through this process.
  const fd = openSync(logFile, 'a');
  try {
    // execa accepts any fd at run time; its types only list 3..9, hence the cast.
    const log = fd as 3;
    return execa(file, argv, {
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
