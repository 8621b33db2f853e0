import { buildSyncArgs } from './args.ts';
import { LineSplitter } from './lines.ts';
import { checkOutcome } from './outcome.ts';
import { type Progress, parseProgressLine } from './progress.ts';
import { runRsync } from './run.ts';

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
  /** Called for every progress2 update; an exception from it fails the sync after rsync ends. */
  onProgress?: (progress: Progress) => void;
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
  let callbackError: { error: unknown } | undefined;
  // progress2 rewrites its line with \r and ends the last one with \n.
  const stdout = new LineSplitter(
    (line) => {
      const progress = parseProgressLine(line.toString('utf8'));
      if (progress === undefined) return;
      lastProgress = progress;
      if (callbackError !== undefined) return;
      try {
        options.onProgress?.(progress);
      } catch (error) {
        // Throwing inside a stream 'data' handler would crash the process; report it at the end.
        callbackError = { error };
      }
    },
    [0x0d, 0x0a],
  );
  const run = await runRsync({
    bin: options.rsyncBin ?? 'rsync',
    args: buildSyncArgs(options),
    signal: options.signal,
    timeoutMs: options.timeoutMs,
    onStdout: (chunk) => stdout.push(chunk),
  });
  stdout.end();
  const { vanished } = checkOutcome(run);
  if (callbackError !== undefined) throw callbackError.error;
  return { durationMs: run.durationMs, exitCode: run.exitCode ?? 0, vanished, lastProgress };
}
