import { type TxId, writeCheckpoint } from '@pfs/txlog';

/**
 * Keeps a partition's checkpoint file following the replica's log, off the batches' critical
 * path. A batch is applied once its files are durable and its records logged, and a restart
 * resumes from the log's end, so the checkpoint only ever reports a txid the log already holds
 * durably: waiting for its own two journal commits (file, then directory) in every batch would
 * add to the lag and to the disk's load without making anything safer.
 *
 * For the same reason it is written at most once per `minIntervalMs` while following: at
 * tens of batches a second, one write per batch kept two journal commits and six file-system
 * calls running back to back beside the batches, for a file nothing reads while the replica runs.
 * Txids noted meanwhile collapse into the next write; `flush` writes at once. A failing write is
 * reported once, and again only after a write has succeeded in between.
 */
const DEFAULT_CHECKPOINT_INTERVAL_MS = 1000;

export class CheckpointWriter {
  private readonly file: string;
  private readonly onError: (error: unknown) => void;
  private readonly minIntervalMs: number;
  private wanted: TxId;
  private written: TxId;
  private running: Promise<void> | undefined;
  /** The next write, held back until `minIntervalMs` after the last one started. */
  private timer: NodeJS.Timeout | undefined;
  private lastStartedAt = Number.NEGATIVE_INFINITY;
  private failing = false;

  constructor(
    file: string,
    written: TxId,
    onError: (error: unknown) => void,
    options: { minIntervalMs?: number } = {},
  ) {
    this.file = file;
    this.wanted = written;
    this.written = written;
    this.onError = onError;
    this.minIntervalMs = options.minIntervalMs ?? DEFAULT_CHECKPOINT_INTERVAL_MS;
  }

  /** Asks for the checkpoint to say `txid` (already durable in the log); returns at once. */
  note(txid: TxId): void {
    this.wanted = txid;
    if (this.running === undefined && this.timer === undefined) this.schedule();
  }

  /** Waits until the checkpoint says the last noted txid, or its write failed and was reported. */
  async flush(): Promise<void> {
    this.cancelTimer();
    await this.idle();
    while (this.written !== this.wanted) {
      this.start();
      await this.idle();
      // Its end may have held the next write back for the interval: flushing means now.
      this.cancelTimer();
      if (this.failing) return;
    }
  }

  /**
   * Writes `txid` now, even below what was written before (after the log was cut back). Only
   * while following is paused: a note() during it would start a second write of the same file.
   */
  async reset(txid: TxId): Promise<void> {
    // Checked again after every wait, in the same tick as the write starts: a flush resumed
    // meanwhile, or the end of the write waited for, may have started or held back another.
    for (;;) {
      this.cancelTimer();
      if (this.running === undefined) break;
      await this.running;
    }
    this.wanted = txid;
    const run = writeCheckpoint(this.file, txid).then(() => {
      this.written = txid;
    });
    this.running = run.then(
      () => undefined,
      () => undefined,
    );
    try {
      await run;
    } finally {
      this.running = undefined;
    }
  }

  private schedule(): void {
    if (this.written === this.wanted) return;
    const wait = this.lastStartedAt + this.minIntervalMs - performance.now();
    if (wait <= 0) {
      this.start();
      return;
    }
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.running === undefined) this.start();
    }, wait);
    // A replica dropped without stop() must not be kept alive by its checkpoint.
    this.timer.unref();
  }

  private cancelTimer(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private start(): void {
    // One write at a time: they share the checkpoint's temp file.
    if (this.written === this.wanted || this.running !== undefined) return;
    this.lastStartedAt = performance.now();
    const run: Promise<void> = this.writeWanted().then(() => {
      if (this.running !== run) return;
      this.running = undefined;
      // A txid noted during the write; after a failure, the next note retries.
      if (!this.failing && this.timer === undefined) this.schedule();
    });
    this.running = run;
  }

  private async idle(): Promise<void> {
    while (this.running !== undefined) await this.running;
  }

  /** Never rejects: a failure is reported and leaves `written` behind `wanted`. */
  private async writeWanted(): Promise<void> {
    try {
      const txid = this.wanted;
      await writeCheckpoint(this.file, txid);
      this.written = txid;
      this.failing = false;
    } catch (error) {
      if (!this.failing) this.onError(error);
      this.failing = true;
    }
  }
}
