import { readdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { NOT_INSTALLED_MESSAGE, RsyncError } from './errors.ts';
import { type LaunchError, launch, type ProcessExit } from './launcher.ts';

/** The only place that runs rsync (through launcher.ts). Everything around it is pure and unit-tested. */
export interface RunRequest {
  bin: string;
  args: readonly string[];
  /**
   * Written to stdin, then stdin is closed; without it stdin is /dev/null. A promise lets rsync
   * start (exec, connect, handshake) before its input is known; it then blocks reading stdin.
   * A rejected promise closes stdin empty.
   */
  input?: Buffer | Promise<Buffer>;
  signal?: AbortSignal | undefined;
  timeoutMs?: number | undefined;
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
}

export interface RunResult {
  exitCode: number | undefined;
  signal: string | undefined;
  /** The last STDERR_TAIL_BYTES of stderr. */
  stderr: string;
  durationMs: number;
}

export const KILL_AFTER_MS = 1000;
const STDERR_TAIL_BYTES = 8 * 1024;
const GROUP_GONE_WAIT_MS = 5000;
const POLL_MS = 20;

/**
 * Runs rsync as the leader of its own process group and resolves with how it ended.
 *
 * rsync forks (generator/receiver, and ssh for remote sources): a signal to rsync alone would
 * orphan the others, which would keep writing after a fence. So abort and timeout signal the
 * whole group: SIGTERM, SIGKILL after KILL_AFTER_MS, and the promise settles only once no member
 * is left. The process is started by the launcher (launcher.ts), not from this process.
 * Rejects with RSYNC_ABORTED, RSYNC_TIMEOUT, RSYNC_NOT_INSTALLED or RSYNC_FAILED (it could not
 * start, or its launcher died under it); exit codes are for the caller.
 */
export async function runRsync(request: RunRequest): Promise<RunResult> {
  if (request.signal?.aborted) throw stopped('aborted', request, undefined);
  const started = performance.now();
  let stderr = Buffer.alloc(0);
  const launched = launch({
    bin: request.bin,
    args: request.args,
    stdin: request.input !== undefined,
    onStdout: (chunk) => request.onStdout?.(chunk),
    onStderr: (chunk) => {
      request.onStderr?.(chunk);
      stderr = Buffer.concat([stderr, chunk]);
      if (stderr.length > STDERR_TAIL_BYTES) stderr = stderr.subarray(stderr.length - STDERR_TAIL_BYTES);
    },
  });
  if (request.input !== undefined) {
    // A rejected promise closes stdin empty.
    Promise.resolve(request.input).then(
      (input) => launched.endStdin(input),
      () => launched.endStdin(),
    );
  }

  let pid: number | undefined;
  let reason: 'aborted' | 'timeout' | undefined;
  let ended = false;
  let escalation: NodeJS.Timeout | undefined;
  const terminate = (why: 'aborted' | 'timeout') => {
    if (reason !== undefined || ended) return;
    reason = why;
    if (pid !== undefined) {
      signalTerminate(pid);
      return;
    }
    // The group is signalled as soon as its pid comes. A launcher that does not answer within
    // KILL_AFTER_MS is killed, failing every run it has: this one then ends without it. The
    // check waits one turn of the event loop, so that a pid this process was too busy to read
    // yet is read first.
    escalation = setTimeout(
      () =>
        setImmediate(() => {
          if (pid === undefined && !ended) launched.killLauncher();
        }),
      KILL_AFTER_MS,
    );
  };
  const signalTerminate = (group: number) => {
    signalGroup(group, 'SIGTERM');
    // rsync's SIGTERM handler sleeps 400 ms before it signals its own children.
    escalation = setTimeout(() => signalGroup(group, 'SIGKILL'), KILL_AFTER_MS);
  };
  const onAbort = () => terminate('aborted');
  request.signal?.addEventListener('abort', onAbort, { once: true });
  const deadline =
    request.timeoutMs === undefined ? undefined : setTimeout(() => terminate('timeout'), request.timeoutMs);

  try {
    try {
      pid = await launched.pid;
    } catch (error) {
      ended = true;
      if (reason !== undefined) throw stopped(reason, request, undefined);
      throw notStarted(request, error as LaunchError);
    }
    if (reason !== undefined) {
      clearTimeout(escalation);
      signalTerminate(pid);
    }
    let exit: ProcessExit;
    try {
      exit = await launched.exited;
    } catch (error) {
      // The launcher died: nothing reports on this group any more; waitGroupGone kills what
      // is left of it.
      ended = true;
      await waitGroupGone(pid);
      if (reason !== undefined) throw stopped(reason, request, tail(stderr));
      throw new RsyncError('RSYNC_FAILED', `rsync was killed because ${(error as Error).message}`, true, {
        cause: error,
        stderr: tail(stderr),
      });
    }
    ended = true;
    if (reason !== undefined) {
      await waitGroupGone(pid);
      throw stopped(reason, request, tail(stderr));
    }
    return {
      exitCode: exit.exitCode,
      signal: exit.signal,
      stderr: tail(stderr),
      durationMs: performance.now() - started,
    };
  } finally {
    clearTimeout(deadline);
    clearTimeout(escalation);
    request.signal?.removeEventListener('abort', onAbort);
  }
}

function notStarted(request: RunRequest, error: LaunchError): RsyncError {
  if (error.code === 'ENOENT') {
    // A path of the caller's choosing that is not there is a wrong path, not a missing package.
    const message = request.bin.includes('/')
      ? `${request.bin} does not exist: give the path of an rsync binary (--rsync-bin), or install rsync`
      : `${NOT_INSTALLED_MESSAGE} [${request.bin}]`;
    return new RsyncError('RSYNC_NOT_INSTALLED', message, false, { cause: error });
  }
  return new RsyncError(
    'RSYNC_FAILED',
    `could not start ${request.bin}: ${error.message}`,
    error.code === 'LAUNCHER_LOST',
    {
      cause: error,
    },
  );
}

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
  }
}

