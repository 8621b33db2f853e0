import { Worker } from 'node:worker_threads';

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
   * Forgets `paths`, everything below them and every parent of them: a pull may replace or
   * delete a file, rsync's --force removes a whole directory that a listed path turns into a
   * file, and rsync removes a file that stands where a listed path needs a directory.
   */
  forgetTouched(paths: readonly string[]): void {
    if (paths.length === 0 || this.digests.size === 0) return;
    const touched = new Set(paths);
    for (const path of touched) {
      this.digests.delete(path);
      for (let slash = path.indexOf('/'); slash !== -1; slash = path.indexOf('/', slash + 1))
        this.digests.delete(path.slice(0, slash));
    }
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
 * The hashing side of a bootstrap, in a worker thread with synchronous reads: tens of thousands
 * of small files cost a third of the CPU they cost through the libuv pool and promises, and the
 * agent's event loop stays free. Same rules as filestore's hashFile: O_NOFOLLOW, regular files
 * only; a file it cannot read is answered with null.
 */
const HASH_WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const fs = require('node:fs');
const { createHash } = require('node:crypto');
const buffer = Buffer.allocUnsafe(1 << 20);
parentPort.on('message', ({ root, paths }) => {
  const out = [];
  for (const path of paths) {
    let fd;
    try {
      fd = fs.openSync(root + '/' + path, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    } catch {
      out.push(null);
      continue;
    }
    try {
      if (!fs.fstatSync(fd).isFile()) {
        out.push(null);
        continue;
      }
      const hash = createHash('sha256');
      let size = 0;
      for (let n; (n = fs.readSync(fd, buffer, 0, buffer.length, null)) > 0; size += n)
        hash.update(buffer.subarray(0, n));
      out.push([String(size), hash.digest('hex')]);
    } catch {
      out.push(null);
    } finally {
      fs.closeSync(fd);
    }
  }
  parentPort.postMessage(out);
});
`;

/** Paths handed to the worker at once. */
const HASH_CHUNK = 256;

/**
 * Hashes files as they are announced into `digests`, in chunks, on one worker thread. A file that
 * cannot be read is left out (the replay then checks it the slow way).
 */
export class DigestCollector {
  private chunk: string[] = [];
  private readonly inFlight: string[][] = [];
  private worker: Worker | undefined;
  private idle: (() => void) | undefined;
  private stopped = false;

  constructor(
    private readonly root: string,
    readonly digests: BootstrapDigests,
    private readonly options: { maxEntries: number },
  ) {}

  add(path: string): void {
    if (this.stopped) return;
    this.chunk.push(path);
    if (this.chunk.length >= HASH_CHUNK) this.dispatch();
  }

  /** Hashes what is left and resolves once every announced file is hashed; ends the worker. */
  async finished(): Promise<void> {
    if (!this.stopped) this.dispatch();
    if (this.inFlight.length > 0) {
      await new Promise<void>((resolve) => {
        this.idle = resolve;
      });
    }
    await this.worker?.terminate();
    this.worker = undefined;
  }

  /** Drops what is not hashed yet; finished() then resolves once the worker has ended. */
  stop(): void {
    this.stopped = true;
    this.chunk = [];
    this.inFlight.length = 0;
    this.idle?.();
  }

  private dispatch(): void {
    if (this.chunk.length === 0 || this.digests.size >= this.options.maxEntries) {
      this.chunk = [];
      return;
    }
    if (this.worker === undefined) {
      this.worker = new Worker(HASH_WORKER_SOURCE, { eval: true });
      this.worker.on('message', (results: ([string, string] | null)[]) => this.collect(results));
      // A worker that fails only costs the shortcut: the replay reads those files itself.
      this.worker.on('error', () => this.stop());
      // Ended some other way than by finished(): nothing more will come back.
      this.worker.on('exit', () => this.stop());
    }
    this.inFlight.push(this.chunk);
    this.worker.postMessage({ root: this.root, paths: this.chunk });
    this.chunk = [];
  }

  private collect(results: ([string, string] | null)[]): void {
    const paths = this.inFlight.shift();
    if (paths === undefined || this.stopped) return;
    for (const [i, result] of results.entries()) {
      if (result !== null && this.digests.size < this.options.maxEntries)
        this.digests.record(paths[i]!, BigInt(result[0]), result[1]);
    }
    if (this.inFlight.length === 0) {
      this.idle?.();
      this.idle = undefined;
    }
  }
}
