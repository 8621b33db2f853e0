import { existsSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  type Coordinator,
  currentHandover,
  masterOfCurrentProcess,
  partitionMembers,
  placeReplicas,
  reportedByCurrentProcess,
} from '@pfs/coordinator-etcd';
import { assertStoreInPlace, walkStore } from '@pfs/filestore';
import type { StoreGate } from '@pfs/replicator';
import { formatTxId, fsyncDir, type TxId, type TxLog } from '@pfs/txlog';
import type { Logger } from 'pino';
import { behindTheCluster, type PartitionController } from './partition-controller.ts';

/**
 * A node lets a partition it is no longer placed on go once every node placed on it has reported
 * all but this many of the records it has (a master's handover then waits for the rest, bounded):
 * under a steady stream of writes an exact match would rarely be seen at the moment of a check.
 * Its key, log and files go only once they have all of it.
 */
const RELEASE_SLACK_RECORDS = 1000n;
const RETRY_MS = 1000;
/** Above any txid: what a serving master has. */
const ALL = 1n << 64n;
/** Files the sweep removes per turn of the store gate, which holds up replication meanwhile. */
const SWEEP_BATCH = 500;

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
  /**
   * How long a node that left still counts for the placement: its partitions are not placed
   * elsewhere before, so a node that restarts finds them where it left them (0: at once).
   */
  graceMs: number;
  logger: Logger;
  /** Monotonic milliseconds (tests). */
  now?: () => number;
}

/**
 * Which partitions this node holds, from the placement (docs/architecture.md, Placement): one
 * placed on it is held at once; one no longer placed on it is let go in steps, each only once
 * the nodes now placed on it have what this node has, as their current processes reported it to
 * etcd (on their leases, so a node that left or lost its disk no longer counts):
 *   1. stop following it (a master hands over first), once they have all but a few records;
 *   2. once they have all of it (this node's log no longer moves) and a master serves (its drain,
 *      which may read this node, is over): withdraw this node's applied-txid key (no longer a
 *      candidate), remove its log, and have the sweep remove its files.
 * A pass runs at a time, again after every view change; each step is checked anew in each pass,
 * so a node placed on a partition again part-way simply holds it again (from its log, if that is
 * still there). A node not placed on a partition but holding records, with no master serving and
 * no placed node allowed to stand, holds it again and stands with what it has.
 */
export class PartitionPlacement {
  private readonly stop = new AbortController();
  private readonly passes = new Rerunning(
    () => this.pass(),
    this.stop.signal,
    (error) => this.deps.logger.warn({ err: error }, `placement: ${error.message}`),
  );
  private readonly sweeps = new Rerunning(
    () => this.sweep(),
    this.stop.signal,
    (error) =>
      this.deps.logger.warn({ err: error }, `removing the files of partitions let go: ${error.message}`),
  );
  private sweepDue: boolean;
  /** Marks set so far: a sweep clears the mark only if none was set while it ran. */
  private sweepMarks = 0;
  /** Placements of the membership they were computed for (acks ask on every write). */
  private placements = { key: '', byPartition: new Map<number, string[]>() };
  /** Nodes seen live, and since when (monotonic) the ones no longer live have been gone. */
  private readonly seen = new Set<string>();
  private readonly goneSince = new Map<string, number>();
  private graceTimer: NodeJS.Timeout | undefined;

  constructor(private readonly deps: PlacementDeps) {
    this.sweepDue = existsSync(this.sweepMarker);
  }

  private now(): number {
    return this.deps.now?.() ?? performance.now();
  }

  /**
   * The nodes the placement counts: the live ones, and those gone for less than the grace
   * (which this node saw live itself). A pass runs again when the first grace ends.
   */
  private placementNodes(): string[] {
    const live = this.deps.coordinator.view.nodes;
    const now = this.now();
    for (const id of live.keys()) {
      this.seen.add(id);
      this.goneSince.delete(id);
    }
    let nextEnd = Number.POSITIVE_INFINITY;
    for (const id of this.seen) {
      if (live.has(id)) continue;
      const since = this.goneSince.get(id) ?? now;
      this.goneSince.set(id, since);
      if (now - since >= this.deps.graceMs) {
        this.seen.delete(id);
        this.goneSince.delete(id);
      } else nextEnd = Math.min(nextEnd, since + this.deps.graceMs);
    }
    if (nextEnd !== Number.POSITIVE_INFINITY && this.graceTimer === undefined && !this.stop.signal.aborted) {
      this.graceTimer = setTimeout(
        () => {
          this.graceTimer = undefined;
          this.schedule();
        },
        Math.max(0, nextEnd - now),
      );
      this.graceTimer.unref();
    }
    return [...this.seen].sort();
  }

