import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { partitionOf } from '@pfs/filestore';
import {
  freePort,
  killRsyncDaemonOf,
  makeTempDir,
  NodeProcess,
  removeTempDir,
  startEtcd,
  waitFor,
} from '@pfs/testkit';
import { afterEach, describe, expect, it } from 'vitest';

const AGENT_DIR = fileURLToPath(new URL('..', import.meta.url));
const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const role = async (node: NodeProcess) => (await node.status()).partitions[0]?.role;

/** A new etcd and cluster; `start` runs a node of it as its own process, removed after the test. */
async function processCluster(name: string, spec: { leaseTtlSeconds: number; partitions?: number }) {
  const etcd = await startEtcd();
  cleanups.push(() => etcd.stop());
  const base = await makeTempDir(`pfs-${name}-`);
  cleanups.push(() => removeTempDir(base));
  const cluster = `${name}-${Date.now().toString(36)}`;
  return async (node: string, extraArgs: string[] = []) => {
    const started = await NodeProcess.start({
      agentDir: AGENT_DIR,
      httpPort: await freePort(),
      rsyncPort: await freePort(),
      dataDir: `${base}/${node}`,
      etcd: etcd.endpoint,
      cluster,
      ...spec,
      extraArgs: ['--log-level=info', '--ack-timeout-ms=60000', ...extraArgs],
    });
    cleanups.push(() => started.destroy());
    return started;
  };
}

/** A master and two replicas on a minute-long lease: no takeover can come from the lease running out. */
async function clusterOnLongLease(extraArgs: string[] = []) {
  const startNode = await processCluster('crash', { leaseTtlSeconds: 60 });
  const start = (name: string) => startNode(name, extraArgs);
  const master = await start('a');
  await waitFor('first master', async () => ((await role(master)) === 'master' ? true : undefined));
  const replicas = [await start('b'), await start('c')];
  for (const replica of replicas)
    await waitFor('replica', async () => ((await role(replica)) === 'replica' ? true : undefined));
  return { master, replicas };
}

describe('a master whose process dies', () => {
  it('is replaced long before its lease would run out with --revoke-refusing-master: a replica finds its port refusing and revokes the lease', async () => {
    const { master, replicas } = await clusterOnLongLease(['--revoke-refusing-master=true']);
    const put = await fetch(`${master.url}/v1/files/kept.txt`, {
      method: 'PUT',
      body: 'acknowledged before the crash',
      headers: { 'x-pfs-ack': 'all' },
    });
    expect(put.status).toBe(201);
    master.kill('SIGKILL');
    const successor = await waitFor(
      'a new master, well within the 60 s lease',
      async () => {
        for (const replica of replicas) if ((await role(replica)) === 'master') return replica;
        return undefined;
      },
      20_000,
    );
    const other = replicas.find((r) => r !== successor)!;
    await waitFor('the other replica following the new master', async () =>
      (await other.status()).partitions[0]?.following === successor.id ? true : undefined,
    );
    const read = await fetch(`${successor.url}/v1/files/kept.txt`);
    expect(await read.text()).toBe('acknowledged before the crash');
    expect((await fetch(`${successor.url}/v1/files/after.txt`, { method: 'PUT', body: 'x' })).status).toBe(
      201,
    );
    const logs = await Promise.all(replicas.map((r) => r.logTail(200)));
    expect(logs.some((log) => log.includes('revoked its etcd lease'))).toBe(true);
  }, 60_000);

  it('keeps its lease until it runs out by default', async () => {
    const { master, replicas } = await clusterOnLongLease();
    master.kill('SIGKILL');
    // Long enough for the replicas to have seen the refusal many times over (they retry within 2 s).
    await new Promise((resolve) => setTimeout(resolve, 3000));
    for (const replica of replicas) {
      expect(await role(replica)).toBe('replica');
      expect(await replica.logTail(200)).not.toContain('revoked its etcd lease');
    }
  }, 60_000);
});

