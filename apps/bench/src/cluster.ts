import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type EtcdHandle, freePort, NodeProcess, type NodeSpec, startEtcd, waitFor } from '@pfs/testkit';

const AGENT_DIR = fileURLToPath(new URL('../../node/', import.meta.url));

/**
 * A node of `cluster` on free ports, its data dir `<base>/localhost_<httpPort>` (named as its id),
 * from the agent app beside this one.
 */
export async function benchNodeSpec(options: {
  base: string;
  etcd: string;
  cluster: string;
  partitions?: number;
  leaseTtlSeconds?: number;
  extraArgs: string[];
}): Promise<NodeSpec> {
  const httpPort = await freePort();
  return {
    agentDir: AGENT_DIR,
    httpPort,
    rsyncPort: await freePort(),
    dataDir: join(options.base, `localhost_${httpPort}`),
    etcd: options.etcd,
    cluster: options.cluster,
    ...(options.partitions === undefined ? {} : { partitions: options.partitions }),
    ...(options.leaseTtlSeconds === undefined ? {} : { leaseTtlSeconds: options.leaseTtlSeconds }),
    extraArgs: options.extraArgs,
  };
}

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
    const specs = await Promise.all(
      Array.from({ length: options.size ?? 3 }, () =>
        benchNodeSpec({
          base,
          etcd: etcd.endpoint,
          cluster,
          leaseTtlSeconds: options.leaseTtlSeconds,
          extraArgs: ['--log-level=warn', ...(options.extraArgs ?? [])],
        }),
      ),
    );
    // The first node by port becomes master (ids are localhost_<port>).
    specs.sort((a, b) => a.httpPort - b.httpPort);
    for (const [i, spec] of specs.entries()) {
      const node = await NodeProcess.start(spec);
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

export function run(command: string, args: string[]): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const child = spawn(command, args, { stdio: 'ignore' });
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${command} exited ${code}`))));
  });
}
