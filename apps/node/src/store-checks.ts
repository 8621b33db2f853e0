import { findUnloggedChangesOf, type LogToCheck, type UnloggedChange } from '@pfs/changelog-generator';
import type { TxLog } from '@pfs/txlog';

/** How long a walk waits for the checks of other partitions to join it. */
const GATHER_MS = 100;
/** How long it waits at most for the partitions expected to ask (see `expect`). */
const EXPECTED_WAIT_MS = 2000;

interface Waiting extends LogToCheck {
  signal: AbortSignal;
  resolve(changes: UnloggedChange[]): void;
  reject(error: unknown): void;
}

/**
 * The former-master store checks of one node (see PartitionController.checkStore), walking the
 * store once for every partition that asks at about the same time. All partitions share one
 * store directory, so a node that had mastered many of them and restarts after a crash would
 * otherwise walk the whole store once per partition, all at once. A check asked for while a
 * walk runs waits for the next one.
 */
export class StoreChecks {
  private readonly waiting = new Map<number, Waiting>();
  /** Partitions known to need a check soon, that have not asked yet. */
  private readonly expected = new Set<number>();
  private scheduled: NodeJS.Timeout | undefined;
  private scheduledFor = 0;
  private walking = false;

  constructor(
    private readonly options: {
      root: string;
      partitionOf: (path: string) => number;
      /** After each completed walk, with the partitions it checked. */
      onWalk?: (partitions: number[]) => void;
      find?: typeof findUnloggedChangesOf;
    },
  ) {}

  /**
   * Says that `partition` will ask for a check soon (it starts with its marker, after a
   * restart): the first walk waits for it, up to EXPECTED_WAIT_MS, instead of GATHER_MS.
   */
  expect(partition: number): void {
    this.expected.add(partition);
  }

  /** What differs in the store from `log`, for the paths of `partition`. */
  check(partition: number, log: TxLog, signal: AbortSignal): Promise<UnloggedChange[]> {
    signal.throwIfAborted();
    this.expected.delete(partition);
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        if (this.waiting.get(partition)?.signal === signal) this.waiting.delete(partition);
        reject(signal.reason);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      const done = () => signal.removeEventListener('abort', onAbort);
      // One controller checks one partition at a time: a second ask replaces an aborted first.
      this.waiting
        .get(partition)
        ?.reject(new Error(`a newer store check of partition ${partition} replaced it`));
      this.waiting.set(partition, {
        log,
        signal,
        resolve: (changes) => {
          done();
          resolve(changes);
        },
        reject: (error) => {
          done();
          reject(error);
        },
      });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.walking || this.waiting.size === 0) return;
    const delay = this.expected.size > 0 ? EXPECTED_WAIT_MS : GATHER_MS;
    if (this.scheduled !== undefined) {
      // The last expected partition has asked: no need to wait longer than for any other.
      if (delay >= this.scheduledFor) return;
      clearTimeout(this.scheduled);
    }
    this.scheduledFor = delay;
    this.scheduled = setTimeout(() => {
      this.scheduled = undefined;
      this.expected.clear();
      void this.walk();
    }, delay);
  }

  private async walk(): Promise<void> {
    const batch = new Map([...this.waiting].filter(([, check]) => !check.signal.aborted));
    this.waiting.clear();
    if (batch.size === 0) return;
    this.walking = true;
    try {
      const find = this.options.find ?? findUnloggedChangesOf;
      const found = await find({
        root: this.options.root,
        logs: batch,
        logOf: (path) => {
          const partition = this.options.partitionOf(path);
          return batch.has(partition) ? partition : undefined;
        },
      });
      this.options.onWalk?.([...found.keys()]);
      for (const [partition, check] of batch) {
        const changes = found.get(partition);
        // Missing only if its signal aborted, which has rejected it already.
        if (changes !== undefined) check.resolve(changes);
      }
    } catch (error) {
      for (const check of batch.values()) check.reject(error);
    } finally {
      this.walking = false;
      this.schedule();
    }
  }

  /** Cancels a walk that has not started (the node is stopping). */
  close(): void {
    clearTimeout(this.scheduled);
    this.scheduled = undefined;
  }
}
