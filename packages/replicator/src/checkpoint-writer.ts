import { type TxId, writeCheckpoint } from '@pfs/txlog';

/**
 * Keeps a partition's checkpoint file following the replica's log, off the batches' critical
 * path. A batch is applied once its files are durable and its records logged, and a restart
 * resumes from the log's end, so the checkpoint only ever reports a txid the log already holds
 * durably: waiting for its own two journal commits (file, then directory) in every batch would
 * add to the lag and to the disk's load without making anything safer.
 *
 * At most one write runs at a time; txids noted meanwhile collapse into the next write. A failing
 * write is reported once, and again only after a write has succeeded in between.
 */
export class CheckpointWriter {
  private readonly file: string;
  private readonly onError: (error: unknown) => void;
  private wanted: TxId;
  private written: TxId;
  private running: Promise<void> | undefined;
  private failing = false;

  constructor(file: string, written: TxId, onError: (error: unknown) => void) {
    this.file = file;
    this.wanted = written;
    this.written = written;
    this.onError = onError;
  }

  /** Asks for the checkpoint to say `txid` (already durable in the log); returns at once. */
  note(txid: TxId): void {
    this.wanted = txid;
    if (this.running === undefined) this.start();
  }

  /** Waits until the checkpoint says the last noted txid, or its write failed and was reported. */
  async flush(): Promise<void> {
    await this.idle();
    if (this.written !== this.wanted) {
      this.start();
      await this.idle();
    }
  }

  /**
   * Writes `txid` now, even below what was written before (after the log was cut back). Only
   * while following is paused: a note() during it would start a second write of the same file.
   */
  async reset(txid: TxId): Promise<void> {
    await this.idle();
    this.wanted = txid;
    await writeCheckpoint(this.file, txid);
    this.written = txid;
  }

  private start(): void {
    if (this.written === this.wanted) return;
    const run: Promise<void> = this.writeWanted().then(() => {
      if (this.running !== run) return;
      this.running = undefined;
      // A txid noted between the write's end and here; after a failure, the next note retries.
      if (!this.failing) this.start();
    });
    this.running = run;
  }

  private async idle(): Promise<void> {
    while (this.running !== undefined) await this.running;
  }

  /** Never rejects: a failure is reported and leaves `written` behind `wanted`. */
  private async writeWanted(): Promise<void> {
    try {
      while (this.written !== this.wanted) {
        const txid = this.wanted;
        await writeCheckpoint(this.file, txid);
        this.written = txid;
        this.failing = false;
      }
    } catch (error) {
      if (!this.failing) this.onError(error);
      this.failing = true;
    }
  }
}
