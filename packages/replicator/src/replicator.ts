import { EventEmitter } from 'node:events';
import { lstatSync, renameSync, writeFileSync } from 'node:fs';
import { lstat, mkdir, readdir, readFile, rm, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import {
  assertStoreInPlace,
  findInStore,
  firstParentNotADirectory,
  hashFile,
  initStore,
  removeEmptyTree,
  SENTINEL_FILE,
  STORE_META_DIR,
  statFile,
  storeIsInPlace,
} from '@pfs/filestore';
import {
  listTopLevel,
  type Progress,
  pullBatch,
  type StartedPull,
  type SyncResult,
  startPull,
  syncTree,
} from '@pfs/rsync-invoker';
import {
  formatTxId,
  type LogRecord,
  readCheckpoint,
  type TxId,
  TxLog,
  writeCheckpoint,
  writeFileAtomic,
} from '@pfs/txlog';
import { checkContinues, DivergedError, type Expected, planBatch } from './batch.ts';
import { BootstrapDigests, DigestCollector } from './bootstrap-digests.ts';
import { discardBulkCopyStaging, freshBulkCopyStaging, moveIntoStore } from './bulk-copy-staging.ts';
import { CheckpointWriter } from './checkpoint-writer.ts';
import { splitCopy } from './copy-plan.ts';
import {
  fsyncParents,
  removeOnFailure,
  SYNCFS_MIN_PATHS,
  storeIsEmpty,
  syncFile,
  syncFileSystem,
} from './durability.ts';
import { ReplicatorError } from './errors.ts';
import { MAX_FEED_RECORDS } from './feed.ts';
import { gracedAbort } from './graced-abort.ts';
import { checkPut, waitInPlace } from './in-place.ts';
import { checkOptions } from './options.ts';
import { httpFeedSource, type RecordSource } from './sources.ts';
import { StoreGate } from './store-gate.ts';

/**
 * Follows a master's partition log and applies it here, in order.
 *
 * One batch: fetch records after the applied txid (long poll), pull the files they name with one
 * rsync (deletes included), verify each path's size and sha-256 against the last record naming it,
 * fsync the directories, append the records with the master's txids to the local log (one group
 * fsync); the checkpoint follows in the background (see CheckpointWriter). While a batch's rsync
 * runs, new records queue at the source and form the next batch; no timer is involved.
 *
 * Invariants: the checkpoint never passes a txid whose files and record are not both durable; a
 * failed rsync or a hash mismatch retries with backoff and never advances anything.
 */
export interface ReplicatorOptions {
  /** A record source, or the master's feed URL plus its rsync filestore module. */
  source: RecordSource | { feedUrl: string; filesSource: string };
  fileStoreDir: string;
  /** The local log; give `changeLogDir` to let the replicator open (and close) it, or `log`. */
  changeLogDir?: string;
  log?: TxLog;
  /** The checkpoint of partition `p` is the file `<checkpointDir>/<p>`. */
  checkpointDir: string;
  partition?: number;
  signal?: AbortSignal;
  maxBatchRecords?: number;
  /**
   * How far a batch is extended, at most, to reach the record whose bytes a pull brought
   * (default 200 000). Past it, or after a few extensions, the source's later records are read
   * without extending the batch (see explainedFurtherOn).
   */
  maxExtendedBatchRecords?: number;
  /** Long-poll wait of each fetch. */
  pollWaitMs?: number;
  /** Refuse a source that writes in a generation older than this (the cluster's current one). */
  minGeneration?: () => bigint;
  replicaId?: string;
  /** Start following at once (default true); false leaves it to `start()` or `drain()`. */
  follow?: boolean;
  /** Copy the whole store with one bulk rsync before replaying, when starting from nothing (default true). */
  bootstrap?: boolean;
  /**
   * Shared by the replicators of partitions that share one store (a node's): only one of them
   * bulk-copies it, and batches wait while it does (see StoreGate). Default: one of its own.
   */
  storeGate?: StoreGate;
  /**
   * How many rsyncs share that copy, each taking some of the store's top-level entries (see
   * splitCopy); default DEFAULT_BOOTSTRAP_COPIES.
   */
  bootstrapCopies?: number;
  /**
   * Moves out of the store what is in the way of record `txid`: a non-empty directory found
   * here at a path where it puts a file, or a file found where it needs a directory, keeping its
   * contents. Without it, such a batch fails with DIRECTORY_IN_THE_WAY or FILE_IN_THE_WAY until
   * the entry is moved away: rsync would otherwise delete it (a directory's contents
   * --max-delete items per retry).
   */
  setAside?: (path: string, txid: TxId, kind: 'directory' | 'file') => Promise<void>;
  /**
   * Whether a file at `path` is this partition's (default: every path is). Partitions share one
   * store, and each replicates in its own order: what another partition has in a record's way
   * is not set aside, since it may be that partition's current file (its log says it is there,
   * and a promotion would log its absence as a delete). The batch reads on instead (a later
   * record may clear the way), or fails with HELD_BY_ANOTHER_PARTITION and is retried until
   * that partition, catching up, removes it.
   */
  ownsPath?: (path: string) => boolean;
}

export interface AppliedBatch {
  from: TxId;
  to: TxId;
  records: number;
  /** Paths transferred. */
  paths: number;
  /** Paths found as their records say from the bootstrap's digests, without reading them again. */
  verifiedByBootstrap: number;
  /** The batch went on with its files verified in place while its rsync was still ending. */
  rsyncStillEnding: boolean;
  /** The batch's rsync was started ahead of it, waiting for its list (see prime). */
  rsyncStartedAhead: boolean;
  durationMs: number;
}

/** A 'bootstrap-progress' event: rsync's progress2 totals for one of the rsyncs sharing the copy. */
export type BootstrapProgress = Progress & { part: number };

/** A 'bootstrapped' event: the bulk copy is in place and durable. */
export interface BootstrapDone {
  durationMs: number;
  /** Of durationMs: hashing left after the rsyncs ended, and the final syncfs. */
  hashTailMs: number;
  syncMs: number;
  results: SyncResult[];
  /** Files hashed as they arrived, which the replay will not read again. */
  hashed: number;
}

/**
 * The directory in which rsyncs pulling partition `partition` into the store at `fileStoreDir`
 * write their temp files (rsync --temp-dir, see Replicator.rsyncTempDir; a bulk copy writes
 * into a staging directory instead, see bulk-copy-staging.ts); other pulls of the
 * partition's files into the store, made while its replicator is paused, use it too.
 */
export function rsyncTempDirOf(fileStoreDir: string, partition: number): string {
  return join(fileStoreDir, STORE_META_DIR, 'rsync-tmp', String(partition));
}

export const DEFAULT_MAX_BATCH_RECORDS = 1000;
export const DEFAULT_POLL_WAIT_MS = 10_000;
/** How long a batch may grow while reading on for a newer record of a path that did not match. */
const MAX_EXTENDED_BATCH_RECORDS = 200_000;
/** Extensions of a batch for bytes of a later record before its later records are only read. */
const MAX_READ_ONS = 3;
const MAX_BACKOFF_MS = 2000;
const MAX_HELD_BACKOFF_MS = 30_000;
/** Beyond this many files a bootstrap stops keeping digests (~150 bytes each); the replay reads the rest. */
const MAX_BOOTSTRAP_DIGESTS = 2_000_000;
/**
 * rsyncs sharing a bootstrap's copy. Two keep two cores busy creating files (one receiver is
 * mostly kernel time on one core); more would mostly add load on the master serving them.
 */
const DEFAULT_BOOTSTRAP_COPIES = 2;
/** How many times a bulk copy that failed is made, and the pause before the next (times the attempt). */
const BOOTSTRAP_ATTEMPTS = 3;
const BOOTSTRAP_RETRY_MS = 1000;
/** During a bootstrap's copy, a syncfs after every this many files (~16 MiB of small files). */
const BOOTSTRAP_SYNC_EVERY_FILES = 4000;
/** How long stop() waits for a bulk copy's staging directory to be removed. */
const STOP_WAITS_FOR_REMOVAL_MS = 1000;
/** How long an rsync whose files are all in place may take to exit once its batch is aborted. */
const ENDING_GRACE_MS = 100;
/** Batches of at most this many paths use an rsync started ahead of them (its --max-delete). */
const PRIMED_MAX_PATHS = 64;
/**
 * An rsync started ahead and not used within this long is ended: writes have paused, and rsync's
 * own --timeout (10 s) must never be what ends it.
 */
const PRIMED_IDLE_MS = 3000;

/**
 * The events a Replicator emits, with their payloads. `error` carries a ReplicatorError, or the
 * error of the layer that failed (an RsyncError of @pfs/rsync-invoker, a TxlogError of
 * @pfs/txlog, a FilestoreError of @pfs/filestore), each with a `code`; the batch is retried
 * with backoff, and nothing advances meanwhile. Without an `error` listener errors are not
 * thrown at the process (following goes on retrying). `caught-up` comes after every answer of
 * the source that left nothing more to apply, not once per catching up.
 */
export interface ReplicatorEvents {
  applied: [batch: AppliedBatch];
  error: [error: Error & { code?: string }];
  'caught-up': [txid: TxId];
  'bootstrap-started': [];
  'bootstrap-progress': [progress: BootstrapProgress];
  bootstrapped: [done: BootstrapDone];
  'bootstrap-abandoned': [error: Error & { code?: string }];
}

export class Replicator extends EventEmitter<ReplicatorEvents> {
  readonly partition: number;
  private source: RecordSource;
  private readonly options: ReplicatorOptions;
  private readonly log: TxLog;
  private readonly ownsLog: boolean;
  private readonly checkpoint: CheckpointWriter;
  private appliedTxid: TxId;
  private loop: Promise<void> | undefined;
  private loopController: AbortController | undefined;
  private fetchController: AbortController | undefined;
  /** The next page asked for ahead of time (catching up after a bootstrap); see follow(). */
  private prefetchController: AbortController | undefined;
  private closed = false;
  private stopping: Promise<void> | undefined;
  /** Aborted by stop(): ends a drain under way. */
  private readonly closing = new AbortController();
  /** The drain under way, which stop() waits for. */
  private draining: Promise<unknown> = Promise.resolve();
  private drainUnderWay = false;
  /** start() was called during a drain: following starts when it ends. */
  private startAfterDrain = false;
  /**
   * True while every file in the store is known durable (right after a bootstrap's syncfs):
   * files found already in place then need no fsync of their own. Any failed batch clears it,
   * since a transfer it made may have left files that were never synced.
   */
  private storeSynced = false;
  /** rsync calls whose files are all in place but which are still ending (see pull). */
  private readonly ending = new Set<Promise<void>>();
  /** Removals of bulk copies' staging directories (see discardStaging). */
  private readonly discarding = new Set<Promise<void>>();
  /** Set by a bootstrap until the replay has caught up with the source. */
  private bootstrapDigests: BootstrapDigests | undefined;
  /**
   * Where this replicator's rsyncs (but a bulk copy's, see bootstrap) write each file before
   * renaming it into place: a SIGKILLed rsync (its 1 s grace run out, or its agent killed)
   * leaves its temp file behind, and in the store it would be taken for a file nobody logged.
   * One directory per partition, since the partitions share one store; emptied whenever none of
   * this replicator's rsyncs runs.
   */
  private readonly rsyncTempDir: string;
  private readonly gate: StoreGate;
  /**
   * Paths a pull may have written whose batch is not logged (it failed or was cut short), with
   * the source they came from; kept in `unsettledFile` too, so that a restart knows them. Their
   * bytes may be those of records the next master never had (the old one died with them): before
   * this replica applies anything from another source, they are made that source's (settle).
   */
  private readonly unsettled = new Set<string>();
  private unsettledFrom: RecordSource | undefined;
  /**
   * Paths whose bytes a record of `source` further on than their batch was found to explain,
   * with that record's txid and the bytes' sha-256 (none: a delete); see explainedBefore.
   */
  private readonly explainedAhead = new Map<
    string,
    { source: RecordSource; txid: TxId; sha256: string | undefined }
  >();
  private readonly unsettledFile: string;
  /**
   * The source settle last failed with or left paths over, and when (performance.now()): it is
   * tried again with that source only after SETTLE_RETRY_MS; any other source is tried at once.
   */
  private settleFailed: { source: RecordSource; at: number } | undefined;
  /** An rsync started for the next small batch, waiting for its list (see pull). */
  private primed:
    | { pull: StartedPull; source: RecordSource; idleTimer: NodeJS.Timeout; kill: AbortController }
    | undefined;

  constructor(
    options: ReplicatorOptions,
    log: TxLog,
    ownsLog: boolean,
    applied: TxId,
    unsettled: readonly string[] = [],
  ) {
    super();
    this.options = options;
    this.partition = options.partition ?? 0;
    this.unsettledFile = unsettledFileOf(options.checkpointDir, this.partition);
    for (const path of unsettled) this.unsettled.add(path);
    this.rsyncTempDir = rsyncTempDirOf(options.fileStoreDir, this.partition);
    this.gate = options.storeGate ?? new StoreGate();
    this.source = toSource(options.source, options.replicaId);
    this.log = log;
    this.ownsLog = ownsLog;
    this.appliedTxid = applied;
    this.checkpoint = new CheckpointWriter(
      join(options.checkpointDir, String(this.partition)),
      applied,
      (error) =>
        this.report(
          new ReplicatorError(
            'CHECKPOINT_FAILED',
            `writing the checkpoint of partition ${this.partition} failed (${(error as Error).message}); replication goes on from the log, fix the disk`,
            { cause: error },
          ),
        ),
    );
    options.signal?.addEventListener(
      'abort',
      () => void this.stop().catch((error: unknown) => this.report(error)),
      { once: true },
    );
  }

  /** The last txid applied here (files durable, record logged). */
  get applied(): TxId {
    return this.appliedTxid;
  }

  get sourceDescription(): string {
    return this.source.description;
  }

  /**
   * Starts following the source; idempotent. During a drain, following starts once the drain
   * has ended (a loop beside it would apply the same records), unless paused meanwhile.
   */
  start(): void {
    if (this.loop !== undefined || this.closed) return;
    if (this.drainUnderWay) {
      this.startAfterDrain = true;
      return;
    }
    const controller = new AbortController();
    this.loopController = controller;
    this.loop = this.follow(controller.signal)
      // Nothing awaits the loop while it runs: a failure outside its retries is reported rather
      // than left to end the process as an unhandled rejection.
      .catch((error: unknown) => this.report(error))
      .finally(() => {
        this.loop = undefined;
      });
  }

  /** Stops following and waits for the batch in flight to be abandoned or finished. */
  async pause(): Promise<void> {
    this.startAfterDrain = false;
    // Before the abort: ended with an empty list, it exits at once instead of being killed.
    this.retirePrimed();
    this.loopController?.abort();
    await this.loop;
    this.retirePrimed();
    await Promise.all(this.ending);
    await this.checkpoint.flush();
  }

  /** Continues from the applied txid (not a byte offset) with another source; aborts the fetch or rsync in flight. */
  switchSource(source: RecordSource | { feedUrl: string; filesSource: string }): void {
    this.source = toSource(source, this.options.replicaId);
    this.fetchController?.abort();
    this.prefetchController?.abort();
    this.retirePrimed();
  }

  /**
   * Applies everything the current source has past the applied txid, without waiting for more,
   * and resolves the applied txid. Following is paused first. Used by a new master to drain.
   *
   * With `tolerateMismatch`, a path whose bytes do not match its last record once rsync has
   * finished does not stop the drain (a dead master may have renamed a file whose record it never
   * wrote): the records are applied, the bytes that arrived are kept, and the path is returned in
   * `unverified` so that the caller can log what is really there.
   */
  drain(
    signal?: AbortSignal,
    options: Parameters<Replicator['drainOnce']>[1] = {},
  ): Promise<{ applied: TxId; unverified: string[] }> {
    if (this.drainUnderWay) {
      return Promise.reject(
        new ReplicatorError(
          'BUSY',
          'a drain of this replicator is under way: wait for it before draining again',
        ),
      );
    }
    this.drainUnderWay = true;
    const draining = this.drainOnce(signal, options).finally(() => {
      this.drainUnderWay = false;
      if (this.startAfterDrain) {
        this.startAfterDrain = false;
        this.start();
      }
    });
    this.draining = draining.catch(() => {});
    return draining;
  }

  private async drainOnce(
    signal?: AbortSignal,
    options: {
      tolerateMismatch?: boolean;
      /**
       * Where the drain ends: at the first record this refuses (records the cluster never
       * agreed to, past the recorded end of their generation), as at the source's end.
       */
      accepts?: (record: LogRecord) => boolean;
    } = {},
  ): Promise<{ applied: TxId; unverified: string[] }> {
    if (this.closed)
      throw new ReplicatorError('CLOSED', 'the replicator was stopped: make a new one to drain');
    await this.pause();
    await this.adoptLogEnd();
    await this.clearRsyncTemp().catch((error: unknown) => this.report(error));
    // The caller's signal, the replicator's own (abort = stop), or a stop() while it drains: none
    // may leave it writing after stop() has resolved.
    const stop = AbortSignal.any(
      [signal, this.options.signal, this.closing.signal].filter((s): s is AbortSignal => s !== undefined),
    );
    const unverified = new Set<string>();
    let backoffMs = 0;
    // Failures in a row: a long drain's batches that went through do not count against it.
    let failures = 0;
    for (;;) {
      try {
        const max = this.options.maxBatchRecords ?? DEFAULT_MAX_BATCH_RECORDS;
        const fetched = await this.source.fetch(this.appliedTxid, {
          waitMs: 0,
          maxRecords: max,
          signal: stop,
          acknowledges: true,
        });
        // After the fetch: a dead source fails it first, without a settle waiting out rsync's
        // connection timeout on top.
        await this.settle(this.source, stop);
        const refused =
          options.accepts === undefined ? -1 : fetched.records.findIndex((r) => !options.accepts!(r));
        const records = refused === -1 ? fetched.records : fetched.records.slice(0, refused);
        if (records.length === 0) {
          // A drained replica is about to write the store as master: what the bootstrap knew
          // about it stops being true.
          this.forgetBootstrap();
          // The node may write the store next: no rsync of this replica may still be running.
          await Promise.all(this.ending);
          await this.checkpoint.flush();
          return { applied: this.appliedTxid, unverified: [...unverified] };
        }
        const mismatched = await this.applyBatch(this.source, records, stop, {
          tolerateMismatch: options.tolerateMismatch === true,
          ...(options.accepts === undefined ? {} : { accepts: options.accepts }),
          // A drain leads to a promotion: it does not wait out another partition's bulk copy.
          preempt: true,
        });
        for (const path of mismatched) unverified.add(path);
        backoffMs = 0;
        failures = 0;
      } catch (error) {
        if (stop.aborted || ++failures > 20 || (error as ReplicatorError).code === 'SOURCE_UNAVAILABLE')
          throw error;
        this.report(error);
        backoffMs = nextBackoff(backoffMs, error);
        await sleep(backoffMs, stop);
      }
    }
  }

  /**
   * A replica starting from nothing first copies the source's whole store in bulk (with
   * progress; split among bootstrapCopies rsyncs by top-level entry, see splitCopy), which costs
   * far less than one transfer per batch, and hashes each file as rsync puts it in place; one
   * syncfs then makes the whole copy durable. The log replay that follows checks each record
   * against those hashes, pulling only what differs (files the source changed during the copy).
   * An optimisation only: if it fails, it is made again (see follow) or the replay transfers
   * everything itself.
   *
   * The copy is received into a staging directory under `.pfs/` and moved into the store once
   * complete (bulk-copy-staging.ts): rsync's temp files stay beside their targets, which is what
   * keeps 50 000 creations fast, and one a SIGKILLed rsync leaves is thrown away with the rest of
   * a copy that did not complete.
   */
  private async bootstrap(source: RecordSource, signal: AbortSignal): Promise<'copied' | 'abandoned'> {
    const started = performance.now();
    const store = this.options.fileStoreDir;
    let staging: string;
    try {
      const fresh = await freshBulkCopyStaging(store);
      staging = fresh.staging;
      this.removingStaging(fresh.removed);
    } catch (error) {
      // No copy then: the replay transfers everything.
      this.report(error);
      return 'abandoned';
    }
    // Before anything is printed: listing a large store takes a while.
    this.emit('bootstrap-started');
    const collector = new DigestCollector(staging, new BootstrapDigests(), {
      maxEntries: MAX_BOOTSTRAP_DIGESTS,
    });
    // Writeback of the copy runs alongside it: a syncfs whenever enough new files are in place
    // (one at a time), so that the final one only has the tail left to flush.
    let syncing: Promise<'synced' | 'failed' | 'unavailable'> | undefined;
    let syncFailed = false;
    let sinceSync = 0;
    // Stopping must not wait for a backlog of files to hash.
    const stopHashing = () => collector.stop();
    signal.addEventListener('abort', stopHashing, { once: true });
    const onFileInPlace = (path: string) => {
      collector.add(path);
      if (++sinceSync < BOOTSTRAP_SYNC_EVERY_FILES || syncing !== undefined) return;
      sinceSync = 0;
      syncing = syncFileSystem(store)
        .then((synced) => {
          if (synced === 'failed') syncFailed = true;
          return synced;
        })
        .finally(() => {
          syncing = undefined;
        });
    };
    const exclude = ['.pfs-tmp.*', '/.pfs/'];
    // Stops the other parts of a split copy once one has failed.
    const copyStop = new AbortController();
    const copySignal = AbortSignal.any([signal, copyStop.signal]);
    try {
      const copies = this.options.bootstrapCopies ?? DEFAULT_BOOTSTRAP_COPIES;
      const parts =
        copies > 1
          ? splitCopy(
              await listTopLevel({ source: source.filesSource, exclude, signal }).catch(() => undefined),
              copies,
            )
          : undefined;
      let firstError: unknown;
      const settled = await Promise.allSettled(
        (parts ?? [undefined]).map((only, part) =>
          syncTree({
            source: source.filesSource,
            dest: staging,
            exclude,
            signal: copySignal,
            // One syncfs below instead of rsync's fsync per file.
            fsync: false,
            onProgress: (progress) =>
              this.emit('bootstrap-progress', { ...progress, part } satisfies BootstrapProgress),
            onFileInPlace,
            ...(only === undefined ? {} : { only }),
          }).catch((error: unknown) => {
            firstError ??= error;
            copyStop.abort();
            throw error;
          }),
        ),
      );
      if (firstError !== undefined) throw firstError;
      const results = settled.map((r) => (r as PromiseFulfilledResult<SyncResult>).value);
      const copiedAt = performance.now();
      await collector.finished();
      await syncing;
      const hashedAt = performance.now();
      // Durable before it moves in: after a syncfs that failed (a writeback error is reported
      // once), the copy's bytes may not be on disk whatever later syncs say, so it is made again.
      if (syncFailed || (await syncFileSystem(store)) === 'failed') {
        throw new ReplicatorError(
          'SYNC_FAILED',
          `syncfs of ${store} failed during the bulk copy: the copy is made again; check the disk`,
        );
      }
      // Nothing already in the store is replaced: it was written meanwhile by this node (as
      // master of another partition), after the copy's source had listed the path.
      const kept = await moveIntoStore(staging, store);
      collector.digests.forgetTouched(kept);
      await this.discardStaging();
      // Without `sync` the copy's hashes are not trusted: the replay reads and syncs each file.
      this.storeSynced = (await syncFileSystem(store)) === 'synced';
      if (this.storeSynced) this.bootstrapDigests = collector.digests;
      this.emit('bootstrapped', {
        durationMs: performance.now() - started,
        hashTailMs: hashedAt - copiedAt,
        syncMs: performance.now() - hashedAt,
        results,
        hashed: collector.digests.size,
      } satisfies BootstrapDone);
      return 'copied';
    } catch (error) {
      collector.stop();
      await collector.finished();
      await syncing;
      await this.discardStaging();
      // Failed, or stopped by pause or stop: made again (see follow), or the replay transfers
      // everything.
      this.emit('bootstrap-abandoned', error as Error & { code?: string });
      if (!signal.aborted) this.report(error);
      return 'abandoned';
    } finally {
      copyStop.abort();
      signal.removeEventListener('abort', stopHashing);
    }
  }

  /**
   * Sets a bulk copy's staging directory aside, and removes it in the background (a partial copy
   * of a large store takes a while to delete, and under `.pfs/` it harms nothing meanwhile).
   * Only while no copy writes into it: under the store gate, or after the copy's rsyncs ended.
   */
  private async discardStaging(): Promise<void> {
    try {
      this.removingStaging((await discardBulkCopyStaging(this.options.fileStoreDir)).removed);
    } catch (error) {
      this.report(error);
    }
  }

  private removingStaging(removed: Promise<void>): void {
    const removal: Promise<void> = removed
      .catch((error: unknown) => {
        if (!this.closed) this.report(error);
      })
      .finally(() => this.discarding.delete(removal));
    this.discarding.add(removal);
  }

  /** Empties rsyncTempDir, creating it if need be; only while none of this replicator's rsyncs runs. */
  private async clearRsyncTemp(): Promise<void> {
    await Promise.all(this.ending);
    await rm(this.rsyncTempDir, { recursive: true, force: true });
    await mkdir(this.rsyncTempDir, { recursive: true });
  }

  private async follow(loopSignal: AbortSignal): Promise<void> {
    await this.adoptLogEnd();
    // Should it fail, every pull fails and says why (rsync cannot use its temp dir).
    await this.clearRsyncTemp().catch((error: unknown) => this.report(error));
    // The next page, asked for while the current one is applied (catching up after a bootstrap).
    let prefetched:
      | {
          after: TxId;
          source: RecordSource;
          page: Promise<FetchedPage | undefined>;
          /** Read before the bootstrap's copy: a short page is stale (see below). */
          beforeCopy?: boolean;
        }
      | undefined;
    // One bulk copy per store: decided and made alone, so that of the partitions sharing the
    // store only the first finds it empty, and no batch writes into it meanwhile.
    // A drain of another partition (a failover) cuts the copy short rather than wait for it.
    const copyPreempted = new AbortController();
    const copySignal = AbortSignal.any([loopSignal, copyPreempted.signal]);
    const bootstrapAlone = async (): Promise<'copied' | 'abandoned' | 'not empty'> => {
      if (!(await storeIsEmpty(this.options.fileStoreDir))) return 'not empty';
      // The replay's first page is read while the copy runs: the source answers it in the
      // copy's shadow instead of after it.
      const source = this.source;
      const prefetchStop = new AbortController();
      this.prefetchController = prefetchStop;
      prefetched = {
        after: 0n,
        source,
        beforeCopy: true,
        page: source
          .fetch(0n, {
            waitMs: 0,
            maxRecords: this.options.maxBatchRecords ?? MAX_FEED_RECORDS,
            signal: AbortSignal.any([loopSignal, prefetchStop.signal]),
          })
          .catch(() => undefined),
      };
      const outcome = await this.bootstrap(source, copySignal);
      // Without the copy's digests, batches are sized for transfers, not for checks.
      if (this.bootstrapDigests === undefined) {
        prefetchStop.abort();
        prefetched = undefined;
      }
      return outcome;
    };
    // Checked first without the gate too: waiting for every batch of the store to end is only
    // worth it for a copy that may happen.
    if (
      this.appliedTxid === 0n &&
      this.options.bootstrap !== false &&
      (await storeIsEmpty(this.options.fileStoreDir))
    ) {
      // A copy that failed (its source went away, an rsync error) left nothing in the store: it
      // is made again while the store is still empty, from the current source, rather than leave
      // the replay to transfer every file one batch at a time. Not after a drain cut it short:
      // the drain has written into the store.
      for (let attempt = 1; ; attempt++) {
        let outcome: Awaited<ReturnType<typeof bootstrapAlone>>;
        try {
          outcome = await this.gate.exclusive(bootstrapAlone, loopSignal, {
            onPreempt: () => copyPreempted.abort(new Error('a drain of another partition needs the store')),
          });
        } catch (error) {
          // Paused or stopped while waiting for the store; the loop below ends at once.
          if (!loopSignal.aborted) throw error;
          break;
        }
        if (outcome !== 'abandoned' || attempt >= BOOTSTRAP_ATTEMPTS || copySignal.aborted) break;
        await sleep(attempt * BOOTSTRAP_RETRY_MS, loopSignal);
      }
    }
    let backoffMs = 0;
    while (!loopSignal.aborted) {
      const source = this.source;
      const controller = new AbortController();
      this.fetchController = controller;
      const signal = AbortSignal.any([loopSignal, controller.signal]);
      try {
        // Catching up after a bootstrap, batches mostly check digests: unless told otherwise,
        // take the largest pages the feed gives.
        const maxRecords =
          this.options.maxBatchRecords ??
          (this.bootstrapDigests === undefined ? DEFAULT_MAX_BATCH_RECORDS : MAX_FEED_RECORDS);
        // Used only if it starts exactly where the log now ends, from the source still current.
        let ahead =
          prefetched?.after === this.appliedTxid && prefetched.source === source
            ? await prefetched.page
            : undefined;
        if (this.source !== source) ahead = undefined;
        // A short page read before the copy says nothing about records written during it; taken
        // as "caught up", it would end the catch-up on the copy's hashes after one page.
        if (prefetched?.beforeCopy && ahead !== undefined && ahead.records.length < maxRecords)
          ahead = undefined;
        prefetched = undefined;
        const fetched =
          ahead ??
          (await source.fetch(this.appliedTxid, {
            waitMs: this.options.pollWaitMs ?? DEFAULT_POLL_WAIT_MS,
            maxRecords,
            signal,
            acknowledges: true,
          }));
        this.checkSource(fetched.generation, fetched.lastTxid, source);
        await this.settle(source, signal);
        if (this.bootstrapDigests !== undefined && fetched.records.length === maxRecords) {
          const after = fetched.records.at(-1)!.txid;
          const prefetchStop = new AbortController();
          this.prefetchController = prefetchStop;
          prefetched = {
            after,
            source,
            page: source
              .fetch(after, {
                waitMs: 0,
                maxRecords,
                signal: AbortSignal.any([loopSignal, prefetchStop.signal]),
              })
              .catch(() => undefined),
          };
        }
        if (fetched.records.length > 0)
          await this.applyBatch(source, fetched.records, signal, { primeNext: true });
        if (fetched.lastTxid !== undefined && this.appliedTxid >= fetched.lastTxid)
          this.emit('caught-up', this.appliedTxid);
        // A short page means caught up: from here on every batch reads what it checks.
        if (fetched.records.length < maxRecords) this.bootstrapDigests = undefined;
        backoffMs = 0;
      } catch (error) {
        if (signal.aborted) continue;
        this.report(error);
        backoffMs = nextBackoff(backoffMs, error);
        await sleep(backoffMs, signal);
      }
    }
  }

  private checkSource(
    generation: bigint | undefined,
    lastTxid: TxId | undefined,
    source: RecordSource,
  ): void {
    const minimum = this.options.minGeneration?.();
    if (generation !== undefined && generation > 0n && minimum !== undefined && generation < minimum) {
      throw new ReplicatorError(
        'STALE_SOURCE',
        `${source.description} writes in generation ${generation} but the cluster is at ${minimum}: refusing a fenced master`,
      );
    }
    if (lastTxid !== undefined && lastTxid < this.appliedTxid) {
      throw new ReplicatorError(
        'STALE_SOURCE',
        `${source.description} ends at ${formatTxId(lastTxid)}, behind this replica's ${formatTxId(this.appliedTxid)}`,
      );
    }
  }

  /**
   * Applies one batch; returns the paths that did not verify (only when `tolerateMismatch`).
   * Not while a bulk copy into the same store runs (see StoreGate).
   */
  private applyBatch(
    source: RecordSource,
    fetched: LogRecord[],
    signal: AbortSignal,
    options: {
      tolerateMismatch?: boolean;
      primeNext?: boolean;
      preempt?: boolean;
      accepts?: (record: LogRecord) => boolean;
    } = {},
  ): Promise<string[]> {
    return this.gate.shared(() => this.applyBatchToStore(source, fetched, signal, options), signal, {
      preempt: options.preempt === true,
    });
  }

  private async applyBatchToStore(
    source: RecordSource,
    fetched: LogRecord[],
    signal: AbortSignal,
    options: { tolerateMismatch?: boolean; primeNext?: boolean; accepts?: (record: LogRecord) => boolean },
  ): Promise<string[]> {
    // An unmounted store (an empty mount point) must not receive files its log then records.
    assertStoreInPlace(this.options.fileStoreDir);
    const tolerateMismatch = options.tolerateMismatch === true;
    const started = performance.now();
    const from = this.appliedTxid;
    await this.checkContinuesFrom(source, from, fetched, signal);
    let records = fetched;
    let plan = planBatch(records);
    let mismatched: string[] = [];
    let pulled = 0;
    let fromDigests = 0;
    let startedAhead = false;
    // Versions of the files the last pull found in place early, hashed already (see checkPut).
    let inPlace: ReadonlyMap<string, string> | undefined;
    // The batch was read on to the source's end (for a record held by another partition), and
    // maybe then cut back to the records before it: it is not extended again for that, and once
    // cut, not at all.
    let readToTheEnd = false;
    let cut = false;
    // Extensions for bytes of a later record, and the paths left holding such bytes.
    let readOns = 0;
    const aheadOfLog = new Set<string>();
    for (;;) {
      if (plan.paths.length === 0) break;
      // Paths already as the batch wants them (a bulk bootstrap copied them, or an earlier attempt
      // did) need no transfer; checking is a stat, and a hash only when the size already matches.
      const { needed, verified, byDigest, directories, underFiles } = await this.pathsToPull(plan.expected);
      fromDigests = byDigest;
      const filesInTheWay = await this.filesInTheWay(underFiles, plan.expected);
      const held = await this.foreignInTheWay(directories, filesInTheWay, plan.expected);
      if (held !== undefined) {
        // Not ours to move. A later record of this partition may clear the way.
        const more = readToTheEnd
          ? undefined
          : await this.readOn(source, records, signal, MAX_FEED_RECORDS, options.accepts);
        if (more !== undefined) {
          records = records.concat(more);
          plan = planBatch(records);
          continue;
        }
        readToTheEnd = true;
        if (!tolerateMismatch) {
          // Otherwise the other partition must clear it, as it catches up: apply what comes
          // before the held record meanwhile. Two partitions each held by the other's stale
          // file would wait for ever, batch against batch; the master's order has no cycle, so
          // one of their prefixes always clears the other's way.
          const before = records.filter((record) => record.txid < held.txid);
          if (before.length === 0) throw new ReplicatorError('HELD_BY_ANOTHER_PARTITION', held.message);
          records = before;
          plan = planBatch(records);
          cut = true;
          continue;
        }
        // A drain, for a promotion: every record it can get counts for more than the other
        // partition's file, which goes aside below (into quarantine, listed, recoverable)
        // rather than the promotion go on without the rest of the old master's records.
      }
      // Before anything is transferred: a directory in a file's way keeps its contents, and a
      // file in a directory's way is kept too.
      const emptyDirectories = await this.clearDirectories(directories, plan.expected);
      await this.clearFilesInTheWay(filesInTheWay);
      // From here until this batch is logged, the store may hold files nobody has synced.
      if (needed.length > 0) this.storeSynced = false;
      // Also drops what the bulk copy's hashes said of them.
      if (needed.length > 0) this.noteUnsettled(needed, source);
      const pulledBy =
        needed.length > 0
          ? await this.pull(source, needed, signal, plan.expected, {
              primeNext: options.primeNext === true,
              directories: emptyDirectories,
            })
          : undefined;
      inPlace = pulledBy?.inPlace;
      startedAhead ||= pulledBy?.startedAhead === true;
      pulled += needed.length;
      const problems = await this.verify(source, plan.expected, verified, inPlace);
      if (problems.length === 0 || tolerateMismatch) {
        mismatched = problems.map((p) => p.path);
        break;
      }
      // rsync brings a file as it is now. If the source changed it again after this batch's last
      // record for it, the newer record lies further on: read on and retry with a longer batch
      // (the retry of the same batch could never match). With nothing further, the newer record
      // is still in flight at the source; the whole batch is retried after a short backoff.
      // A path rewritten much later (a replica far behind, a replay after a bulk copy) would take
      // an ever larger batch, re-checked whole at each step, to reach: after a few steps, the
      // later records are only read. If one of them explains each path's bytes, the batch is
      // logged with those paths left unsettled (see noteUnsettled): the later record verifies
      // them in place, or, should another source come first, settle brings them in line.
      // A path found so explained before (rewritten again and again while this replica is far
      // behind) is taken at once, without reading on or through the source again.
      const paths = problems.map((p) => p.path);
      if (await this.explainedBefore(source, records.at(-1)!.txid, paths)) {
        for (const path of paths) aheadOfLog.add(path);
        break;
      }
      const more =
        cut || readOns >= MAX_READ_ONS
          ? undefined
          : await this.readOn(source, records, signal, undefined, options.accepts);
      if (more === undefined) {
        // Also once cut back before a record another partition holds: reading on does not
        // bring that record back into the batch, and two partitions waiting on each other
        // could otherwise stop at such a path for good.
        if (await this.explainedFurtherOn(source, records.at(-1)!.txid, paths, signal, options.accepts)) {
          for (const path of paths) aheadOfLog.add(path);
          break;
        }
        throw new ReplicatorError(
          'CONTENT_MISMATCH',
          `after rsync ${problems.length} path(s) differ: ${problems[0]!.why}`,
        );
      }
      readOns++;
      records = records.concat(more);
      plan = planBatch(records);
    }
    // Nothing transferred into a store synced as a whole: its directories are durable already.
    if (plan.paths.length > 0 && !(pulled === 0 && this.storeSynced))
      await fsyncParents(this.options.fileStoreDir, plan.paths);
    if (signal.aborted) throw signal.reason;
    // A batch whose append failed part-way may have logged some records already.
    const unlogged = records.filter((record) => record.txid > this.log.lastTxid);
    await Promise.all(unlogged.map((record) => this.log.appendRecord(record)));
    if (this.unsettled.size > 0) this.noteSettled(plan.paths.filter((path) => !aheadOfLog.has(path)));
    const to = records.at(-1)!.txid;
    this.appliedTxid = to;
    this.checkpoint.note(to);
    const batch: AppliedBatch = {
      from,
      to,
      records: records.length,
      paths: pulled,
      verifiedByBootstrap: fromDigests,
      rsyncStillEnding: inPlace !== undefined,
      rsyncStartedAhead: startedAhead,
      durationMs: performance.now() - started,
    };
    this.emit('applied', batch);
    return mismatched;
  }

  /**
   * Pulls `paths` with one rsync and resolves undefined when it has exited, or earlier, once
   * every path is on disk exactly as `expected` says (waitInPlace), with the versions of the
   * files it hashed to know that (for verify's checkPut): rsync then only has its own
   * 0–40 ms of ending left, which no longer holds up this batch or the next one's rsync (it
   * touches no file content any more). The call is kept in `ending` so that pause, drain and
   * stop wait for it.
   */
  private async pull(
    source: RecordSource,
    paths: string[],
    signal: AbortSignal,
    expected: ReadonlyMap<string, Expected>,
    options: { primeNext: boolean; directories: boolean },
  ): Promise<{ inPlace: ReadonlyMap<string, string> | undefined; startedAhead: boolean }> {
    const received: string[] = [];
    const onFileReceived = (path: string) => received.push(path);
    // The batch's signal reaches rsync at once while it transfers. Once every file is verified in
    // place, rsync only has its exit left (it writes no file any more), and killing it then costs
    // its SIGTERM handler's 400 ms sleep, which pause and drain would wait for: it gets
    // ENDING_GRACE_MS to exit on its own first.
    const abort = gracedAbort(signal, ENDING_GRACE_MS);
    // The waiting rsync's --max-delete is PRIMED_MAX_PATHS, not this batch's count: it may take
    // only a list whose paths each delete at most one item, i.e. none is a directory here.
    const started =
      paths.length <= PRIMED_MAX_PATHS && !options.directories ? this.takePrimed(source) : undefined;
    const run = (
      started
        ? started.run(paths, { onFileReceived, signal: abort.signal })
        : pullBatch({ ...this.pullOptions(source, abort.signal), paths, onFileReceived })
    ).finally(() => abort.dispose());
    const ended = run.then(
      () => undefined,
      () => undefined,
    );
    let early: Map<string, string> | undefined;
    try {
      early = await waitInPlace({ root: this.options.fileStoreDir, paths, expected, received, ended });
    } catch (error) {
      // A file could not be read or synced: the batch fails, but not while its rsync still runs.
      await ended;
      throw error;
    }
    // After a small batch, the next batch's rsync execs, connects and shakes hands while this
    // one is verified and logged. Not earlier: its start competed with this batch's own list and
    // transfer (measured when the agent still forked rsync itself). Not after a large one: the
    // next is likely large too (a catch-up).
    const primeNow = options.primeNext && paths.length <= PRIMED_MAX_PATHS;
    if (early === undefined) {
      await run;
      if (primeNow) this.prime(source);
      return { inPlace: undefined, startedAhead: started !== undefined };
    }
    if (primeNow) this.prime(source);
    abort.relax();
    const ending: Promise<void> = run
      .then(
        () => undefined,
        (error: unknown) => {
          // The files it brought are verified; a failure while ending is only worth a report.
          if (!signal.aborted) this.report(error);
        },
      )
      .finally(() => this.ending.delete(ending));
    this.ending.add(ending);
    return { inPlace: early, startedAhead: started !== undefined };
  }

  private pullOptions(source: RecordSource, signal: AbortSignal | undefined) {
    return {
      source: source.filesSource,
      dest: this.options.fileStoreDir,
      signal,
      // verify() fsyncs every received file itself, concurrently: cheaper than rsync's one-by-one.
      fsync: false,
      tempDir: this.rsyncTempDir,
    };
  }

  /**
   * Starts an rsync for the next small batch from `source`, unless one is waiting already. Its
   * exec, connection and handshake (~7 ms of a ~9 ms pull of one small file) then happen before
   * that batch exists. --max-delete is PRIMED_MAX_PATHS rather than the batch's own count.
   */
  private prime(source: RecordSource): void {
    if (this.primed !== undefined || this.closed || source !== this.source) return;
    if (this.loopController === undefined || this.loopController.signal.aborted) return;
    // Ended cleanly with an empty list (retirePrimed); `kill` only if that goes unanswered (a
    // frozen source), since rsync's SIGTERM handler costs 400 ms. A batch that uses it passes its
    // own signal to run().
    const kill = new AbortController();
    const pull = startPull({ ...this.pullOptions(source, kill.signal), maxDelete: PRIMED_MAX_PATHS });
    const idleTimer = setTimeout(() => this.retirePrimed(), PRIMED_IDLE_MS);
    idleTimer.unref();
    this.primed = { pull, source, idleTimer, kill };
  }

  /** The waiting rsync, if it is for `source` and still alive; anything else is ended. */
  private takePrimed(source: RecordSource): StartedPull | undefined {
    const primed = this.primed;
    if (primed === undefined) return undefined;
    if (primed.source !== source || primed.pull.exited) {
      this.retirePrimed();
      return undefined;
    }
    clearTimeout(primed.idleTimer);
    this.primed = undefined;
    return primed.pull;
  }

  /** Ends the waiting rsync with an empty list (it touches nothing); pause and drain wait for it. */
  private retirePrimed(): void {
    const primed = this.primed;
    if (primed === undefined) return;
    this.primed = undefined;
    clearTimeout(primed.idleTimer);
    // A source that froze never answers the empty list: rsync would wait out its --timeout, and
    // pause (on the way to a failover) with it.
    const unanswered = setTimeout(() => primed.kill.abort(), ENDING_GRACE_MS);
    const ending = primed.pull.discard().finally(() => {
      clearTimeout(unanswered);
      this.ending.delete(ending);
    });
    this.ending.add(ending);
  }

  /**
   * The source's records after `records`, to extend a batch with (none waited for); undefined
   * when there are none, or the batch would grow past MAX_EXTENDED_BATCH_RECORDS.
   */
  private async readOn(
    source: RecordSource,
    records: readonly LogRecord[],
    signal: AbortSignal,
    maxRecords = this.options.maxBatchRecords ?? DEFAULT_MAX_BATCH_RECORDS,
    accepts?: (record: LogRecord) => boolean,
  ): Promise<LogRecord[] | undefined> {
    const more = await source.fetch(records.at(-1)!.txid, { waitMs: 0, maxRecords, signal });
    // Not past where the drain ends (see drain's `accepts`).
    const refused = accepts === undefined ? -1 : more.records.findIndex((r) => !accepts(r));
    const taken = refused === -1 ? more.records : more.records.slice(0, refused);
    const cap = this.options.maxExtendedBatchRecords ?? MAX_EXTENDED_BATCH_RECORDS;
    if (taken.length === 0 || records.length + taken.length > cap) return undefined;
    await this.checkContinuesFrom(source, records.at(-1)!.txid, taken, signal);
    return taken;
  }

  /**
   * checkContinues, with the source asked about each end-of-generation record that does not name
   * the txid before it: one whose own log holds that txid (a splice written before the check
   * existed) is followed as it is; one that does not is a divergence of this log (DIVERGED).
   */
  private async checkContinuesFrom(
    source: RecordSource,
    after: TxId,
    records: readonly LogRecord[],
    signal: AbortSignal,
  ): Promise<void> {
    const confirmed = new Set<TxId>();
    for (;;) {
      try {
        checkContinues(after, records, confirmed);
        return;
      } catch (error) {
        if (!(error instanceof DivergedError) || confirmed.has(error.marker) || error.previous === 0n)
          throw error;
        // The divergence is what the caller must hear of, not a failure of this question.
        const held = await source
          .fetch(error.previous - 1n, { waitMs: 0, maxRecords: 1, signal })
          .catch((failure: unknown) => {
            if (signal.aborted) throw failure;
            return undefined;
          });
        if (held?.records[0]?.txid !== error.previous) throw error;
        confirmed.add(error.marker);
      }
    }
  }

  /**
   * Whether each of `paths` holds what a record of `source` after `after` says (a put of those
   * bytes, or a delete of a missing file): the master rewrote it after the batch's record.
   * Reads the source's records page by page, at most to its end (or to the first record
   * `accepts` refuses), without waiting for more.
   */
  private async explainedFurtherOn(
    source: RecordSource,
    after: TxId,
    paths: readonly string[],
    signal: AbortSignal,
    accepts?: (record: LogRecord) => boolean,
  ): Promise<boolean> {
    const pending = new Map<string, { size: bigint; sha256: string } | undefined>();
    for (const path of paths) pending.set(path, await hashFile(this.options.fileStoreDir, path));
    let cursor = after;
    while (pending.size > 0) {
      const page = await source.fetch(cursor, { waitMs: 0, maxRecords: MAX_FEED_RECORDS, signal });
      if (page.records.length === 0) return false;
      for (const record of page.records) {
        if (accepts !== undefined && !accepts(record)) return false;
        if (!pending.has(record.path)) continue;
        const disk = pending.get(record.path);
        const explained =
          record.kind === 'put'
            ? disk !== undefined && disk.size === record.size && disk.sha256 === record.sha256
            : record.kind === 'delete' && disk === undefined;
        if (explained) {
          pending.delete(record.path);
          this.explainedAhead.set(record.path, { source, txid: record.txid, sha256: disk?.sha256 });
        }
      }
      cursor = page.records.at(-1)!.txid;
    }
    return true;
  }

  /**
   * Whether each of `paths` still holds what a record of `source` past `after` was found to say
   * (see explainedFurtherOn); forgets what the log has caught up with, or another source said.
   */
  private async explainedBefore(
    source: RecordSource,
    after: TxId,
    paths: readonly string[],
  ): Promise<boolean> {
    for (const [path, known] of this.explainedAhead) {
      if (known.source !== source || known.txid <= this.appliedTxid) this.explainedAhead.delete(path);
    }
    for (const path of paths) {
      const known = this.explainedAhead.get(path);
      if (known === undefined || known.txid <= after) return false;
      const disk = await hashFile(this.options.fileStoreDir, path);
      if (disk?.sha256 !== known.sha256) return false;
    }
    return true;
  }

  /**
   * Another partition's file in the batch's way (see ownsPath), in one of `directories` (paths
   * where the batch puts a file) or as one of `filesInTheWay`: the earliest record so held, and
   * the error message naming both; undefined if there is none.
   */
  private async foreignInTheWay(
    directories: readonly string[],
    filesInTheWay: readonly FileInTheWay[],
    expected: ReadonlyMap<string, Expected>,
  ): Promise<{ txid: TxId; message: string } | undefined> {
    const owns = this.options.ownsPath;
    if (owns === undefined) return undefined;
    const waiting =
      "waiting for that partition to remove it as it catches up (if both are current, a file and a directory were written there through the two partitions' masters, each not yet having the other's: delete one of them)";
    let first: { txid: TxId; message: string } | undefined;
    for (const path of directories) {
      const txid = expected.get(path)!.txid;
      if (first !== undefined && first.txid < txid) continue;
      const entry = await findInStore(this.options.fileStoreDir, path, (file) => !owns(file));
      if (entry !== undefined) {
        first = {
          txid,
          message: `${JSON.stringify(path)} is a directory here holding ${JSON.stringify(entry)}, a file of another partition, where this partition's record ${formatTxId(txid)} puts a file: ${waiting}`,
        };
      }
    }
    for (const { ancestor, path, txid } of filesInTheWay) {
      if (owns(ancestor) || (first !== undefined && first.txid < txid)) continue;
      first = {
        txid,
        message: `${JSON.stringify(ancestor)} is a file of another partition here, where this partition's record ${formatTxId(txid)} puts ${JSON.stringify(path)} below it: ${waiting}`,
      };
    }
    return first;
  }

  /**
   * Sets aside (setAside) each non-empty directory among `directories`, paths where the batch
   * puts a file; an empty one is left to rsync (--force removes it: one deletion, within the
   * batch's --max-delete), and one holding only empty directories is removed. Resolves whether
   * any directory is left in the way.
   */
  private async clearDirectories(
    directories: readonly string[],
    expected: ReadonlyMap<string, Expected>,
  ): Promise<boolean> {
    let left = false;
    for (const path of directories) {
      const entries = await readdir(join(this.options.fileStoreDir, path)).catch((error: unknown) => {
        // Gone or no longer a directory: nothing in the way. Anything else (EACCES, EMFILE) says
        // nothing about what it holds, so the batch fails rather than let rsync at it.
        const code = (error as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
        throw error;
      });
      if (entries === undefined) continue;
      if (entries.length === 0) {
        left = true;
        continue;
      }
      // Only empty directories below (what deletes on the master leave): nothing to keep.
      if (await removeEmptyTree(join(this.options.fileStoreDir, path))) continue;
      if (this.options.setAside === undefined) {
        throw new ReplicatorError(
          'DIRECTORY_IN_THE_WAY',
          `${JSON.stringify(path)} is a directory of ${entries.length} item(s) here but a file on the source: move it out of the store (nothing in it is replicated) and replication resumes`,
        );
      }
      await this.options.setAside(path, expected.get(path)!.txid, 'directory');
    }
    return left;
  }

  /**
   * For each path in `underFiles`, a put below a component that is not a directory here: that
   * component (once per component), unless the batch deletes it anyway.
   */
  private async filesInTheWay(
    underFiles: readonly string[],
    expected: ReadonlyMap<string, Expected>,
  ): Promise<FileInTheWay[]> {
    const found = new Map<string, FileInTheWay>();
    for (const path of underFiles) {
      const ancestor = (await firstParentNotADirectory(this.options.fileStoreDir, path))?.parent;
      if (ancestor !== undefined && !found.has(ancestor) && expected.get(ancestor)?.kind !== 'delete')
        found.set(ancestor, { ancestor, path, txid: expected.get(path)!.txid });
    }
    return [...found.values()];
  }

  /**
   * Sets each of `files` aside (setAside). rsync would otherwise replace it with the directory
   * the put needs (--force), deleting a file the master does not have at that path.
   */
  private async clearFilesInTheWay(files: readonly FileInTheWay[]): Promise<void> {
    for (const { ancestor, path, txid } of files) {
      if (this.options.setAside === undefined) {
        throw new ReplicatorError(
          'FILE_IN_THE_WAY',
          `${JSON.stringify(ancestor)} is a file here but a directory on the source (it holds ${JSON.stringify(path)}): move it out of the store and replication resumes`,
        );
      }
      await this.options.setAside(ancestor, txid, 'file');
    }
  }

  /** The paths of a batch that are not already as its records say (the rest are verified now). */
  private async pathsToPull(expected: ReadonlyMap<string, Expected>): Promise<{
    needed: string[];
    verified: Set<string>;
    byDigest: number;
    directories: string[];
    underFiles: string[];
  }> {
    const verified = new Set<string>();
    const digests = this.bootstrapDigests;
    let byDigest = 0;
    // Paths to pull that are directories here (see clearDirectories).
    const directories: string[] = [];
    // Paths to put below a component that is a file here.
    const underFiles: string[] = [];
    // Digest matches first, synchronously: a catch-up page is 10 000 of them, and a promise each
    // was most of its cost.
    const toCheck: [string, Expected][] = [];
    for (const [path, want] of expected) {
      if (want.kind === 'put' && digests?.matches(path, want.size, want.sha256)) {
        verified.add(path);
        byDigest++;
      } else toCheck.push([path, want]);
    }
    const checks = toCheck.map(async ([path, want]) => {
      const entry = await lstat(join(this.options.fileStoreDir, path), { bigint: true }).catch(
        (error: unknown) => {
          // A file here where the path needs a directory (see clearFilesInTheWay).
          if ((error as NodeJS.ErrnoException).code === 'ENOTDIR' && want.kind === 'put')
            underFiles.push(path);
          return undefined;
        },
      );
      // A regular file, never followed through a symlink: anything else counts as none.
      const info = entry?.isFile() ? entry : undefined;
      if (want.kind === 'delete') {
        if (info !== undefined) return path;
        verified.add(path);
        return undefined;
      }
      if (info === undefined || info.size !== want.size) {
        if (entry?.isDirectory()) directories.push(path);
        return path;
      }
      const got = await hashFile(this.options.fileStoreDir, path);
      if (got?.sha256 !== want.sha256) return path;
      verified.add(path);
      return undefined;
    });
    const needed = (await Promise.all(checks)).filter((p) => p !== undefined);
    return { needed, verified, byDigest, directories, underFiles };
  }

  /**
   * Checks every path against its last record and makes the files durable: one fdatasync per
   * file for small batches, one syncfs of the store's file system (`sync -f`) for large ones,
   * where thousands of fsyncs would each wait for a journal commit.
   */
  private async verify(
    source: RecordSource,
    expected: ReadonlyMap<string, Expected>,
    alreadyVerified: ReadonlySet<string> = new Set(),
    inPlace: ReadonlyMap<string, string> = new Map(),
  ): Promise<{ path: string; why: string }[]> {
    const trusted = (path: string) => alreadyVerified.has(path) && this.storeSynced;
    const toSync = [...expected.keys()].filter((path) => !trusted(path)).length;
    // Trusted paths (verified before the transfer, in a store synced as a whole) need nothing.
    const toCheck = [...expected].filter(([path]) => !trusted(path));
    // One syncfs first makes a large batch's writeback one journal commit; each file still gets
    // its own fdatasync below, cheap on clean pages, since a syncfs reports a writeback error to
    // the first caller only: another partition's batch, or any `sync -f`, may have had it.
    const synced = toSync >= SYNCFS_MIN_PATHS ? await syncFileSystem(this.options.fileStoreDir) : undefined;
    if (synced === 'failed') {
      // A writeback error is reported once: per-file syncs now would pass on bytes that may
      // not be on disk. The batch's files are pulled again (from whichever source comes next).
      this.noteUnsettled(
        toCheck.filter(([, want]) => want.kind === 'put').map(([path]) => path),
        source,
      );
      await Promise.all(
        toCheck.map(([path, want]) =>
          want.kind === 'put' ? unlink(join(this.options.fileStoreDir, path)).catch(() => {}) : undefined,
        ),
      );
      throw new ReplicatorError(
        'SYNC_FAILED',
        `syncfs of ${this.options.fileStoreDir} failed: the batch's files are pulled again; check the disk`,
      );
    }
    const checks = toCheck.map(async ([path, want]) => {
      const file = join(this.options.fileStoreDir, path);
      if (alreadyVerified.has(path)) {
        // Checked just before the transfer and not part of it: only durability is left to do.
        if (want.kind === 'put')
          await removeOnFailure(
            file,
            () => syncFile(file),
            () => this.noteUnsettled([path], source),
          );
        return undefined;
      }
      const shown = JSON.stringify(path);
      if (want.kind === 'delete') {
        return (await statFile(this.options.fileStoreDir, path)) === undefined
          ? undefined
          : { path, why: `${shown} still exists` };
      }
      const got = await removeOnFailure(
        file,
        () =>
          checkPut(this.options.fileStoreDir, path, want, {
            datasync: true,
            knownVersion: inPlace.get(path),
          }),
        () => this.noteUnsettled([path], source),
      );
      if (got === undefined) return { path, why: `${shown} is missing` };
      if (got.size !== want.size || got.sha256 !== want.sha256) {
        return {
          path,
          why: `${shown} has ${got.size} bytes sha-256 ${got.sha256.slice(0, 12)}…, record ${formatTxId(want.txid)} says ${want.size} bytes ${want.sha256.slice(0, 12)}…`,
        };
      }
      return undefined;
    });
    return (await Promise.all(checks)).filter((p) => p !== undefined);
  }

  /**
   * Records that a pull is about to write `paths` from `source`. The file is written without
   * fsync: a process killed mid-pull leaves it in the page cache, and on ext4 its creation is
   * journalled before the renames rsync makes after it. Synchronously: it is on every batch's
   * path, and a small write to the page cache costs less than a thread-pool round trip.
   */
  private noteUnsettled(paths: readonly string[], source: RecordSource): void {
    const before = this.unsettled.size;
    // Paths from two sources: whichever comes next is another for some of them.
    this.unsettledFrom = before === 0 || this.unsettledFrom === source ? source : undefined;
    for (const path of paths) this.unsettled.add(path);
    // Whatever the copy's hashes said of them, these files are being (or were) replaced or removed.
    this.bootstrapDigests?.forgetTouched(paths);
    if (this.unsettled.size > before) this.saveUnsettled();
  }

  private noteSettled(paths: readonly string[]): void {
    for (const path of paths) this.unsettled.delete(path);
    if (this.unsettled.size === 0) this.unsettledFrom = undefined;
    this.saveUnsettled();
  }

  /**
   * Writes the unsettled paths, NUL-separated (an empty file when there are none). Through a temp
   * file and a rename over the file: a process killed between an in-place rewrite's truncation
   * and its write would forget the paths an earlier pull left.
   */
  private saveUnsettled(): void {
    const temp = `${this.unsettledFile}.tmp`;
    writeFileSync(temp, [...this.unsettled].join('\0'));
    renameSync(temp, this.unsettledFile);
  }

  /**
   * Makes the unsettled paths what `source` holds now (pulled, or deleted where it has none),
   * before anything from it is applied: what an earlier source's cut-short pull left there may
   * be bytes of records `source` never had. Its later records are then checked against them as
   * usual. Only from a source they did not come from, at most every SETTLE_RETRY_MS after a
   * failure (reported; following goes on meanwhile). A path with a directory at it, or a file
   * where it needs a directory, is left for a later try: the pull (rsync --force) would delete
   * what is in the way, maybe another partition's logged file, where a batch sets its own
   * partition's aside and waits for another's (see foreignInTheWay).
   */
  private async settle(source: RecordSource, signal: AbortSignal): Promise<void> {
    if (this.unsettled.size === 0 || this.unsettledFrom === source) return;
    const failed = this.settleFailed;
    if (failed?.source === source && performance.now() - failed.at < SETTLE_RETRY_MS) return;
    const root = this.options.fileStoreDir;
    const paths = [...this.unsettled].filter((path) => nothingInTheWay(root, path));
    if (paths.length === 0) return;
    try {
      assertStoreInPlace(root);
      await this.gate.shared(
        async () => {
          await pullBatch({ ...this.pullOptions(source, signal), paths });
          // Durable now: a batch may find them in place and vouch for them. One whose fdatasync
          // fails goes (a writeback error is reported once: a later sync would pass its bytes
          // on from the page cache), and is pulled again.
          this.storeSynced = false;
          await Promise.all(
            paths.map((path) =>
              removeOnFailure(join(root, path), () => syncFile(join(root, path))).catch(
                (error: NodeJS.ErrnoException) => {
                  if (error.code !== 'ENOENT') throw error;
                },
              ),
            ),
          );
          await fsyncParents(root, paths);
        },
        signal,
        { preempt: true },
      );
      this.bootstrapDigests?.forgetTouched(paths);
      // They hold what `source` has now, maybe a record's past the applied txid, which it may
      // never come to log: unsettled still, now from `source`, until a batch of its records
      // verifies them, or another source comes and settles them again.
      if (paths.length === this.unsettled.size) this.unsettledFrom = source;
      this.settleFailed = this.unsettledFrom === source ? undefined : { source, at: performance.now() };
    } catch (error) {
      if (signal.aborted) throw error;
      this.settleFailed = { source, at: performance.now() };
      this.report(
        new ReplicatorError(
          'UNSETTLED',
          `${paths.length} path(s) a cut-short pull left (${JSON.stringify(paths[0])}…) could not be made ${source.description}'s: ${(error as Error).message}; they may hold bytes no log records until this succeeds`,
          { cause: error },
        ),
      );
    }
  }

  /**
   * Takes the log's end as the applied txid when the log is past it: this node wrote there as
   * master since (a promotion's marker, then its own records, none of which pass through here).
   * Done before following or draining, so that a fenced master does not fetch its own term again
   * from its successor (acknowledging far behind, checking old records against newer bytes), and
   * the bulk copy's hashes, no longer true of a store this node wrote, are dropped.
   */
  private async adoptLogEnd(): Promise<void> {
    const end = this.log.lastTxid;
    if (end <= this.appliedTxid) return;
    this.forgetBootstrap();
    this.appliedTxid = end;
    // The log is what a restart resumes from: a checkpoint that cannot be written is reported,
    // as in every batch, and following goes on.
    await this.checkpoint
      .reset(end)
      .catch((error: unknown) =>
        this.report(
          new ReplicatorError(
            'CHECKPOINT_FAILED',
            `writing the checkpoint of partition ${this.partition} failed (${(error as Error).message}); replication goes on from the log, fix the disk`,
            { cause: error },
          ),
        ),
      );
  }

  private forgetBootstrap(): void {
    this.bootstrapDigests = undefined;
    this.storeSynced = false;
  }

  private report(error: unknown): void {
    if (this.listenerCount('error') > 0) this.emit('error', error as Error & { code?: string });
  }

  /**
   * Takes the applied txid from the log again, after the log was cut back (divergence repair),
   * and rewrites the checkpoint. Following must be paused.
   */
  async rewind(): Promise<void> {
    this.forgetBootstrap();
    this.appliedTxid = this.log.lastTxid;
    await this.checkpoint.reset(this.appliedTxid);
  }

  /**
   * Stops following, and a drain under way; closes the log if the replicator opened it. Every
   * call, and the stop an abort of its signal starts, resolves when all of that is done.
   */
  stop(): Promise<void> {
    this.stopping ??= this.stopOnce();
    return this.stopping;
  }

  private async stopOnce(): Promise<void> {
    this.closed = true;
    this.closing.abort();
    await this.draining;
    await this.pause();
    // A removal of a large staging directory is not waited for beyond this: the next start
    // finishes it.
    const waited = new AbortController();
    await Promise.race([Promise.all(this.discarding), sleep(STOP_WAITS_FOR_REMOVAL_MS, waited.signal)]);
    waited.abort();
    if (this.ownsLog) await this.log.close();
    await this.source.close?.();
  }
}

type FetchedPage = Awaited<ReturnType<RecordSource['fetch']>>;

function toSource(source: ReplicatorOptions['source'], replicaId: string | undefined): RecordSource {
  if ('fetch' in source) return source;
  return httpFeedSource({ ...source, ...(replicaId === undefined ? {} : { replicaId }) });
}

/** Opens the log and checkpoint and starts following (unless `follow: false`). */
export async function createReplicator(given: ReplicatorOptions): Promise<Replicator> {
  given.signal?.throwIfAborted();
  const options = { ...given, partition: checkOptions(given).partition };
  const log = options.log ?? (await TxLog.open(options.changeLogDir!));
  try {
    return await setUp(options, log);
  } catch (error) {
    if (options.log === undefined) await log.close().catch(() => {});
    throw error;
  }
}

async function setUp(options: ReplicatorOptions & { partition: number }, log: TxLog): Promise<Replicator> {
  // A store is made with its sentinel; one without it while the log holds records is not
  // mounted, or not this replica's: following would write into whatever is there.
  if (!storeIsInPlace(options.fileStoreDir)) {
    if (log.lastTxid > 0n) {
      throw new ReplicatorError(
        'STORE_MISSING',
        `${options.fileStoreDir} has no ${SENTINEL_FILE} but the log holds records: mount the store, or remove the log and checkpoint to start this replica afresh`,
      );
    }
    await initStore(options.fileStoreDir);
  }
  const checkpointFile = join(options.checkpointDir, String(options.partition));
  await mkdir(options.checkpointDir, { recursive: true });
  // A record is logged only after its files are durable, so the log's end is always safe to
  // resume from; a checkpoint behind it only means a crash came between the two writes. One
  // that cannot be read or written does not keep the partition from following: it is only a
  // report of the log's end, rewritten from it here and by every later batch.
  const checkpoint = await readCheckpoint(checkpointFile).catch(() => undefined);
  const applied = log.lastTxid;
  if (checkpoint !== applied) await writeCheckpoint(checkpointFile, applied).catch(() => {});
  const unsettledFile = unsettledFileOf(options.checkpointDir, options.partition);
  const unsettled = await readFile(unsettledFile, 'utf8').then(
    (text) => text.split('\0').filter((path) => path !== ''),
    async () => {
      // Made once, durably, and kept (empty when nothing is unsettled): each later save renames
      // over it, and ext4 writes a file renamed over another before the rename commits, where a
      // file new after a power loss could come back empty while rsync's renames after it stayed.
      await writeFileAtomic(unsettledFile, '').catch(() => {});
      return [] as string[];
    },
  );
  // Aborted while it was set up: stopped, never started (its abort listener came too late).
  options.signal?.throwIfAborted();
  const replicator = new Replicator(options, log, options.log === undefined, applied, unsettled);
  if (options.follow !== false) replicator.start();
  return replicator;
}

const SETTLE_RETRY_MS = 10_000;

/** No directory at `path`, and no file where one of its parents should be a directory. */
function nothingInTheWay(root: string, path: string): boolean {
  try {
    const info = lstatSync(join(root, path), { throwIfNoEntry: false });
    return info === undefined ? parentsAreDirectories(root, path) : !info.isDirectory();
  } catch {
    return false; // ENOTDIR: a parent is a file
  }
}

/** A file found where a put (`path`, of record `txid`) needs a directory: `ancestor`. */
interface FileInTheWay {
  ancestor: string;
  path: string;
  txid: TxId;
}

function parentsAreDirectories(root: string, path: string): boolean {
  const parts = path.split('/').slice(0, -1);
  for (let i = 1; i <= parts.length; i++) {
    const info = lstatSync(join(root, ...parts.slice(0, i)), { throwIfNoEntry: false });
    if (info === undefined) return true; // made by the pull
    if (!info.isDirectory()) return false;
  }
  return true;
}

/** Where a replicator keeps its unsettled paths (NUL-separated), beside its checkpoint. */
function unsettledFileOf(checkpointDir: string, partition: number): string {
  return join(checkpointDir, `${partition}.unsettled`);
}

function nextBackoff(previousMs: number, error: unknown): number {
  const code = (error as ReplicatorError).code;
  // A mismatch is normally a record still in flight on the master: retry almost at once.
  const base = code === 'CONTENT_MISMATCH' ? 5 : 100;
  // A batch held by another partition reads the source to its end at every try: while the
  // other partition does not catch up, tries are spaced out further.
  const max = code === 'HELD_BY_ANOTHER_PARTITION' ? MAX_HELD_BACKOFF_MS : MAX_BACKOFF_MS;
  return Math.min(max, previousMs === 0 ? base : previousMs * 2);
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}
