import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, NodeProcess, startEtcd, waitFor } from '@pfs/testkit';

const AGENT_DIR = fileURLToPath(new URL('../../node/', import.meta.url));

/** Resident memory now (VmRSS) or the peak since the process started (VmHWM), in MiB. */
async function rssMiB(pid: number, field: 'VmRSS' | 'VmHWM' = 'VmRSS'): Promise<number> {
  // The agent runs as `node <flags> dist/pfs-node.mjs`: its own pid is the process group leader.
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Math.round(Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)?.[1] ?? 0) / 1024);
}

/**
 * Scale: a node whose store holds `files` small files. First start: the files are logged by the
 * promotion's reconcile (one record each). Second start, with the log in place: how long until it
 * is master again (log replay into the generator's index), until its reconcile (which finds
 * nothing new) is done too, and its resident memory after both.
 */
export async function measureScale(options: { files: number; sizeBytes: number }) {
  const base = await mkdtemp(join(tmpdir(), 'pfs-scale-'));
  const etcd = await startEtcd();
  let node: NodeProcess | undefined;
  try {
    const spec = {
      agentDir: AGENT_DIR,
      httpPort: await freePort(),
      rsyncPort: await freePort(),
      dataDir: join(base, 'node'),
      etcd: etcd.endpoint,
      cluster: `scale-${Date.now().toString(36)}`,
      extraArgs: ['--log-level=warn', '--watch=false'],
    };
    const store = join(spec.dataDir, 'filestore');
    const body = Buffer.alloc(options.sizeBytes, 7);
    const t0 = performance.now();
    for (let d = 0; d * 1000 < options.files; d++) {
      const dir = join(store, `d${d}`);
      await mkdir(dir, { recursive: true });
      const count = Math.min(1000, options.files - d * 1000);
      await Promise.all(Array.from({ length: count }, (_, i) => writeFile(join(dir, `f${i}`), body)));
    }
    const writeSeconds = (performance.now() - t0) / 1000;
    const logged = async () => {
      const status = (await node!.status()).partitions[0]!;
      return (BigInt(status.lastTxid) & 0xffffffffn) >= BigInt(options.files) && status.role === 'master'
        ? true
        : undefined;
    };
    const t1 = performance.now();
    node = await NodeProcess.start(spec);
    await waitFor('every file logged', logged, 1_800_000);
    const firstLogSeconds = (performance.now() - t1) / 1000;
    const rssAfterLogging = await rssMiB(node.pid);
    const peakRssFirstLogging = await rssMiB(node.pid, 'VmHWM');
    await node.stop();
    const t2 = performance.now();
    node = await NodeProcess.start(spec);
    const healthySeconds = (performance.now() - t2) / 1000;
    await waitFor(
      'master again',
      async () => ((await node!.status()).partitions[0]?.role === 'master' ? true : undefined),
      1_800_000,
    );
    const restartToMasterSeconds = (performance.now() - t2) / 1000;
    // Master once its log is replayed; its reconcile of the whole store goes on in the background
    // from there, and is part of what a restart costs (time and memory).
    await waitFor(
      'the restart reconcile done',
      async () => {
        const metrics = await (await fetch(`${node!.url}/metrics`)).text();
        return Number(/^pfs_reconciles_completed (\S+)$/m.exec(metrics)?.[1] ?? 0) >= 1 ? true : undefined;
      },
      1_800_000,
    );
    const restartSeconds = (performance.now() - t2) / 1000;
    const rssAfterRestart = await rssMiB(node.pid);
    const peakRssRestart = await rssMiB(node.pid, 'VmHWM');
    return {
      scenario: 'scale',
      params: options,
      writeFilesSeconds: Math.round(writeSeconds * 10) / 10,
      firstStartLogEverythingSeconds: Math.round(firstLogSeconds * 10) / 10,
      rssAfterLoggingMiB: rssAfterLogging,
      peakRssFirstLoggingMiB: peakRssFirstLogging,
      restartHealthySeconds: Math.round(healthySeconds * 10) / 10,
      restartToMasterSeconds: Math.round(restartToMasterSeconds * 10) / 10,
      restartToReconciledSeconds: Math.round(restartSeconds * 10) / 10,
      rssAfterRestartMiB: rssAfterRestart,
      peakRssRestartMiB: peakRssRestart,
    };
  } finally {
    if (node?.running) await node.stop();
    await node?.destroy();
    await etcd.stop();
    await rm(base, { recursive: true, force: true });
  }
}
