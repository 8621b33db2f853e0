/** One update of `--info=progress2`: totals for the whole transfer, not per file. */
export interface Progress {
  /** Bytes transferred so far. */
  bytes: number;
  percent: number;
  /** As rsync prints it, e.g. "1.23MB/s". */
  rate: string;
  /** rsync prints the estimated time left while running and the elapsed time on the last line. */
  elapsed: string;
  /** Files transferred so far (xfr#N). */
  transferredFiles?: number;
  /** Entries still to check (to-chk=N/…, or ir-chk with incremental recursion). */
  toCheck?: number;
  /** Entries in the file list (…/N). */
  total?: number;
}

// `      1,234,567  45%    1.23MB/s    0:00:01 (xfr#12, to-chk=3/20)`; the part in parentheses
// is missing before the first file completes. The thousands separator follows the locale.
const LINE =
  /^\s*([\d,.']+)\s+(\d{1,3})%\s+(\S+\/s)\s+([\d?]+:[\d?]{2}:[\d?]{2})(?:\s+\((?:xfr#(\d+),\s*)?(?:to|ir)-chk=(\d+)\/(\d+)\))?\s*$/;

/** Parses one progress2 line (lines are separated by `\r`); anything else gives undefined. */
export function parseProgressLine(line: string): Progress | undefined {
  const match = LINE.exec(line);
  if (!match) return undefined;
  const progress: Progress = {
    bytes: Number(match[1]!.replace(/[,.']/g, '')),
    percent: Number(match[2]),
    rate: match[3]!,
    elapsed: match[4]!,
  };
  if (match[5] !== undefined) progress.transferredFiles = Number(match[5]);
  if (match[6] !== undefined) progress.toCheck = Number(match[6]);
  if (match[7] !== undefined) progress.total = Number(match[7]);
  return progress;
}
