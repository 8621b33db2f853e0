import { lstat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  assertStoreInPlace,
  deleteFile,
  FilestoreError,
  hashFile,
  MAX_NEW_PATH_BYTES,
  partitionOf,
  type StagedFile,
  statFile,
  syncParentOf,
  validateNewStorePath,
  type WalkOptions,
  walkStore,
} from '@pfs/filestore';
import { type LogRecord, type TxLog, TxlogError } from '@pfs/txlog';
import { PathIndex, type SlotMarks } from './path-index.ts';
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
export type ChangelogErrorCode = 'NOT_MASTER' | 'NOT_LOGGED' | 'PRECONDITION_FAILED';

/** Whether a write may go ahead, given the sha-256 of the file at its path (undefined: none). */
export type WritePrecondition = (currentSha256: string | undefined) => boolean;

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

/**
 * A file-server change made on disk whose record could not be appended: not a failure the client
 * may simply retry as if nothing happened, since the file is already as the request asked here,
 * though no replica will follow until it is logged (a reconcile logs it once the log is writable).
 */
function notLogged(
  partition: number,
  path: string,
  done: 'replaced' | 'deleted',
  error: unknown,
): ChangelogError {
  const cause = error instanceof FilestoreError && error.code === 'NOT_DURABLE' ? error.cause : error;
  const what = cause === error ? 'logging it failed' : 'making that durable failed';
  const failure = new ChangelogError(
    'NOT_LOGGED',
    `${JSON.stringify(path)} was ${done} on this master, but ${what} (${(cause as Error).message}): it is not replicated until it is logged; fix the ${cause === error ? "log's disk" : 'disk'}, then read the path back before relying on it`,
    partition,
  );
  failure.cause = error;
  return failure;
}

/**
 * Refuses a change before it touches the disk when the log is known to refuse its record (a
 * failed write it could not take back): it would be made here and never logged.
 */
/**
 * Refuses a new file dropped in by hand under a longer path than the API takes: logged, it would
 * stop every replica whose store directory is longer than this node's (see MAX_NEW_PATH_BYTES).
 * One logged before that limit is still followed (changed, deleted). Likewise a name no replica
 * could pull (see validateNewStorePath).
 */
function assertLoggableNewPath(path: string): void {
  if (Buffer.byteLength(path) > MAX_NEW_PATH_BYTES) {
    throw new FilestoreError(
      'PATH_TOO_LONG',
      `${JSON.stringify(path.slice(0, 60))}… is over ${MAX_NEW_PATH_BYTES} bytes, so it is not logged or replicated: rename it`,
      { path },
    );
  }
  try {
    validateNewStorePath(path);
  } catch (error) {
    if (!(error instanceof FilestoreError) || error.code !== 'PATH_ESCAPED_WILDCARD') throw error;
    throw new FilestoreError(
      'PATH_ESCAPED_WILDCARD',
      `${JSON.stringify(path)} has a backslash right before "*", "?", "[" or "]", which rsync will not replicate, so it is not logged: rename it`,
      { path },
    );
  }
}

function assertAppendable(owned: Partition): void {
  if (!owned.log.appendable) {
    throw new TxlogError(
      'TXLOG_WRITE_FAILED',
      `log ${owned.log.dir} cannot be appended to: nothing was changed; the master steps down`,
    );
  }
  if (owned.appendFailure !== undefined) {
    throw new TxlogError(
      'TXLOG_WRITE_FAILED',
      `the last append to log ${owned.log.dir} failed (${owned.appendFailure.message}): nothing was changed; the master steps down`,
    );
  }
}

interface Partition {
  log: TxLog;
  /** ctime is known only for files this process wrote or hashed; a change of ctime forces a re-hash. */
  index: PathIndex;
  /**
   * Why the last append failed, until one succeeds. The log took the failed write back and still
   * counts as appendable (a disk that was full may have room again), but a change made on disk
   * first would not be logged either: the master refuses writes and steps down (appendFailed).
   */
  appendFailure?: Error;
}

export type AppendListener = (partition: number, record: LogRecord) => void;

export interface ChangelogGeneratorOptions {
  root: string;
  partitionCount: number;
  /** Passed to the reconcile's walk of the store: temp files of writes a killed process left. */
  staleTempFiles?: WalkOptions['staleTempFiles'];
  /** Passed to the reconcile's walk: names that are not UTF-8, which no record can name. */
  onNameNotUtf8?: WalkOptions['onNameNotUtf8'];
}