  /** The nodes placed on `partition`, best first: live ones, or gone for less than the grace. */
  placedOn(partition: number): string[] {
    const nodes = this.placementNodes();
    const key = nodes.join('\n');
    if (this.placements.key !== key) this.placements = { key, byPartition: new Map() };
    let placed = this.placements.byPartition.get(partition);
    if (placed === undefined) {
      placed = placeReplicas(partition, nodes, this.deps.replicationFactor);
      this.placements.byPartition.set(partition, placed);
    }
    return [...placed];
  }

  /** The live nodes taking part in `partition`, its election candidates (see partitionMembers). */
  membersOf(partition: number): string[] {
    return partitionMembers(this.deps.coordinator.view, partition, this.placedOn(partition));
  }

  /** The other nodes whose acknowledgements `ack=all` waits for: the live ones placed on it. */
  replicasOf(partition: number): string[] {
    const live = this.deps.coordinator.view.nodes;
    return this.placedOn(partition).filter((id) => live.has(id) && id !== this.deps.nodeId);
  }

  /** A bulk copy brings every partition its source holds: the ones not held here go after it. */
  noteStoreCopy(phase: 'started' | 'ended'): void {
    if (phase === 'started') void this.markSweepDue();
    else this.schedule();
  }

  /** Runs a pass soon (coalesced). */
  schedule(): void {
    this.passes.request();
  }

  /** No pass or sweep starts after this; one under way ends at its next step. */
  halt(): void {
    this.stop.abort();
    clearTimeout(this.graceTimer);
  }

  /** Halts, and waits for a pass and a sweep under way (whose controller steps end once they close). */
  async close(): Promise<void> {
    this.halt();
    await this.passes.idle();
    await this.sweeps.idle();
  }

  private get sweepMarker(): string {
    return join(this.deps.runDir, 'sweep-due');
  }

  private async markSweepDue(): Promise<void> {
    this.sweepDue = true;
    this.sweepMarks++;
    // Durable before the log it stands for goes: a restart after a power loss sweeps again.
    // Should it fail, this process still sweeps (sweepDue); only a crash before then leaves the
    // files for a later sweep, which nothing would ask for, so it is said.
    try {
      await writeFile(this.sweepMarker, '');
      await fsyncDir(this.deps.runDir);
    } catch (error) {
      this.deps.logger.warn(
        { err: error },
        `cannot record that a sweep is due (${(error as Error).message}): a crash before it runs would leave files of partitions let go; check ${this.deps.runDir}`,
      );
    }
  }

  /**
   * How far `id` has got with `partition`, as its current process reported it to etcd (a report
   * its predecessor left, on a lease not yet expired, may speak of a disk that is gone). A
   * serving master, claimed by its node's current process, has all there is: it drained what its
   * members had before it served.
   */
  private progressOf(partition: number, id: string): TxId {
    const view = this.deps.coordinator.view;
    const master = view.partitions.get(partition)?.master;
    if (
      master?.nodeId === id &&
      master.state === 'serving' &&
      id !== this.deps.nodeId &&
      masterOfCurrentProcess(view, partition)
    )
      return ALL;
    return reportedByCurrentProcess(view, partition, id) ?? 0n;
  }

  private haveAllBut(partition: number, placed: readonly string[], slack: TxId): boolean {
    const last = this.deps.logs[partition]!.lastTxid;
    return placed.length > 0 && placed.every((id) => this.progressOf(partition, id) + slack >= last);
  }

  /** A master other than this node serves the partition: any drain of its promotion is over. */
  private servedElsewhere(partition: number): boolean {
    const view = this.deps.coordinator.view;
    const master = view.partitions.get(partition)?.master;
    return (
      master !== undefined &&
      master.state === 'serving' &&
      master.nodeId !== this.deps.nodeId &&
      masterOfCurrentProcess(view, partition)
    );
  }

  /** Whether the partition's key, log and files may go from this node (see the class comment). */
  private mayDrop(partition: number, placed: readonly string[]): boolean {
    return this.servedElsewhere(partition) && this.haveAllBut(partition, placed, 0n);
  }

