import { type FileHandle, lstat, mkdir, open, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { findInStore, firstParentNotADirectory, quarantineFile } from '@pfs/filestore';
import { formatTxId, fsyncDir, generationOf, type LogRecord, type TxId, type TxLog } from '@pfs/txlog';

/**
 * A returning (or fenced) old master may hold records the cluster never agreed to: those past the
 * recorded end of their generation (`history/<g>` in etcd), written while it no longer held the
 * mastership or not drained by its successor (Kafka's leader-epoch truncation). Before following
 * the new master, the node cuts that suffix from its log and moves the files it touched to
 * `quarantine/<generation>/files/<path>`, listed in `quarantine/<generation>/MANIFEST.jsonl`. Nothing is
 * deleted.
 */

/** The end of the log the cluster agrees with: how far the suffix must be cut, or undefined (pure). */
export function divergencePoint(
  lastTxid: TxId,
  history: ReadonlyMap<bigint, bigint>,
  currentGeneration: bigint,
): TxId | undefined {
  if (lastTxid === 0n) return undefined;
  const generation = generationOf(lastTxid);
  if (generation >= currentGeneration) return undefined;
  const end = history.get(generation);
  return end !== undefined && lastTxid > end ? end : undefined;
}

/**
 * Whether the cluster agrees with `record`: false for one past the recorded end of its ended
 * generation (pure). A new master drains its peers up to the first record it is not agreed with:
 * a fenced old master still reports, and serves, records it wrote after its successor took over.
 */
export function agreedByHistory(
  record: { txid: TxId },
  history: ReadonlyMap<bigint, bigint>,
  currentGeneration: bigint,
): boolean {
  const generation = generationOf(record.txid);
  if (generation >= currentGeneration) return true;
  const end = history.get(generation);
  return end === undefined || record.txid <= end;
}

/**
 * Another partition's file in the way of putting a file at `path`: one at a parent of it, or one
 * under a directory at `path` (walked whole). Undefined when there is none. Bringing the file
 * back (rsync --force) would delete it, and setting it aside would leave that partition's log
 * saying it is here, which a promotion of that partition here would log as a delete.
 */
export async function foreignFileInTheWay(
  fileStore: string,
  path: string,
  owns: (path: string) => boolean,
): Promise<string | undefined> {
  const parent = await firstParentNotADirectory(fileStore, path);
  if (parent !== undefined && !owns(parent.parent)) return parent.parent;
  return findInStore(fileStore, path, (file) => !owns(file));
}

/** A path cannot be brought back as a file for now: `foreign`, another partition's file, is in its way. */
export class ForeignFileInTheWay extends Error {
  readonly code = 'FOREIGN_FILE_IN_THE_WAY';
  constructor(
    readonly path: string,
    readonly foreign: string,
  ) {
    super(
      `${JSON.stringify(path)} cannot be brought back as a file: ${JSON.stringify(foreign)}, a file of another partition, is in its way; waiting for that partition to remove it as it catches up (if both are current, a file and a directory were written there through two partitions' masters: delete one of them)`,
    );
    this.name = 'ForeignFileInTheWay';
  }
}

export interface QuarantineEntry {
  generation: string;
  txid: string;
  txidText: string;
  kind: string;
  path: string;
  size: string;
  sha256: string;
  /** Where the file went, or null when there was no file (a divergent delete). */
  quarantinedAs: string | null;
  at: string;
}

/**
 * Cuts every divergent suffix of `log`, quarantining the files it touched first and then letting
 * `restore` pull the agreed versions of those paths from the current master. The log is cut last,
 * so a failure part-way leaves the divergence to be found (and handled, losing nothing) again.
 */
export async function cutDivergentSuffix(args: {
  log: TxLog;
  history: ReadonlyMap<bigint, bigint>;
  currentGeneration: bigint;
  fileStore: string;
  quarantineDir: string;
  restore: (paths: string[]) => Promise<void>;
  /**
   * Whether a store path is this log's partition's. Given, a path that another partition's
   * file is in the way of (see foreignFileInTheWay) stops the cut before anything is moved: the
   * restore's pull would delete that file (rsync --force). It is tried again later, once that
   * partition has caught up and removed it.
   */
  owns?: (path: string) => boolean;
}): Promise<LogRecord[]> {
  const removed: LogRecord[] = [];
  for (;;) {
    const point = divergencePoint(args.log.lastTxid, args.history, args.currentGeneration);
    if (point === undefined) break;
    const generation = generationOf(args.log.lastTxid);
    const suffix: LogRecord[] = [];
    for await (const record of args.log.readFrom(point)) suffix.push(record);
    const changes = suffix.filter((r) => r.kind !== 'end-of-generation');
    if (args.owns !== undefined) {
      for (const path of new Set(changes.map((r) => r.path))) {
        const foreign = await foreignFileInTheWay(args.fileStore, path, args.owns);
        if (foreign !== undefined) throw new ForeignFileInTheWay(path, foreign);
      }
    }
    const dir = join(args.quarantineDir, generation.toString());
    const files = join(dir, 'files');
    const at = new Date().toISOString();
    const linesOf = (path: string, quarantinedAs: string | null) =>
      changes
        .filter((r) => r.path === path)
        .map((r) =>
          JSON.stringify({
            generation: generation.toString(),
            txid: r.txid.toString(),
            txidText: formatTxId(r.txid),
            kind: r.kind,
            path: r.path,
            size: r.size.toString(),
            sha256: r.sha256,
            quarantinedAs,
            at,
          } satisfies QuarantineEntry),
        );
    const paths = [...new Set(changes.map((r) => r.path))];
    const kept = new Set<string>();
    for (const path of paths) {
      // A directory there now is not what these records wrote (they wrote files): it holds files
      // of other paths, maybe another partition's, made after the divergent file went.
      const info = await lstat(join(args.fileStore, path)).catch(() => undefined);
      if (info?.isDirectory()) kept.add(path);
      // Listed before it moves (as quarantineListed does): a crash in between leaves a line whose
      // file is still in the store, listed again on the next try, never a moved file unlisted.
      const movedTo =
        info === undefined || info.isDirectory()
          ? undefined
          : await quarantineFile(args.fileStore, files, path, {
              beforeMove: (destination) => appendManifest(dir, linesOf(path, destination)),
            });
      if (movedTo === undefined) await appendManifest(dir, linesOf(path, null));
    }
    // Not a directory kept above: rsync --force would delete it, and the files in it, to bring a
    // file back.
    await args.restore(paths.filter((path) => !kept.has(path)));
    removed.push(...(await args.log.truncateAfter(point)));
  }
  return removed;
}

/**
 * Moves what a replica found in the way of record `txid` to
 * `quarantine/<generation>/files/<path>` and lists it in that generation's manifest: a
 * directory where the record puts a file (kind `directory`), or a file where it needs a
 * directory (kind `file`). Nothing the master has there, and nothing to delete.
 */
export function setAsideInTheWay(args: {
  fileStore: string;
  quarantineDir: string;
  path: string;
  txid: TxId;
  kind: 'directory' | 'file';
}): Promise<string | undefined> {
  return quarantineListed({ ...args, size: 0n, sha256: '' });
}

/**
 * Moves a file whose bytes the node's own log does not record (found on a former master, see
 * findUnloggedChanges) to `quarantine/<generation>/files/<path>`, listed with kind `unlogged`,
 * the log's last txid and the file's size and sha-256.
 */
export function quarantineUnlogged(args: {
  fileStore: string;
  quarantineDir: string;
  path: string;
  lastTxid: TxId;
  size: bigint;
  sha256: string;
}): Promise<string | undefined> {
  const { lastTxid, ...rest } = args;
  return quarantineListed({ ...rest, txid: lastTxid, kind: 'unlogged' });
}

/**
 * Lists an entry in the manifest of `txid`'s generation, then moves it. In that order: a crash in
 * between leaves a line whose entry is still in the store (found, listed and moved again on the
 * next try), never a moved entry unlisted.
 */
async function quarantineListed(args: {
  fileStore: string;
  quarantineDir: string;
  path: string;
  txid: TxId;
  kind: string;
  size: bigint;
  sha256: string;
}): Promise<string | undefined> {
  const generation = generationOf(args.txid).toString();
  const dir = join(args.quarantineDir, generation);
  return quarantineFile(args.fileStore, join(dir, 'files'), args.path, {
    beforeMove: async (quarantinedAs) => {
      const entry: QuarantineEntry = {
        generation,
        txid: args.txid.toString(),
        txidText: formatTxId(args.txid),
        kind: args.kind,
        path: args.path,
        size: args.size.toString(),
        sha256: args.sha256,
        quarantinedAs,
        at: new Date().toISOString(),
      };
      await appendManifest(dir, [JSON.stringify(entry)]);
    },
  });
}

/**
 * Appends lines to `<dir>/MANIFEST.jsonl`, durably (the file, and its name in `dir`). After a
 * line torn by a crash (no newline at the end of the file) the new lines start on a line of
 * their own, so that the torn one stays alone and every later one can be read.
 *
 * In one write(2): partitions of the same generation number share a manifest and may append at
 * once, and appendFile's writes of 512 KiB each (a large divergent suffix) could interleave with
 * another append, which would also read its end as torn and split a line of this one.
 */
async function appendManifest(dir: string, lines: readonly string[]): Promise<void> {
  await mkdir(dir, { recursive: true });
  const manifest = join(dir, 'MANIFEST.jsonl');
  // Read and appended through one handle: its last byte says whether a crash tore the last line.
  const handle = await open(manifest, 'a+');
  try {
    const last = await lastByteOf(handle);
    const torn = last !== undefined && last !== NEWLINE;
    const bytes = Buffer.from(`${torn ? '\n' : ''}${lines.join('\n')}\n`);
    const { bytesWritten } = await handle.write(bytes);
    if (bytesWritten !== bytes.length) {
      throw new Error(
        `${manifest}: wrote ${bytesWritten} of ${bytes.length} bytes (disk full?): free space and retry`,
      );
    }
    await handle.datasync();
  } finally {
    await handle.close();
  }
  await fsyncDir(dir);
}

/** Every quarantined record, oldest generation first. */
export async function listQuarantine(quarantineDir: string): Promise<QuarantineEntry[]> {
  const generations = (await readdir(quarantineDir).catch(() => [] as string[]))
    .filter((name) => /^\d+$/.test(name))
    .sort((a, b) => Number(a) - Number(b));
  const entries: QuarantineEntry[] = [];
  for (const generation of generations) {
    const text = await readFile(join(quarantineDir, generation, 'MANIFEST.jsonl'), 'utf8').catch(() => '');
    for (const line of text.split('\n')) {
      const entry = parseManifestLine(line);
      if (entry !== undefined) entries.push(entry);
    }
  }
  return entries;
}

const NEWLINE = 0x0a;

/** The last byte of the open file, or undefined when it is empty. */
async function lastByteOf(handle: FileHandle): Promise<number | undefined> {
  const { size } = await handle.stat();
  if (size === 0) return undefined;
  const byte = Buffer.alloc(1);
  await handle.read(byte, 0, 1, size - 1);
  return byte[0];
}

/**
 * One manifest line, or undefined for a blank or torn one. A torn line is an append a crash cut
 * short: its entry was never moved (the move waits for the append), and the next try listed it
 * again. A manifest written before appends began on a line of their own may hold a torn line
 * with the next entry joined to it: that entry is read from where it starts.
 */
function parseManifestLine(line: string): QuarantineEntry | undefined {
  if (line.trim() === '') return undefined;
  for (let start = 0; start !== -1; start = line.indexOf(ENTRY_START, start + 1)) {
    try {
      return JSON.parse(line.slice(start)) as QuarantineEntry;
    } catch {
      // torn: try the next entry's start on the line
    }
  }
  return undefined;
}

/** How JSON.stringify begins every entry (its first field). */
const ENTRY_START = '{"generation":';
