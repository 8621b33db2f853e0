import type { FileHandle } from 'node:fs/promises';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { type DirectoryLock, lockDirectory } from './dir-lock.ts';
import { mkdirDurable } from './durable.ts';
import { TxlogError } from './errors.ts';
import { encodeFrame } from './frame.ts';
import { encodeRecord, type LogRecord } from './record.ts';
import {
  createSegment,
  cutSegment,
  openSegmentForAppend,
  removeSegment,
  SEGMENT_MAGIC,
  scanSegment,
} from './segment.ts';
import { segmentIndexFor, sortedSegments } from './segment-name.ts';
import { formatTxId, generationMarkerTxId, generationOf, nextTxId, type TxId, ZERO_TXID } from './txid.ts';

/**
 * An append-only, segmented log of one partition.
 *
 * Invariants:
 * - txids strictly increase through the whole log;
 * - an append's promise resolves only after its frame is fdatasync'ed (group commit: all
 *   appends queued while one fsync runs share the next one);
 * - readers see only durable records;
 * - a torn tail of the last segment is cut on open and reported; anything else that does not
 *   decode is a TXLOG_CORRUPT error naming the segment and offset, never skipped.
 */
export interface TxLogOptions {
  /** A segment is cut when the next frame would take it past this size. */
  segmentSizeBytes?: number;
  /** How many of the newest records are kept in memory to serve followers without disk reads. */
  tailCacheRecords?: number;
}

export interface OpenReport {
  tornTail?: { segment: string; offset: number; bytesRemoved: number; reason: string };
}

export type ChangeInput = Pick<LogRecord, 'kind' | 'path' | 'size' | 'mtimeNs' | 'sha256'> & {
  kind: 'put' | 'delete';
};

export const DEFAULT_SEGMENT_SIZE_BYTES = 8 * 1024 * 1024;
export const DEFAULT_TAIL_CACHE_RECORDS = 16_384;

interface Pending {
  record: LogRecord;
  frame: Buffer;
  resolve: (record: LogRecord) => void;
  reject: (error: unknown) => void;
}

interface Waiter {
  after: TxId;
  wake: () => void;
}

export class TxLog {
  readonly dir: string;
  readonly openReport: OpenReport;
  private readonly segmentSizeBytes: number;
  private readonly tailCacheRecords: number;
  /** First txid of every segment, in order. */
  private segments!: TxId[];
  private handle!: FileHandle | undefined;
  private segmentBytes!: number;
  private durableTxid!: TxId;
  private assignedTxid!: TxId;
  private writableGeneration: bigint | undefined;
  private tail!: LogRecord[];
  private tailIsWholeLog!: boolean;
  private queue: Pending[] = [];
  private flushing: Promise<void> | undefined;
  private waiters = new Set<Waiter>();
  private closed = false;
  /** This log's hold on its directory (see open), released by close(). */
  private lock: DirectoryLock | undefined;
  private truncating = false;
  /**
   * Set when a failed write could not be taken back: the segment may end in a partial frame, or
   * in whole frames of records whose appends failed, after which (segments are O_APPEND) any
   * further frame would land. Appends fail from then on; reopening cuts the tail.
   */
  private unwritable: Error | undefined;
  /** Where the last disk read ended, so that a sequential reader resumes there. */
  private readCursor: { after: TxId; segment: TxId; offset: number } | undefined;
  /** Cuts (truncateAfter, clear) made so far: a read that a cut overlapped finds no damage. */
  private cuts = 0;

  private constructor(dir: string, options: Required<TxLogOptions>, state: OpenState) {
    this.dir = dir;
    this.segmentSizeBytes = options.segmentSizeBytes;
    this.tailCacheRecords = options.tailCacheRecords;
    this.openReport = state.report;
    this.adopt(state);
  }

  /** Takes the in-memory state from a scan of the directory (open, and after a truncation). */
  private adopt(state: OpenState): void {
    this.segments = state.segments;
    this.handle = state.handle;
    this.segmentBytes = state.segmentBytes;
    this.durableTxid = state.lastTxid;
    this.assignedTxid = state.lastTxid;
    this.tail = state.tail;
    this.tailIsWholeLog = state.tailIsWholeLog;
  }

