import { type ChildProcess, spawn } from 'node:child_process';

/**
 * Starts rsync processes from a small resident helper process instead of from this one.
 *
 * Why: Node starts a child with fork + exec, and a fork copies the page tables of the whole
 * process, whose pages the parent then faults on while the child execs; the parent's event loop
 * is blocked until the exec is done. Measured in a replicating agent (~125 MB resident, one rsync
 * per batch, through execa): 4–5.4 ms of blocked event loop and 2.2 ms of CPU per start. The
 * helper is a bare `node -e` with nothing loaded; the agent only exchanges a few IPC messages per
 * run (~0.4 ms) and is never blocked. The machine's CPU per start stays about the same (the
 * helper's spawn costs ~1.5 ms): what improves is the agent's event loop. docs/architecture.md
 * has the figures.
 *
 * Ownership: each process is started detached (the leader of its own process group) so the
 * caller can signal the whole group by pid. When this process goes away, however it dies, the
 * helper's IPC channel closes and it SIGKILLs every group it started, then exits: an agent that
 * was SIGKILLed leaves no rsync writing into its store.
 */

/** How the helper runs; plain CommonJS with no imports outside Node, started with `node -e`. */
const HELPER_SOURCE = `'use strict';
const { spawn } = require('node:child_process');
const running = new Map();
function killAll() {
  for (const child of running.values()) {
    try { process.kill(-child.pid, 'SIGKILL'); } catch {}
  }
}
// Waits (briefly) for the killed to be reaped here: exiting at once would leave them as zombies
// for whichever process adopts them.
let stopping = false;
function shutdown() {
  if (stopping) return;
  stopping = true;
  killAll();
  if (running.size === 0) process.exit(0);
  setInterval(() => { if (running.size === 0) process.exit(0); }, 5);
  setTimeout(() => process.exit(0), 1000);
}
function post(message) {
  if (!process.connected) return;
  // A send that fails means the caller is gone, as a disconnect does.
  process.send(message, (error) => { if (error) shutdown(); });
}
// A bulk copy prints two lines per file, and each message costs both processes more than the
// lines in it: past its first IMMEDIATE_CHUNKS pieces, a stream's output goes at most once a
// millisecond, joined. A small pull (whose late-logged lines say when its files are in place)
// never gets that far, so none of its lines is held up.
const IMMEDIATE_CHUNKS = 256;
function relay(type, id) {
  let pending = [];
  let timer;
  let sent = 0;
  let lastSent = -Infinity;
  const flush = () => {
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
    if (pending.length === 0) return;
    const data = pending.length === 1 ? pending[0] : Buffer.concat(pending);
    pending = [];
    sent++;
    lastSent = performance.now();
    post({ t: type, id, data });
  };
  const push = (chunk) => {
    pending.push(chunk);
    if (timer !== undefined) return;
    const wait = sent < IMMEDIATE_CHUNKS ? 0 : lastSent + 1 - performance.now();
    if (wait <= 0) flush();
    else timer = setTimeout(flush, wait);
  };
  return { push, flush };
}
process.on('disconnect', shutdown);
process.on('uncaughtException', (error) => {
  killAll();
  process.stderr.write(String(error && error.stack || error) + '\\n');
  process.exit(70);
});
// Signals meant for a whole process group or cgroup (a terminal's Ctrl-C, a service manager's
// SIGTERM) must not end the runs under the caller's graceful stop: the caller ends them, and
// this process ends when the caller's channel closes.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(signal, () => {});
process.on('message', (message) => {
  if (message.t === 'end') {
    const child = running.get(message.id);
    if (child !== undefined && child.stdin !== null) child.stdin.end(message.data);
    return;
  }
  let child;
  try {
    child = spawn(message.bin, message.args, {
      detached: true,
      stdio: [message.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
  } catch (error) {
    post({ t: 'fail', id: message.id, code: error.code, message: error.message });
    return;
  }
  if (child.pid === undefined) {
    child.once('error', (error) => post({ t: 'fail', id: message.id, code: error.code, message: error.message }));
    return;
  }
  running.set(message.id, child);
  // rsync may exit without reading its input (a refused connection).
  if (child.stdin !== null) child.stdin.on('error', () => {});
  child.on('error', () => {});
  post({ t: 'pid', id: message.id, pid: child.pid });
  const stdout = relay('out', message.id);
  const stderr = relay('err', message.id);
  child.stdout.on('data', stdout.push);
  child.stderr.on('data', stderr.push);
  // 'close' comes after both pipes ended, so every output message precedes it.
  child.on('close', (code, signal) => {
    running.delete(message.id);
    stdout.flush();
    stderr.flush();
    post({ t: 'exit', id: message.id, code, signal });
  });
});
`;

type HelperMessage =
  | { t: 'pid'; id: number; pid: number }
  | { t: 'fail'; id: number; code: string | undefined; message: string }
  | { t: 'out' | 'err'; id: number; data: Buffer }
  | { t: 'exit'; id: number; code: number | null; signal: NodeJS.Signals | null };

export interface LaunchRequest {
  bin: string;
  args: readonly string[];
  /** Whether stdin is a pipe that `endStdin` writes to and closes; otherwise it is /dev/null. */
  stdin: boolean;
  onStdout(chunk: Buffer): void;
  onStderr(chunk: Buffer): void;
}

