import { randomBytes } from 'node:crypto';
import { watch } from 'node:fs';
import { Agent, request } from 'node:http';
import { sleep } from '@pfs/testkit';
import { type BenchCluster, startCluster, summarize } from './cluster.ts';

/**
 * Write→visible lag: PUT files of `sizeBytes` to the master at `ratePerSecond`, and time until
 * each appears, complete, in each replica's store (inotify via fs.watch; rsync renames a file
 * into place only when it is whole). Both clocks are this process's monotonic clock.
 *
 * One second of writes at the same pace comes first and is not counted (lsyncd's run gets the
 * same): a node's first batches pay for JIT compilation, first connections and the first rsync
 * started cold, which a node that has been running never pays again. The slowest of those is
 * reported as `warmUpMaxLagMs`.
 */
/** One second of writes at the measured pace, at least 20 files. */
export function warmUpFiles(ratePerSecond: number): number {
  return Math.max(20, Math.round(ratePerSecond));
}

export async function measureLag(options: {
  files: number;
  ratePerSecond: number;
  sizeBytes: number;
  leaseTtlSeconds: number;
  replicas?: number;
  watch?: boolean;
}) {
  const cluster: BenchCluster = await startCluster({
    leaseTtlSeconds: options.leaseTtlSeconds,
    size: 1 + (options.replicas ?? 2),
    extraArgs: [`--watch=${options.watch ?? true}`],
  });
  try {
    const [master, ...replicas] = cluster.nodes as [BenchCluster['nodes'][0], ...BenchCluster['nodes']];
    const sentAt = new Map<string, number>();
    const seen = replicas.map(() => new Map<string, number>());
    const watchers = replicas.map((replica, i) =>
      watch(replica.fileStore, (_event, name) => {
        const file = name?.toString();
        if (file === undefined || !sentAt.has(file) || seen[i]!.has(file)) return;
        seen[i]!.set(file, performance.now());
      }),
    );
    const ackMs: number[] = [];
    const interval = 1000 / options.ratePerSecond;
    const writePaced = async (prefix: string, count: number, acks: number[]) => {
      const started = performance.now();
      const puts: Promise<void>[] = [];
      for (let n = 0; n < count; n++) {
        const due = started + n * interval;
        const wait = due - performance.now();
        if (wait > 0) await sleep(wait);
        const name = `${prefix}-${String(n).padStart(6, '0')}.bin`;
        const body = randomBytes(options.sizeBytes);
        const t0 = performance.now();
        sentAt.set(name, t0);
        puts.push(
          put(`${master.url}/v1/files/${name}`, body).then(() => {
            acks.push(performance.now() - t0);
          }),
        );
      }
      await Promise.all(puts);
      const deadline = performance.now() + 30_000;
      while (seen.some((m) => m.size < sentAt.size) && performance.now() < deadline) await sleep(10);
    };
    await writePaced('warm', warmUpFiles(options.ratePerSecond), []);
    const warmUpMaxLagMs = Math.max(
      ...seen.flatMap((m) => [...m].map(([name, at]) => at - sentAt.get(name)!)),
    );
    for (const m of seen) m.clear();
    sentAt.clear();
    // How long the replicas' batches took on average (rsync, verification, fsyncs, log append),
    // the warm-up's left out: its counters are read now and taken off at the end.
    const batchTotals = async () => {
      let seconds = 0;
      let count = 0;
      for (const replica of replicas) {
        const metrics = await (await fetch(`${replica.url}/metrics`)).text();
        seconds += Number(/^pfs_replication_batch_seconds_sum(?:\{[^}]*\})? (\S+)$/m.exec(metrics)?.[1] ?? 0);
        count += Number(/^pfs_replication_batch_seconds_count(?:\{[^}]*\})? (\S+)$/m.exec(metrics)?.[1] ?? 0);
      }
      return { seconds, count };
    };
    const afterWarmUp = await batchTotals();
    await writePaced('lag', options.files, ackMs);
    for (const w of watchers) w.close();
    const atEnd = await batchTotals();
    const batchSeconds = atEnd.seconds - afterWarmUp.seconds;
    const batches = atEnd.count - afterWarmUp.count;
    const lags = seen.flatMap((m) => [...m].map(([name, at]) => at - sentAt.get(name)!));
    const missing = seen.reduce((sum, m) => sum + (options.files - m.size), 0);
    return {
      scenario: 'lag',
      params: options,
      ackMs: summarize(ackMs),
      lagMs: summarize(lags),
      replicaBatches: batches,
      replicaBatchMeanMs: Math.round((batchSeconds / Math.max(batches, 1)) * 10_000) / 10,
      missing,
      warmUpMaxLagMs: Math.round(warmUpMaxLagMs * 10) / 10,
    };
  } finally {
    await cluster.close();
  }
}

const keepAlive = new Agent({ keepAlive: true, maxSockets: 64 });

/** One PUT on a kept-alive connection; node:http costs the load generator far less CPU than fetch. */
function put(url: string, body: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      { method: 'PUT', agent: keepAlive, headers: { 'content-length': body.length } },
      (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () => {
          if (response.statusCode === 201) resolve();
          else reject(new Error(`PUT ${url}: ${response.statusCode} ${Buffer.concat(chunks).toString()}`));
        });
        response.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}
