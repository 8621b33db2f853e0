import { buildPullArgs, encodeFileList } from './args.ts';
import { CallbackGuard } from './callbacks.ts';
import { parseItemizeLine, parseSkippedLine, parseVanishedLine } from './itemize.ts';
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
  /** 0, or 24 when source files vanished during the run (then `vanished` is true). */
  exitCode: number;
  vanished: boolean;
  /** Paths that vanished at the source during the run: requeue them. */
  vanishedPaths: string[];
  /** Files received (itemize `>f`). */
  transferred: string[];
  /** Files and dirs deleted on dest (itemize `*deleting`), without a trailing slash. */
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
  const input = encodeFileList(options.paths);
  const result: BatchResult = {
    durationMs: 0,
    exitCode: 0,
    vanished: false,
    vanishedPaths: [],
    transferred: [],
    deleted: [],
    skipped: [],
    truncated: false,
  };
  // Nothing to do; an aborted signal still goes to runRsync, which rejects before spawning.
  if (options.paths.length === 0 && !options.signal?.aborted) return result;

  // Bounded: one line per listed path plus implied dirs and, with --force, a dir's contents.
  const limit = Math.max(10_000, options.paths.length * 4);
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
      if (receivedLive) callbacks.call(options.onFileReceived, entry.path);
    } else if (entry?.kind === 'deleted') {
      keep(result.deleted, entry.path);
    } else if (entry === undefined) {
      const skipped = parseSkippedLine(line);
      if (skipped !== undefined) keep(result.skipped, skipped);
    }
  });
  const prefixes = messagePrefixes(options.source);
  const stderr = new LineSplitter((line) => {
    const path = parseVanishedLine(line, prefixes);
    if (path !== undefined) keep(result.vanishedPaths, path);
  });

  const run = await runRsync({
    bin: options.rsyncBin ?? 'rsync',
    args: buildPullArgs({
      source: options.source,
      dest: options.dest,
      count: options.paths.length,
      maxDelete: options.maxDelete,
      ioTimeoutSeconds: options.ioTimeoutSeconds,
      extraArgs: options.extraArgs,
      fsync: options.fsync,
    }),
    input,
    signal: options.signal,
    timeoutMs: options.timeoutMs,
    onStdout: (chunk) => stdout.push(chunk),
    onStderr: (chunk) => stderr.push(chunk),
  });
  stdout.end();
  stderr.end();
  const { vanished } = checkOutcome(run);
  if (!receivedLive) for (const path of result.transferred) callbacks.call(options.onFileReceived, path);
  callbacks.rethrow();
  result.durationMs = run.durationMs;
  result.exitCode = run.exitCode ?? 0;
  result.vanished = vanished;
  return result;
}
