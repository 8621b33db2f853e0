import { randomBytes } from 'node:crypto';
import { startCluster, summarize } from './cluster.ts';

/**
 * PUT throughput on a 3-node cluster: `connections` concurrent writers, each PUTting files of
 * `sizeBytes` back to back for `durationMs`, with each ack mode in turn on the same cluster.
 */
export async function measureThroughput(options: {
  connections: number;
  durationMs: number;
  sizeBytes: number;
  watch: boolean;
}) {
  const cluster = await startCluster({ leaseTtlSeconds: 2, extraArgs: [`--watch=${options.watch}`] });
  try {
    const master = cluster.nodes[0]!;
    const results: Record<string, unknown> = {};
    for (const ack of ['local', 'one'] as const) {
      const latencies: number[] = [];
      let failed = 0;
      const body = randomBytes(options.sizeBytes);
      const end = performance.now() + options.durationMs;
      const started = performance.now();
      await Promise.all(
        Array.from({ length: options.connections }, async (_, worker) => {
          for (let n = 0; performance.now() < end; n++) {
            const t0 = performance.now();
            const response = await fetch(`${master.url}/v1/files/t-${ack}/${worker}/${n}`, {
              method: 'PUT',
              body,
              headers: { 'x-pfs-ack': ack },
            });
            await response.arrayBuffer();
            if (response.status === 201) latencies.push(performance.now() - t0);
            else failed++;
          }
        }),
      );
      const seconds = (performance.now() - started) / 1000;
      results[ack] = {
        putsPerSecond: Math.round(latencies.length / seconds),
        megabytesPerSecond:
          Math.round(((latencies.length * options.sizeBytes) / 2 ** 20 / seconds) * 10) / 10,
        failed,
        latencyMs: summarize(latencies),
      };
    }
    return { scenario: 'throughput', params: options, ...results };
  } finally {
    await cluster.close();
  }
}
