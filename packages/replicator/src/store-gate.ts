/**
 * Orders the replicators that write into one store (a node's partitions share its store): a
 * bulk copy runs alone (`exclusive`), batches run side by side (`shared`). A bulk copy brings
 * the files of every partition its source holds; a batch of another partition writing the same
 * paths meanwhile could be overwritten with older bytes after it was verified. Waiting is in
 * arrival order, and once a bulk copy waits, later batches wait behind it. A wait ends early,
 * rejecting with the reason, when its signal aborts.
 */
export class StoreGate {
  private sharedHolders = 0;
  private exclusiveHeld = false;
  /** How to cut the exclusive section short, if its holder said (see `exclusive`). */
  private preemptHolder: (() => void) | undefined;
  private readonly waiting: { exclusive: boolean; grant: () => void }[] = [];

  /**
   * With `preempt`, a wait that finds an exclusive section held asks its holder to end it early
   * (a drain on the way to a failover must not wait out a bulk copy, which is an optimisation).
   */
  shared<T>(run: () => Promise<T>, signal?: AbortSignal, options: { preempt?: boolean } = {}): Promise<T> {
    if (options.preempt === true && this.exclusiveHeld) this.preemptHolder?.();
    return this.hold(false, run, signal, undefined, options.preempt === true);
  }

  /** `onPreempt` is called when a preempting shared section waits for this one. */
  exclusive<T>(
    run: () => Promise<T>,
    signal?: AbortSignal,
    options: { onPreempt?: () => void } = {},
  ): Promise<T> {
    return this.hold(true, run, signal, options.onPreempt);
  }

  private async hold<T>(
    exclusive: boolean,
    run: () => Promise<T>,
    signal: AbortSignal | undefined,
    onPreempt?: () => void,
    first = false,
  ): Promise<T> {
    await this.acquire(exclusive, signal, first);
    if (exclusive) this.preemptHolder = onPreempt;
    try {
      return await run();
    } finally {
      if (exclusive) {
        this.exclusiveHeld = false;
        this.preemptHolder = undefined;
      } else this.sharedHolders--;
      this.grantWaiting();
    }
  }

  /** `first`: ahead of everything waiting (a preempting section does not wait for a copy to start). */
  private acquire(exclusive: boolean, signal: AbortSignal | undefined, first: boolean): Promise<void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if ((first || this.waiting.length === 0) && this.free(exclusive)) {
      this.take(exclusive);
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        const at = this.waiting.indexOf(waiter);
        if (at >= 0) this.waiting.splice(at, 1);
        reject(signal!.reason);
        // A bulk copy that stops waiting may have held back batches that can go now.
        this.grantWaiting();
      };
      const waiter = {
        exclusive,
        grant: () => {
          signal?.removeEventListener('abort', onAbort);
          this.take(exclusive);
          resolve();
        },
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      if (first) this.waiting.unshift(waiter);
      else this.waiting.push(waiter);
    });
  }

  private free(exclusive: boolean): boolean {
    return exclusive ? !this.exclusiveHeld && this.sharedHolders === 0 : !this.exclusiveHeld;
  }

  private take(exclusive: boolean): void {
    if (exclusive) this.exclusiveHeld = true;
    else this.sharedHolders++;
  }

  private grantWaiting(): void {
    while (this.waiting.length > 0 && this.free(this.waiting[0]!.exclusive)) this.waiting.shift()!.grant();
  }
}
