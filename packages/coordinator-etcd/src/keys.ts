/**
 * etcd key layout (pure), all under `/pfs/<cluster>/`:
 *   nodes/<id>                          NodeInfo JSON, on the node's lease
 *   partitions/<p>/master               MasterInfo JSON, on the master's lease; its create revision is
 *                                       the fencing token of that mastership
 *   partitions/<p>/generation           current generation, decimal
 *   partitions/<p>/history/<gen>        last txid (decimal) of ended generation <gen>, gen zero-padded to 10
 *   partitions/<p>/replicas/<id>        applied txid (decimal) of a replica, on its lease; present
 *                                       while the node follows or holds the partition
 *   partitions/<p>/handover             HandoverInfo JSON: the last txid a master of generation
 *                                       <generation> handed over with (no lease)
 *   config                              ClusterSettings JSON, written once by the cluster's first node
 */
export type ParsedKey =
  | { kind: 'node'; nodeId: string }
  | { kind: 'master'; partition: number }
  | { kind: 'generation'; partition: number }
  | { kind: 'handover'; partition: number }
  | { kind: 'history'; partition: number; generation: bigint }
  | { kind: 'replica'; partition: number; nodeId: string };

export function clusterPrefix(cluster: string): string {
  return `/pfs/${cluster}/`;
}

export const keys = {
  settings: (cluster: string) => `${clusterPrefix(cluster)}config`,
  node: (cluster: string, nodeId: string) => `${clusterPrefix(cluster)}nodes/${nodeId}`,
  master: (cluster: string, partition: number) => `${clusterPrefix(cluster)}partitions/${partition}/master`,
  generation: (cluster: string, partition: number) =>
    `${clusterPrefix(cluster)}partitions/${partition}/generation`,
  handover: (cluster: string, partition: number) =>
    `${clusterPrefix(cluster)}partitions/${partition}/handover`,
  history: (cluster: string, partition: number, generation: bigint) =>
    `${clusterPrefix(cluster)}partitions/${partition}/history/${generation.toString().padStart(10, '0')}`,
  replica: (cluster: string, partition: number, nodeId: string) =>
    `${clusterPrefix(cluster)}partitions/${partition}/replicas/${nodeId}`,
};

export function parseKey(cluster: string, key: string): ParsedKey | undefined {
  const prefix = clusterPrefix(cluster);
  if (!key.startsWith(prefix)) return undefined;
  const parts = key.slice(prefix.length).split('/');
  if (parts[0] === 'nodes' && parts.length === 2 && parts[1]) return { kind: 'node', nodeId: parts[1] };
  if (parts[0] !== 'partitions' || !/^\d+$/.test(parts[1] ?? '')) return undefined;
  const partition = Number(parts[1]);
  if (parts.length === 3 && parts[2] === 'master') return { kind: 'master', partition };
  if (parts.length === 3 && parts[2] === 'generation') return { kind: 'generation', partition };
  if (parts.length === 3 && parts[2] === 'handover') return { kind: 'handover', partition };
  if (parts.length === 4 && parts[2] === 'history' && /^\d+$/.test(parts[3]!)) {
    return { kind: 'history', partition, generation: BigInt(parts[3]!) };
  }
  if (parts.length === 4 && parts[2] === 'replicas' && parts[3]) {
    return { kind: 'replica', partition, nodeId: parts[3] };
  }
  return undefined;
}

/** Node ids appear in keys: keep them to a safe alphabet. */
export const NODE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
