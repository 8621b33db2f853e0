import { buildSyncArgs, encodeFileList } from './args.ts';
import { CallbackGuard } from './callbacks.ts';
import { parseReceivedFileLine } from './itemize.ts';
import { LineSplitter } from './lines.ts';
import { checkOutcome } from './outcome.ts';
import { type Progress, parseProgressLine } from './progress.ts';
import { runRsync } from './run.ts';
import { sourceKind } from './source.ts';

export interface SyncTreeOptions {
  source: string;
  dest: string;
  /** rsync --exclude patterns, relative to the source root. */
  exclude?: string[];
  signal?: AbortSignal;
  timeoutMs?: number;
  ioTimeoutSeconds?: number;
  rsyncBin?: string;
  extraArgs?: string[];
  /**
   * Called with the newest progress2 update of each piece of rsync's output (not once per file);
   * an exception from it fails the sync after rsync ends.
   */
  onProgress?: (progress: Progress) => void;
  /**
   * Called with the relative path of each received regular file once it is in place under its
   * name (renamed from rsync's temp file); the last one only when rsync succeeds. From a local
   * source (rsync's receiver is then a child that does not log) all calls come after rsync has
   * succeeded. An exception from it fails the sync after rsync ends.
   */
  onFileInPlace?: (path: string) => void;
  /** rsync's receiver fsyncs every file, one after another (default true). */
  fsync?: boolean;
  /**
   * Copies only these top-level entries of the source, each recursively (see listTopLevel), and
   * deletes extraneous files only inside them: several such copies of disjoint entries into an
   * empty destination run side by side.
   */
  only?: readonly string[];
}

export interface SyncResult {
  durationMs: number;
  exitCode: number;
  vanished: boolean;
  /** The last progress update rsync printed, if any. */
  lastProgress: Progress | undefined;
}

/**
 * Makes dest an exact copy of the whole source tree (bootstrap of a new replica), deleting
 * extraneous files on dest. The caller must make sure the source is the real, current store:
 * an empty or unmounted source empties the destination.
 */
export async function syncTree(options: SyncTreeOptions): Promise<SyncResult> {
  let lastProgress: Progress | undefined;
  const callbacks = new CallbackGuard();
  // rsync's receiver prints a file's late-logged line after receiving its data but before
  // renaming the temp file into place, and handles files one at a time: the next file's line
  // (or rsync's successful exit) is what says the previous one is in place.
  let received: string | undefined;
  const live = sourceKind(options.source) !== 'local';
  const afterExit: string[] = [];
  // progress2 rewrites its line with \r and ends the last one with \n. It prints one after each
  // file; only the newest of each piece of output is parsed, since each line holds the totals.
  // Other lines may hold a '%' too (a directory's itemized line): the newest that parses wins.
  let progressLines: Buffer[] = [];
  const stdout = new LineSplitter(
    (line) => {
      const path = parseReceivedFileLine(line);
      if (path !== undefined) {
        if (!live) afterExit.push(path);
        else if (received !== undefined) callbacks.call(options.onFileInPlace, received);
        received = path;
        return;
      }
      if (line.includes(0x25 /* % */)) progressLines.push(line);
    },
    [0x0d, 0x0a],
  );
  const reportProgress = () => {
    const lines = progressLines;
    progressLines = [];
    for (let i = lines.length - 1; i >= 0; i--) {
      const progress = parseProgressLine(lines[i]!.toString('utf8'));
      if (progress === undefined) continue;
      lastProgress = progress;
      callbacks.call(options.onProgress, progress);
      return;
    }
  };
  const run = await runRsync({
    bin: options.rsyncBin ?? 'rsync',
    args: buildSyncArgs({ ...options, filesFrom: options.only !== undefined }),
    ...(options.only === undefined ? {} : { input: encodeFileList(options.only) }),
    signal: options.signal,
    timeoutMs: options.timeoutMs,
    onStdout: (chunk) => {
      stdout.push(chunk);
      reportProgress();
    },
  });
  stdout.end();
  reportProgress();
  const { vanished } = checkOutcome(run);
  if (!live) for (const path of afterExit) callbacks.call(options.onFileInPlace, path);
  else if (received !== undefined) callbacks.call(options.onFileInPlace, received);
  callbacks.rethrow();
  return { durationMs: run.durationMs, exitCode: run.exitCode ?? 0, vanished, lastProgress };
}