export interface ProcessExit {
  /** Undefined when a signal ended it. */
  exitCode: number | undefined;
  signal: string | undefined;
}

export interface LaunchedProcess {
  /** The pid, which is also its process group id; rejects with LaunchError if it never ran. */
  readonly pid: Promise<number>;
  /** Once it has exited and its stdout and stderr have all been delivered. */
  readonly exited: Promise<ProcessExit>;
  /** Writes `data`, if any, to stdin and closes it. */
  endStdin(data?: Buffer): void;
  /**
   * SIGKILLs the helper that was asked to start this process, for a helper that does not answer
   * (stopped, or stuck): every run it had fails with LAUNCHER_LOST, and the next run starts a
   * new helper.
   */
  killLauncher(): void;
}

/**
 * `code` is the errno of a start that failed (`ENOENT`: no such binary), or `LAUNCHER_LOST`
 * when the helper went away before the process ended; its group may then still be running.
 */
export class LaunchError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'LaunchError';
    this.code = code;
  }
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(error: Error): void;
}

/** Promise.withResolvers, which Node 20 lacks; the promise never surfaces as unhandled. */
function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: Error) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {});
  return { promise, resolve, reject };
}

interface Run {
  request: LaunchRequest;
  started: Deferred<number>;
  exited: Deferred<ProcessExit>;
}

let helper: ChildProcess | undefined;
let helperStderr = '';
const runs = new Map<number, Run>();
let nextId = 1;

function startHelper(): ChildProcess {
  // NODE_OPTIONS could load a loader or a profiler into the helper and make it large again.
  const { NODE_OPTIONS: _, ...env } = process.env;
  const child = spawn(process.execPath, ['--max-semi-space-size=1', '-e', HELPER_SOURCE], {
    stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
    serialization: 'advanced',
    // Not in the caller's process group: a Ctrl-C on a terminal must not end it before the
    // caller's own graceful stop has ended its runs.
    detached: true,
    env,
  });
  helperStderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    helperStderr = (helperStderr + chunk.toString('utf8')).slice(-2000);
  });
  child.on('message', (message: HelperMessage) => onMessage(message));
  const lost = (cause: unknown) => {
    if (helper !== child) return;
    helper = undefined;
    const failure = new LaunchError(
      'LAUNCHER_LOST',
      `the rsync launcher process${child.pid === undefined ? '' : ` ${child.pid}`} exited (${String(cause)}${helperStderr === '' ? '' : `: ${helperStderr.trim().split('\n').at(-1)}`}); the next run starts a new one`,
      { cause },
    );
    for (const run of runs.values()) {
      run.started.reject(failure);
      run.exited.reject(failure);
    }
    runs.clear();
  };
  // Not 'exit': it can come before the last messages are read from the channel, and a run that
  // ended would be reported lost. The channel closes once everything in it was delivered.
  child.on('disconnect', () => lost('its channel closed'));
  // Only a helper that never started has no channel to close.
  child.on('error', (error) => {
    if (child.pid === undefined) lost(error);
  });
  // Idle, it must not keep this process alive: its channel is referenced only while runs are
  // active (launch, settle), and it is what reports the helper's end.
  child.unref();
  (child.stderr as { unref?: () => void } | null)?.unref?.();
  return child;
}

function onMessage(message: HelperMessage): void {
  const run = runs.get(message.id);
  if (run === undefined) return;
  switch (message.t) {
    case 'pid':
      run.started.resolve(message.pid);
      break;
    case 'out':
      run.request.onStdout(message.data);
      break;
    case 'err':
      run.request.onStderr(message.data);
      break;
    case 'fail': {
      settle(message.id);
      const failure = new LaunchError(message.code ?? 'ESPAWN', message.message);
      run.started.reject(failure);
      run.exited.reject(failure);
      break;
    }
    case 'exit':
      settle(message.id);
      run.exited.resolve({ exitCode: message.code ?? undefined, signal: message.signal ?? undefined });
      break;
  }
}

function settle(id: number): void {
  runs.delete(id);
  if (runs.size === 0) helper?.channel?.unref();
}

function send(message: object): void {
  const to = helper;
  to?.send(message, (error) => {
    // The channel broke: make sure the helper is gone, so that its channel's close settles every
    // run with LAUNCHER_LOST.
    if (error !== null && error !== undefined) to.kill('SIGKILL');
  });
}

/** Starts `request.bin` through the helper, starting the helper first if there is none. */
export function launch(request: LaunchRequest): LaunchedProcess {
  helper ??= startHelper();
  const id = nextId++;
  const run: Run = { request, started: deferred(), exited: deferred() };
  runs.set(id, run);
  helper.channel?.ref();
  send({ t: 'run', id, bin: request.bin, args: request.args, stdin: request.stdin });
  const owner = helper;
  return {
    killLauncher: () => {
      if (owner.exitCode === null && owner.signalCode === null) owner.kill('SIGKILL');
    },
    pid: run.started.promise,
    exited: run.exited.promise,
    endStdin: (data) => send({ t: 'end', id, data }),
  };
}

/** The helper's pid, if one runs (tests). */
export function launcherPid(): number | undefined {
  return helper?.pid;
}