  /**
   * A partition not placed here that this node must hold again: it has records, no master serves,
   * and none of the placed nodes may stand for it (each is behind where an ended generation
   * ended, or has nothing; see behindTheCluster). When one of them may, it stands and drains
   * this node, which keeps its key for that, rather than this node taking the partition back
   * only to hand it over again.
   */
  private mustHoldAgain(partition: number, placed: readonly string[]): boolean {
    if (this.deps.logs[partition]!.lastTxid === 0n || this.servedElsewhere(partition)) return false;
    const view = this.deps.coordinator.view;
    const pv = view.partitions.get(partition);
    const generation = pv?.generation ?? 0n;
    const handedOverAt = currentHandover(view, partition);
    return placed.every(
      (id) =>
        behindTheCluster(this.progressOf(partition, id), generation, pv?.history, handedOverAt) !== undefined,
    );
  }

  private async pass(): Promise<void> {
    const { coordinator, controllers, nodeId, logger } = this.deps;
    // Without a session, or while the view does not show this node, the view says nothing of
    // where partitions belong: this node would read itself as gone and let everything go.
    // Checked before each step, as steps wait.
    const viewHolds = () =>
      !this.stop.signal.aborted && coordinator.sessionValid() && coordinator.view.nodes.has(nodeId);
    if (!viewHolds()) return;
    // First, without waiting, hold every partition placed here or that must be held again: the
    // steps of letting others go below may take a second each (a handover), which a node joining,
    // or a partition without a master, must not wait out.
    for (const controller of controllers) {
      const p = controller.partition;
      const placed = this.placedOn(p);
      if (placed.includes(nodeId)) {
        if (controller.activate()) {
          logger.info(
            { partition: p, placedOn: placed },
            `partition ${p}: placed on this node (${placed.join(', ')})`,
          );
        }
      } else if (!controller.holds && this.mustHoldAgain(p, placed)) {
        // It held the partition before the placement moved while it was away, or let it go just
        // before its master died: it stands with what it has, and lets go as usual once a
        // master serves and the placed nodes have caught up.
        controller.activate();
        logger.info(
          { partition: p, placedOn: placed },
          `partition ${p}: not placed here, but no master serves it and ${placed.join(', ')} cannot stand for it without this node's records: holding it until they have them`,
        );
      }
      // A report lost with a session or a restart is put back: the nodes letting the partition
      // go wait for it.
      if (controller.holds) controller.ensureReported();
    }
    let dropped = false;
    // One partition whose step fails (a divergent suffix it cannot set aside, say) does not hold
    // up the others, nor the sweep: the pass runs again for it.
    let failure: unknown;
    for (const controller of controllers) {
      if (!viewHolds()) return;
      try {
        if (await this.letGo(controller, viewHolds)) dropped = true;
      } catch (error) {
        // Each told, not only the first (which the rerun logs).
        if (failure !== undefined) {
          logger.warn(
            { partition: controller.partition, err: error },
            `placement: partition ${controller.partition}: ${(error as Error).message}`,
          );
        }
        failure ??= error;
      }
    }
    // In the background: it waits for the store gate, maybe behind a bulk copy.
    if (dropped || this.sweepDue) this.sweeps.request();
    if (failure !== undefined) throw failure;
  }

  /** One step of letting `controller`'s partition go, if it is not placed here; whether its log was dropped. */
  private async letGo(controller: PartitionController, viewHolds: () => boolean): Promise<boolean> {
    const { coordinator, logs, nodeId, logger } = this.deps;
    const p = controller.partition;
    const placed = this.placedOn(p);
    if (placed.includes(nodeId)) return false;
    const last = logs[p]!.lastTxid;
    // A key its previous process left (on a lease not yet expired) does not count.
    const reported = reportedByCurrentProcess(coordinator.view, p, nodeId);
    const hasKey = reported !== undefined;
    if (controller.holds) {
      if (!this.haveAllBut(p, placed, RELEASE_SLACK_RECORDS)) return false;
      // The handover waits for what the placed nodes acknowledged here as master (fresher
      // than their reports); it only decides whether the successor may skip its drain.
      await controller.release(
        (txid) => placed.every((id) => this.deps.acked(p, id) >= txid || this.progressOf(p, id) >= txid),
        this.deps.handOverTimeoutMs,
      );
      logger.info(
        { partition: p, placedOn: placed },
        `partition ${p}: now placed on ${placed.join(', ')}, which have nearly caught up: this node stopped following it at ${formatTxId(logs[p]!.lastTxid)}`,
      );
      return false;
    }
    if (last === 0n) {
      if (hasKey) {
        // A bulk copy or a batch may have left files of it before it had a record. Marked
        // first: a restart after the key went would find neither key nor mark.
        await this.markSweepDue();
        await coordinator.withdrawReplica(p);
      }
      return false;
    }
    if (!this.mayDrop(p, placed)) {
      // Still needed, as a candidate and as a source to drain: its key must be there, which
      // a lost session or a restart took away, and say all it has (a report that failed as
      // it let the partition go leaves the one from before its term as master).
      if (reported === undefined || reported < last) await coordinator.reportApplied(p, last);
      return false;
    }
    await coordinator.withdrawReplica(p);
    // The view may have moved while the key went: if the partition is no longer safe to drop,
    // the key comes back.
    const placedNow = this.placedOn(p);
    if (!viewHolds() || placedNow.includes(nodeId) || !this.mayDrop(p, placedNow)) {
      if (viewHolds()) await coordinator.reportApplied(p, last);
      return false;
    }
    await this.markSweepDue();
    if (!(await controller.dropLog())) return false;
    // A sweep that ran while the log was still there skipped the partition's files, and may
    // have cleared the mark: set again, it stays until a sweep that knew the log gone.
    await this.markSweepDue();
    logger.info(
      { partition: p, placedOn: placedNow },
      `partition ${p}: ${placedNow.join(', ')} have all of it: removed this node's log of it, its files go next`,
    );
    return true;
  }

