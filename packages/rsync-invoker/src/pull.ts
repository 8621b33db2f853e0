import { lstat, realpath, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { buildPullArgs, encodeFileList } from './args.ts';
import { CallbackGuard } from './callbacks.ts';
import { RsyncError } from './errors.ts';
import { classifyPullMessage, parseItemizeLine, parseSkippedLine } from './itemize.ts';
import { LineSplitter } from './lines.ts';
import { checkOutcome } from './outcome.ts';
import { runRsync } from './run.ts';
import { messagePrefixes, sourceKind } from './source.ts';

export interface PullBatchOptions {
  /** Local dir, `rsync://host:port/module/` daemon URL, or ssh spec `user@host:/path`. */
  source: string;
  /** Local directory receiving the files. */
  dest: string;
  /** Paths relative to source and dest; any byte but NUL, no `..`, not absolute. */
  paths: readonly string[];
  /** Kill the whole run after this long (RSYNC_TIMEOUT). Default: none; --timeout still applies. */
  timeoutMs?: number;
  /** rsync --timeout: exit 30 when no data moves for this long. Default 10. */
  ioTimeoutSeconds?: number;
  /** Default: paths.length. rsync counts every item it deletes, including a forced dir's contents. */
  maxDelete?: number;
  signal?: AbortSignal;
  rsyncBin?: string;
  extraArgs?: string[];
  /**
   * rsync's receiver fsyncs every file, one after another (default true). A caller that fsyncs
   * the received files itself, concurrently, can turn this off: sequential fsyncs cannot share a
   * journal commit and dominate the cost of a large batch of small files.
   */
  fsync?: boolean;
  /** rsync --temp-dir (see PullArgsInput.tempDir): an absolute directory on dest's file system. */
  tempDir?: string;
  /**
   * Called with each received file's path once its data has arrived, before rsync renames it
   * into place (its late-logged line). rsync's receiver takes files one at a time, so a call
   * also says that the file of the previous call is in place under its name. That holds when
   * this process's rsync is the receiver (daemon and ssh sources); for a local source, where
   * rsync's receiver is a child that does not log, the calls come after rsync has succeeded.
   */
  onFileReceived?: (path: string) => void;
}

export interface BatchResult {
  durationMs: number;
  /**
   * 0; 24 when source files vanished during the run (then `vanished` is true); 23 when the only
   * failures were listed paths with a file for a directory at the source (deleted on dest as
   * missing, see parseNotADirectoryLine).
   */
  exitCode: number;
  vanished: boolean;
  /** Paths that vanished at the source during the run: requeue them. */
  vanishedPaths: string[];
  /** Files received (itemize `>f`). */
  transferred: string[];
  /**
   * Files and dirs deleted on dest (itemize `*deleting`), without a trailing slash, and the files
   * deleted because a directory of their path is a file at the source.
   */
  deleted: string[];
  /** Listed paths that are not regular files at the source (symlinks…): not copied, dest untouched. */
  skipped: string[];
  /** True when more items changed than were kept in the lists above. */
  truncated: boolean;
}

/**
 * Makes dest match source for exactly the listed paths: copies those that exist at the source
 * and deletes on dest those that do not. One rsync process per batch.
 */
export async function pullBatch(options: PullBatchOptions): Promise<BatchResult> {
  // Nothing to do; an aborted signal still goes to runRsync, which rejects before spawning.
  if (options.paths.length === 0 && !options.signal?.aborted) return emptyResult();
  const { paths, onFileReceived, ...start } = options;
  // Its list is known: any --max-delete the caller asks for applies, even one below the count.
  return startWithLimit(
    { ...start, maxDelete: options.maxDelete ?? paths.length },
    Number.POSITIVE_INFINITY,
  ).run(paths, { onFileReceived });
}

export type StartPullOptions = Omit<PullBatchOptions, 'paths' | 'onFileReceived' | 'maxDelete'> & {
  /** The --max-delete of the run, fixed at start; also the most paths `run` accepts. */
  maxDelete: number;
};

/** A pull whose rsync is already running, waiting for its list of paths on stdin. */
export interface StartedPull {
  /** True once its rsync has exited (a refused connection, a timeout, the end of a run). */
  readonly exited: boolean;
  /**
   * Sends the list (at most `maxDelete` paths) and resolves as pullBatch does. Call once.
   * `signal` aborts this run as pullBatch's does (on top of the signal it was started with).
   */
  run(
    paths: readonly string[],
    options?: { onFileReceived?: ((path: string) => void) | undefined; signal?: AbortSignal | undefined },
  ): Promise<BatchResult>;
  /** Sends an empty list: rsync ends without touching anything. Never rejects. */
  discard(): Promise<void>;
}

/**
 * Starts a pull's rsync before its paths are known. rsync execs, connects to the source and
 * completes its handshake, then waits for the list on stdin; what is left once `run` sends it is
 * the transfer itself (~2 ms for a small file from a local daemon, against ~9 ms from a cold
 * start). An rsync left waiting longer than its --timeout exits on its own: discard it before.
 */
export function startPull(options: StartPullOptions): StartedPull {
  // Started before its list, its --max-delete must also bound the list: a path removed as a
  // directory full of files counts each of them, so more paths than that may delete more.
  return startWithLimit(options, options.maxDelete);
}

function startWithLimit(options: StartPullOptions, maxPaths: number): StartedPull {
  let sendList!: (list: Buffer) => void;
  const input = new Promise<Buffer>((resolve) => {
    sendList = resolve;
  });
  let used = false;
  let exited = false;
  let onFileReceived: ((path: string) => void) | undefined;
  const result = emptyResult();
  // Bounded: one line per listed path plus implied dirs and, with --force, a dir's contents.
  // Sized from the list once run() has it.
  let limit = 10_000;
  const keep = (list: string[], path: string) => {
    if (list.length < limit) list.push(path);
    else result.truncated = true;
  };
  const callbacks = new CallbackGuard();
  const receivedLive = sourceKind(options.source) !== 'local';
  const stdout = new LineSplitter((line) => {
    const entry = parseItemizeLine(line, { withBytes: true });
    if (entry?.kind === 'transferred') {
      keep(result.transferred, entry.path);
      if (receivedLive) callbacks.call(onFileReceived, entry.path);
    } else if (entry?.kind === 'deleted') {
      keep(result.deleted, entry.path);
    } else if (entry === undefined) {
      const skipped = parseSkippedLine(line);
      if (skipped !== undefined) keep(result.skipped, skipped);
    }
  });
  const prefixes = messagePrefixes(options.source);
  // Listed paths with a file for a directory at the source, and whether anything else failed.
  const notThere: string[] = [];
  let otherErrors = false;
  const stderr = new LineSplitter((line) => {
    const message = classifyPullMessage(line, prefixes);
    if (message.kind === 'vanished') keep(result.vanishedPaths, message.path);
    else if (message.kind === 'not-a-directory') notThere.push(message.path);
    else if (message.kind === 'other') otherErrors = true;
  });
  // What a run's own signal aborts, once it has one.
  const kill = new AbortController();
  const running = runRsync({
    bin: options.rsyncBin ?? 'rsync',
    args: buildPullArgs({
      source: options.source,
      dest: options.dest,
      count: options.maxDelete,
      maxDelete: options.maxDelete,
      ioTimeoutSeconds: options.ioTimeoutSeconds,
      extraArgs: options.extraArgs,
      fsync: options.fsync,
      tempDir: options.tempDir,
    }),
    input,
    signal: options.signal === undefined ? kill.signal : AbortSignal.any([options.signal, kill.signal]),
    timeoutMs: options.timeoutMs,
    onStdout: (chunk) => stdout.push(chunk),
    onStderr: (chunk) => stderr.push(chunk),
  }).finally(() => {
    exited = true;
  });
  // Observed here so that an rsync that fails before it is used is no unhandled rejection.
  running.catch(() => {});
  return {
    get exited() {
      return exited;
    },
    async run(paths, runOptions = {}) {
      if (used) throw new RsyncError('RSYNC_FAILED', 'a started pull runs one list only', false);
      used = true;
      const { signal } = runOptions;
      const onAbort = () => kill.abort(signal?.reason);
      signal?.addEventListener('abort', onAbort, { once: true });
      void running.finally(() => signal?.removeEventListener('abort', onAbort)).catch(() => {});
      if (signal?.aborted) {
        // Not one path reaches it: it ends (killed) without transferring anything.
        kill.abort(signal.reason);
        sendList(Buffer.alloc(0));
      }
      limit = Math.max(10_000, paths.length * 4);
      if (paths.length > maxPaths) {
        sendList(Buffer.alloc(0));
        throw new RsyncError(
          'RSYNC_FAILED',
          `${paths.length} paths for a pull started with --max-delete=${options.maxDelete}: start one for this batch`,
          false,
        );
      }
      let list: Buffer;
      try {
        list = encodeFileList(paths);
      } catch (error) {
        sendList(Buffer.alloc(0));
        throw error;
      }
      onFileReceived = runOptions.onFileReceived;
      sendList(list);
      const run = await running;
      stdout.end();
      stderr.end();
      // Exit 23 outranks 24: files may also have vanished.
      const { vanished } =
        run.exitCode === 23 &&
        !otherErrors &&
        (await deleteMissing(options.dest, paths, notThere, result, options.maxDelete))
          ? { vanished: result.vanishedPaths.length > 0 }
          : checkOutcome(run);
      if (!receivedLive) for (const path of result.transferred) callbacks.call(onFileReceived, path);
      callbacks.rethrow();
      result.durationMs = run.durationMs;
      result.exitCode = run.exitCode ?? 0;
      result.vanished = vanished;
      return result;
    },
    async discard() {
      used = true;
      sendList(Buffer.alloc(0));
      await running.catch(() => {});
    },
  };
}

/**
 * What --delete-missing-args does for a path missing at the source, done for those rsync failed
 * on instead (see parseNotADirectoryLine): each is deleted on dest, where it is a file. False,
 * and nothing deleted, unless every one was listed, none is a directory on dest (rsync's --force
 * would remove a whole tree there, which a caller that lists a path does not expect) nor under a
 * symlinked directory there, and --max-delete leaves room for them all.
 */
async function deleteMissing(
  dest: string,
  listed: readonly string[],
  paths: readonly string[],
  result: BatchResult,
  maxDelete: number,
): Promise<boolean> {
  if (paths.length === 0) return false;
  const wanted = new Set(listed);
  if (!paths.every((path) => wanted.has(path))) return false;
  const found = await Promise.all(paths.map((path) => lstat(join(dest, path)).catch(() => undefined)));
  if (found.some((info) => info?.isDirectory())) return false;
  const present = paths.filter((_, i) => found[i] !== undefined);
  if (result.deleted.length + present.length > maxDelete) return false;
  const realDest = await realpath(dest);
  for (const path of present) {
    const parent = dirname(path);
    if (parent !== '.' && (await realpath(join(dest, parent)).catch(() => '')) !== join(realDest, parent))
      return false;
  }
  for (const path of present) {
    await rm(join(dest, path), { force: true });
    result.deleted.push(path);
  }
  return true;
}

function emptyResult(): BatchResult {
  return {
    durationMs: 0,
    exitCode: 0,
    vanished: false,
    vanishedPaths: [],
    transferred: [],
    deleted: [],
    skipped: [],
    truncated: false,
  };
}
