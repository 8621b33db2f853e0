import { buildListArgs } from './args.ts';
import { unescapeRsyncBytes } from './itemize.ts';
import { LineSplitter } from './lines.ts';
import { checkOutcome } from './outcome.ts';
import { runRsync } from './run.ts';

export interface ListedEntry {
  /** The entry's name in the listed directory (unescaped). */
  name: string;
  kind: 'file' | 'directory' | 'other';
}

// `drwxr-xr-x          4,096 2026/11/26 00:55:17 name`: permissions, size (thousands separator
// of the locale), date, time, then the escaped name after exactly one space.
const LIST_LINE = /^([-dlcbps])[-rwxsStT]{9}\s+[\d,.']+ \d{4}\/\d{2}\/\d{2} \d{2}:\d{2}:\d{2} /;

/** One line of `rsync --list-only`; anything else (and the listed directory's own `.`) gives undefined. */
export function parseListLine(line: Buffer): ListedEntry | undefined {
  const match = LIST_LINE.exec(line.toString('latin1'));
  if (!match) return undefined;
  const bytes = unescapeRsyncBytes(line.subarray(match[0].length));
  const name = bytes.toString('utf8');
  if (name === '.' || name === '') return undefined;
  const type = match[1];
  // A name that is not UTF-8 cannot be listed back to rsync as it is: `other` (copied whole).
  if (!Buffer.from(name, 'utf8').equals(bytes)) return { name, kind: 'other' };
  return { name, kind: type === '-' ? 'file' : type === 'd' ? 'directory' : 'other' };
}

/**
 * The entries at the top of `source` (`rsync --list-only`, not recursive), less those matching
 * `exclude`. One connection; a bootstrap uses it to split its copy among several rsyncs.
 */
export async function listTopLevel(options: {
  source: string;
  exclude?: readonly string[];
  signal?: AbortSignal;
  rsyncBin?: string;
  ioTimeoutSeconds?: number;
}): Promise<ListedEntry[]> {
  const entries: ListedEntry[] = [];
  const stdout = new LineSplitter((line) => {
    const entry = parseListLine(line);
    if (entry !== undefined) entries.push(entry);
  });
  const run = await runRsync({
    bin: options.rsyncBin ?? 'rsync',
    args: buildListArgs(options),
    signal: options.signal,
    onStdout: (chunk) => stdout.push(chunk),
  });
  stdout.end();
  checkOutcome(run);
  return entries;
}