  /** Opens (creating if needed) the log in `dir`, cutting a torn tail of the last segment. */
  static async open(dir: string, options: TxLogOptions = {}): Promise<TxLog> {
    const resolved = {
      segmentSizeBytes: options.segmentSizeBytes ?? DEFAULT_SEGMENT_SIZE_BYTES,
      tailCacheRecords: options.tailCacheRecords ?? DEFAULT_TAIL_CACHE_RECORDS,
    };
    await mkdirDurable(dir);
    // One TxLog per directory on this machine: two would each check their appends against their
    // own last txid, append the same records twice, and the log would not open again.
    const lock = await lockDirectory(dir, 'log');
    if (lock === undefined) {
      throw new TxlogError(
        'TXLOG_IN_USE',
        `log ${dir} is open in another TxLog on this machine (another process, or this one): close that one first, or give this one a directory of its own`,
      );
    }
    try {
      const state = await recover(dir, resolved.tailCacheRecords);
      const log = new TxLog(dir, resolved, state);
      log.lock = lock;
      return log;
    } catch (error) {
      await lock.release();
      throw error;
    }
  }

  /**
   * False once a failed write could not be taken back: every append fails until the log is
   * opened again (a restart), which cuts the torn tail.
   */
  get appendable(): boolean {
    return this.unwritable === undefined && !this.closed;
  }

  /** The last durable txid (0n for an empty log). */
  get lastTxid(): TxId {
    return this.durableTxid;
  }

  /**
   * Appends the end-of-generation marker that opens `generation` (txid `generation:0`, carrying
   * the last txid of the previous one) and lets this handle assign ids in it.
   */
  startGeneration(generation: bigint): Promise<LogRecord> {
    const txid = generationMarkerTxId(generation);
    const record: LogRecord = {
      txid,
      kind: 'end-of-generation',
      path: '',
      size: 0n,
      mtimeNs: 0n,
      sha256: '',
      previousTxid: this.assignedTxid,
    };
    const done = this.enqueue(record);
    this.writableGeneration = generation;
    return done;
  }

