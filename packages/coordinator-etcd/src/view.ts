import { z } from 'zod';
import { parseKey } from './keys.ts';

/** Wire schemas of the values PFS keeps in etcd, and the cluster view built from them (pure). */
export const NodeInfoSchema = z.object({
  id: z.string(),
  host: z.string(),
  httpPort: z.number().int(),
  rsyncPort: z.number().int(),
  pid: z.number().int(),
  startedAt: z.string(),
});
export type NodeInfo = z.infer<typeof NodeInfoSchema>;

/**
 * What every node of a cluster must agree on (the `config` key): the partition count decides
 * which partition a path is in, and the replication factor which nodes hold it.
 */
export const ClusterSettingsSchema = z.object({
  partitions: z.number().int().min(1),
  /** 0: every node holds every partition. */
  replicationFactor: z.number().int().min(0),
  /**
   * Made once, when the key is first written (or added to a key written without it): a data
   * dir remembers the id of the cluster it was made in, and a new etcd (or another cluster
   * under the same name) has another.
   */
  id: z.string().min(1).optional(),
});
export type ClusterSettings = z.infer<typeof ClusterSettingsSchema>;

export const MasterInfoSchema = z.object({
  nodeId: z.string(),
  /** Unique per process incarnation, so a restarted node is never mistaken for its old self. */
  incarnation: z.string(),
  /** `draining` while catching up after election, `serving` once it takes writes. */
  state: z.enum(['draining', 'serving']),
  generation: z.string().regex(/^\d+$/),
  /** Set by a master handing over on purpose: its last txid, so a caught-up successor skips the drain. */
  finalTxid: z.string().regex(/^\d+$/).optional(),
});
export type MasterInfo = z.infer<typeof MasterInfoSchema>;

/**
 * Written by a master that hands over, beside its `finalTxid`, and kept after it resigns: until
 * the next generation, no node with less may stand (the placed replicas acknowledged it).
 */
export const HandoverInfoSchema = z.object({
  generation: z.string().regex(/^\d+$/),
  finalTxid: z.string().regex(/^\d+$/),
});

export interface MasterView extends MasterInfo {
  /** Create revision of the master key: the fencing token of this mastership. */
  token: bigint;
}

export interface PartitionView {
  master: MasterView | undefined;
  /** The current generation; while the key holds no valid one, the last valid one seen (or 0). */
  generation: bigint;
  /**
   * What the generation key holds when it is not a generation (a decimal of at most 32 bits):
   * no node may stand for election then (see badGenerationMessage).
   */
  badGeneration?: string | undefined;
  /** Last txid of each ended generation. */
  history: Map<bigint, bigint>;
  /** Applied txid each replica last reported. */
  replicas: Map<string, bigint>;
  /** The etcd revision each replica's report was written at (see `reportedByCurrentProcess`). */
  replicaRevisions: Map<string, bigint>;
  /** The last handover's generation and final txid (see HandoverInfoSchema). */
  handover: { generation: bigint; finalTxid: bigint } | undefined;
  /**
   * The etcd revision at which this view saw the master key deleted last (its lease ended, or
   * it resigned); undefined while there is a master, or if the view began without one.
   */
  masterLeftAt: bigint | undefined;
}

export interface ClusterView {
  nodes: Map<string, NodeInfo>;
  /**
   * The etcd revision each live node's record was written at: when its current process
   * registered. A key it wrote earlier (on a lease not yet expired) was its predecessor's.
   */
  registeredAt: Map<string, bigint>;
  partitions: Map<number, PartitionView>;
  /** etcd revision this view reflects. */
  revision: bigint;
}

export function emptyView(): ClusterView {
  return { nodes: new Map(), registeredAt: new Map(), partitions: new Map(), revision: 0n };
}

export function partitionView(view: ClusterView, partition: number): PartitionView {
  let entry = view.partitions.get(partition);
  if (entry === undefined) {
    entry = {
      master: undefined,
      generation: 0n,
      history: new Map(),
      replicas: new Map(),
      replicaRevisions: new Map(),
      handover: undefined,
      masterLeftAt: undefined,
    };
    view.partitions.set(partition, entry);
  }
  return entry;
}

