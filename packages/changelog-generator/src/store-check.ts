import { assertStoreInPlace, hashFile, type StoreEntry, type WalkOptions, walkStore } from '@pfs/filestore';
import type { TxLog } from '@pfs/txlog';
import { replayIntoIndex } from './generator.ts';
import type { PathIndex, SlotMarks } from './path-index.ts';

/** A path whose bytes on disk are not what the log's last record for it says. */
export interface UnloggedChange {
  path: string;
  /** What is on disk, or undefined when the log says a file is there and none is. */
  onDisk: { size: bigint; sha256: string } | undefined;
}

/**
 * Compares the store with what `log` says of every path that `belongs` to it: a file the log
 * does not record, one whose size and sha-256 are not its last record's, or a recorded file that
 * is gone. A file whose size and mtime are its record's is taken as unchanged without reading
 * it (a record's mtime is the file's own, and rsync keeps it), unless it was recorded within a
 * second of the newest record. This finds what a node killed between renaming a file into place
 * and logging it left behind (docs/architecture.md).
 */
export async function findUnloggedChanges(options: {
  root: string;
  log: TxLog;
  belongs: (path: string) => boolean;
  signal?: AbortSignal;
}): Promise<UnloggedChange[]> {
  const found = await findUnloggedChangesOf({
    root: options.root,
    logs: new Map([
      [0, { log: options.log, ...(options.signal === undefined ? {} : { signal: options.signal }) }],
    ]),
    logOf: (path) => (options.belongs(path) ? 0 : undefined),
  });
  const outcome = found.get(0)!;
  if ('error' in outcome) throw outcome.error;
  return outcome.changes;
}

/** One log to compare the store with; its signal ends its part of a shared walk. */
export interface LogToCheck {
  log: TxLog;
  signal?: AbortSignal;
}

/** How one log's part of a shared walk ended. */
export type LogCheckOutcome = { changes: UnloggedChange[] } | { error: unknown };

/**
 * findUnloggedChanges for several logs in one walk of the store: each path is compared with the
 * log that `logOf` names for it (none: skipped). Resolves with an outcome per log: its changes,
 * or what ended its part — its signal's reason, a log that cannot be replayed, a file that
 * cannot be hashed. One log's error ends only its own part; only a failing walk rejects.
 */
export async function findUnloggedChangesOf<K>(options: {
  root: string;
  logs: ReadonlyMap<K, LogToCheck>;
  logOf: (path: string) => K | undefined;
  /** Passed to the walk of the store: temp files of writes a killed process left. */
  staleTempFiles?: WalkOptions['staleTempFiles'];
}): Promise<Map<K, LogCheckOutcome>> {
  const outcomes = new Map<K, LogCheckOutcome>();
  const comparisons = new Map<K, LogComparison>();
  const all: LogComparison[] = [];
  const fail = (key: K, error: unknown) => {
    comparisons.delete(key);
    outcomes.set(key, { error });
  };
  const dropAborted = () => {
    for (const [key, comparison] of comparisons)
      if (comparison.signal?.aborted) fail(key, comparison.signal.reason);
  };
  try {
    for (const [key, { log, signal }] of options.logs) {
      if (signal?.aborted) {
        outcomes.set(key, { error: signal.reason });
        continue;
      }
      try {
        const comparison = new LogComparison(await replayIntoIndex(log), signal);
        all.push(comparison);
        comparisons.set(key, comparison);
      } catch (error) {
        outcomes.set(key, { error });
      }
    }
    dropAborted();
    if (comparisons.size > 0) {
      // An empty mount point would have every logged file missing (and pulled into it, and the
      // real store's unlogged files never checked): before the walk, and after it, since the
      // store may go while it runs.
      assertStoreInPlace(options.root);
      for await (const entry of walkStore(options.root, '', { staleTempFiles: options.staleTempFiles })) {
        dropAborted();
        if (comparisons.size === 0) break;
        const key = options.logOf(entry.path);
        const comparison = key === undefined ? undefined : comparisons.get(key);
        if (comparison === undefined) continue;
        try {
          await comparison.visit(options.root, entry);
        } catch (error) {
          fail(key!, error);
        }
      }
    }
    dropAborted();
    if (comparisons.size > 0) assertStoreInPlace(options.root);
    for (const [key, comparison] of comparisons) outcomes.set(key, { changes: comparison.finish() });
    return outcomes;
  } finally {
    for (const comparison of all) comparison.end();
  }
}

/** The state of one log's comparison during a walk. */
class LogComparison {
  private readonly trustedBefore: bigint;
  private readonly marks: SlotMarks;
  private readonly changes: UnloggedChange[] = [];

  constructor(
    private readonly index: PathIndex,
    readonly signal: AbortSignal | undefined,
  ) {
    // Timestamps advance by clock ticks: a same-size rewrite right after its record can keep the
    // record's mtime. Files recorded that recently (where an unlogged rename can only be) are
    // hashed whatever their stat says.
    this.trustedBefore = (index.newestMtime() ?? 0n) - RECENT_NS;
    this.marks = index.startMarks();
  }

  recorded(path: string): boolean {
    return this.index.slotOf(path) !== undefined;
  }

  async visit(root: string, entry: StoreEntry): Promise<void> {
    const { index } = this;
    const slot = index.slotOf(entry.path);
    if (slot !== undefined) {
      this.marks.mark(slot);
      // ctime is not in records: size and mtime only.
      if (
        index.sizeOf(slot) === entry.stat.size &&
        index.mtimeOf(slot) === entry.stat.mtimeNs &&
        entry.stat.mtimeNs < this.trustedBefore
      )
        return;
    }
    const hashed = await hashFile(root, entry.path);
    // Gone since the walk saw it: the unmarked check in finish does not see it either.
    if (hashed === undefined) {
      if (slot !== undefined) this.changes.push({ path: entry.path, onDisk: undefined });
      return;
    }
    if (slot !== undefined && index.sizeOf(slot) === hashed.size && index.sha256Of(slot) === hashed.sha256)
      return;
    this.changes.push({ path: entry.path, onDisk: hashed });
  }

  finish(): UnloggedChange[] {
    for (const path of this.index.unmarkedPaths(this.marks)) this.changes.push({ path, onDisk: undefined });
    return this.changes;
  }

  end(): void {
    this.index.endMarks(this.marks);
  }
}

/** Files recorded with an mtime this close to the newest one are always hashed. */
const RECENT_NS = 1_000_000_000n;
