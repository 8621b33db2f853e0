import { randomBytes } from 'node:crypto';
import { watch } from 'node:fs';
import { sleep } from '@pfs/testkit';
import { startCluster } from './cluster.ts';

/**
 * Burst catch-up: `files` PUTs of `sizeBytes` as fast as `connections` writers can go, then the
 * time from the last acknowledged PUT until every file is visible on every replica.
 */
export async function measureBurst(options: {
  files: number;
  sizeBytes: number;
  connections: number;
  watch: boolean;
}) {
  const cluster = await startCluster({ leaseTtlSeconds: 2, extraArgs: [`--watch=${options.watch}`] });
  try {
    const [master, ...replicas] = cluster.nodes;
    const seen = replicas.map(() => new Set<string>());
    const lastSeenAt = replicas.map(() => 0);
    const watchers = replicas.map((replica, i) =>
      watch(replica.fileStore, (_event, name) => {
        const file = name?.toString();
        if (file === undefined || !file.startsWith('burst-') || seen[i]!.has(file)) return;
        seen[i]!.add(file);
        lastSeenAt[i] = performance.now();
      }),
    );
    const body = randomBytes(options.sizeBytes);
    let next = 0;
    let lastAckAt = 0;
    const started = performance.now();
    await Promise.all(
      Array.from({ length: options.connections }, async () => {
        for (let n = next++; n < options.files; n = next++) {
          const response = await fetch(`${master!.url}/v1/files/burst-${String(n).padStart(6, '0')}`, {
            method: 'PUT',
            body,
          });
          if (response.status !== 201)
            throw new Error(`PUT failed: ${response.status} ${await response.text()}`);
          await response.arrayBuffer();
          lastAckAt = Math.max(lastAckAt, performance.now());
        }
      }),
    );
    const deadline = performance.now() + 60_000;
    while (seen.some((s) => s.size < options.files) && performance.now() < deadline) await sleep(10);
    for (const w of watchers) w.close();
    return {
      scenario: 'burst',
      params: options,
      writeSeconds: Math.round(lastAckAt - started) / 1000,
      putsPerSecond: Math.round(options.files / ((lastAckAt - started) / 1000)),
      catchUpAfterLastWriteMs: Math.round(Math.max(...lastSeenAt) - lastAckAt),
      missing: seen.reduce((sum, s) => sum + options.files - s.size, 0),
    };
  } finally {
    await cluster.close();
  }
}