export class ChangelogGenerator {
  readonly root: string;
  readonly partitionCount: number;
  private readonly partitions = new Map<number, Partition>();
  private readonly locks = new KeyedLock();
  /** Whether a reconcile runs (one at a time: each walks the whole store). */
  private reconciling = false;
  private completedReconciles = 0;
  /** The reconcile that follows the one running, for the callers that came meanwhile. */
  private nextReconcile:
    | { promise: Promise<number>; resolve: (appended: number) => void; reject: (error: unknown) => void }
    | undefined;
  private readonly listeners = new Set<AppendListener>();
  /** Per partition, paths changed on disk whose record failed, until one is logged for them. */
  private readonly unlogged = new Map<number, Set<string>>();
  private readonly walkOptions: WalkOptions;

  constructor(options: ChangelogGeneratorOptions) {
    this.root = options.root;
    this.partitionCount = options.partitionCount;
    this.walkOptions = { staleTempFiles: options.staleTempFiles, onNameNotUtf8: options.onNameNotUtf8 };
  }

  /** Starts logging `partition` into `log`, rebuilding its index by replaying the log. */
  async attach(partition: number, log: TxLog): Promise<void> {
    const index = await replayIntoIndex(log);
    // Changed on disk and never logged while this process mastered it before (see lookAgain):
    // the replayed index says the old version, which the new one may match in size and times.
    for (const path of this.unlogged.get(partition) ?? []) {
      const slot = index.slotOf(path);
      if (slot !== undefined) index.setTimes(slot, -1n, undefined);
    }
    this.partitions.set(partition, { log, index });
  }

  /**
   * Stops logging `partition` (e.g. on losing mastership); waits for its changes in flight, not
   * for other partitions' (which never end while they take writes), nor for later ones (which
   * no longer find it attached).
   */
  async detach(partition: number): Promise<void> {
    this.partitions.delete(partition);
    await this.locks.idle((path) => this.partitionOf(path) === partition);
  }

  /** Why the last append to `partition`'s log failed, while no later one has succeeded. */
  appendFailed(partition: number): Error | undefined {
    return this.partitions.get(partition)?.appendFailure;
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
    let record: LogRecord;
    try {
      record = await owned.log.appendChange(change);
    } catch (error) {
      // A failure of the log itself, not one of this record's (which the next one need not share).
      if (
        error instanceof TxlogError &&
        (error.code === 'TXLOG_WRITE_FAILED' || error.code === 'TXLOG_SEQUENCE_OVERFLOW')
      ) {
        owned.appendFailure = error;
      }
      // Whatever failed, the disk may hold what this record was for (an observed file, a put
      // renamed into place): looked at again by the next reconcile, here or once mastered again.
      this.lookAgain(partition, owned, change.path);
      throw error;
    }
    owned.appendFailure = undefined;
    this.unlogged.get(partition)?.delete(change.path);
    applyToIndex(owned.index, record);
    for (const listener of this.listeners) listener(partition, record);
    return record;
  }

  /**
   * Makes the next reconcile look at `path` even if its size and times match the index, which
   * still holds the version before a change whose record failed: the new one may share them to
   * the clock tick. An mtime no file has does it; `unlogged` keeps it across detach and attach,
   * where the index is replayed from the log.
   */
  private lookAgain(partition: number, owned: Partition, path: string): void {
    const slot = owned.index.slotOf(path);
    if (slot !== undefined) owned.index.setTimes(slot, -1n, undefined);
    const paths = this.unlogged.get(partition) ?? new Set<string>();
    this.unlogged.set(partition, paths.add(path));
  }

