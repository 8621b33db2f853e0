import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sleep } from '@pfs/testkit';
import { startCluster, summarize } from './cluster.ts';
import { bulkRsyncSeconds } from './floors.ts';
import { measureBareServer, type PutLoadResult, putLoad } from './load.ts';

/**
 * PUT throughput, in one run: first the floors alone on the machine (the bare temp-write +
 * fdatasync + rename server under the same load generator, the same with a directory fsync that
 * makes the rename durable, and bulk `rsync -a` of as many files as PFS took), then one PFS node
 * alone (what the replicas' share of the machine costs the master), then a 3-node cluster with
 * each ack mode in turn. While PFS is loaded the master's view of its replicas' lag is sampled
 * every 100 ms (do they keep up?), and after the load the time until both replicas have applied
 * everything is measured.
 */
export async function measureThroughput(options: {
  connections: number;
  durationMs: number;
  sizeBytes: number;
  watch: boolean;
}) {
  const base = await mkdtemp(join(tmpdir(), 'pfs-throughput-'));
  const body = randomBytes(options.sizeBytes);
  try {
    const bare = await measureBareServer(join(base, 'bare'), {
      connections: options.connections,
      durationMs: options.durationMs,
      body,
    });
    const bareDurable = await measureBareServer(
      join(base, 'bare-durable'),
      { connections: options.connections, durationMs: options.durationMs, body },
      { durable: true },
    );
    const ratios = (load: PutLoadResult) => ({
      ratioOfBare: Math.round((load.putsPerSecond / bare.putsPerSecond) * 100) / 100,
      ratioOfDurableBare: Math.round((load.putsPerSecond / bareDurable.putsPerSecond) * 100) / 100,
    });
    const results: Record<string, unknown> = {};
    const single = await startCluster({
      leaseTtlSeconds: 2,
      size: 1,
      extraArgs: [`--watch=${options.watch}`],
    });
    try {
      const load = await putLoad({
        url: single.nodes[0]!.url,
        pathOf: (n) => `/v1/files/t-single/${n % 64}/${n}`,
        connections: options.connections,
        durationMs: options.durationMs,
        body,
        headers: { 'x-pfs-ack': 'local' },
        processes: { node: single.nodes[0]!.pid, loadGenerator: process.pid },
      });
      results.singleNode = { ...load, ...ratios(load) };
    } finally {
      await single.close();
    }
    const cluster = await startCluster({ leaseTtlSeconds: 2, extraArgs: [`--watch=${options.watch}`] });
    try {
      const master = cluster.nodes[0]!;
      for (const ack of ['local', 'one'] as const) {
        const lagSamples: number[] = [];
        // Samples where a replica had no lag figure (so far behind that its oldest unacknowledged
        // record is past what the master keeps, or not counted as live): not kept up.
        let lagUnknown = 0;
        let loading = true;
        const sampler = (async () => {
          while (loading) {
            const status = await master.status().catch(() => undefined);
            const lags = status?.partitions[0]?.replicaLagMs ?? {};
            for (const lag of Object.values(lags)) {
              if (typeof lag === 'number') lagSamples.push(lag);
              else lagUnknown++;
            }
            lagUnknown += Math.max(0, cluster.nodes.length - 1 - Object.keys(lags).length);
            await sleep(100);
          }
        })();
        const load = await putLoad({
          url: master.url,
          pathOf: (n) => `/v1/files/t-${ack}/${n % 64}/${n}`,
          connections: options.connections,
          durationMs: options.durationMs,
          body,
          headers: { 'x-pfs-ack': ack },
          processes: {
            master: master.pid,
            ...Object.fromEntries(cluster.nodes.slice(1).map((node, i) => [`replica${i + 1}`, node.pid])),
            loadGenerator: process.pid,
          },
        });
        // Taken as the load ends, before the sampler's last round.
        const loadEnded = performance.now();
        loading = false;
        await sampler;
        const tail = (await master.status()).partitions[0]!.lastTxid;
        for (const replica of cluster.nodes.slice(1)) {
          while (BigInt((await replica.status()).partitions[0]!.lastTxid) < BigInt(tail)) await sleep(5);
        }
        const lag = summarize(lagSamples);
        results[ack] = {
          ...load,
          ...ratios(load),
          replicaLagWhileLoadedMs: lag,
          replicaLagUnknownSamples: lagUnknown,
          // The condition for counting the rate at all: both replicas kept up, lag p99 ≤ 1 s.
          replicasKeptUp: lagUnknown === 0 && lagSamples.length > 0 && lag.p99 <= 1000,
          replicasCaughtUpAfterLoadMs: Math.round(performance.now() - loadEnded),
        };
      }
    } finally {
      await cluster.close();
    }
    const rsyncFiles = Math.min(20_000, Math.max(1000, (results.local as PutLoadResult).latencyMs.count));
    const rsyncSeconds = await bulkRsyncSeconds(base, rsyncFiles, body);
    const rsyncFilesPerSecond = rsyncFiles / rsyncSeconds;
    for (const ack of ['local', 'one'] as const) {
      const load = results[ack] as PutLoadResult & Record<string, unknown>;
      load.ratioOfBulkRsync = Math.round((load.putsPerSecond / rsyncFilesPerSecond) * 100) / 100;
    }
    return {
      scenario: 'throughput',
      params: options,
      bare,
      bareDurable,
      bulkRsync: {
        files: rsyncFiles,
        filesPerSecond: Math.round(rsyncFiles / rsyncSeconds),
        megabytesPerSecond: Math.round(((rsyncFiles * options.sizeBytes) / 2 ** 20 / rsyncSeconds) * 10) / 10,
      },
      ...results,
    };
  } finally {
    await rm(base, { recursive: true, force: true });
  }
}
