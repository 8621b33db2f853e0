import { readdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { NOT_INSTALLED_MESSAGE, RsyncError } from './errors.ts';

/** The only place that starts processes. Everything around it is pure and unit-tested. */
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
 * rsync forks (generator/receiver, and ssh for remote sources), and execa's kill, timeout and
 * cancelSignal reach only the direct child, orphaning the others, which would keep writing
 * after a fence. So abort and timeout are handled here: SIGTERM to the whole group, SIGKILL to
 * the group after KILL_AFTER_MS, and the promise settles only once no member is left.
 * Rejects with RSYNC_ABORTED, RSYNC_TIMEOUT or RSYNC_NOT_INSTALLED; exit codes are for the caller.
 */
export async function runRsync(request: RunRequest): Promise<RunResult> {
  if (request.signal?.aborted) throw stopped('aborted', request, undefined);
  const started = performance.now();
  const subprocess = execa(request.bin, request.args, {
    reject: false,
    detached: true,
    ...(request.input === undefined
      ? { stdin: 'ignore' as const }
      : Buffer.isBuffer(request.input)
        ? { input: request.input }
        : { stdin: 'pipe' as const }),
    // Not buffered by execa: exceeding its maxBuffer would kill rsync. We stream stdout to the
    // caller and keep a bounded tail of stderr ourselves.
    buffer: false,
    encoding: 'buffer',
    stripFinalNewline: true,
  });
  const pid = subprocess.pid;
  if (pid === undefined) {
    const result = await subprocess;
    const errno = (result.cause as NodeJS.ErrnoException | undefined)?.code ?? result.code;
    if (errno === 'ENOENT') {
      throw new RsyncError('RSYNC_NOT_INSTALLED', `${NOT_INSTALLED_MESSAGE} [${request.bin}]`, false, {
        cause: result.cause,
      });
    }
    throw new RsyncError('RSYNC_FAILED', `could not start ${request.bin}: ${result.shortMessage}`, false, {
      cause: result.cause,
    });
  }

  if (request.input !== undefined && !Buffer.isBuffer(request.input)) {
    const stdin = subprocess.stdin!;
    // rsync may exit before reading (a refused connection): its closed pipe is not our error.
    stdin.on('error', () => {});
    request.input.then(
      (input) => stdin.end(input),
      () => stdin.end(),
    );
  }

  let stderr = Buffer.alloc(0);
  subprocess.stdout.on('data', (chunk: Buffer) => request.onStdout?.(chunk));
  subprocess.stderr.on('data', (chunk: Buffer) => {
    request.onStderr?.(chunk);
    stderr = Buffer.concat([stderr, chunk]);
    if (stderr.length > STDERR_TAIL_BYTES) stderr = stderr.subarray(stderr.length - STDERR_TAIL_BYTES);
  });

  let reason: 'aborted' | 'timeout' | undefined;
  let leaderExited = false;
  let escalation: NodeJS.Timeout | undefined;
  // Set on 'exit', before the promise settles, so that a late abort does not signal a finished run.
  subprocess.once('exit', () => {
    leaderExited = true;
  });
  const terminate = (why: 'aborted' | 'timeout') => {
    if (reason !== undefined || leaderExited) return;
    reason = why;
    signalGroup(pid, 'SIGTERM');
    // rsync's SIGTERM handler sleeps 400 ms before it signals its own children.
    escalation = setTimeout(() => signalGroup(pid, 'SIGKILL'), KILL_AFTER_MS);
  };
  const onAbort = () => terminate('aborted');
  request.signal?.addEventListener('abort', onAbort, { once: true });
  const deadline =
    request.timeoutMs === undefined ? undefined : setTimeout(() => terminate('timeout'), request.timeoutMs);

  try {
    const result = await subprocess;
    leaderExited = true;
    if (reason !== undefined) {
      await waitGroupGone(pid);
      throw stopped(reason, request, tail(stderr));
    }
    return {
      exitCode: result.exitCode,
      signal: result.signal,
      stderr: tail(stderr),
      durationMs: performance.now() - started,
    };
  } finally {
    clearTimeout(deadline);
    clearTimeout(escalation);
    request.signal?.removeEventListener('abort', onAbort);
  }
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
