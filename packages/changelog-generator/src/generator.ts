import { lstat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  deleteFile,
  FilestoreError,
  hashFile,
  partitionOf,
  type StagedFile,
  statFile,
  walkStore,
} from '@pfs/filestore';
import type { LogRecord, TxLog } from '@pfs/txlog';
import { KeyedLock } from './path-locks.ts';

/**
 * Turns changes of the store into log records, one log per partition.
 *
 * Two sources feed it: the file server (`commitPut`/`commitDelete`, which change the store and log
 * under one per-path lock) and the watcher or a reconcile scan (`observe`, for files dropped into
 * the store by hand). Each partition keeps an index of what its log says each path holds (size,
 * mtime, hash), so a change seen by both sources is logged once: `observe` logs only when the
 * disk differs from the index.
 */
export type ChangelogErrorCode = 'NOT_MASTER';

export class ChangelogError extends Error {
  readonly code: ChangelogErrorCode;
  readonly partition: number;
  constructor(code: ChangelogErrorCode, message: string, partition: number) {
    super(message);
    this.name = 'ChangelogError';
    this.code = code;
    this.partition = partition;
  }
}

interface IndexEntry {
  size: bigint;
  mtimeNs: bigint;
  sha256: string;
  /** Known only for files this process wrote or hashed; a change of ctime forces a re-hash. */
  ctimeNs?: bigint;
}

interface Partition {
  log: TxLog;
  index: Map<string, IndexEntry>;
}

export type AppendListener = (partition: number, record: LogRecord) => void;

export interface ChangelogGeneratorOptions {
  root: string;
  partitionCount: number;
}

export class ChangelogGenerator {
  readonly root: string;
  readonly partitionCount: number;
  private readonly partitions = new Map<number, Partition>();
  private readonly locks = new KeyedLock();
  private readonly listeners = new Set<AppendListener>();

  constructor(options: ChangelogGeneratorOptions) {
    this.root = options.root;
    this.partitionCount = options.partitionCount;
  }

  /** Starts logging `partition` into `log`, rebuilding its index by replaying the log. */
  async attach(partition: number, log: TxLog): Promise<void> {
    const index = new Map<string, IndexEntry>();
    for await (const record of log.readFrom(0n)) applyToIndex(index, record);
    this.partitions.set(partition, { log, index });
  }

  /** Stops logging `partition` (e.g. on losing mastership); waits for changes in flight. */
  async detach(partition: number): Promise<void> {
    this.partitions.delete(partition);
    await this.locks.idle();
  }

  isAttached(partition: number): boolean {
    return this.partitions.has(partition);
  }

  partitionOf(path: string): number {
    return partitionOf(path, this.partitionCount);
  }

