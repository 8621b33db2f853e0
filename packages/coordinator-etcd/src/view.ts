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
  /** The process's MasterInfo incarnation: tells a master key of this very process from one its predecessor left. */
  incarnation: z.string().optional(),
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

export interface MasterView extends MasterInfo {
  /** Create revision of the master key: the fencing token of this mastership. */
  token: bigint;
}

export interface PartitionView {
  master: MasterView | undefined;
  generation: bigint;
  /** Last txid of each ended generation. */
  history: Map<bigint, bigint>;
  /** Applied txid each replica last reported. */
  replicas: Map<string, bigint>;
}

export interface ClusterView {
  nodes: Map<string, NodeInfo>;
  partitions: Map<number, PartitionView>;
  /** etcd revision this view reflects. */
  revision: bigint;
}

export function emptyView(): ClusterView {
  return { nodes: new Map(), partitions: new Map(), revision: 0n };
}

export function partitionView(view: ClusterView, partition: number): PartitionView {
  let entry = view.partitions.get(partition);
  if (entry === undefined) {
    entry = { master: undefined, generation: 0n, history: new Map(), replicas: new Map() };
    view.partitions.set(partition, entry);
  }
  return entry;
}

function parseJson<T>(schema: z.ZodType<T>, text: string): T | undefined {
  try {
    const result = schema.safeParse(JSON.parse(text));
    return result.success ? result.data : undefined;
  } catch {
    return undefined;
  }
}

/** Applies one key's new value (or its deletion, when `value` is undefined) to the view in place. */
export function applyKey(
  view: ClusterView,
  cluster: string,
  key: string,
  value: string | undefined,
  createRevision: bigint,
): void {
  const parsed = parseKey(cluster, key);
  if (parsed === undefined) return;
  if (parsed.kind === 'node') {
    const info = value === undefined ? undefined : parseJson(NodeInfoSchema, value);
    if (info === undefined) view.nodes.delete(parsed.nodeId);
    else view.nodes.set(parsed.nodeId, info);
    return;
  }
  const p = partitionView(view, parsed.partition);
  switch (parsed.kind) {
    case 'master': {
      const info = value === undefined ? undefined : parseJson(MasterInfoSchema, value);
      p.master = info === undefined ? undefined : { ...info, token: createRevision };
      return;
    }
    case 'generation':
      p.generation = value !== undefined && /^\d+$/.test(value) ? BigInt(value) : 0n;
      return;
    case 'history':
      if (value !== undefined && /^\d+$/.test(value)) p.history.set(parsed.generation, BigInt(value));
      else p.history.delete(parsed.generation);
      return;
    case 'replica':
      if (value !== undefined && /^\d+$/.test(value)) p.replicas.set(parsed.nodeId, BigInt(value));
      else p.replicas.delete(parsed.nodeId);
      return;
  }
}

/**
 * Promotion order for a partition without a master: live nodes (those of `among`, when given),
 * most applied txid first, ties by smallest node id (so in the quick demo localhost_12002 wins
 * over localhost_12003).
 */
export function rankCandidates(view: ClusterView, partition: number, among?: readonly string[]): string[] {
  const replicas = view.partitions.get(partition)?.replicas ?? new Map<string, bigint>();
  const live = [...view.nodes.keys()].filter((id) => among === undefined || among.includes(id));
  return live.sort((a, b) => {
    const applied = (replicas.get(b) ?? 0n) - (replicas.get(a) ?? 0n);
    if (applied !== 0n) return applied > 0n ? 1 : -1;
    return a < b ? -1 : a > b ? 1 : 0;
  });
}
