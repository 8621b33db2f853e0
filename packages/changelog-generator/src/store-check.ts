import { hashFile, walkStore } from '@pfs/filestore';
import type { TxLog } from '@pfs/txlog';
import { replayIntoIndex } from './generator.ts';

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
  const index = await replayIntoIndex(options.log);
  // Timestamps advance by clock ticks: a same-size rewrite right after its record can keep the
  // record's mtime. Files recorded that recently (where an unlogged rename can only be) are
  // hashed whatever their stat says.
  const trustedBefore = (index.newestMtime() ?? 0n) - RECENT_NS;
  const marks = index.startMarks();
  const changes: UnloggedChange[] = [];
  try {
    for await (const entry of walkStore(options.root)) {
      options.signal?.throwIfAborted();
      if (!options.belongs(entry.path)) continue;
      const slot = index.slotOf(entry.path);
      if (slot === undefined) {
        // Unrecorded and named like the temp file of a path of another partition: that
        // partition's rsync may be writing it right now.
        const target = rsyncTargetOf(entry.path);
        if (target !== undefined && !options.belongs(target)) continue;
      } else {
        marks.mark(slot);
        // ctime is not in records: size and mtime only.
        if (
          index.sizeOf(slot) === entry.stat.size &&
          index.mtimeOf(slot) === entry.stat.mtimeNs &&
          entry.stat.mtimeNs < trustedBefore
        )
          continue;
      }
      const hashed = await hashFile(options.root, entry.path);
      // Gone since the walk saw it: the unmarked check below does not see it either.
      if (hashed === undefined) {
        if (slot !== undefined) changes.push({ path: entry.path, onDisk: undefined });
        continue;
      }
      if (slot !== undefined && index.sizeOf(slot) === hashed.size && index.sha256Of(slot) === hashed.sha256)
        continue;
      changes.push({ path: entry.path, onDisk: hashed });
    }
    for (const path of index.unmarkedPaths(marks)) changes.push({ path, onDisk: undefined });
  } finally {
    index.endMarks(marks);
  }
  return changes;
}

/** Files recorded with an mtime this close to the newest one are always hashed. */
const RECENT_NS = 1_000_000_000n;

/** The path whose rsync temp file (`.name.XXXXXX` beside it) `path` could be, if any. */
function rsyncTargetOf(path: string): string | undefined {
  const slash = path.lastIndexOf('/');
  const match = /^\.(.+)\.[A-Za-z0-9]{6}$/.exec(path.slice(slash + 1));
  return match ? path.slice(0, slash + 1) + match[1] : undefined;
}
