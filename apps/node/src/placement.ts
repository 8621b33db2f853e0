import { existsSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { type Coordinator, partitionMembers, placeReplicas } from '@pfs/coordinator-etcd';
import { walkStore } from '@pfs/filestore';
import type { StoreGate } from '@pfs/replicator';
import { formatTxId, type TxId, type TxLog } from '@pfs/txlog';
import type { Logger } from 'pino';
import type { PartitionController } from './partition-controller.ts';

/**
 * A node lets a partition it is no longer placed on go once every node placed on it has applied
 * all but this many of the records it has (a master's handover then waits for the rest, bounded):
 * under a steady stream of writes an exact match would rarely be seen at the moment of a check.
 * Its key, log and files go only once they have all of it.
 */
const RELEASE_SLACK_RECORDS = 1000n;
const RETRY_MS = 1000;
/** Above any txid: what a serving master has. */
const ALL = 1n << 64n;

export interface PlacementDeps {
  nodeId: string;
  replicationFactor: number;
  coordinator: Coordinator;
  controllers: readonly PartitionController[];
  logs: readonly TxLog[];
  /** What a replica has acknowledged to this node as master (the feed's `after`). */
  acked: (partition: number, nodeId: string) => TxId;
  storeGate: StoreGate;
  fileStore: string;
  partitionOf: (path: string) => number;
  /** `run/`: the sweep's mark survives a restart there. */
  runDir: string;
  handOverTimeoutMs: number;
  logger: Logger;
}

/**
 * Which partitions this node holds, from the placement (docs/architecture.md, Placement): one
 * placed on it is held at once; one no longer placed on it is let go in steps, each only once
 * the nodes now placed on it have what this node has:
 *   1. stop following it (a master hands over first), once they have all but a few records;
 *   2. withdraw this node's applied-txid key (no longer a candidate, nor counted by ack=all),
 *      once they have all of it (this node's log no longer moves);
 *   3. remove its log, then its files (the sweep).
 * A pass runs at a time, again after every view change; each step is checked anew in each pass,
 * so a node placed on a partition again part-way simply holds it again (from its log, if that is
 * still there).
 */
export class PartitionPlacement {
  private readonly stop = new AbortController();
  private running: Promise<void> | undefined;
  private again = false;
  private sweepDue: boolean;

  constructor(private readonly deps: PlacementDeps) {
    this.sweepDue = existsSync(this.sweepMarker);
  }

  /** The live nodes placed on `partition`, best first. */
  placedOn(partition: number): string[] {
    const { coordinator, replicationFactor } = this.deps;
    return placeReplicas(partition, coordinator.view.nodes.keys(), replicationFactor);
  }

  /** The live nodes taking part in `partition` (see partitionMembers): placed ones first, by id. */
  membersOf(partition: number): string[] {
    const placed = this.placedOn(partition).sort();
    const others = partitionMembers(this.deps.coordinator.view, partition, this.deps.replicationFactor)
      .filter((id) => !placed.includes(id))
      .sort();
    return [...placed, ...others];
  }

  /** A bulk copy brings every partition its source holds: the ones not held here go after it. */
  noteStoreCopy(phase: 'started' | 'ended'): void {
    if (phase === 'started') void this.markSweepDue();
    else this.schedule();
  }

  /** Runs a pass soon (coalesced). */
  schedule(): void {
    if (this.stop.signal.aborted) return;
    if (this.running !== undefined) {
      this.again = true;
      return;
    }
    this.running = (async () => {
      do {
        this.again = false;
        try {
          await this.pass();
        } catch (error) {
          if (this.stop.signal.aborted) break;
          this.deps.logger.warn({ err: error }, `placement: ${(error as Error).message}`);
          await sleep(RETRY_MS, undefined, { signal: this.stop.signal }).catch(() => {});
          this.again = true;
        }
      } while (this.again && !this.stop.signal.aborted);
      this.running = undefined;
    })();
  }

  /** No pass starts after this; one under way ends at its next step. */
  halt(): void {
    this.stop.abort();
  }

  /** Halts, and waits for a pass under way (whose controller steps end once they close). */
  async close(): Promise<void> {
    this.halt();
    await this.running;
  }

  private get sweepMarker(): string {
    return join(this.deps.runDir, 'sweep-due');
  }

  private async markSweepDue(): Promise<void> {
    this.sweepDue = true;
    await writeFile(this.sweepMarker, '').catch(() => {});
  }

  /**
   * How far `id` has got with `partition`: what it reported to etcd, or acknowledged here. A
   * serving master has all there is (it drained what its replicas had before it served), and
   * its report, made when it stood for election, says nothing of what it logged since.
   */
  private progressOf(partition: number, id: string): TxId {
    const pv = this.deps.coordinator.view.partitions.get(partition);
    if (pv?.master?.nodeId === id && pv.master.state === 'serving' && id !== this.deps.nodeId) return ALL;
    const reported = pv?.replicas.get(id) ?? 0n;
    const acked = this.deps.acked(partition, id);
    return reported > acked ? reported : acked;
  }

  private haveAllBut(partition: number, placed: readonly string[], slack: TxId): boolean {
    const last = this.deps.logs[partition]!.lastTxid;
    return placed.length > 0 && placed.every((id) => this.progressOf(partition, id) + slack >= last);
  }

  private async pass(): Promise<void> {
    const { coordinator, controllers, logs, nodeId, logger } = this.deps;
    // Without a session, or before the view shows this node, the view says nothing of where
    // partitions belong: this node would read itself as gone and let everything go.
    if (!coordinator.sessionValid() || !coordinator.view.nodes.has(nodeId)) return;
    let dropped = false;
    for (const controller of controllers) {
      if (this.stop.signal.aborted) return;
      const p = controller.partition;
      const placed = this.placedOn(p);
      if (placed.includes(nodeId)) {
        if (controller.activate()) {
          logger.info(
            { partition: p, placedOn: placed },
            `partition ${p}: placed on this node (${placed.join(', ')})`,
          );
        }
        continue;
      }
      const serving = coordinator.view.partitions.get(p)?.master?.state === 'serving';
      if (!controller.holds && !serving && logs[p]!.lastTxid > 0n && !this.haveAllBut(p, placed, 0n)) {
        // No master, and this node has records the placed nodes lack (it held the partition
        // before the placement moved while it was away, or let it go just before its master
        // died): it holds the partition again and stands with what it has, rather than leave
        // it to nodes that would have to go without those records. Once a master serves and
        // they have caught up, it lets go as usual.
        if (controller.activate()) {
          logger.info(
            { partition: p, placedOn: placed },
            `partition ${p}: not placed here, but this node has records ${placed.join(', ')} lack and there is no master: holding it until they have them`,
          );
        }
        continue;
      }
      if (controller.holds) {
        if (!this.haveAllBut(p, placed, RELEASE_SLACK_RECORDS)) continue;
        await controller.release(
          (last) => placed.every((id) => this.progressOf(p, id) >= last),
          this.deps.handOverTimeoutMs,
        );
        logger.info(
          { partition: p, placedOn: placed },
          `partition ${p}: now placed on ${placed.join(', ')}, which have nearly caught up: this node stopped following it at ${formatTxId(logs[p]!.lastTxid)}`,
        );
      }
      if (!this.haveAllBut(p, placed, 0n)) continue;
      if (coordinator.view.partitions.get(p)?.replicas.has(nodeId)) await coordinator.withdrawReplica(p);
      if (logs[p]!.lastTxid === 0n) continue;
      await this.markSweepDue();
      if (await controller.dropLog()) {
        dropped = true;
        logger.info(
          { partition: p, placedOn: placed },
          `partition ${p}: ${placed.join(', ')} have all of it: removed this node's log of it, its files go next`,
        );
      }
    }
    if (dropped || this.sweepDue) await this.sweep();
  }

  /**
   * Removes the files of every partition this node neither holds nor keeps a log of, in one walk
   * of the store, with no batch or bulk copy writing meanwhile (a partition held again part-way
   * keeps its files from there on, and its empty log has its replicator pull the rest).
   */
  private async sweep(): Promise<void> {
    const { controllers, logs, fileStore, partitionOf, storeGate } = this.deps;
    const gone = (p: number) => !controllers[p]!.holds && logs[p]!.lastTxid === 0n;
    const preempted = new AbortController();
    const removed = await storeGate.exclusive(
      async () => {
        let count = 0;
        if (!controllers.some((c) => gone(c.partition))) return count;
        for await (const entry of walkStore(fileStore)) {
          // A failover's drain asked for the store: the sweep gives way, and runs again later.
          if (preempted.signal.aborted || this.stop.signal.aborted) return undefined;
          if (!gone(partitionOf(entry.path))) continue;
          await rm(join(fileStore, entry.path), { force: true });
          count++;
        }
        return count;
      },
      this.stop.signal,
      { onPreempt: () => preempted.abort() },
    );
    if (removed === undefined) {
      this.again = true;
      return;
    }
    this.sweepDue = false;
    await rm(this.sweepMarker, { force: true });
    if (removed > 0) {
      this.deps.logger.info(
        { files: removed },
        `removed ${removed} file(s) of partitions this node does not hold`,
      );
    }
  }
}
