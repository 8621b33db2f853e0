import { sleep } from '@pfs/testkit';
import { startCluster, summarize } from './cluster.ts';

/**
 * Failover time: stop the master (SIGKILL, or SIGTERM for a planned handover) and time, on the
 * monotonic clock, until (a) another node reports itself master, (b) it accepts a write
 * (a PUT answered 201, retried every 10 ms against the surviving nodes) and (c) the remaining
 * replica reports that it follows the new master.
 */
export async function measureFailover(options: {
  rounds: number;
  leaseTtlSeconds: number;
  signal: 'SIGKILL' | 'SIGTERM';
  extraArgs?: string[];
}) {
  const elected: number[] = [];
  const firstWrite: number[] = [];
  const followed: number[] = [];
  for (let round = 0; round < options.rounds; round++) {
    const cluster = await startCluster({
      leaseTtlSeconds: options.leaseTtlSeconds,
      ...(options.extraArgs === undefined ? {} : { extraArgs: options.extraArgs }),
    });
    try {
      const [master, ...rest] = cluster.nodes;
      // Something to drain: writes right up to the kill.
      for (let i = 0; i < 20; i++)
        await fetch(`${master!.url}/v1/files/pre-${i}`, { method: 'PUT', body: `${i}` });
      // A crash lands anywhere in the lease's keepalive cycle (one keepalive per TTL/3): without
      // this, every round would kill at the same phase of it, a fixed time after the cluster
      // started, and measure one point of the distribution instead of its spread.
      await sleep(Math.random() * ((options.leaseTtlSeconds * 1000) / 3));
      const t0 = performance.now();
      if (options.signal === 'SIGKILL') master!.kill('SIGKILL');
      else void master!.stop();
      let electedAt: number | undefined;
      let wroteAt: number | undefined;
      let newMaster: string | undefined;
      const deadline = t0 + 30_000;
      while (wroteAt === undefined && performance.now() < deadline) {
        for (const node of rest) {
          if (electedAt === undefined) {
            const status = await node.status().catch(() => undefined);
            if (status?.partitions[0]?.role === 'master') electedAt = performance.now();
          }
          const response = await fetch(`${node.url}/v1/files/after-${round}`, {
            method: 'PUT',
            body: 'x',
            redirect: 'manual',
          }).catch(() => undefined);
          if (response?.status === 201) {
            wroteAt = performance.now();
            electedAt ??= wroteAt;
            newMaster = node.id;
            break;
          }
        }
        if (wroteAt === undefined) await sleep(10);
      }
      const other = rest.find((n) => n.id !== newMaster);
      while (newMaster !== undefined && other !== undefined && performance.now() < deadline) {
        const status = await other.status().catch(() => undefined);
        const p = status?.partitions[0];
        if (p?.role === 'replica' && p.following === newMaster) {
          followed.push(performance.now() - t0);
          break;
        }
        await sleep(5);
      }
      if (electedAt !== undefined) elected.push(electedAt - t0);
      if (wroteAt !== undefined) firstWrite.push(wroteAt - t0);
    } finally {
      await cluster.close();
    }
  }
  return {
    scenario: `failover-${options.signal.toLowerCase()}`,
    params: options,
    electedMs: summarize(elected),
    firstAcceptedWriteMs: summarize(firstWrite),
    otherReplicaFollowingMs: summarize(followed),
  };
}
