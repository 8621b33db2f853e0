import { RsyncError } from './errors.ts';
import { normalizeDest, normalizeSource, type SourceKind, sourceKind } from './source.ts';

export const DEFAULT_IO_TIMEOUT_SECONDS = 10;
export const CONNECT_TIMEOUT_SECONDS = 3;
/**
 * One line per item: the 11-character itemize string, the bytes transferred, the (escaped) name.
 * Asking for `%b` makes rsync print a file's line after receiving it instead of before (its
 * "late logging"), which is what lets a caller learn when files are in place (see syncTree and
 * pullBatch's onFileReceived).
 */
export const LATE_OUT_FORMAT = '%i %b %n';

export interface PullArgsInput {
  source: string;
  dest: string;
  /** Number of listed paths: the default --max-delete. */
  count: number;
  maxDelete?: number | undefined;
  ioTimeoutSeconds?: number | undefined;
  extraArgs?: readonly string[] | undefined;
  /** Receiver fsyncs each file (default). A caller that fsyncs the files itself may turn it off. */
  fsync?: boolean | undefined;
  /**
   * rsync --temp-dir: where the receiver writes each file before renaming it into place (on the
   * destination's file system). rsync removes its temp file when it is stopped cleanly but not
   * when it is SIGKILLed; kept out of the destination, such a leftover is never taken for data.
   */
  tempDir?: string | undefined;
}

/** The argv of a batch pull; the list itself goes to stdin (see encodeFileList). */
export function buildPullArgs(input: PullArgsInput): string[] {
  const kind = sourceKind(input.source);
  return [
    '--files-from=-',
    '--from0',
    '--delete-missing-args',
    '--force',
    '--ignore-times',
    // Small files, rewritten whole: block checksums of the old copy would only cost CPU.
    '--whole-file',
    '--times',
    '--perms',
    `--max-delete=${input.maxDelete ?? input.count}`,
    `--timeout=${input.ioTimeoutSeconds ?? DEFAULT_IO_TIMEOUT_SECONDS}`,
    ...(input.fsync === false ? [] : ['--fsync']),
    ...(input.tempDir === undefined ? [] : [`--temp-dir=${input.tempDir}`]),
    '--itemize-changes',
    `--out-format=${LATE_OUT_FORMAT}`,
    ...transportArgs(kind),
    ...(input.extraArgs ?? []),
    '--',
    normalizeSource(input.source),
    normalizeDest(input.dest),
  ];
}

export interface SyncArgsInput {
  source: string;
  dest: string;
  exclude?: readonly string[] | undefined;
  ioTimeoutSeconds?: number | undefined;
  extraArgs?: readonly string[] | undefined;
  /** Receiver fsyncs each file (default). A caller that syncs the file system afterwards may turn it off. */
  fsync?: boolean | undefined;
  /** Only the top-level entries listed on stdin (see encodeFileList), each recursively. */
  filesFrom?: boolean | undefined;
}

/** The argv of a whole-tree sync (bootstrap of a new replica). */
export function buildSyncArgs(input: SyncArgsInput): string[] {
  const kind = sourceKind(input.source);
  return [
    '--archive',
    // Regular files and directories only: the store replicates nothing else, and a symlink or a
    // FIFO copied into a replica's store would be read through (or block a read) there.
    '--no-links',
    '--no-specials',
    '--no-devices',
    // --files-from turns off the recursion --archive implies. An entry removed at the source
    // after it was listed is skipped (exit 0), as a whole-tree copy would never have seen it.
    ...(input.filesFrom === true
      ? ['--files-from=-', '--from0', '--recursive', '--ignore-missing-args']
      : []),
    '--delete',
    '--numeric-ids',
    '--info=progress2',
    '--no-inc-recursive',
    `--timeout=${input.ioTimeoutSeconds ?? DEFAULT_IO_TIMEOUT_SECONDS}`,
    ...(input.fsync === false ? [] : ['--fsync']),
    `--out-format=${LATE_OUT_FORMAT}`,
    ...transportArgs(kind),
    ...(input.exclude ?? []).map((pattern) => `--exclude=${pattern}`),
    ...(input.extraArgs ?? []),
    '--',
    normalizeSource(input.source),
    normalizeDest(input.dest),
  ];
}

/** The argv of a listing of the top of `source` (see listTopLevel). */
export function buildListArgs(input: {
  source: string;
  exclude?: readonly string[] | undefined;
  ioTimeoutSeconds?: number | undefined;
}): string[] {
  return [
    '--list-only',
    `--timeout=${input.ioTimeoutSeconds ?? DEFAULT_IO_TIMEOUT_SECONDS}`,
    ...transportArgs(sourceKind(input.source)),
    ...(input.exclude ?? []).map((pattern) => `--exclude=${pattern}`),
    '--',
    normalizeSource(input.source),
  ];
}

function transportArgs(kind: SourceKind): string[] {
  if (kind === 'daemon') {
    return [
      `--contimeout=${CONNECT_TIMEOUT_SECONDS}`,
      '--sockopts=TCP_NODELAY',
      // The daemon's motd would be printed on stdout, between the itemize lines.
      '--no-motd',
    ];
  }
  if (kind === 'ssh') return ['--rsh=ssh'];
  return [];
}

/**
 * The --files-from list: NUL-terminated entries, each written as `./<path>`. Without the `./`,
 * rsync silently drops entries that start with `#` or `;` (comment syntax, even with --from0),
 * and an entry starting with `-` stays a plain name either way.
 */
export function encodeFileList(paths: readonly string[]): Buffer {
  for (const path of paths) checkRelativePath(path);
  return Buffer.from(paths.map((path) => `./${path}\0`).join(''), 'utf8');
}

/** Refuses what would corrupt the NUL-separated list or reach outside the destination. */
export function checkRelativePath(path: string): void {
  const bad = (why: string) =>
    new RsyncError(
      'RSYNC_BAD_PATH',
      `path ${JSON.stringify(path)} ${why}: pass a relative path inside the store`,
      false,
    );
  if (typeof path !== 'string' || path.length === 0) throw bad('is empty');
  if (path.includes('\0')) throw bad('contains NUL');
  if (path.startsWith('/')) throw bad('is absolute');
  if (path.split('/').includes('..')) throw bad("has a '..' component");
}