/** `text` as JSON of `schema`, or undefined when it is not. */
export function parseJson<T>(schema: z.ZodType<T>, text: string): T | undefined {
  try {
    const result = schema.safeParse(JSON.parse(text));
    return result.success ? result.data : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Applies one key's new value (or its deletion, when `value` is undefined) to the view in place;
 * `modRevision` is the revision of that write or deletion.
 */
export function applyKey(
  view: ClusterView,
  cluster: string,
  key: string,
  value: string | undefined,
  createRevision: bigint,
  modRevision = createRevision,
): void {
  const parsed = parseKey(cluster, key);
  if (parsed === undefined) return;
  if (parsed.kind === 'node') {
    const info = value === undefined ? undefined : parseJson(NodeInfoSchema, value);
    if (info === undefined) {
      view.nodes.delete(parsed.nodeId);
      view.registeredAt.delete(parsed.nodeId);
    } else {
      view.nodes.set(parsed.nodeId, info);
      view.registeredAt.set(parsed.nodeId, modRevision);
    }
    return;
  }
  const p = partitionView(view, parsed.partition);
  switch (parsed.kind) {
    case 'master': {
      const info = value === undefined ? undefined : parseJson(MasterInfoSchema, value);
      p.master = info === undefined ? undefined : { ...info, token: createRevision };
      p.masterLeftAt = info === undefined ? modRevision : undefined;
      return;
    }
    case 'handover': {
      const info = value === undefined ? undefined : parseJson(HandoverInfoSchema, value);
      p.handover =
        info === undefined
          ? undefined
          : { generation: BigInt(info.generation), finalTxid: BigInt(info.finalTxid) };
      return;
    }
    case 'generation':
      if (value !== undefined && !isGeneration(value)) {
        // Kept as it was: 0 would let a drain take records past any recorded end, and a bump
        // from it take the partition back to txids its logs already hold.
        p.badGeneration = value;
        return;
      }
      p.generation = value === undefined ? 0n : BigInt(value);
      p.badGeneration = undefined;
      return;
    case 'history':
      if (value !== undefined && /^\d+$/.test(value)) p.history.set(parsed.generation, BigInt(value));
      else p.history.delete(parsed.generation);
      return;
    case 'replica':
      if (value !== undefined && /^\d+$/.test(value)) {
        p.replicas.set(parsed.nodeId, BigInt(value));
        p.replicaRevisions.set(parsed.nodeId, modRevision);
      } else {
        p.replicas.delete(parsed.nodeId);
        p.replicaRevisions.delete(parsed.nodeId);
      }
      return;
  }
}

/**
 * Promotion order for a partition without a master: live nodes (those of `among`, when given),
 * most applied txid first, ties by smallest node id (so in the quick demo localhost_12002 wins
 * over localhost_12003).
 */
export function rankCandidates(view: ClusterView, partition: number, among?: readonly string[]): string[] {
  // A report its node's previous process left (on a lease etcd has not expired yet) speaks of a
  // disk that may be gone: ranked first on it, the node would be waited for, and drained for
  // records it no longer has.
  const applied = (id: string) => reportedByCurrentProcess(view, partition, id) ?? 0n;
  const live = [...view.nodes.keys()].filter((id) => among === undefined || among.includes(id));
  return live.sort((a, b) => {
    const difference = applied(b) - applied(a);
    if (difference !== 0n) return difference > 0n ? 1 : -1;
    return a < b ? -1 : a > b ? 1 : 0;
  });
}

/**
 * What `nodeId` reported for `partition`, if its current process wrote it: a key left on a lease
 * of the node's previous process (which etcd has not yet expired) speaks of a disk that may be
 * gone. Undefined otherwise.
 */
export function reportedByCurrentProcess(
  view: ClusterView,
  partition: number,
  nodeId: string,
): bigint | undefined {
  const pv = view.partitions.get(partition);
  const registered = view.registeredAt.get(nodeId);
  const written = pv?.replicaRevisions.get(nodeId);
  if (registered === undefined || written === undefined || written < registered) return undefined;
  return pv?.replicas.get(nodeId);
}

/**
 * Whether each of `nodeIds` has reported its applied txid for `partition` since the view saw
 * its master key deleted: for an election after a master was lost, every candidate has then
 * published how far it got (each does so as it starts to vote), and ranking need wait no longer.
 */
export function reportedSinceMasterLeft(
  view: ClusterView,
  partition: number,
  nodeIds: readonly string[],
): boolean {
  const pv = view.partitions.get(partition);
  const left = pv?.masterLeftAt;
  if (pv === undefined || left === undefined || pv.master !== undefined) return false;
  return nodeIds.every((id) => (pv.replicaRevisions.get(id) ?? 0n) > left);
}

/** Whether the master key of `partition` was written by its node's current process. */
export function masterOfCurrentProcess(view: ClusterView, partition: number): boolean {
  const master = view.partitions.get(partition)?.master;
  const registered = master === undefined ? undefined : view.registeredAt.get(master.nodeId);
  return master !== undefined && registered !== undefined && master.token > registered;
}

/** The final txid the current generation's master handed over with, if it did. */
export function currentHandover(view: ClusterView, partition: number): bigint | undefined {
  const pv = view.partitions.get(partition);
  return pv?.handover !== undefined && pv.handover.generation === pv.generation
    ? pv.handover.finalTxid
    : undefined;
}

/** Whether a generation key's value is a generation: a decimal that fits the txid's 32 bits. */
export function isGeneration(value: string): boolean {
  return /^\d{1,10}$/.test(value) && BigInt(value) <= 0xffffffffn;
}

/**
 * The one-line error for a generation key of `partition` that holds `value`, with the value to put
 * back: the serving master's generation, else one past the last ended generation the history
 * records (its master never bumped past it), else 1.
 */
export function badGenerationMessage(key: string, value: string, pv: PartitionView | undefined): string {
  let ended = 0n;
  for (const g of pv?.history.keys() ?? []) if (g > ended) ended = g;
  const master = pv?.master?.state === 'serving' ? BigInt(pv.master.generation) : undefined;
  const repair = master ?? ended + 1n;
  return `${key} holds ${JSON.stringify(value.slice(0, 40))}, not a generation (a decimal below 2^32): no node stands for election until it is put back (etcdctl put ${key} ${repair}: ${master !== undefined ? "the serving master's generation" : 'one past the last ended generation in history/'})`;
}
