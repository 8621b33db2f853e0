import type { FileStat } from '@pfs/filestore';

/**
 * The sha-256 of files read recently, so that a GET answers with the content hash as its ETag
 * without reading the whole file again on every request (a short video read twice no longer
 * costs two full reads before its first byte goes out).
 *
 * An entry is trusted only while the file's inode, size, mtime and ctime are all as they were
 * when it was hashed: a put replaces the file (new inode), and any write in place moves ctime,
 * which nobody can set back. Kernel timestamps are coarse (a clock tick, ~1–4 ms), so two
 * same-size writes in place within one tick could leave all four equal; a file is therefore
 * only remembered once it has been left alone for QUIET_NS, after which any later write lands
 * on a later tick.
 */
const QUIET_NS = 2_000_000_000n;

interface Entry {
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
  sha256: string;
}

export class FileDigestCache {
  private readonly entries = new Map<string, Entry>();
  /** Hashes under way, by path and version: readers of one new file share one read of it. */
  private readonly hashing = new Map<string, Promise<string>>();
  private readonly maxEntries: number;

  constructor(maxEntries = 10_000) {
    this.maxEntries = maxEntries;
  }

  get size(): number {
    return this.entries.size;
  }

  /** The remembered sha-256 of `path`, if the file is still exactly what was hashed. */
  get(path: string, stat: FileStat): string | undefined {
    const entry = this.entries.get(path);
    if (entry === undefined) return undefined;
    if (!sameVersion(entry, stat)) {
      this.entries.delete(path);
      return undefined;
    }
    // Most recently used last: the first key is the one to evict.
    this.entries.delete(path);
    this.entries.set(path, entry);
    return entry.sha256;
  }

  /**
   * The sha-256 of `path` at version `stat`, by `hash` unless a hash of that same version is under
   * way, whose result is shared. A short video read by many at once as soon as it is written
   * (not yet remembered: see QUIET_NS) would otherwise be read whole once per reader before
   * their first byte. Whether the result was shared is for the metrics.
   */
  async hashOnce(
    path: string,
    stat: FileStat,
    hash: () => Promise<string>,
  ): Promise<{ sha256: string; shared: boolean }> {
    const key = `${path}\0${stat.ino}:${stat.size}:${stat.mtimeNs}:${stat.ctimeNs}`;
    const running = this.hashing.get(key);
    if (running !== undefined) return { sha256: await running, shared: true };
    const started = hash().finally(() => this.hashing.delete(key));
    this.hashing.set(key, started);
    return { sha256: await started, shared: false };
  }

  /**
   * Remembers `sha256` for `path` as it was at `before` (stat taken before hashing) if `after`
   * (stat taken after) shows no change meanwhile and the file had been quiet for a while at
   * `nowNs` (wall clock, the timestamps' clock).
   */
  remember(path: string, before: FileStat, after: FileStat, sha256: string, nowNs: bigint): void {
    if (!sameVersion(before, after) || nowNs - before.ctimeNs < QUIET_NS) return;
    this.entries.delete(path);
    this.entries.set(path, { ...before, sha256 });
    if (this.entries.size > this.maxEntries) this.entries.delete(this.entries.keys().next().value!);
  }
}

function sameVersion(a: FileStat, b: FileStat): boolean {
  return a.ino === b.ino && a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs;
}