  /** Master path: assigns the next txid of the started generation and appends the change. */
  appendChange(change: ChangeInput): Promise<LogRecord> {
    if (
      this.writableGeneration === undefined ||
      generationOf(this.assignedTxid) !== this.writableGeneration
    ) {
      return Promise.reject(
        new TxlogError(
          'TXLOG_NO_GENERATION',
          'no generation started on this log: call startGeneration first',
        ),
      );
    }
    let txid: TxId;
    try {
      txid = nextTxId(this.assignedTxid);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.enqueue({ ...change, txid, previousTxid: ZERO_TXID });
  }

  /** Replica path: appends a record that already carries the master's txid. */
  appendRecord(record: LogRecord): Promise<LogRecord> {
    if (record.txid <= this.assignedTxid) {
      return Promise.reject(
        new TxlogError(
          'TXLOG_NOT_INCREASING',
          `record ${formatTxId(record.txid)} is not after the log's last ${formatTxId(this.assignedTxid)}`,
        ),
      );
    }
    this.writableGeneration = undefined;
    return this.enqueue(record);
  }

  private enqueue(record: LogRecord): Promise<LogRecord> {
    if (this.closed) return Promise.reject(new TxlogError('TXLOG_CLOSED', `log ${this.dir} is closed`));
    if (this.unwritable !== undefined) {
      return Promise.reject(
        new TxlogError(
          'TXLOG_WRITE_FAILED',
          `log ${this.dir} cannot be appended to since a failed write could not be taken back (${this.unwritable.message}): fix the disk and restart the node, which cuts the log's torn tail`,
          { cause: this.unwritable },
        ),
      );
    }
    if (this.truncating) {
      return Promise.reject(
        new TxlogError(
          'TXLOG_WRITE_FAILED',
          `log ${this.dir} is being cut back: append again once it is done`,
        ),
      );
    }
    if (record.txid <= this.assignedTxid) {
      return Promise.reject(
        new TxlogError(
          'TXLOG_NOT_INCREASING',
          `txid ${formatTxId(record.txid)} is not after ${formatTxId(this.assignedTxid)}`,
        ),
      );
    }
    let frame: Buffer;
    try {
      frame = encodeFrame(encodeRecord(record));
    } catch (error) {
      return Promise.reject(error);
    }
    this.assignedTxid = record.txid;
    return new Promise((resolve, reject) => {
      this.queue.push({ record, frame, resolve, reject });
      if (!this.flushing) this.flushing = this.flushLoop();
    });
  }

  private async flushLoop(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const batch = this.queue;
        this.queue = [];
        try {
          await this.writeBatch(batch);
        } catch (error) {
          // Ids assigned to queued appends depend on the failed ones: fail them all and let callers retry.
          const failed = batch.filter((item) => item.record.txid > this.durableTxid).concat(this.queue);
          this.queue = [];
          this.assignedTxid = this.durableTxid;
          const wrapped = new TxlogError(
            'TXLOG_WRITE_FAILED',
            `append to ${this.dir} failed (${(error as Error).message}): free space or fix the disk, then retry`,
            { cause: error },
          );
          for (const item of failed) item.reject(wrapped);
        }
      }
    } finally {
      this.flushing = undefined;
    }
  }

  /** Writes the batch in as few write+fdatasync rounds as segment boundaries allow. */
  private async writeBatch(batch: Pending[]): Promise<void> {
    let i = 0;
    while (i < batch.length) {
      const head = batch[i]!;
      if (
        this.handle === undefined ||
        (this.segmentBytes > SEGMENT_MAGIC.length &&
          this.segmentBytes + head.frame.length > this.segmentSizeBytes)
      ) {
        await this.handle?.close();
        this.handle = undefined;
        this.handle = await createSegment(this.dir, head.record.txid);
        this.segments.push(head.record.txid);
        this.segmentBytes = SEGMENT_MAGIC.length;
      }
      const items: Pending[] = [];
      let bytes = 0;
      while (i < batch.length) {
        const item = batch[i]!;
        if (items.length > 0 && this.segmentBytes + bytes + item.frame.length > this.segmentSizeBytes) break;
        items.push(item);
        bytes += item.frame.length;
        i++;
      }
      await this.writeDurably(
        items.map((item) => item.frame),
        bytes,
      );
      this.publish(items.map((item) => item.record));
      for (const item of items) item.resolve(item.record);
    }
  }

  private async writeDurably(frames: Buffer[], bytes: number): Promise<void> {
    const handle = this.handle!;
    const start = this.segmentBytes;
    const data = frames.length === 1 ? frames[0]! : Buffer.concat(frames, bytes);
    try {
      let written = 0;
      while (written < data.length) {
        const { bytesWritten } = await handle.write(data, written, data.length - written);
        written += bytesWritten;
      }
      await handle.datasync();
    } catch (error) {
      // Leave no partial frame behind, so the handle stays usable after ENOSPC and the like. The
      // cut is made durable before the ids are handed out again: otherwise a crash could bring
      // back the failed frames beside new ones with the same ids.
      try {
        await handle.truncate(start);
        await handle.datasync();
      } catch (undoError) {
        this.unwritable = undoError as Error;
      }
      throw error;
    }
    this.segmentBytes = start + bytes;
  }

  private publish(records: LogRecord[]): void {
    if (records.length === 0) return;
    this.tail.push(...records);
    if (this.tail.length > this.tailCacheRecords * 2) {
      this.tail = this.tail.slice(-this.tailCacheRecords);
      this.tailIsWholeLog = false;
    }
    this.durableTxid = records.at(-1)!.txid;
    for (const waiter of this.waiters) {
      if (this.durableTxid > waiter.after) {
        this.waiters.delete(waiter);
        waiter.wake();
      }
    }
  }

  /** Up to `maxRecords` durable records with txid > `after`, in order. */
  async readAfter(after: TxId, maxRecords = 1000): Promise<LogRecord[]> {
    if (after >= this.durableTxid) return [];
    const first = this.tail[0];
    if (first !== undefined && (this.tailIsWholeLog || first.txid <= after)) {
      let lo = 0;
      let hi = this.tail.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (this.tail[mid]!.txid <= after) lo = mid + 1;
        else hi = mid;
      }
      return this.tail.slice(lo, lo + maxRecords);
    }
    const out: LogRecord[] = [];
    const segments = this.segments.slice();
    const cutsBefore = this.cuts;
    // A follower reading on from where its last page ended continues at the remembered offset
    // instead of decoding its segment from the start again.
    const cursor = this.readCursor?.after === after ? this.readCursor : undefined;
    let i = cursor !== undefined ? segments.indexOf(cursor.segment) : -1;
    if (i === -1) i = segmentIndexFor(segments, after);
    const firstSegment = i;
    let last: { segment: TxId; end: number; txid: TxId } | undefined;
    for (; i < segments.length && out.length < maxRecords; i++) {
      // Every record of a later segment is after `after`: it is read from its start, and only as far
      // as this page needs.
      const fromOffset =
        cursor !== undefined && segments[i] === cursor.segment
          ? cursor.offset
          : i > firstSegment
            ? SEGMENT_MAGIC.length
            : undefined;
      const readUpTo = last?.txid ?? after;
      const scan = await scanSegment(
        this.dir,
        segments[i]!,
        fromOffset,
        fromOffset === undefined ? undefined : maxRecords - out.length,
      );
      for (const { record, end } of scan.records) {
        if (record.txid > this.durableTxid) break;
        if (record.txid > after) {
          out.push(record);
          last = { segment: segments[i]!, end, txid: record.txid };
        }
        if (out.length >= maxRecords) break;
      }
      // A scan cut short by maxRecords ends 'clean' where it stopped. A torn end of the last
      // segment past its durable records is an append in progress; before them, it is damage.
      if (scan.end.kind !== 'clean') {
        const lastRead = scan.records.at(-1)?.record.txid ?? readUpTo;
        // Cut (truncateAfter, clear) while it read: what it met is the cut, not damage.
        if (this.cuts !== cutsBefore || this.truncating) break;
        if (lastRead < this.durableTxid && out.length < maxRecords) {
          throw new TxlogError(
            'TXLOG_CORRUPT',
            `segment ${scan.name} in ${this.dir} is corrupt at offset ${scan.end.offset} (${scan.end.reason}): move ${this.dir} aside (the partition's log) and start again, to copy the partition afresh from its master as a new replica`,
            { segment: scan.name, offset: scan.end.offset },
          );
        }
      }
    }
    this.readCursor =
      last === undefined ? undefined : { after: last.txid, segment: last.segment, offset: last.end };
    return out;
  }

  /** Iterates every durable record after `after`, in order. */
  async *readFrom(after: TxId, batchSize = 1000): AsyncGenerator<LogRecord> {
    let cursor = after;
    for (;;) {
      const batch = await this.readAfter(cursor, batchSize);
      if (batch.length === 0) return;
      yield* batch;
      cursor = batch.at(-1)!.txid;
    }
  }

  /**
   * Resolves true as soon as a record after `after` is durable, false when `timeoutMs` passes or
   * `signal` aborts first. Leaves no timer or listener behind.
   */
  waitForRecordsAfter(after: TxId, timeoutMs: number, signal?: AbortSignal): Promise<boolean> {
    if (this.durableTxid > after) return Promise.resolve(true);
    if (this.closed || signal?.aborted || timeoutMs <= 0) return Promise.resolve(false);
    return new Promise((resolve) => {
      const finish = (value: boolean) => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        this.waiters.delete(waiter);
        resolve(value);
      };
      const onAbort = () => finish(false);
      const waiter: Waiter = { after, wake: () => finish(true) };
      const timer = setTimeout(() => finish(false), timeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.add(waiter);
    });
  }

  /**
   * Removes every record after `txid` and returns them, oldest first: how a returning old master
   * cuts the suffix the cluster never agreed to. The removed bytes stay beside their segment as
   * `<segment>.cut-<offset>`. Waits for appends in flight; the next master append needs a new
   * `startGeneration`.
   */
  async truncateAfter(txid: TxId): Promise<LogRecord[]> {
    if (this.closed) throw new TxlogError('TXLOG_CLOSED', `log ${this.dir} is closed`);
    this.truncating = true;
    try {
      return await this.cutAfter(txid);
    } finally {
      this.truncating = false;
    }
  }

  private async cutAfter(txid: TxId): Promise<LogRecord[]> {
    while (this.flushing) await this.flushing;
    if (txid >= this.durableTxid) return [];
    this.cuts++;
    const removed: LogRecord[] = [];
    await this.handle?.close();
    this.handle = undefined;
    while (this.segments.length > 0) {
      const first = this.segments.at(-1)!;
      const scan = await scanSegment(this.dir, first);
      if (scan.records.length === 0) {
        // Started for an append that failed: no record to keep, and older segments may hold
        // records to cut.
        if (scan.size > SEGMENT_MAGIC.length) await cutSegment(this.dir, first, SEGMENT_MAGIC.length, 'cut');
        await removeSegment(this.dir, first);
        this.segments.pop();
        continue;
      }
      const cutAt = scan.records.findIndex((r) => r.record.txid > txid);
      if (cutAt === -1) break;
      removed.unshift(...scan.records.slice(cutAt).map((r) => r.record));
      await cutSegment(this.dir, first, scan.records[cutAt]!.offset, 'cut');
      if (cutAt > 0) break;
      await removeSegment(this.dir, first);
      this.segments.pop();
    }
    this.adopt(await recover(this.dir, this.tailCacheRecords));
    this.readCursor = undefined;
    this.writableGeneration = undefined;
    return removed;
  }

  /**
   * Removes every record and segment, keeping nothing aside: the node no longer holds the
   * partition. Segments go newest first, so a crash part-way leaves a shorter valid log.
   */
  async clear(): Promise<void> {
    if (this.closed) throw new TxlogError('TXLOG_CLOSED', `log ${this.dir} is closed`);
    this.truncating = true;
    try {
      while (this.flushing) await this.flushing;
      this.cuts++;
      await this.handle?.close();
      this.handle = undefined;
      while (this.segments.length > 0) {
        await removeSegment(this.dir, this.segments.at(-1)!);
        this.segments.pop();
      }
      this.adopt(await recover(this.dir, this.tailCacheRecords));
      this.readCursor = undefined;
      this.writableGeneration = undefined;
    } finally {
      this.truncating = false;
    }
  }

  /** Waits for appends in flight, then closes the segment. Safe to call twice. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    while (this.flushing) await this.flushing;
    await this.handle?.close();
    this.handle = undefined;
    for (const waiter of this.waiters) waiter.wake();
    this.waiters.clear();
    await this.lock?.release();
  }
}

interface OpenState {
  segments: TxId[];
  handle: FileHandle | undefined;
  segmentBytes: number;
  lastTxid: TxId;
  tail: LogRecord[];
  tailIsWholeLog: boolean;
  report: OpenReport;
}

async function recover(dir: string, tailCacheRecords: number): Promise<OpenState> {
  const names = await readdir(dir);
  for (const name of names) {
    // A segment that never got its header renamed into place holds no record.
    if (name.endsWith('.log.tmp')) await rm(join(dir, name), { force: true });
  }
  const segments = sortedSegments(names);
  const report: OpenReport = {};
  while (segments.length > 0) {
    const first = segments.at(-1)!;
    let scan = await scanSegment(dir, first);
    if (scan.end.kind === 'corrupt') {
      throw new TxlogError(
        'TXLOG_CORRUPT',
        `segment ${scan.name} in ${dir} is corrupt at offset ${scan.end.offset} (${scan.end.reason}): move ${dir} aside (the partition's log) and start again, to copy the partition afresh from its master as a new replica`,
        { segment: scan.name, offset: scan.end.offset },
      );
    }
    if (scan.end.kind === 'torn') {
      const bytesRemoved = await cutSegment(dir, first, scan.end.offset, 'torn');
      report.tornTail = {
        segment: scan.name,
        offset: scan.end.offset,
        bytesRemoved,
        reason: scan.end.reason,
      };
      scan = await scanSegment(dir, first);
    }
    checkIncreasing(
      scan.records.map((r) => r.record),
      scan.name,
      dir,
    );
    if (scan.records.length === 0) {
      await removeSegment(dir, first);
      segments.pop();
      continue;
    }
    const tail = scan.records.slice(-tailCacheRecords).map((r) => r.record);
    return {
      segments,
      handle: await openSegmentForAppend(dir, first),
      segmentBytes: scan.size,
      lastTxid: tail.at(-1)!.txid,
      tail,
      tailIsWholeLog: segments.length === 1 && tail.length === scan.records.length,
      report,
    };
  }
  return {
    segments,
    handle: undefined,
    segmentBytes: 0,
    lastTxid: ZERO_TXID,
    tail: [],
    tailIsWholeLog: true,
    report,
  };
}

function checkIncreasing(records: LogRecord[], segment: string, dir: string): void {
  for (let i = 1; i < records.length; i++) {
    if (records[i]!.txid <= records[i - 1]!.txid) {
      throw new TxlogError(
        'TXLOG_NOT_INCREASING',
        `segment ${segment} in ${dir} has txid ${formatTxId(records[i]!.txid)} after ${formatTxId(records[i - 1]!.txid)}`,
        { segment },
      );
    }
  }
}
