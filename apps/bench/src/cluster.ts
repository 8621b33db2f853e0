import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type EtcdHandle, freePort, NodeProcess, startEtcd, waitFor } from '@pfs/testkit';

const AGENT_DIR = fileURLToPath(new URL('../../node/', import.meta.url));

/** A fresh 3-node cluster on free ports with its own etcd; the first node is master. */
export interface BenchCluster {
  etcd: EtcdHandle;
  nodes: NodeProcess[];
  close(): Promise<void>;
}

export async function startCluster(options: {
  leaseTtlSeconds: number;
  size?: number;
  extraArgs?: string[];
}): Promise<BenchCluster> {
  const base = await mkdtemp(join(tmpdir(), 'pfs-bench-'));
  const etcd = await startEtcd();
  const nodes: NodeProcess[] = [];
  const close = async () => {
    await Promise.all(nodes.map((n) => (n.running ? n.stop() : undefined)));
    await Promise.all(nodes.map((n) => n.destroy()));
    await etcd.stop();
    await rm(base, { recursive: true, force: true });
  };
  try {
    const cluster = `bench-${Date.now().toString(36)}`;
    const ports = (await Promise.all(Array.from({ length: options.size ?? 3 }, () => freePort()))).sort();
    for (const [i, httpPort] of ports.entries()) {
      const node = await NodeProcess.start({
        agentDir: AGENT_DIR,
        httpPort,
        rsyncPort: await freePort(),
        dataDir: join(base, `localhost_${httpPort}`),
        etcd: etcd.endpoint,
        cluster,
        leaseTtlSeconds: options.leaseTtlSeconds,
        extraArgs: ['--log-level=warn', ...(options.extraArgs ?? [])],
      });
      nodes.push(node);
      if (i === 0) {
        await waitFor('first master', async () =>
          (await node.status()).partitions[0]?.role === 'master' ? true : undefined,
        );
      }
    }
    for (const node of nodes.slice(1)) {
      await waitFor(`${node.id} following`, async () =>
        (await node.status()).partitions[0]?.role === 'replica' ? true : undefined,
      );
    }
    return { etcd, nodes, close };
  } catch (error) {
    await close();
    throw error;
  }
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index]!;
}

export function summarize(values: number[]) {
  const sorted = [...values].sort((a, b) => a - b);
  const round = (n: number) => Math.round(n * 10) / 10;
  return {
    count: sorted.length,
    p50: round(percentile(sorted, 50)),
    p95: round(percentile(sorted, 95)),
    p99: round(percentile(sorted, 99)),
    max: round(sorted.at(-1) ?? Number.NaN),
  };
}

/**
 * Seconds that a plain `rsync -a src/ dest` takes: the bulk floor PFS is compared with. With
 * `durable`, a `sync -f` of dest's file system afterwards is included: rsync alone leaves the
 * copy in the page cache, while a replica must make it durable before it counts as caught up.
 */
export async function timeBulkRsync(
  src: string,
  dest: string,
  options: { durable?: boolean } = {},
): Promise<number> {
  const started = performance.now();
  await run('rsync', ['-a', `${src}/`, dest]);
  if (options.durable) await run('sync', ['-f', dest]);
  return (performance.now() - started) / 1000;
}

function run(command: string, args: string[]): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const child = spawn(command, args, { stdio: 'ignore' });
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${command} exited ${code}`))));
  });
}