  /** Subscribes to every durable append; returns the unsubscribe function. */
  onAppend(listener: AppendListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private owner(path: string): [number, Partition] {
    const partition = this.partitionOf(path);
    const owned = this.partitions.get(partition);
    if (owned === undefined) {
      throw new ChangelogError(
        'NOT_MASTER',
        `this node is not master of partition ${partition}: send the write to its master`,
        partition,
      );
    }
    return [partition, owned];
  }

  private async append(partition: number, owned: Partition, change: Parameters<TxLog['appendChange']>[0]) {
    const record = await owned.log.appendChange(change);
    applyToIndex(owned.index, record);
    for (const listener of this.listeners) listener(partition, record);
    return record;
  }

  /** File-server put: renames the staged file into place and logs it, as one step per path. */
  commitPut(staged: StagedFile, options: { ifAbsent?: boolean } = {}): Promise<LogRecord> {
    return this.locks.run(staged.path, async () => {
      let partition: number;
      let owned: Partition;
      try {
        [partition, owned] = this.owner(staged.path);
        // Checked under the path lock, so no other put can slip in between check and rename.
        if (
          options.ifAbsent &&
          (await lstat(join(this.root, staged.path)).catch(() => undefined)) !== undefined
        ) {
          throw new FilestoreError(
            'PATH_EXISTS',
            `${JSON.stringify(staged.path)} already exists and the write asked not to overwrite it`,
            {
              path: staged.path,
            },
          );
        }
      } catch (error) {
        await staged.discard();
        throw error;
      }
      const info = await staged.commit();
      const record = await this.append(partition, owned, {
        kind: 'put',
        path: staged.path,
        size: staged.size,
        mtimeNs: info.mtimeNs,
        sha256: staged.sha256,
      });
      owned.index.set(staged.path, { ...owned.index.get(staged.path)!, ctimeNs: info.ctimeNs });
      return record;
    });
  }

  /** File-server delete: removes the file and logs it, as one step per path. */
  commitDelete(path: string): Promise<LogRecord> {
    return this.locks.run(path, async () => {
      const [partition, owned] = this.owner(path);
      await deleteFile(this.root, path);
      return this.append(partition, owned, { kind: 'delete', path, size: 0n, mtimeNs: 0n, sha256: '' });
    });
  }

  /**
   * Logs what is on disk at `path` now if it differs from what the log says; returns the record,
   * or undefined when there was nothing to log or the partition is not this node's.
   */
  observe(path: string): Promise<LogRecord | undefined> {
    return this.locks.run(path, async () => {
      const partition = this.partitionOf(path);
      const owned = this.partitions.get(partition);
      if (owned === undefined) return undefined;
      const known = owned.index.get(path);
      for (let attempt = 0; attempt < 5; attempt++) {
        const before = await statFile(this.root, path);
        if (before === undefined) {
          if (known === undefined) return undefined;
          return this.append(partition, owned, { kind: 'delete', path, size: 0n, mtimeNs: 0n, sha256: '' });
        }
        if (
          known !== undefined &&
          known.size === before.size &&
          known.mtimeNs === before.mtimeNs &&
          (known.ctimeNs === undefined || known.ctimeNs === before.ctimeNs)
        ) {
          return undefined;
        }
        const hashed = await hashFile(this.root, path);
        const after = await statFile(this.root, path);
        if (
          hashed === undefined ||
          after === undefined ||
          after.mtimeNs !== before.mtimeNs ||
          after.size !== before.size
        ) {
          continue; // still being written: look again
        }
        if (known !== undefined && known.sha256 === hashed.sha256 && known.size === hashed.size) {
          owned.index.set(path, { ...known, mtimeNs: after.mtimeNs, ctimeNs: after.ctimeNs });
          return undefined;
        }
        const record = await this.append(partition, owned, {
          kind: 'put',
          path,
          size: hashed.size,
          mtimeNs: after.mtimeNs,
          sha256: hashed.sha256,
        });
        owned.index.set(path, { ...owned.index.get(path)!, ctimeNs: after.ctimeNs });
        return record;
      }
      return undefined;
    });
  }

  /**
   * Brings every attached partition's log in line with the disk: logs files that appeared or
   * changed and deletes of indexed files that are gone. Returns how many records it appended.
   */
  async reconcile(): Promise<number> {
    let appended = 0;
    const seen = new Set<string>();
    // Up to RECONCILE_CONCURRENCY paths at once, so that their appends share group commits
    // instead of waiting for one fsync each.
    const inFlight = new Set<Promise<void>>();
    let failure: unknown;
    const check = async (path: string) => {
      const track = this.observe(path).then(
        (record) => {
          if (record) appended++;
        },
        (error: unknown) => {
          failure ??= error;
        },
      );
      const settled = track.finally(() => inFlight.delete(settled));
      inFlight.add(settled);
      if (inFlight.size >= RECONCILE_CONCURRENCY) await Promise.race(inFlight);
    };
    for await (const entry of walkStore(this.root)) {
      if (!this.partitions.has(this.partitionOf(entry.path))) continue;
      seen.add(entry.path);
      await check(entry.path);
    }
    await Promise.all(inFlight);
    for (const owned of [...this.partitions.values()]) {
      for (const path of [...owned.index.keys()]) {
        if (!seen.has(path)) await check(path);
      }
    }
    await Promise.all(inFlight);
    if (failure !== undefined) throw failure;
    return appended;
  }
}

const RECONCILE_CONCURRENCY = 32;

function applyToIndex(index: Map<string, IndexEntry>, record: LogRecord): void {
  if (record.kind === 'put') {
    index.set(record.path, { size: record.size, mtimeNs: record.mtimeNs, sha256: record.sha256 });
  } else if (record.kind === 'delete') {
    index.delete(record.path);
  }
}
