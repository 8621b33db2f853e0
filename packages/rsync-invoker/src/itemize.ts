/**
 * rsync prints names with unprintable bytes as `\#ooo` (octal), and a backslash that precedes
 * `#` as `\#134`, so an escaped name is unambiguous. Undoing it byte-wise and decoding the
 * bytes as UTF-8 gives back the exact name, whatever locale rsync ran under.
 */
export function unescapeRsyncName(raw: Buffer): string {
  return unescapeRsyncBytes(raw).toString('utf8');
}

/** The bytes of an escaped name, before decoding (see unescapeRsyncName). */
export function unescapeRsyncBytes(raw: Buffer): Buffer {
  const latin1 = raw
    .toString('latin1')
    .replace(/\\#([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8) & 0xff));
  return Buffer.from(latin1, 'latin1');
}

export type ItemizeEntry = { kind: 'transferred' | 'deleted' | 'other'; path: string };

const DELETING = '*deleting  ';
const ITEMIZE_WIDTH = 11;

/**
 * One line of `--itemize-changes --out-format='%i %n'`: `>f+++++++++ name` for a received file,
 * `*deleting   name` for a deletion, `cd+++++++++ dir/` and the like for the rest. Lines that
 * are not itemize lines (info messages such as "skipping non-regular file") give undefined.
 * With `withBytes`, the line is of LATE_OUT_FORMAT (`%i %b %n`): a byte count sits before the name.
 */
export function parseItemizeLine(
  line: Buffer,
  options: { withBytes?: boolean } = {},
): ItemizeEntry | undefined {
  if (line.length < ITEMIZE_WIDTH + 2 || line[ITEMIZE_WIDTH] !== 0x20) return undefined;
  const flags = line.subarray(0, ITEMIZE_WIDTH).toString('latin1');
  let nameStart = ITEMIZE_WIDTH + 1;
  if (options.withBytes) {
    const digitsStart = nameStart;
    while (nameStart < line.length && line[nameStart]! >= 0x30 && line[nameStart]! <= 0x39) nameStart++;
    if (nameStart === digitsStart || line[nameStart] !== 0x20 || nameStart + 1 >= line.length)
      return undefined;
    nameStart++;
  }
  const path = stripSlash(unescapeRsyncName(line.subarray(nameStart)));
  if (flags === DELETING) return { kind: 'deleted', path };
  if (!/^[<>ch.][fdLDS]/.test(flags)) return undefined;
  return { kind: flags.startsWith('>f') ? 'transferred' : 'other', path };
}

/**
 * One line of `--out-format='%i %b %n'` (LATE_OUT_FORMAT): the path of a received regular file,
 * undefined for any other line (directories, deletions, progress, messages).
 */
export function parseReceivedFileLine(line: Buffer): string | undefined {
  const entry = parseItemizeLine(line, { withBytes: true });
  return entry?.kind === 'transferred' ? entry.path : undefined;
}

/**
 * "file has vanished: "NAME"" (+ " (in module)" through a daemon) on stderr. rsync names the
 * file with the source dir in front (see messagePrefixes), which is stripped to give back the
 * listed relative path.
 */
export function parseVanishedLine(line: Buffer, prefixes: readonly string[] = []): string | undefined {
  const match = /^file has vanished: "(.*)"(?: \(in [^)]*\))?$/s.exec(line.toString('latin1'));
  return match ? listedName(match[1]!, prefixes) : undefined;
}

/**
 * `rsync: [sender] link_stat "NAME" (in module) failed: Not a directory (20)` on stderr: a listed
 * path one of whose directories is a file at the source, so that the path is not there either.
 * --delete-missing-args counts only ENOENT as missing (flist.c, send_file_list): this one fails
 * the run instead (exit 23), after the rest of the list was transferred. Matched on the errno,
 * not its text, which depends on the daemon's locale.
 */
function parseNotADirectoryLine(line: Buffer, prefixes: readonly string[] = []): string | undefined {
  const match = /^rsync: (?:\[sender\] )?link_stat "(.*)"(?: \(in [^)]*\))? failed: [^()]* \(20\)$/s.exec(
    line.toString('latin1'),
  );
  return match ? listedName(match[1]!, prefixes) : undefined;
}

/** What one line of a pull's stderr says, for deciding whether a run that exited 23 did its job. */
export type PullMessage =
  | { kind: 'vanished'; path: string }
  | { kind: 'not-a-directory'; path: string }
  /** rsync's closing line for exit 23, which names no file. */
  | { kind: 'partial-summary' }
  | { kind: 'blank' }
  /** Anything else: an error of some other file (not every one starts with `rsync: `). */
  | { kind: 'other' };

/** Classifies a line of a pull's stderr (pure). */
export function classifyPullMessage(line: Buffer, prefixes: readonly string[] = []): PullMessage {
  const vanished = parseVanishedLine(line, prefixes);
  if (vanished !== undefined) return { kind: 'vanished', path: vanished };
  const underFile = parseNotADirectoryLine(line, prefixes);
  if (underFile !== undefined) return { kind: 'not-a-directory', path: underFile };
  const text = line.toString('latin1');
  if (text.trim() === '') return { kind: 'blank' };
  if (/^rsync error: some files\/attrs were not transferred \(see previous errors\) \(code 23\)/.test(text))
    return { kind: 'partial-summary' };
  return { kind: 'other' };
}

/** A name quoted in an rsync message, as it was listed: unescaped, the source dir stripped. */
function listedName(quoted: string, prefixes: readonly string[]): string {
  let name = unescapeRsyncName(Buffer.from(quoted, 'latin1'));
  const prefix = prefixes.find((p) => name.startsWith(p));
  if (prefix !== undefined) name = name.slice(prefix.length);
  return stripSlash(name.replace(/^\/+/, ''));
}

/** `skipping non-regular file "NAME"` (stdout): a symlink, device or socket that was not copied. */
export function parseSkippedLine(line: Buffer): string | undefined {
  const match = /^skipping non-regular file "(.*)"$/s.exec(line.toString('latin1'));
  return match ? unescapeRsyncName(Buffer.from(match[1]!, 'latin1')) : undefined;
}

function stripSlash(path: string): string {
  return path.length > 1 && path.endsWith('/') ? path.slice(0, -1) : path;
}