  /**
   * File-server put: renames the staged file into place and logs it, as one step per path. With
   * `precondition`, only if it accepts the sha-256 of the file at the path (undefined: none),
   * checked under the path's lock.
   */
  commitPut(
    staged: StagedFile,
    options: { ifAbsent?: boolean; precondition?: WritePrecondition } = {},
  ): Promise<LogRecord> {
    return this.locks.run(staged.path, async () => {
      let partition: number;
      let owned: Partition;
      try {
        [partition, owned] = this.owner(staged.path);
        // A put into an unmounted store would be hidden, and then logged as deleted, once the
        // real store is mounted again.
        assertStoreInPlace(this.root);
        assertAppendable(owned);
        // Checked under the path lock, so no other put can slip in between check and rename. A
        // directory is no file: the commit replaces it if it holds none, else refuses it.
        if (options.precondition !== undefined) {
          await this.checkPrecondition(partition, owned, staged.path, options.precondition);
        }
        if (
          options.ifAbsent &&
          (await lstat(join(this.root, staged.path)).catch(() => undefined))?.isDirectory() === false
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
      const info = await staged.commit().catch((error: unknown) => {
        if (!(error instanceof FilestoreError && error.code === 'NOT_DURABLE')) throw error;
        this.lookAgain(partition, owned, staged.path);
        throw notLogged(partition, staged.path, 'replaced', error);
      });
      const record = await this.append(partition, owned, {
        kind: 'put',
        path: staged.path,
        size: staged.size,
        mtimeNs: info.mtimeNs,
        sha256: staged.sha256,
      }).catch((error: unknown) => {
        throw notLogged(partition, staged.path, 'replaced', error);
      });
      owned.index.setCtime(owned.index.slotOf(staged.path)!, info.ctimeNs);
      return record;
    });
  }

  /** File-server delete: removes the file and logs it, as one step per path (see commitPut). */
  commitDelete(path: string, options: { precondition?: WritePrecondition } = {}): Promise<LogRecord> {
    return this.locks.run(path, async () => {
      const [partition, owned] = this.owner(path);
      assertStoreInPlace(this.root);
      assertAppendable(owned);
      if (options.precondition !== undefined) {
        await this.checkPrecondition(partition, owned, path, options.precondition);
      }
      await deleteFile(this.root, path).catch((error: unknown) => {
        throw error instanceof FilestoreError && error.code === 'NOT_DURABLE'
          ? notLogged(partition, path, 'deleted', error)
          : error;
      });
      return this.append(partition, owned, { kind: 'delete', path, size: 0n, mtimeNs: 0n, sha256: '' }).catch(
        (error: unknown) => {
          throw notLogged(partition, path, 'deleted', error);
        },
      );
    });
  }

  /**
   * The same check as a put's (see checkPrecondition), made before its body is received, so that
   * a large upload whose precondition already fails is refused at once. Binding only under the
   * path's lock, in commitPut: the file may change in between.
   */
  async precheck(path: string, precondition: WritePrecondition): Promise<void> {
    const [partition, owned] = this.owner(path);
    await this.checkPrecondition(partition, owned, path, precondition);
  }

  /**
   * Throws PRECONDITION_FAILED unless `precondition` accepts the sha-256 of the file at `path`
   * (undefined when there is none). The index answers only when the file's size, mtime and ctime
   * all match it; a file whose ctime the index does not know yet (since a restart or a failover)
   * or that changed behind its back is hashed, as a GET's ETag would be. Hashing a large file
   * takes a while: mastership, the store and the log are checked again after it.
   */
  private async checkPrecondition(
    partition: number,
    owned: Partition,
    path: string,
    precondition: WritePrecondition,
  ): Promise<void> {
    const info = await statFile(this.root, path);
    let current: string | undefined;
    if (info !== undefined) {
      const slot = owned.index.slotOf(path);
      current =
        slot !== undefined &&
        owned.index.ctimeKnown(slot) &&
        owned.index.matchesStat(slot, info.size, info.mtimeNs, info.ctimeNs)
          ? owned.index.sha256Of(slot)
          : (await hashFile(this.root, path))?.sha256;
    }
    if (!precondition(current)) {
      throw new ChangelogError(
        'PRECONDITION_FAILED',
        `${JSON.stringify(path)} ${current === undefined ? 'holds no file' : `holds version "${current}"`}, which the write's precondition excludes; nothing was changed: read it again and retry with its ETag`,
        partition,
      );
    }
    if (this.partitions.get(partition) !== owned) {
      throw new ChangelogError(
        'NOT_MASTER',
        `this node stopped being master of partition ${partition} while the write's precondition was checked: nothing was changed; send the write to its master`,
        partition,
      );
    }
    assertStoreInPlace(this.root);
    assertAppendable(owned);
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
      const { index } = owned;
      const known = index.slotOf(path);
      for (let attempt = 0; attempt < 5; attempt++) {
        const readFrom = Date.now();
        const before = await statFile(this.root, path);
        // Judged once the file is known to be there: a path neither indexed nor on disk (a
        // watcher's unlink of a temp file a hand writer renamed away) warrants no warning.
        if (before !== undefined && known === undefined) assertLoggableNewPath(path);
        // A record holds a signed 64-bit count of nanoseconds: years 1678 to 2262.
        if (before !== undefined && (before.mtimeNs > MAX_I64 || before.mtimeNs < -MAX_I64 - 1n)) {
          throw new FilestoreError(
            'MTIME_OUT_OF_RANGE',
            `${JSON.stringify(path)} has a modification time outside the years 1678 to 2262, which the log cannot hold, so it is not logged or replicated: touch it`,
            { path },
          );
        }
        if (before === undefined) {
          if (known === undefined) return undefined;
          // Every file of an unmounted store is missing: that is no delete.
          assertStoreInPlace(this.root);
          // Durable before it is logged: after a crash the file could be back while replicas
          // followed the record and deleted theirs.
          await syncParentOf(this.root, path);
          return this.append(partition, owned, { kind: 'delete', path, size: 0n, mtimeNs: 0n, sha256: '' });
        }
        if (known !== undefined && index.matchesStat(known, before.size, before.mtimeNs, before.ctimeNs)) {
          return undefined;
        }
        // Durable before it is logged (the file's bytes and its name): a writer that dropped it in
        // by hand may never have synced it, and after a crash the master could find it empty or
        // gone, and log that over the replicas' good copies.
        const hashed = await hashFile(this.root, path, { datasync: true });
        const after = await statFile(this.root, path);
        // The ctime too, which only the kernel sets: a rewrite whose writer put the mtime back
        // (touch -r, rsync --inplace -t), or a same-size file renamed over it, changes only that.
        if (
          hashed === undefined ||
          after === undefined ||
          after.mtimeNs !== before.mtimeNs ||
          after.size !== before.size ||
          after.ino !== before.ino ||
          after.ctimeNs !== before.ctimeNs
        ) {
          continue; // still being written: look again
        }
        // File timestamps are coarse (a clock tick, a few ms): a rewrite in place of the same
        // size within the tick the read began in leaves size and times as they were, and the
        // hash would mix two versions, which replicas could then never match. A file changed
        // that recently (its ctime: a writer may set the mtime) is looked at again once that
        // tick is surely over.
        const changedMs = Math.max(Number(after.ctimeNs / 1_000_000n), Number(after.mtimeNs / 1_000_000n));
        if (changedMs > readFrom - SAME_TICK_MS && changedMs <= Date.now() + SAME_TICK_MS) {
          await new Promise((resolve) => setTimeout(resolve, SAME_TICK_MS));
          continue;
        }
        if (
          known !== undefined &&
          index.sha256Of(known) === hashed.sha256 &&
          index.sizeOf(known) === hashed.size
        ) {
          index.setTimes(known, after.mtimeNs, after.ctimeNs);
          this.unlogged.get(partition)?.delete(path);
          return undefined;
        }
        await syncParentOf(this.root, path);
        const record = await this.append(partition, owned, {
          kind: 'put',
          path,
          size: hashed.size,
          mtimeNs: after.mtimeNs,
          sha256: hashed.sha256,
        });
        index.setCtime(index.slotOf(path)!, after.ctimeNs);
        return record;
      }
      return undefined;
    });
  }