describe('a node killed in a cluster with a replication factor below its size', () => {
  it('loses no acknowledged file: its partitions get masters among the nodes that held them, and a second copy elsewhere', async () => {
    const start = await processCluster('crash-placed', { leaseTtlSeconds: 2, partitions: 4 });
    const nodes: NodeProcess[] = [];
    for (const name of ['a', 'b', 'c', 'd']) {
      nodes.push(
        await start(name, [
          '--replication-factor=2',
          // The killed node's partitions are placed elsewhere at once.
          '--placement-grace-ms=0',
        ]),
      );
    }
    /** Every partition held exactly where it is placed among `live`, with a serving master there. */
    const settled = (live: NodeProcess[]) =>
      waitFor(
        'the placement to settle',
        async () => {
          for (const node of live) {
            for (const p of (await node.status()).partitions) {
              const placed = p.placedOn ?? [];
              if (placed.length !== 2 || placed.some((id) => !live.some((n) => n.id === id)))
                return undefined;
              if (p.holds !== placed.includes(node.id) || p.master === null || !placed.includes(p.master))
                return undefined;
              if (!p.masterServing) return undefined;
            }
          }
          return true;
        },
        60_000,
      );
    await settled(nodes);
    const files = Array.from({ length: 20 }, (_, i) => `photos/${i}.jpg`);
    for (const [i, path] of files.entries()) {
      // Through any node, following the redirect to the master, retried as a client does on a
      // 503 with retry-after (a partition between masters).
      const status = await waitFor(`PUT ${path}`, async () => {
        let response = await fetch(`${nodes[i % 4]!.url}/v1/files/${path}`, {
          method: 'PUT',
          body: `photo ${i}`,
          redirect: 'manual',
          headers: { 'x-pfs-ack': 'all' },
        });
        if (response.status === 307) {
          await response.body?.cancel();
          response = await fetch(response.headers.get('location')!, {
            method: 'PUT',
            body: `photo ${i}`,
            headers: { 'x-pfs-ack': 'all' },
          });
        }
        await response.body?.cancel();
        return response.status === 503 && response.headers.has('retry-after') ? undefined : response.status;
      });
      expect(status).toBe(201);
    }
    // Kill a node that masters a partition.
    const victim = await waitFor('a master to kill', async () => {
      for (const node of nodes) {
        if ((await node.status()).partitions.some((p) => p.role === 'master')) return node;
      }
      return undefined;
    });
    victim.kill('SIGKILL');
    const live = nodes.filter((n) => n !== victim);
    await settled(live);
    for (const node of live) {
      for (const [i, path] of files.entries()) {
        const read = await fetch(`${node.url}/v1/files/${path}`);
        const text = await read.text();
        expect(read.status, `${node.id}: ${text}`).toBe(200);
        expect(text).toBe(`photo ${i}`);
      }
    }
    // Each file is on the two live nodes placed on its partition again.
    const statuses = await Promise.all(live.map((n) => n.status()));
    await waitFor('two copies of every file', async () => {
      for (const path of files) {
        const placed = statuses[0]!.partitions[partitionOf(path, 4)]!.placedOn ?? [];
        const copies = live.filter((n) => placed.includes(n.id) && existsSync(`${n.fileStore}/${path}`));
        if (copies.length !== 2) return undefined;
      }
      return true;
    });
  }, 120_000);
});

describe('signals to a node', () => {
  /**
   * A node agent run as `pnpm --filter node start` runs it (its own process, SIGINT/SIGTERM
   * handled by main.ts), whose `rsync --version` at start takes 5 s: it is starting for that
   * long, its data dir locked and its logs open, and a signal can be sent in the middle.
   */
  async function slowStartingNode() {
    const etcd = await startEtcd();
    cleanups.push(() => etcd.stop());
    const base = await makeTempDir('pfs-signal-');
    cleanups.push(() => removeTempDir(base));
    const marker = join(base, 'starting');
    const slowRsync = join(base, 'slow-rsync');
    await writeFile(
      slowRsync,
      `#!/bin/sh\nif [ "$1" = --version ]; then touch ${JSON.stringify(marker)}; sleep 5; fi\nexec rsync "$@"\n`,
      { mode: 0o755 },
    );
    const dataDir = join(base, 'n');
    const output: string[] = [];
    const agent = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        'src/main.ts',
        `--http-port=${await freePort()}`,
        `--rsync-port=${await freePort()}`,
        `--data-dir=${dataDir}`,
        `--etcd=${etcd.endpoint}`,
        '--cluster=signals',
        `--rsync-bin=${slowRsync}`,
      ],
      { cwd: AGENT_DIR, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const exited = new Promise<number | null>((resolve) => agent.once('exit', (code) => resolve(code)));
    cleanups.push(async () => {
      agent.kill('SIGKILL');
      await exited;
      await killRsyncDaemonOf(dataDir);
    });
    for (const stream of [agent.stdout, agent.stderr])
      stream.on('data', (chunk: Buffer) => output.push(chunk.toString()));
    await waitFor('the start under way', async () => (existsSync(marker) ? true : undefined));
    return { agent, exited, output: () => output.join(''), conf: `--config=${dataDir}/run/rsyncd.conf` };
  }

  it('while it starts: stops once the start is over, undoing it, its rsync daemon too', async () => {
    const { agent, exited, output, conf } = await slowStartingNode();
    agent.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(output()).toContain('SIGTERM while starting: stopping once the start is over');
    // It came up (started its daemon) before it stopped, and took the daemon down with it.
    expect(output()).toMatch(/node \S+ up at http/);
    expect(daemonsWith(conf)).toEqual([]);
  }, 60_000);

  it('takes a signal repeated at once for one (pnpm forwards the one the terminal sent), and a later one as an order to exit now', async () => {
    const { agent, exited, output } = await slowStartingNode();
    agent.kill('SIGINT');
    await waitFor('the first SIGINT handled', async () =>
      output().includes('SIGINT while starting') ? true : undefined,
    );
    agent.kill('SIGINT');
    await new Promise((resolve) => setTimeout(resolve, 1500));
    expect(output()).not.toContain('exiting now');
    agent.kill('SIGINT');
    expect(await exited).toBe(130);
    expect(output()).toContain('pfs-node: second SIGINT: exiting now');
  }, 60_000);
});

/** The rsync daemons whose command line holds `argument`. */
function daemonsWith(argument: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').includes(argument))
        pids.push(Number(entry));
    } catch {}
  }
  return pids;
}
