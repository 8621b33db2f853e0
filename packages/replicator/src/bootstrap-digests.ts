import { hashFile } from '@pfs/filestore';

/**
 * What a bootstrap's bulk copy put in the store: path → size and sha-256 of the bytes found there,
 * hashed while the copy ran. The log replay that follows checks each record against this instead
 * of reading every file a second time. Valid only while nothing else changes those paths: the
 * replicator forgets every path a later transfer touches (see forgetTouched), and drops the
 * whole table once caught up.
 */
export class BootstrapDigests {
  private readonly digests = new Map<string, string>();

  get size(): number {
    return this.digests.size;
  }

  record(path: string, size: bigint, sha256: string): void {
    this.digests.set(path, `${size}:${sha256}`);
  }

  /** True when the copy left exactly these bytes at `path`. */
  matches(path: string, size: bigint, sha256: string): boolean {
    return this.digests.get(path) === `${size}:${sha256}`;
  }

  /**
   * Forgets `paths` and everything below them: a pull may replace or delete a file, and rsync's
   * --force removes a whole directory that a listed path turns into a file.
   */
  forgetTouched(paths: readonly string[]): void {
    if (paths.length === 0 || this.digests.size === 0) return;
    const touched = new Set(paths);
    for (const path of touched) this.digests.delete(path);
    for (const path of this.digests.keys()) {
      for (let slash = path.indexOf('/'); slash !== -1; slash = path.indexOf('/', slash + 1)) {
        if (touched.has(path.slice(0, slash))) {
          this.digests.delete(path);
          break;
        }
      }
    }
  }
}

/**
 * Hashes files as they are announced, at most `concurrency` at a time, into `digests`. A file
 * that cannot be read is left out (the replay then checks it the slow way).
 */
export class DigestCollector {
  private queue: string[] = [];
  private head = 0;
  private running = 0;
  private idle: (() => void) | undefined;
  private stopped = false;

  constructor(
    private readonly root: string,
    readonly digests: BootstrapDigests,
    private readonly options: { concurrency: number; maxEntries: number },
  ) {}

  add(path: string): void {
    if (this.stopped) return;
    this.queue.push(path);
    this.pump();
  }

  /** Resolves once every announced file is hashed (or, after stop(), once hashing in flight ends). */
  async finished(): Promise<void> {
    if (this.running === 0 && (this.pending === 0 || this.stopped)) return;
    await new Promise<void>((resolve) => {
      this.idle = resolve;
    });
  }

  stop(): void {
    this.stopped = true;
    this.queue = [];
    this.head = 0;
  }

  private get pending(): number {
    return this.queue.length - this.head;
  }

  private pump(): void {
    while (this.running < this.options.concurrency && this.pending > 0 && !this.stopped) {
      const path = this.queue[this.head++]!;
      if (this.head >= 4096 && this.head * 2 >= this.queue.length) {
        this.queue = this.queue.slice(this.head);
        this.head = 0;
      }
      this.running++;
      void this.hashOne(path).finally(() => {
        this.running--;
        this.pump();
        if (this.running === 0 && (this.pending === 0 || this.stopped)) {
          this.idle?.();
          this.idle = undefined;
        }
      });
    }
  }

  private async hashOne(path: string): Promise<void> {
    if (this.digests.size >= this.options.maxEntries) return;
    const got = await hashFile(this.root, path).catch(() => undefined);
    if (got !== undefined && !this.stopped) this.digests.record(path, got.size, got.sha256);
  }
}
