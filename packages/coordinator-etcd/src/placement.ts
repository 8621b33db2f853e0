import { createHash } from 'node:crypto';
import type { ClusterView } from './view.ts';

/**
 * Which nodes hold a partition (pure). Rendezvous (highest-random-weight) hashing: each node
 * scores each partition with a hash of both, and a partition goes to the `replicationFactor`
 * best-scoring live nodes. Every node computes the same answer from the same view; a node that
 * joins or leaves moves only the partitions it wins or held (about R/N of them), and the others
 * stay where they are.
 *
 * `replicationFactor` 0 (the default) means every node: the placement of clusters made before
 * there was a factor.
 */
export function placeReplicas(
  partition: number,
  nodeIds: Iterable<string>,
  replicationFactor: number,
): string[] {
  const ids = [...new Set(nodeIds)];
  const scored = ids.map((id) => ({ id, score: rendezvousScore(partition, id) }));
  scored.sort((a, b) => (a.score === b.score ? compareIds(a.id, b.id) : a.score > b.score ? -1 : 1));
  const count = replicationFactor <= 0 ? scored.length : Math.min(replicationFactor, scored.length);
  return scored.slice(0, count).map((s) => s.id);
}

/** The first 64 bits of sha-256(`<partition>/<nodeId>`), as the weight of that pairing. */
export function rendezvousScore(partition: number, nodeId: string): bigint {
  return createHash('sha256').update(`${partition}/${nodeId}`).digest().readBigUInt64BE(0);
}

function compareIds(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * The live nodes that take part in a partition: those of `placed` (its placement, which may
 * count nodes gone a short while) that are live, then those still holding it (a replica's
 * applied-txid key, on its lease, says it follows or holds the partition) until they let it go,
 * each group by id. They are the partition's election candidates.
 */
export function partitionMembers(view: ClusterView, partition: number, placed: readonly string[]): string[] {
  const live = placed.filter((id) => view.nodes.has(id)).sort(compareIds);
  const holders = [...(view.partitions.get(partition)?.replicas.keys() ?? [])]
    .filter((id) => view.nodes.has(id) && !live.includes(id))
    .sort(compareIds);
  return [...live, ...holders];
}
