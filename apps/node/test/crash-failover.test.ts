import { fileURLToPath } from 'node:url';
import { freePort, makeTempDir, NodeProcess, removeTempDir, startEtcd, waitFor } from '@pfs/testkit';
import { afterEach, describe, expect, it } from 'vitest';

const AGENT_DIR = fileURLToPath(new URL('..', import.meta.url));
const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const role = async (node: NodeProcess) => (await node.status()).partitions[0]?.role;

/** A master and two replicas on a minute-long lease: no takeover can come from the lease running out. */
async function clusterOnLongLease(extraArgs: string[] = []) {
  const etcd = await startEtcd();
  cleanups.push(() => etcd.stop());
  const base = await makeTempDir('pfs-crash-');
  cleanups.push(() => removeTempDir(base));
  const cluster = `crash-${Date.now().toString(36)}`;
  const start = async (name: string) => {
    const node = await NodeProcess.start({
      agentDir: AGENT_DIR,
      httpPort: await freePort(),
      rsyncPort: await freePort(),
      dataDir: `${base}/${name}`,
      etcd: etcd.endpoint,
      cluster,
      leaseTtlSeconds: 60,
      extraArgs: ['--log-level=info', '--ack-timeout-ms=60000', ...extraArgs],
    });
    cleanups.push(() => node.destroy());
    return node;
  };
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