  /**
   * Brings every attached partition's log in line with the disk: logs files that appeared or
   * changed and deletes of indexed files that are gone. Returns how many records it appended.
   */
  reconcile(): Promise<number> {
    if (!this.reconciling) return this.runReconcile();
    // The walk under way may have passed what changed since: callers meanwhile share the next
    // one, which starts as this one ends, whether it failed or not.
    if (this.nextReconcile === undefined) {
      let resolve!: (appended: number) => void;
      let reject!: (error: unknown) => void;
      const promise = new Promise<number>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      this.nextReconcile = { promise, resolve, reject };
    }
    return this.nextReconcile.promise;
  }

  /** Reconcile walks completed without error since this generator was made (for the metrics). */
  get reconcilesCompleted(): number {
    return this.completedReconciles;
  }

  private runReconcile(): Promise<number> {
    this.reconciling = true;
    return this.reconcileOnce()
      .then((appended) => {
        this.completedReconciles++;
        return appended;
      })
      .finally(() => {
        // Handed over in the same turn: no call can start a walk of its own in between.
        this.reconciling = false;
        const next = this.nextReconcile;
        this.nextReconcile = undefined;
        if (next !== undefined) this.runReconcile().then(next.resolve, next.reject);
      });
  }

  private async reconcileOnce(): Promise<number> {
    let appended = 0;
    // Which indexed paths the walk found, as one bit per slot rather than a set of a million
    // strings. A partition attached during the walk has no marks: all its paths get checked.
    const marks = new Map<PathIndex, SlotMarks>();
    for (const { index } of this.partitions.values()) marks.set(index, index.startMarks());
    // Marked once observed, so that a file the walk found and observe then indexed counts as seen.
    const markWalked = (path: string) => {
      const index = this.partitions.get(this.partitionOf(path))?.index;
      const slot = index?.slotOf(path);
      if (slot !== undefined) marks.get(index!)?.mark(slot);
    };
    // Up to RECONCILE_CONCURRENCY paths at once, so that their appends share group commits
    // instead of waiting for one fsync each.
    const inFlight = new Set<Promise<void>>();
    let failure: unknown;
    const check = async (path: string, walked: boolean) => {
      const track = this.observe(path).then(
        (record) => {
          if (record) appended++;
          if (walked) markWalked(path);
        },
        (error: unknown) => {
          failure ??= error;
          if (walked) markWalked(path);
        },
      );
      const settled = track.finally(() => inFlight.delete(settled));
      inFlight.add(settled);
      if (inFlight.size >= RECONCILE_CONCURRENCY) await Promise.race(inFlight);
    };
    try {
      for await (const entry of walkStore(this.root, '', this.walkOptions)) {
        const index = this.partitions.get(this.partitionOf(entry.path))?.index;
        if (index === undefined) continue;
        // When the walk's own stat matches the index, observe would only stat again to learn the
        // same: at a million unchanged files that is half the reconcile's work and garbage.
        const slot = index.slotOf(entry.path);
        const { size, mtimeNs, ctimeNs } = entry.stat;
        if (slot !== undefined && index.matchesStat(slot, size, mtimeNs, ctimeNs)) {
          marks.get(index)?.mark(slot);
          // A path known from the log (replayed at attach) has no ctime yet: taken from here,
          // a later change of the same size and mtime is told by it.
          if (!index.ctimeKnown(slot)) index.setCtime(slot, ctimeNs);
          continue;
        }
        await check(entry.path, true);
      }
      await Promise.all(inFlight);
      // The walk of an unmounted store finds nothing: stop before checking every indexed path.
      assertStoreInPlace(this.root);
      for (const { index } of [...this.partitions.values()]) {
        // Collected before checking, like a snapshot: paths set from here on were not missed by
        // the walk, they were just written.
        for (const path of index.unmarkedPaths(marks.get(index))) await check(path, false);
      }
      await Promise.all(inFlight);
    } finally {
      for (const [index, walked] of marks) index.endMarks(walked);
    }
    if (failure !== undefined) throw failure;
    return appended;
  }
}

const RECONCILE_CONCURRENCY = 32;
const MAX_I64 = 2n ** 63n - 1n;
/** Longer than the file system's timestamp granularity (jiffies: 4 ms at HZ=250, 10 at HZ=100). */
const SAME_TICK_MS = 25;
/** Big enough that a replay reads each 8 MiB segment a few times, small enough to die young. */
const REPLAY_PAGE_RECORDS = 10_000;

/** What `log` says each path holds: its last record's size, mtime and sha-256. */
export async function replayIntoIndex(log: TxLog): Promise<PathIndex> {
  const index = new PathIndex();
  // Pages rather than readFrom's record-by-record iteration: a million-record replay is then a
  // few hundred awaits instead of a million.
  let after = 0n;
  for (;;) {
    const page = await log.readAfter(after, REPLAY_PAGE_RECORDS);
    if (page.length === 0) break;
    for (const record of page) applyToIndex(index, record);
    after = page.at(-1)!.txid;
  }
  return index;
}

function applyToIndex(index: PathIndex, record: LogRecord): void {
  if (record.kind === 'put') {
    index.set(record.path, { size: record.size, mtimeNs: record.mtimeNs, sha256: record.sha256 });
  } else if (record.kind === 'delete') {
    index.delete(record.path);
  }
}
