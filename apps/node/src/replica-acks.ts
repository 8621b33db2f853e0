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

interface Waiter {
  partition: number;
  check: () => boolean;
  wake: () => void;
}

export class ReplicaAcks {
  private readonly applied = new Map<number, Map<string, bigint>>();
  private readonly waiters = new Set<Waiter>();

  note(partition: number, replica: string, after: bigint): void {
    const byReplica = this.applied.get(partition) ?? new Map<string, bigint>();
    this.applied.set(partition, byReplica);
    if ((byReplica.get(replica) ?? -1n) >= after) return;
    byReplica.set(replica, after);
    for (const waiter of this.waiters) if (waiter.partition === partition && waiter.check()) waiter.wake();
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
