import { findUnloggedChangesOf, type LogToCheck, type UnloggedChange } from '@pfs/changelog-generator';
import type { WalkOptions } from '@pfs/filestore';
import type { TxLog } from '@pfs/txlog';

/** How long a walk waits for the checks of other partitions to join it. */
const GATHER_MS = 100;
/** How long a walk waits at most for the partitions expected to ask. */
const EXPECTED_WAIT_MS = 2000;
/** How long after the node's start a partition is expected to ask at all. */
const EXPECTATIONS_LIFETIME_MS = 10_000;

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
 * walk runs waits for the next one. One partition's failure (its log unreadable, a file that
 * cannot be read) fails only its own check.
 */
export class StoreChecks {
  private readonly waiting = new Map<number, Waiting>();
  /** Partitions that started with their mark and have not asked yet (see `expect`). */
  private readonly expected = new Set<number>();
  private readonly expectedUntil: number;
  private readonly timing: { gatherMs: number; expectedWaitMs: number; expectationsLifetimeMs: number };
  private scheduled: { timer: NodeJS.Timeout; at: number } | undefined;
  private walking: Promise<void> | undefined;
  private closed = false;

  constructor(
    private readonly options: {
      root: string;
      partitionOf: (path: string) => number;
      /** After each walk, with the partitions whose checks it completed. */
      onWalk?: (partitions: number[]) => void;
      find?: typeof findUnloggedChangesOf;
      /** Passed to each walk (see findUnloggedChangesOf). */
      staleTempFiles?: WalkOptions['staleTempFiles'];
      /** Tests: GATHER_MS, EXPECTED_WAIT_MS, EXPECTATIONS_LIFETIME_MS. */
      timing?: { gatherMs: number; expectedWaitMs: number; expectationsLifetimeMs: number };
    },
  ) {
    this.timing = options.timing ?? {
      gatherMs: GATHER_MS,
      expectedWaitMs: EXPECTED_WAIT_MS,
      expectationsLifetimeMs: EXPECTATIONS_LIFETIME_MS,
    };
    this.expectedUntil = performance.now() + this.timing.expectationsLifetimeMs;
  }

  /**
   * Says that `partition` will ask for a check soon (it starts with its mark): a walk then waits
   * for it, up to EXPECTED_WAIT_MS after the walk's first check rather than GATHER_MS. An
   * expectation lapses EXPECTATIONS_LIFETIME_MS after this object was made (a partition elected
   * master again never asks).
   */
  expect(partition: number): void {
    if (performance.now() < this.expectedUntil) this.expected.add(partition);
  }

  /** What differs in the store from `log`, for the paths of `partition`. */
  check(partition: number, log: TxLog, signal: AbortSignal): Promise<UnloggedChange[]> {
    signal.throwIfAborted();
    if (this.closed) return Promise.reject(new Error('the node is stopping: no store check'));
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
    if (this.closed || this.walking !== undefined || this.waiting.size === 0) return;
    const now = performance.now();
    const { gatherMs, expectedWaitMs } = this.timing;
    const waitForExpected = this.expected.size > 0 && now < this.expectedUntil;
    const at = waitForExpected ? Math.min(now + expectedWaitMs, this.expectedUntil) : now + gatherMs;
    if (this.scheduled !== undefined) {
      // Only ever sooner: the last expected partition has asked.
      if (at >= this.scheduled.at) return;
      clearTimeout(this.scheduled.timer);
    }
    const timer = setTimeout(() => {
      this.scheduled = undefined;
      // Waited for: those that have not asked by now are not coming soon.
      this.expected.clear();
      this.walking = this.walk().finally(() => {
        this.walking = undefined;
        this.schedule();
      });
    }, at - now);
    this.scheduled = { timer, at };
  }

  private async walk(): Promise<void> {
    const batch = new Map([...this.waiting].filter(([, check]) => !check.signal.aborted));
    this.waiting.clear();
    if (batch.size === 0) return;
    try {
      const find = this.options.find ?? findUnloggedChangesOf;
      const outcomes = await find({
        root: this.options.root,
        staleTempFiles: this.options.staleTempFiles,
        logs: batch,
        logOf: (path) => {
          const partition = this.options.partitionOf(path);
          return batch.has(partition) ? partition : undefined;
        },
      });
      const completed: number[] = [];
      for (const [partition, check] of batch) {
        const outcome = outcomes.get(partition);
        if (outcome === undefined)
          check.reject(new Error(`the store walk returned nothing for partition ${partition}`));
        else if ('error' in outcome) check.reject(outcome.error);
        else {
          completed.push(partition);
          check.resolve(outcome.changes);
        }
      }
      this.options.onWalk?.(completed);
    } catch (error) {
      for (const check of batch.values()) check.reject(error);
    }
  }

  /**
   * Ends the checks not yet walked and waits for a walk in progress (the partitions' own
   * signals, aborted as they close, end their parts of it).
   */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.scheduled?.timer);
    this.scheduled = undefined;
    for (const check of this.waiting.values())
      check.reject(new Error('the node is stopping: no store check'));
    this.waiting.clear();
    await this.walking;
  }
}