/**
 * Whether the group has a member that is not a zombie. rsync's children outlive a killed leader
 * as orphans, and PID 1 in a container may reap them only every second or so; as zombies they
 * can no longer write anything. Without a readable /proc, every member counts.
 */
function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ESRCH') return false;
  }
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return true;
  }
  return entries.some((entry) => {
    if (!/^\d+$/.test(entry)) return false;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      return false;
    }
    // "pid (comm) state ppid pgrp …": comm may contain spaces and parentheses.
    const [state, , pgrp] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(pgrp) === pgid && state !== 'Z';
  });
}

/** After the leader died: wait for its children, SIGKILLing the group again if they linger. */
async function waitGroupGone(pgid: number): Promise<void> {
  const deadline = performance.now() + GROUP_GONE_WAIT_MS;
  let killAgainAt = performance.now() + KILL_AFTER_MS;
  while (groupAlive(pgid) && performance.now() < deadline) {
    if (performance.now() >= killAgainAt) {
      signalGroup(pgid, 'SIGKILL');
      killAgainAt = Number.POSITIVE_INFINITY;
    }
    await sleep(POLL_MS);
  }
}

function stopped(reason: 'aborted' | 'timeout', request: RunRequest, stderr: string | undefined): RsyncError {
  if (reason === 'timeout') {
    return new RsyncError(
      'RSYNC_TIMEOUT',
      `rsync did not finish within ${request.timeoutMs} ms and was killed: check the peer or raise timeoutMs`,
      true,
      { stderr: stderr ?? '' },
    );
  }
  return new RsyncError(
    'RSYNC_ABORTED',
    'rsync was aborted by the caller (AbortSignal): nothing to fix unless the abort was unexpected',
    false,
    { stderr: stderr ?? '', cause: request.signal?.reason },
  );
}

function tail(buffer: Buffer): string {
  return buffer.toString('utf8').trimEnd();
}
