import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NodeProcess, sleep, startEtcd, waitFor } from '@pfs/testkit';
import { benchNodeSpec, summarize } from './cluster.ts';
import { countFiles, placementSettled } from './placement.ts';

/**
 * Capacity added by adding a node: a cluster of `nodes` nodes with `partitions` partitions on
 * `replicationFactor` nodes each holds `files` files written through the API (ack=all); one more
 * node joins. Measured: the time until every partition is held exactly where the placement puts
 * it (the new node caught up, the nodes it relieved let go and removed their copies), each
 * node's file count before and after, and how paced ack=all writes fare meanwhile.
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
    // Writes go on while the node joins (ack=all, paced): how long they wait, and whether any
    // times out, with the new node copying and catching up.
    let joining = true;
    const ackAllMs: number[] = [];
    const answers: Record<string, number> = {};
    const writer = (async () => {
      for (let i = 0; joining; i++) {
        const path = `during-join/f${i}`;
        const started = performance.now();
        const status = await put(nodes[i % options.nodes]!, path, body, { once: true });
        answers[status] = (answers[status] ?? 0) + 1;
        if (status === 201) ackAllMs.push(performance.now() - started);
        // Stored either way (a 504 is durable on the master and replicates).
        if (status === 201 || status === 504) paths.push(path);
        await sleep(20);
      }
    })();
    const t0 = performance.now();
    const joined = await start();
    const startedSeconds = (performance.now() - t0) / 1000;
    try {
      // Its HTTP port answers before it has joined: settled only counts once every node places
      // partitions on it.
      await waitFor('the new node in the placement', async () => {
        for (const node of nodes) {
          const status = await node.status();
          if (!status.partitions.some((p) => p.placedOn?.includes(joined.id))) return undefined;
        }
        return true;
      });
      await placementSettled(nodes, { timeoutMs: 600_000 });
    } finally {
      joining = false;
      await writer;
    }
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
      ackAllWritesDuringJoinMs: summarize(ackAllMs),
      ackAllAnswersDuringJoin: answers,
    };
  } finally {
    await Promise.all(nodes.map((n) => (n.running ? n.stop() : undefined)));
    await Promise.all(nodes.map((n) => n.destroy()));
    await etcd.stop();
    await rm(base, { recursive: true, force: true });
  }
}

/**
 * An ack=all PUT through `via`, following the redirect to the partition's master, retried while
 * it has none; its final status. Without `once`, retried until it is acknowledged.
 */
async function put(
  via: NodeProcess,
  path: string,
  body: Buffer,
  options: { once?: boolean } = {},
): Promise<number> {
  let url = `${via.url}/v1/files/${path}`;
  for (let attempt = 0; attempt < 200; attempt++) {
    const response = await fetch(url, {
      method: 'PUT',
      body,
      redirect: 'manual',
      headers: { 'x-pfs-ack': 'all' },
    });
    await response.body?.cancel();
    if (response.status === 201) return 201;
    if (response.status === 307) url = response.headers.get('location')!;
    else if (options.once === true && response.status !== 503) return response.status;
    else await sleep(50);
  }
  throw new Error(`PUT ${path} kept failing`);
}

async function fileCounts(nodes: NodeProcess[]): Promise<Record<string, number>> {
  return Object.fromEntries(
    await Promise.all(nodes.map(async (n) => [n.id, await countFiles(n.fileStore)] as const)),
  );
}
