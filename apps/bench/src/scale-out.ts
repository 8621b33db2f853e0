import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NodeProcess, startEtcd } from '@pfs/testkit';
import { benchNodeSpec } from './cluster.ts';
import { countFiles, placementSettled } from './placement.ts';

/**
 * Capacity added by adding a node: a cluster of `nodes` nodes with `partitions` partitions on
 * `replicationFactor` nodes each holds `files` files written through the API (ack=all); one more
 * node joins. Measured: the time until every partition is held exactly where the placement puts
 * it (the new node caught up, the nodes it relieved let go and removed their copies), and each
 * node's file count before and after.
 */
export async function measureScaleOut(options: {
  nodes: number;
  partitions: number;
  replicationFactor: number;
  files: number;
  sizeBytes: number;
}) {
  const base = await mkdtemp(join(tmpdir(), 'pfs-scale-out-'));
  const etcd = await startEtcd();
  const nodes: NodeProcess[] = [];
  try {
    const cluster = `scale-out-${Date.now().toString(36)}`;
    const start = async () => {
      const node = await NodeProcess.start(
        await benchNodeSpec({
          base,
          etcd: etcd.endpoint,
          cluster,
          partitions: options.partitions,
          extraArgs: [
            '--log-level=warn',
            '--watch=false',
            `--replication-factor=${options.replicationFactor}`,
          ],
        }),
      );
      nodes.push(node);
      return node;
    };
    for (let i = 0; i < options.nodes; i++) await start();
    await placementSettled(nodes);
    const body = randomBytes(options.sizeBytes);
    const paths = Array.from({ length: options.files }, (_, i) => `d${i % 100}/f${i}`);
    let next = 0;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < paths.length) await put(nodes[next % nodes.length]!, paths[next++]!, body);
      }),
    );
    const before = await fileCounts(nodes);
    const t0 = performance.now();
    const joined = await start();
    const startedSeconds = (performance.now() - t0) / 1000;
    await placementSettled(nodes, { paths, partitions: options.partitions, timeoutMs: 600_000 });
    const seconds = (performance.now() - t0) / 1000;
    const after = await fileCounts(nodes);
    const moved = after[joined.id] ?? 0;
    return {
      scenario: 'scale-out',
      params: options,
      scaleOutSeconds: Math.round(seconds * 100) / 100,
      agentStartSeconds: Math.round(startedSeconds * 100) / 100,
      filesMovedToNewNode: moved,
      movedMegabytesPerSecond: Math.round(((moved * options.sizeBytes) / 2 ** 20 / seconds) * 10) / 10,
      filesPerNodeBefore: Object.values(before),
      filesPerNodeAfter: Object.values(after),
      copiesBefore: Object.values(before).reduce((a, b) => a + b, 0),
      copiesAfter: Object.values(after).reduce((a, b) => a + b, 0),
    };
  } finally {
    await Promise.all(nodes.map((n) => (n.running ? n.stop() : undefined)));
    await Promise.all(nodes.map((n) => n.destroy()));
    await etcd.stop();
    await rm(base, { recursive: true, force: true });
  }
}

/** A PUT through `via`, following the redirect to the partition's master, retried while it has none. */
async function put(via: NodeProcess, path: string, body: Buffer): Promise<void> {
  let url = `${via.url}/v1/files/${path}`;
  for (let attempt = 0; attempt < 200; attempt++) {
    const response = await fetch(url, {
      method: 'PUT',
      body,
      redirect: 'manual',
      headers: { 'x-pfs-ack': 'all' },
    });
    await response.body?.cancel();
    if (response.status === 201) return;
    if (response.status === 307) url = response.headers.get('location')!;
    else await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`PUT ${path} kept failing`);
}

async function fileCounts(nodes: NodeProcess[]): Promise<Record<string, number>> {
  return Object.fromEntries(
    await Promise.all(nodes.map(async (n) => [n.id, await countFiles(n.fileStore)] as const)),
  );
}
