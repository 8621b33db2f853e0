/**
 * What the master knows of its replicas' progress: each follower's feed request carries
 * `after=<its applied txid>` (Kafka's fetch offset), which acknowledges every record up to it.
 * Writes with ack mode `one` or `all` wait here, woken by those requests; no polling loop.
 */
export type AckMode = 'local' | 'one' | 'all';
export const ACK_MODES: readonly AckMode[] = ['local', 'one', 'all'];

/** Whether `txid` is acknowledged as `mode` demands, given each replica's applied txid (pure). */
export function ackSatisfied(
  applied: ReadonlyMap<string, bigint>,
  txid: bigint,
  mode: AckMode,
  liveReplicas: readonly string[],
): boolean {
  if (mode === 'local') return true;
  const done = liveReplicas.filter((id) => (applied.get(id) ?? 0n) >= txid).length;
  return mode === 'one' ? done >= 1 : liveReplicas.length > 0 && done === liveReplicas.length;
}

/**
 * The replicas whose acknowledgements ack modes `one` and `all` count, of `placedOthers` (the
 * other live nodes placed on the partition) (pure): each one that has asked this master for
 * records (`polled`), or whose current process reported more than nothing. Left out is a node
 * that has nothing of the partition and has not asked yet: one making its first copy of the
 * store (a joining node), which `all` would otherwise wait for until that copy ends. It counts
 * from its first request on.
 */
export function ackingReplicas(
  placedOthers: readonly string[],
  polled: ReadonlyMap<string, bigint>,
  reported: (id: string) => bigint | undefined,
): string[] {
  return placedOthers.filter((id) => polled.has(id) || (reported(id) ?? 0n) > 0n);
}

interface Waiter {
  partition: number;
  check: () => boolean;
  wake: () => void;
}

/** How many recent appends keep their time, for lag in milliseconds. */
const APPEND_TIMES_KEPT = 20_000;

export class ReplicaAcks {
  private readonly applied = new Map<number, Map<string, bigint>>();
  private readonly waiters = new Set<Waiter>();
  private readonly appendedAt = new Map<number, { txid: bigint; atMs: number }[]>();

  /** Remembers when the master made `txid` durable (monotonic ms). */
  noteAppended(partition: number, txid: bigint, atMs: number): void {
    const times = this.appendedAt.get(partition) ?? [];
    this.appendedAt.set(partition, times);
    times.push({ txid, atMs });
    if (times.length > APPEND_TIMES_KEPT * 2) times.splice(0, times.length - APPEND_TIMES_KEPT);
  }

  /**
   * How long the oldest record `replica` has not acknowledged has been waiting: 0 when it is
   * caught up, undefined when that record is older than the times kept.
   */
  lagMs(partition: number, replica: string, nowMs: number): number | undefined {
    const times = this.appendedAt.get(partition) ?? [];
    const acked = this.of(partition).get(replica) ?? 0n;
    if (times.length === 0 || times.at(-1)!.txid <= acked) return 0;
    const oldest = times.find((t) => t.txid > acked);
    if (oldest === undefined || (oldest === times[0] && acked < times[0]!.txid - 1n)) return undefined;
    return Math.max(0, nowMs - oldest.atMs);
  }

  note(partition: number, replica: string, after: bigint): void {
    const byReplica = this.applied.get(partition) ?? new Map<string, bigint>();
    this.applied.set(partition, byReplica);
    if ((byReplica.get(replica) ?? -1n) >= after) return;
    byReplica.set(replica, after);
    this.wakeSatisfied(partition);
  }

  /**
   * Checks every waiting write again: the replicas it waits for have changed (one left, or let
   * the partition go), which no acknowledging request would tell it.
   */
  recheck(): void {
    this.wakeSatisfied();
  }

  /** Wakes the waiting writes (of `partition`, if given) whose acknowledgement is now met. */
  private wakeSatisfied(partition?: number): void {
    for (const waiter of this.waiters) {
      if ((partition === undefined || waiter.partition === partition) && waiter.check()) waiter.wake();
    }
  }

  of(partition: number): ReadonlyMap<string, bigint> {
    return this.applied.get(partition) ?? new Map();
  }

  /**
   * Resolves true once `txid` is acknowledged as `mode` demands by the replicas `liveReplicas()`
   * names at that moment, false after `timeoutMs`. Leaves no timer behind.
   */
  wait(
    partition: number,
    txid: bigint,
    mode: AckMode,
    liveReplicas: () => readonly string[],
    timeoutMs: number,
  ): Promise<boolean> {
    const check = () => ackSatisfied(this.of(partition), txid, mode, liveReplicas());
    if (check()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const waiter: Waiter = {
        partition,
        check,
        wake: () => finish(true),
      };
      const finish = (value: boolean) => {
        clearTimeout(timer);
        this.waiters.delete(waiter);
        resolve(value);
      };
      const timer = setTimeout(() => finish(false), timeoutMs);
      this.waiters.add(waiter);
    });
  }
}
