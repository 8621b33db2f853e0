import { execFileSync } from 'node:child_process';
import { Coordinator, type CoordinatorError, keys, type MasterInfo } from '@pfs/coordinator-etcd';
import { type EtcdHandle, freePort, startEtcd, stopAll } from '@pfs/testkit';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';

let etcd: EtcdHandle;
let cluster = 0;
const open: Coordinator[] = [];

beforeAll(async () => {
  etcd = await startEtcd();
});
afterEach(async () => {
  await Promise.all(open.splice(0).map((c) => c.close()));
});
afterAll(async () => {
  await stopAll();
});

async function connect(
  id: string,
  name = `c${cluster}`,
  ttlSeconds = 2,
  endpoint = etcd.endpoint,
): Promise<Coordinator> {
  const coordinator = await Coordinator.connect({
    endpoints: [endpoint],
    cluster: name,
    ttlSeconds,
    node: {
      id,
      host: '127.0.0.1',
      httpPort: 1,
      rsyncPort: 2,
      pid: process.pid,
      startedAt: new Date().toISOString(),
    },
  });
  open.push(coordinator);
  return coordinator;
}

function etcdctl(...args: string[]): string {
  return etcdctlAt(etcd.endpoint, ...args);
}

function etcdctlAt(endpoint: string, ...args: string[]): string {
  return execFileSync('etcdctl', [`--endpoints=${endpoint}`, ...args], {
    env: { ...process.env, ETCDCTL_API: '3' },
    encoding: 'utf8',
  });
}

