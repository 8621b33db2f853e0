import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, NodeProcess, startEtcd, waitFor } from '@pfs/testkit';
import { run, timeBulkRsync } from './cluster.ts';

const AGENT_DIR = fileURLToPath(new URL('../../node/', import.meta.url));

/**
 * Bootstrap of a new replica: a master holding `files` files of `sizeBytes` (dropped into its
 * store before it starts, logged by its reconcile), then a new node joins; the time until its
 * log has caught up, next to `rsync -a` of the same tree into an empty directory.
 */
export async function measureBootstrap(options: { files: number; sizeBytes: number }) {
  const base = await mkdtemp(join(tmpdir(), 'pfs-bootstrap-'));
  const etcd = await startEtcd();
  const nodes: NodeProcess[] = [];
  try {
    const cluster = `bootstrap-${Date.now().toString(36)}`;
    const spec = async (name: string) => ({
      agentDir: AGENT_DIR,
      httpPort: await freePort(),
      rsyncPort: await freePort(),
      dataDir: join(base, name),
      etcd: etcd.endpoint,
      cluster,
      extraArgs: ['--log-level=warn', '--watch=false'],
    });
    const masterSpec = await spec('master');
    const store = join(masterSpec.dataDir, 'filestore');
    const body = randomBytes(options.sizeBytes);
    for (let i = 0; i < options.files; i++) {
      const dir = join(store, `d${Math.floor(i / 1000)}`);
      if (i % 1000 === 0) await mkdir(dir, { recursive: true });
      await writeFile(join(dir, `f${i}`), body);
    }
    const master = await NodeProcess.start(masterSpec);
    nodes.push(master);
    const logged = await waitFor(
      'the master to log every file',
      async () => {
        const status = (await master.status()).partitions[0]!;
        return BigInt(status.lastTxid) & 0xffffffffn
          ? (BigInt(status.lastTxid) & 0xffffffffn) >= BigInt(options.files)
            ? status.lastTxid
            : undefined
          : undefined;
      },
      300_000,
    );
    const t0 = performance.now();
    const replicaSpec = await spec('replica');
    replicaSpec.extraArgs = ['--log-level=info', '--watch=false'];
    const replica = await NodeProcess.start(replicaSpec);
    nodes.push(replica);
    const startedSeconds = (performance.now() - t0) / 1000;
    await waitFor(
      'the new replica to catch up',
      async () =>
        BigInt((await replica.status()).partitions[0]!.lastTxid) >= BigInt(logged) ? true : undefined,
      600_000,
    );
    const bootstrapSeconds = (performance.now() - t0) / 1000;
    // The agent logs how long its bulk copy (with hashing and one syncfs) took.
    const replicaLog = await readFile(join(replicaSpec.dataDir, 'node.log'), 'utf8');
    const fromLog = (field: string) =>
      Number(new RegExp(`"${field}":(\\d+)`).exec(replicaLog)?.[1] ?? Number.NaN);
    const copyMs = fromLog('bootstrapMs');
    // Both floors read a source in the page cache (warmed by a first copy), and each starts with
    // no dirty pages of an earlier copy: the durable one's sync would otherwise write back the
    // plain copy's too.
    await timeBulkRsync(store, join(base, 'warm-up'), { durable: true });
    const rsyncSeconds = await timeBulkRsync(store, join(base, 'plain-copy'));
    await run('sync', []);
    const durableRsyncSeconds = await timeBulkRsync(store, join(base, 'durable-copy'), { durable: true });
    return {
      scenario: 'bootstrap',
      params: options,
      bootstrapSeconds: Math.round(bootstrapSeconds * 100) / 100,
      agentStartSeconds: Math.round(startedSeconds * 100) / 100,
      bulkCopySeconds: Math.round(copyMs / 10) / 100,
      // How many rsyncs shared the copy.
      bulkCopies: fromLog('copies'),
      // Of the bulk copy: hashing still running after rsync ended, and the one syncfs.
      hashTailSeconds: Math.round(fromLog('hashTailMs') / 10) / 100,
      syncfsSeconds: Math.round(fromLog('syncMs') / 10) / 100,
      replaySeconds: Math.round((bootstrapSeconds - startedSeconds - copyMs / 1000) * 100) / 100,
      bulkRsyncSeconds: Math.round(rsyncSeconds * 100) / 100,
      bulkRsyncThenSyncSeconds: Math.round(durableRsyncSeconds * 100) / 100,
      ratioOfBulkRsync: Math.round((rsyncSeconds / bootstrapSeconds) * 100) / 100,
      // The same without the agent's own start (process, etcd session, election).
      ratioOfBulkRsyncAfterStart:
        Math.round((rsyncSeconds / (bootstrapSeconds - startedSeconds)) * 100) / 100,
      ratioOfDurableRsyncAfterStart:
        Math.round((durableRsyncSeconds / (bootstrapSeconds - startedSeconds)) * 100) / 100,
    };
  } finally {
    await Promise.all(nodes.map((n) => (n.running ? n.stop() : undefined)));
    await Promise.all(nodes.map((n) => n.destroy()));
    await etcd.stop();
    await rm(base, { recursive: true, force: true });
  }
}
