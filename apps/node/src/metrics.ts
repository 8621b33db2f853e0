import { generationOf, sequenceOf } from '@pfs/txlog';
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { PartitionController } from './partition-controller.ts';
import type { ReplicaAcks } from './replica-acks.ts';

/**
 * Prometheus metrics of one agent (its own registry, so several agents can share a process in
 * tests). Gauges are computed at scrape time from the agent's state; counters are bumped where
 * things happen.
 */
export interface NodeMetrics {
  registry: Registry;
  writes: Counter<'op'>;
  writeBytes: Counter;
  conflictWaits: Counter<'result'>;
  batches: Counter<'result'>;
  replicationErrors: Counter<'code'>;
  batchSeconds: Histogram;
  pulls: Counter;
  promotions: Counter;
  storeCheckWalks: Counter;
  readDigests: Counter<'source'>;
}

const ROLE_VALUE: Record<string, number> = { offline: 0, replica: 1, electing: 1, promoting: 2, master: 2 };

export function createMetrics(view: {
  controllers: () => readonly PartitionController[];
  generation: (partition: number) => bigint;
  acks: ReplicaAcks;
  /** The other live nodes taking part in a partition (see partitionMembers). */
  replicasOf: (partition: number) => readonly string[];
  /** Reconcile walks of the store completed since the node started. */
  reconcilesCompleted: () => number;
}): NodeMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const metrics: NodeMetrics = {
    registry,
    writes: new Counter({
      name: 'pfs_writes_total',
      help: 'Writes accepted by this node as master',
      labelNames: ['op'],
      registers: [registry],
    }),
    writeBytes: new Counter({
      name: 'pfs_write_bytes_total',
      help: 'Bytes of accepted puts',
      registers: [registry],
    }),
    conflictWaits: new Counter({
      name: 'pfs_put_conflict_waits_total',
      help: "Puts refused for a file or directory in their way that waited for this node's replicas of other partitions to catch up, by result (caught_up: tried again; behind: refused)",
      labelNames: ['result'],
      registers: [registry],
    }),
    batches: new Counter({
      name: 'pfs_replication_batches_total',
      help: 'Replication batches (one rsync each) by result',
      labelNames: ['result'],
      registers: [registry],
    }),
    replicationErrors: new Counter({
      name: 'pfs_replication_errors_total',
      help: 'Failed replication batches by error code (HELD_BY_ANOTHER_PARTITION: a file/directory clash between partitions)',
      labelNames: ['code'],
      registers: [registry],
    }),
    batchSeconds: new Histogram({
      name: 'pfs_replication_batch_seconds',
      help: 'Time to apply one batch: rsync, verification, directory fsyncs, log append',
      buckets: [0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    }),
    pulls: new Counter({
      name: 'pfs_replication_pulls_total',
      help: 'Batch pulls by how their rsync started: ahead (waiting for the list) or cold',
      labelNames: ['rsync'],
      registers: [registry],
    }),
    promotions: new Counter({
      name: 'pfs_promotions_total',
      help: 'Times this node became master of a partition',
      registers: [registry],
    }),
    storeCheckWalks: new Counter({
      name: 'pfs_store_check_walks_total',
      help: 'Walks of the store that checked it against the logs of partitions this node had mastered',
      registers: [registry],
    }),
    readDigests: new Counter({
      name: 'pfs_read_digests_total',
      help: 'ETags of GET/HEAD answers by where their sha-256 came from: cache, hashing the file, or a hash of the same version another request had under way (shared)',
      labelNames: ['source'],
      registers: [registry],
    }),
  };
  new Gauge({
    name: 'pfs_reconciles_completed',
    help: 'Walks of the store that logged what differed from the logs (reconciles), completed since the node started: a master serves before its first one ends',
    registers: [registry],
    collect() {
      this.set(view.reconcilesCompleted());
    },
  });
  new Gauge({
    name: 'pfs_role',
    help: 'Role per partition: 0 offline, 1 replica, 2 master',
    labelNames: ['partition'],
    registers: [registry],
    collect() {
      for (const c of view.controllers())
        this.set({ partition: String(c.partition) }, ROLE_VALUE[c.role] ?? 0);
    },
  });
  new Gauge({
    name: 'pfs_generation',
    help: 'Current generation per partition',
    labelNames: ['partition'],
    registers: [registry],
    collect() {
      for (const c of view.controllers())
        this.set({ partition: String(c.partition) }, Number(view.generation(c.partition)));
    },
  });
  new Gauge({
    name: 'pfs_applied_sequence',
    help: "Sequence (low 32 bits) of the last txid in this node's log, per partition",
    labelNames: ['partition', 'generation'],
    registers: [registry],
    collect() {
      this.reset();
      for (const c of view.controllers()) {
        this.set(
          { partition: String(c.partition), generation: String(generationOf(c.appliedTxid)) },
          Number(sequenceOf(c.appliedTxid)),
        );
      }
    },
  });
  new Gauge({
    name: 'pfs_replication_lag_records',
    help: 'On a master: records each live replica has not acknowledged yet, per partition',
    labelNames: ['partition', 'replica'],
    registers: [registry],
    collect() {
      this.reset();
      for (const c of view.controllers()) {
        if (c.role !== 'master') continue;
        const last = c.appliedTxid;
        for (const replica of view.replicasOf(c.partition)) {
          const acked = view.acks.of(c.partition).get(replica) ?? 0n;
          const lag =
            generationOf(acked) === generationOf(last)
              ? Number(sequenceOf(last) - sequenceOf(acked))
              : Number(sequenceOf(last));
          this.set({ partition: String(c.partition), replica }, Math.max(0, lag));
        }
      }
    },
  });
  return metrics;
}