async function until(check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const start = Date.now();
  while (!check()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const info = (nodeId: string): MasterInfo => ({
  nodeId,
  incarnation: `${nodeId}:1`,
  state: 'serving',
  generation: '1',
});

describe('Coordinator against a real etcd', () => {
  it('registers nodes on their leases and sees them leave', async () => {
    cluster++;
    const a = await connect('node-a');
    const b = await connect('node-b');
    await until(() => a.view.nodes.has('node-b'), 'a sees b');
    expect(a.sessionValid()).toBe(true);
    await b.close();
    await until(() => !a.view.nodes.has('node-b'), 'b gone from the view');
  });

  it("refuses a node id another address holds, and takes over its own previous process's record", async () => {
    cluster++;
    const a = await connect('node-a');
    const before = etcdctl('get', keys.node(`c${cluster}`, 'node-a'), '--print-value-only');
    const impostor = Coordinator.connect({
      endpoints: [etcd.endpoint],
      cluster: `c${cluster}`,
      ttlSeconds: 2,
      node: { id: 'node-a', host: '127.0.0.2', httpPort: 7, rsyncPort: 8, pid: 1, startedAt: 'now' },
    });
    await expect(impostor).rejects.toMatchObject({
      code: 'NODE_ID_TAKEN',
      message: `node id "node-a" is registered in cluster "c${cluster}" by 127.0.0.1:1 (pid ${process.pid}, started ${JSON.parse(before).startedAt}): give this node another --node-id; or, if that was this node's previous process at another address, start it again once that record's lease has ended (at most 2 s after it died)`,
    });
    expect(etcdctl('get', keys.node(`c${cluster}`, 'node-a'), '--print-value-only')).toBe(before);
    expect(a.sessionValid()).toBe(true);
    // The same node started again (same address) while its old lease lives: its record now.
    await connect('node-a');
    expect(etcdctl('get', keys.node(`c${cluster}`, 'node-a'), '--print-value-only')).not.toBe(before);
  });

  it('lets exactly one of three candidates become master, and another after it leaves', async () => {
    cluster++;
    const candidates = await Promise.all(['n1', 'n2', 'n3'].map((id) => connect(id)));
    const tokens = await Promise.all(candidates.map((c) => c.claimMaster(0, info(c.nodeId))));
    const winners = tokens.flatMap((t, i) => (t === undefined ? [] : [i]));
    expect(winners).toHaveLength(1);
    const winner = candidates[winners[0]!]!;
    const rest = candidates.filter((c) => c !== winner);
    await until(
      () => rest.every((c) => c.view.partitions.get(0)?.master?.nodeId === winner.nodeId),
      'view of master',
    );
    await winner.close();
    await until(
      () => rest.every((c) => c.view.partitions.get(0)?.master === undefined),
      'master key released',
    );
    // Each view knows when the key went, after it was written.
    for (const c of rest)
      expect(c.view.partitions.get(0)!.masterLeftAt!).toBeGreaterThan(tokens[winners[0]!]!);
    const second = await Promise.all(rest.map((c) => c.claimMaster(0, info(c.nodeId))));
    expect(second.filter((t) => t !== undefined)).toHaveLength(1);
    expect(second.find((t) => t !== undefined)!).toBeGreaterThan(tokens[winners[0]!]!);
  });

  it('refuses guarded writes with a stale token', async () => {
    cluster++;
    const a = await connect('a');
    const token = (await a.claimMaster(1, info('a')))!;
    await a.updateMaster(1, token, { ...info('a'), state: 'draining' });
    await a.resignMaster(1, token);
    const again = (await a.claimMaster(1, info('a')))!;
    await expect(a.updateMaster(1, token, info('a'))).rejects.toMatchObject({ code: 'NOT_MASTER' });
    await expect(a.bumpGeneration({ partition: 1, lastTxid: 0n, token })).rejects.toMatchObject({
      code: 'NOT_MASTER',
    });
    expect(await a.bumpGeneration({ partition: 1, lastTxid: 0n, token: again })).toBe(1n);
  });

  it('counts its session lost once the wall clock passes its deadline, though the monotonic one has not (a suspended machine)', async () => {
    const a = await connect('a', `c${++cluster}`);
    expect(a.sessionValid()).toBe(true);
    // Resumed after 10 s suspended: the monotonic clock did not move, etcd's lease ended.
    const now = Date.now;
    const suspended = vi.spyOn(Date, 'now').mockImplementation(() => now() + 10_000);
    try {
      expect(a.sessionValid()).toBe(false);
      expect(a.sessionRemainingMs()).toBe(0);
    } finally {
      suspended.mockRestore();
    }
  });

  it('keeps the master record on the lease it was claimed on when it rewrites it', async () => {
    const name = `c${++cluster}`;
    const a = await connect('a', name);
    const token = (await a.claimMaster(0, info('a')))!;
    // Read from the text: a lease id is past what a JSON number holds exactly.
    const leaseOf = () => /"lease":(\d+)/.exec(etcdctl('get', keys.master(name, 0), '-w', 'json'))![1]!;
    const claimedOn = leaseOf();
    // A newer session's lease, as after a session lost and opened again while the claim's lease
    // could not be revoked.
    const newer = /lease ([0-9a-f]+) granted/.exec(etcdctl('lease', 'grant', '60'))![1]!;
    (a as unknown as { leaseId: string }).leaseId = BigInt(`0x${newer}`).toString();
    await a.updateMaster(0, token, { ...info('a'), state: 'serving', generation: '1' });
    expect(leaseOf()).toBe(claimedOn);
    etcdctl('lease', 'revoke', newer);
  });

  it('reads everything again when its watch stream is lost, rather than resume where etcd3 would', async () => {
    const name = `c${++cluster}`;
    const a = await connect('a', name);
    const watcher = (
      a as unknown as { watcher: { cancel(): Promise<void>; emit(event: string, error: Error): void } }
    ).watcher;
    // What etcd sends from here on never reaches this watcher, as when its stream drops before
    // etcd's catch-up has sent the events before the revision etcd3 resumes from.
    await watcher.cancel();
    etcdctl('put', keys.history(name, 0, 4n), '17179869193');
    await new Promise((r) => setTimeout(r, 300));
    expect(a.view.partitions.get(0)?.history.get(4n)).toBeUndefined();
    watcher.emit('disconnected', new Error('14 UNAVAILABLE: stream reset'));
    await until(
      () => a.view.partitions.get(0)?.history.get(4n) === 17179869193n,
      'the history key in the view',
    );
    // And it keeps watching.
    etcdctl('put', keys.history(name, 0, 5n), '21474836490');
    await until(() => a.view.partitions.get(0)?.history.get(5n) === 21474836490n, 'a later key in the view');
  });

  it('lets exactly one of two racing candidates bump the generation, and records history', async () => {
    cluster++;
    const a = await connect('a');
    const b = await connect('b');
    const results = await Promise.allSettled([
      a.bumpGeneration({ partition: 0, expected: 0n, lastTxid: 0n }),
      b.bumpGeneration({ partition: 0, expected: 0n, lastTxid: 0n }),
    ]);
    const won = results.filter((r) => r.status === 'fulfilled');
    const lost = results.filter((r) => r.status === 'rejected');
    expect(won).toHaveLength(1);
    expect((won[0] as PromiseFulfilledResult<bigint>).value).toBe(1n);
    expect(((lost[0] as PromiseRejectedResult).reason as CoordinatorError).code).toBe('GENERATION_CONFLICT');
    const lastOfGen1 = (1n << 32n) | 17n;
    expect(await a.bumpGeneration({ partition: 0, expected: 1n, lastTxid: lastOfGen1 })).toBe(2n);
    await until(() => b.view.partitions.get(0)?.history.get(1n) === lastOfGen1, 'history of generation 1');
    expect(b.view.partitions.get(0)?.generation).toBe(2n);
  });

  it("bumps past a log's own generation when told, ending that generation too where the log ends", async () => {
    cluster++;
    const a = await connect('a');
    // An etcd that lost its keys (generation 0) and a log at generation 3.
    const lastOfGen3 = (3n << 32n) | 10n;
    expect(await a.bumpGeneration({ partition: 0, expected: 0n, lastTxid: lastOfGen3, atLeast: 4n })).toBe(
      4n,
    );
    await until(() => a.view.partitions.get(0)?.history.get(3n) === lastOfGen3, 'history of generation 3');
    // From etcd's generation 4 to past a log at 6: the end of 4 and of 6 are both recorded.
    const lastOfGen6 = (6n << 32n) | 2n;
    expect(await a.bumpGeneration({ partition: 0, expected: 4n, lastTxid: lastOfGen6, atLeast: 7n })).toBe(
      7n,
    );
    await until(() => a.view.partitions.get(0)?.history.get(6n) === lastOfGen6, 'history of generation 6');
    expect(a.view.partitions.get(0)?.history.get(4n)).toBe(lastOfGen6);
    // Below etcd's next generation, atLeast changes nothing.
    expect(await a.bumpGeneration({ partition: 0, expected: 7n, lastTxid: lastOfGen6, atLeast: 1n })).toBe(
      8n,
    );
  });

  it('refuses to bump a generation key that holds no decimal, naming the key, and changes nothing', async () => {
    const name = `c${++cluster}`;
    const a = await connect('a');
    const key = keys.generation(name, 0);
    etcdctl('put', key, 'x7');
    await expect(a.bumpGeneration({ partition: 0, lastTxid: 0n })).rejects.toMatchObject({
      code: 'BAD_VALUE',
      message: expect.stringContaining(key),
    });
    expect(etcdctl('get', key, '--print-value-only').trim()).toBe('x7');
  });

  it("revokes a master's lease for another node only while that mastership is current, never its own", async () => {
    cluster++;
    const a = await connect('a');
    const b = await connect('b');
    const token = (await a.claimMaster(0, info('a')))!;
    await until(() => b.view.partitions.get(0)?.master?.token === token, 'b sees the master');
    const lost: string[] = [];
    a.on('session-lost', (reason: string) => lost.push(reason));
    expect(await b.revokeMasterLease(0, token + 1000n)).toBe(false);
    expect(await a.revokeMasterLease(0, token)).toBe(false);
    expect(a.sessionValid()).toBe(true);
    expect(await b.revokeMasterLease(0, token)).toBe(true);
    await until(() => lost.length > 0, 'the master fenced');
    await until(() => b.view.partitions.get(0)?.master === undefined, 'master key gone with the lease');
    // Already gone: a second replica doing the same finds nothing to revoke.
    expect(await b.revokeMasterLease(0, token)).toBe(false);
    expect(b.sessionValid()).toBe(true);
  });

  it('fences on an etcd-side lease revoke, then opens a new session', async () => {
    cluster++;
    const a = await connect('a');
    const observer = await connect('observer');
    const token = await a.claimMaster(0, info('a'));
    expect(token).toBeDefined();
    const lost: string[] = [];
    a.on('session-lost', (reason: string) => lost.push(reason));
    let renewed = false;
    a.on('session', () => {
      renewed = true;
    });
    // The lease id is an int64: read it from the raw JSON, where JSON.parse would round it.
    const raw = etcdctl('get', keys.node(`c${cluster}`, 'a'), '-w', 'json');
    const leaseId = BigInt(/"lease":(\d+)/.exec(raw)![1]!);
    etcdctl('lease', 'revoke', leaseId.toString(16));
    await until(() => lost.length > 0, 'session-lost');
    expect(a.sessionValid()).toBe(false);
    await until(
      () => observer.view.partitions.get(0)?.master === undefined,
      'master key gone with the lease',
    );
    await until(() => renewed && observer.view.nodes.has('a'), 'new session registered');
    expect(a.sessionValid()).toBe(true);
  });

  it('fences by its own deadline when etcd stops answering, before etcd3 would report the loss', async () => {
    const own = await startEtcd();
    try {
      const a = await connect('a', 'frozen', 2, own.endpoint);
      const reasons: string[] = [];
      a.on('session-lost', (reason: string) => reasons.push(reason));
      own.kill('SIGSTOP');
      try {
        await until(() => reasons.length > 0, 'fencing');
      } finally {
        own.kill('SIGCONT');
      }
      expect(reasons[0]).toContain('deadline');
      expect(a.sessionValid()).toBe(false);
    } finally {
      await own.stop();
    }
  });

  it('tells, while it cannot open a new session, how long it has been without one', async () => {
    const own = await startEtcd();
    try {
      const a = await connect('a', 'gone', 2, own.endpoint);
      const failed: number[] = [];
      a.on('session-retry-failed', (_error: Error, downMs: number) => failed.push(downMs));
      await own.stop();
      await until(() => failed.length >= 2, 'two failed attempts at a new session', 20_000);
      expect(failed[1]!).toBeGreaterThan(failed[0]!);
      expect(failed[0]!).toBeGreaterThanOrEqual(0);
    } finally {
      await own.stop();
    }
  });

  it('closes within its call deadline while etcd is frozen', async () => {
    const own = await startEtcd();
    try {
      const a = await Coordinator.connect({
        endpoints: [own.endpoint],
        cluster: 'frozen-close',
        ttlSeconds: 2,
        callTimeoutMs: 500,
        node: { id: 'a', host: '127.0.0.1', httpPort: 1, rsyncPort: 2, pid: process.pid, startedAt: 'now' },
      });
      // The watch is established (a key written now is seen through it).
      const seen = new Promise((resolve) => a.once('change', resolve));
      etcdctlAt(own.endpoint, 'put', '/pfs/frozen-close/x', 'y');
      await seen;
      own.kill('SIGSTOP');
      try {
        const closed = await Promise.race([
          a.close().then(() => 'closed'),
          new Promise((resolve) => setTimeout(() => resolve('still closing'), 5000)),
        ]);
        expect(closed).toBe('closed');
      } finally {
        own.kill('SIGCONT');
      }
    } finally {
      await own.stop();
    }
  });

  it('says clearly when etcd is unreachable', async () => {
    const port = await freePort();
    const error = (await Coordinator.connect({
      endpoints: [`http://127.0.0.1:${port}`],
      cluster: 'x',
      ttlSeconds: 2,
      node: { id: 'a', host: '127.0.0.1', httpPort: 1, rsyncPort: 2, pid: 1, startedAt: 'now' },
    }).catch((e) => e)) as CoordinatorError;
    expect(error.code).toBe('ETCD_UNREACHABLE');
    expect(error.message).toMatch(
      /^etcd at http:\/\/127\.0\.0\.1:\d+ is unreachable .*: start etcd or fix the endpoints$/,
    );
  });

  it("records the first node's cluster settings and refuses a node whose settings differ, before it registers", async () => {
    cluster++;
    const name = `c${cluster}`;
    const withSettings = (id: string, partitions: number, replicationFactor: number) =>
      Coordinator.connect({
        endpoints: [etcd.endpoint],
        cluster: name,
        ttlSeconds: 2,
        settings: { partitions, replicationFactor },
        node: { id, host: '127.0.0.1', httpPort: 1, rsyncPort: 2, pid: 1, startedAt: 'n' },
      });
    const first = await withSettings('a', 4, 2);
    open.push(first);
    expect(JSON.parse(etcdctl('get', '--print-value-only', keys.settings(name)))).toEqual({
      partitions: 4,
      replicationFactor: 2,
      id: first.clusterId,
    });
    expect(first.clusterId).toMatch(/^[0-9a-f-]{36}$/);
    const same = await withSettings('b', 4, 2);
    open.push(same);
    expect(same.clusterId).toBe(first.clusterId);
    const error = (await withSettings('c', 8, 2).catch((e) => e)) as CoordinatorError;
    expect(error.code).toBe('SETTINGS_MISMATCH');
    expect(error.message).toBe(
      `cluster "${name}" has 4 partition(s), replication factor 2 (etcd key /pfs/${name}/config) but this node was started with 8 partition(s), replication factor 2: start it with --partitions 4 --replication-factor 2, or use another --cluster`,
    );
    await expect(withSettings('c', 4, 0)).rejects.toMatchObject({ code: 'SETTINGS_MISMATCH' });
    // The refused node never appeared in the view.
    await until(() => same.view.nodes.has('a') && same.view.nodes.has('b'), 'both nodes');
    expect(same.view.nodes.has('c')).toBe(false);
    etcdctl('put', keys.settings(name), 'garbage');
    await expect(withSettings('d', 4, 2)).rejects.toThrow(
      `etcd key /pfs/${name}/config holds "garbage", not cluster settings: fix or delete that key, or use another --cluster`,
    );
  });

  it("gives settings recorded without an id one, refuses a node of another cluster's id before it registers, and opens no new session in an etcd that lost the cluster", async () => {
    cluster++;
    const name = `c${cluster}`;
    etcdctl('put', keys.settings(name), JSON.stringify({ partitions: 2, replicationFactor: 0 }));
    const connectTo = (id: string, clusterId?: string) =>
      Coordinator.connect({
        endpoints: [etcd.endpoint],
        cluster: name,
        ttlSeconds: 2,
        settings: { partitions: 2, replicationFactor: 0 },
        clusterId,
        node: { id, host: '127.0.0.1', httpPort: 1, rsyncPort: 2, pid: 1, startedAt: 'n' },
      });
    const a = await connectTo('a');
    open.push(a);
    const recorded = JSON.parse(etcdctl('get', '--print-value-only', keys.settings(name)));
    expect(recorded).toEqual({
      partitions: 2,
      replicationFactor: 0,
      id: expect.stringMatching(/^[0-9a-f-]{36}$/),
    });
    expect(a.clusterId).toBe(recorded.id);
    // A node whose data is this cluster's joins; one whose data is another's does not register.
    const b = await connectTo('b', recorded.id);
    open.push(b);
    await expect(connectTo('c', 'another-id')).rejects.toMatchObject({
      code: 'CLUSTER_MISMATCH',
      message: `this node's data belongs to the cluster with id another-id, and etcd's cluster "${name}" has id ${recorded.id}: the data is another cluster's, or etcd was replaced or lost its keys`,
    });
    // Nor does one of a cluster etcd no longer has: no config key is made for it.
    await expect(connectTo('d', 'another-id').catch((e) => e)).resolves.toMatchObject({
      code: 'CLUSTER_MISMATCH',
    });
    expect(etcdctl('get', '--prefix', `/pfs/${name}/nodes/`, '--keys-only').trim().split(/\n+/)).toEqual([
      `/pfs/${name}/nodes/a`,
      `/pfs/${name}/nodes/b`,
    ]);
    // The cluster's keys gone while b runs (etcd wiped): once its lease is gone too, b opens no
    // new session, and says why.
    const failures: Error[] = [];
    b.on('session-retry-failed', (error: Error) => failures.push(error));
    etcdctl('del', '--prefix', `/pfs/${name}/`);
    // (`lease list` prints a count, then the hex ids, one a line.)
    for (const id of etcdctl('lease', 'list').trim().split('\n').slice(1))
      etcdctl('lease', 'revoke', id.trim());
    await until(
      () => failures.some((e) => (e as CoordinatorError).code === 'CLUSTER_MISMATCH'),
      'a refused session',
    );
    expect(etcdctl('get', '--prefix', `/pfs/${name}/`, '--keys-only').trim()).toBe('');
  });

  it('records a handover beside the master key, kept once the key goes, and only while the token holds', async () => {
    cluster++;
    const a = await connect('a');
    const token = (await a.claimMaster(0, info('a')))!;
    await expect(a.recordHandover(0, token + 1000n, { ...info('a'), finalTxid: '42' })).rejects.toMatchObject(
      { code: 'NOT_MASTER' },
    );
    await a.recordHandover(0, token, { ...info('a'), finalTxid: '42' });
    await a.resignMaster(0, token);
    await until(
      () =>
        a.view.partitions.get(0)?.master === undefined && a.view.partitions.get(0)?.handover !== undefined,
      'the handover without the master key',
    );
    expect(a.view.partitions.get(0)!.handover).toEqual({ generation: 1n, finalTxid: 42n });
  });

  it('withdraws a replica key', async () => {
    cluster++;
    const a = await connect('a');
    await a.reportApplied(3, 42n);
    await until(() => a.view.partitions.get(3)?.replicas.get('a') === 42n, 'the report');
    await a.withdrawReplica(3);
    await until(() => a.view.partitions.get(3)?.replicas.has('a') === false, 'the withdrawal');
  });

  it('refuses a bad node id or TTL', async () => {
    const base = {
      endpoints: [etcd.endpoint],
      cluster: 'x',
      node: { id: 'a', host: 'h', httpPort: 1, rsyncPort: 2, pid: 1, startedAt: 'n' },
    };
    await expect(Coordinator.connect({ ...base, ttlSeconds: 0 })).rejects.toMatchObject({
      code: 'BAD_VALUE',
    });
    await expect(
      Coordinator.connect({ ...base, ttlSeconds: 2, node: { ...base.node, id: '../x' } }),
    ).rejects.toMatchObject({ code: 'BAD_VALUE' });
  });
});
