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
  let failedRounds = 0;
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
      let followedAt: number | undefined;
      let newMaster: string | undefined;
      const deadline = t0 + 30_000;
      // All three looked at in one loop, each stamped when first seen: the other replica may
      // follow the new master before its first write is accepted.
      while ((wroteAt === undefined || followedAt === undefined) && performance.now() < deadline) {
        const statuses = await Promise.all(rest.map((node) => node.status().catch(() => undefined)));
        const master = rest.find((_, i) => statuses[i]?.partitions[0]?.role === 'master');
        if (master !== undefined) {
          newMaster ??= master.id;
          electedAt ??= performance.now();
        }
        const following = rest.find(
          (node, i) =>
            node.id !== newMaster &&
            newMaster !== undefined &&
            statuses[i]?.partitions[0]?.role === 'replica' &&
            statuses[i]?.partitions[0]?.following === newMaster,
        );
        if (following !== undefined) followedAt ??= performance.now();
        for (const node of wroteAt === undefined ? rest : []) {
          const response = await fetch(`${node.url}/v1/files/after-${round}`, {
            method: 'PUT',
            body: 'x',
            redirect: 'manual',
          }).catch(() => undefined);
          if (response?.status === 201) {
            wroteAt = performance.now();
            electedAt ??= wroteAt;
            newMaster ??= node.id;
            break;
          }
        }
        if (wroteAt === undefined || followedAt === undefined) await sleep(5);
      }
      if (electedAt !== undefined) elected.push(electedAt - t0);
      if (wroteAt !== undefined) firstWrite.push(wroteAt - t0);
      if (followedAt !== undefined) followed.push(followedAt - t0);
      // A round that missed a step within 30 s is counted, not left out of the figures.
      if (wroteAt === undefined || followedAt === undefined) failedRounds++;
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
    failedRounds,
  };
}