  /**
   * Removes the files of every partition this node neither holds nor keeps a log of. The store
   * is walked without the store gate; each batch of files is removed holding it exclusively, so
   * no replicator writes meanwhile, and each file's partition is checked again there: one held
   * again since (its replicator then pulls from an empty log) keeps its files.
   */
  private async sweep(): Promise<void> {
    const { controllers, logs, fileStore, partitionOf, storeGate } = this.deps;
    const gone = (p: number) => !controllers[p]!.holds && logs[p]!.lastTxid === 0n;
    // Only a partition gone for the whole walk had all its files passed: one dropped meanwhile
    // keeps its former-master mark until the next sweep (which the drop's mark asks for).
    const goneAtStart = new Set(controllers.filter((c) => gone(c.partition)).map((c) => c.partition));
    const marksBefore = this.sweepMarks;
    let removed = 0;
    let batch: string[] = [];
    const removeBatch = async () => {
      const paths = batch;
      batch = [];
      removed += await storeGate.exclusive(async () => {
        let count = 0;
        for (const path of paths) {
          if (!gone(partitionOf(path))) continue;
          await rm(join(fileStore, path), { force: true });
          count++;
        }
        return count;
      }, this.stop.signal);
    };
    if (controllers.some((c) => gone(c.partition))) {
      // An empty mount point has nothing to sweep: that says nothing of the real store, whose
      // marks must stay (failing here, the sweep is tried again).
      assertStoreInPlace(fileStore);
      for await (const entry of walkStore(fileStore)) {
        if (this.stop.signal.aborted) return;
        if (gone(partitionOf(entry.path))) batch.push(entry.path);
        if (batch.length >= SWEEP_BATCH) await removeBatch();
      }
      await removeBatch();
      assertStoreInPlace(fileStore);
      // Files a former master wrote without logging them are gone too.
      for (const controller of controllers) {
        if (goneAtStart.has(controller.partition) && gone(controller.partition))
          await controller.forgetMastered();
      }
    }
    if (this.sweepMarks === marksBefore) {
      this.sweepDue = false;
      await rm(this.sweepMarker, { force: true });
    } else this.sweeps.request();
    if (removed > 0) {
      this.deps.logger.info(
        { files: removed },
        `removed ${removed} file(s) of partitions this node does not hold`,
      );
    }
  }
}

/**
 * Runs `work` one at a time: a request while it runs has it run once more when it ends, and a
 * failure has it run again after RETRY_MS. Nothing runs once `signal` aborts.
 */
class Rerunning {
  private running: Promise<void> | undefined;
  private again = false;

  constructor(
    private readonly work: () => Promise<void>,
    private readonly signal: AbortSignal,
    private readonly onError: (error: Error) => void,
  ) {}

  request(): void {
    if (this.signal.aborted) return;
    if (this.running !== undefined) {
      this.again = true;
      return;
    }
    this.running = (async () => {
      do {
        this.again = false;
        try {
          await this.work();
        } catch (error) {
          if (this.signal.aborted) break;
          this.onError(error as Error);
          await sleep(RETRY_MS, undefined, { signal: this.signal }).catch(() => {});
          this.again = true;
        }
      } while (this.again && !this.signal.aborted);
      this.running = undefined;
    })();
  }

  /** Resolves once no run is under way. */
  async idle(): Promise<void> {
    await this.running;
  }
}
