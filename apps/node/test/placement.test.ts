import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { keys, placeReplicas } from '@pfs/coordinator-etcd';
import { compareStorePaths, initStore, partitionOf } from '@pfs/filestore';
import { makeTxId, TxLog } from '@pfs/txlog';
import { describe, expect, it } from 'vitest';
import type { Agent } from '../src/agent.ts';
import { encodePath } from '../src/http.ts';
import { capturingLogger, until, useAgents } from './agent-harness.ts';

const { agentConfig, start, stopForRestart, etcdctl } = useAgents();
let clusterSeq = 0;

const PARTITIONS = 4;

interface PartitionStatus {
  partition: number;
  role: string;
  holds: boolean;
  master: string | null;
  lastTxid: string;
}

const statusOf = async (agent: Agent) =>
  ((await (await fetch(`${agent.url}/v1/status`)).json()) as { partitions: PartitionStatus[] }).partitions;

/**
 * A PUT sent to `via`, following the redirect to the partition's master by hand, and retried as
 * a client would while a moving partition has no master for a moment (503 with retry-after).
 */
async function put(via: Agent, path: string, body: string, ack = 'all'): Promise<Response> {
  let url = `${via.url}/v1/files/${encodePath(path)}`;
  const deadline = Date.now() + 15_000;
  for (;;) {
    const response = await fetch(url, {
      method: 'PUT',
      body,
      redirect: 'manual',
      headers: { 'x-pfs-ack': ack },
    });
    if (response.status === 503 && response.headers.has('retry-after') && Date.now() < deadline) {
      await response.body?.cancel();
      await new Promise((resolve) => setTimeout(resolve, 100));
      url = `${via.url}/v1/files/${encodePath(path)}`;
      continue;
    }
    if (response.status !== 307) return response;
    await response.body?.cancel();
    url = response.headers.get('location')!;
  }
}

/** Runs the `pfs` CLI against `node`, with JSON output. */
function pfs(node: Agent, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [fileURLToPath(new URL('../bin/pfs.mjs', import.meta.url)), '--json', ...args],
      { env: { ...process.env, PFS_NODE: node.url } },
      (error, stdout, stderr) => resolve({ code: error ? Number(error.code) : 0, stdout, stderr }),
    );
  });
}

/** Waits until the nodes hold exactly the partitions the placement over `live` puts on them, each partition with a serving master. */
async function placementSettled(live: Agent[], factor: number): Promise<void> {
  const ids = live.map((a) => a.config.nodeId);
  await until(
    `partitions held as placed on ${ids.join(', ')}`,
    async () => {
      for (const agent of live) {
        for (const p of await statusOf(agent)) {
          const placed = placeReplicas(p.partition, ids, factor);
          if (p.holds !== placed.includes(agent.config.nodeId)) return undefined;
          if (p.master === null || !placed.includes(p.master)) return undefined;
        }
      }
      return true;
    },
    60_000,
  );
}

/** Waits until each file is on disk on exactly the nodes placed on its partition, with its bytes. */
async function filesWherePlaced(
  live: Agent[],
  factor: number,
  files: Map<string, string>,
  partitions = PARTITIONS,
): Promise<void> {
  const ids = live.map((a) => a.config.nodeId);
  await until(
    'every file on exactly its placed nodes',
    async () => {
      for (const [path, body] of files) {
        const placed = placeReplicas(partitionOf(path, partitions), ids, factor);
        for (const agent of live) {
          const file = join(agent.config.dataDir, 'filestore', path);
          if (placed.includes(agent.config.nodeId)) {
            if (!existsSync(file) || (await readFile(file, 'utf8')) !== body) return undefined;
          } else if (existsSync(file)) return undefined;
        }
      }
      return true;
    },
    60_000,
  );
}

// The tests of nodes leaving use --placement-grace-ms=0: their partitions are placed elsewhere at
// once rather than after the grace (placement-steps.test.ts tests the grace).
describe('placement with a replication factor below the node count', () => {
  it('keeps each partition on R nodes only, and moves partitions to a node that joins, which the others then drop', async () => {
    const cluster = `placement-${++clusterSeq}`;
    const config = (extra: string[] = []) =>
      agentConfig(cluster, undefined, [
        `--partitions=${PARTITIONS}`,
        '--replication-factor=2',
        '--placement-grace-ms=0',
        ...extra,
      ]);
    const nodes = [await start(await config()), await start(await config()), await start(await config())];
    await placementSettled(nodes, 2);

    // ack=all: acknowledged once on both placed nodes, which a node not placed on the
    // partition must not be waited for (it never follows it).
    const files = new Map<string, string>();
    for (let i = 0; i < 24; i++) {
      const path = `album-${i % 3}/photo-${i}.jpg`;
      const body = `bytes of photo ${i}`;
      const response = await put(nodes[i % 3]!, path, body);
      expect(response.status, await response.clone().text()).toBe(201);
      files.set(path, body);
    }
    await filesWherePlaced(nodes, 2, files);

    // Any node answers a read, from its store or through the partition's master.
    for (const agent of nodes) {
      for (const [path, body] of files) {
        const read = await fetch(`${agent.url}/v1/files/${encodePath(path)}`);
        expect(read.status).toBe(200);
        expect(await read.text()).toBe(body);
      }
    }
    // A node lists only what it holds, and says which partitions that is. (With 4 partitions
    // on 2 of 3 nodes, some node holds fewer than all of them.)
    const ids = nodes.map((a) => a.config.nodeId);
    const heldBy = (agent: Agent) =>
      [...Array(PARTITIONS).keys()].filter((p) => placeReplicas(p, ids, 2).includes(agent.config.nodeId));
    const partial = nodes.reduce((a, b) => (heldBy(b).length < heldBy(a).length ? b : a));
    expect(heldBy(partial).length).toBeLessThan(PARTITIONS);
    const listing = (await (await fetch(`${partial.url}/v1/files`)).json()) as {
      entries: { path: string }[];
      partitions: number[];
    };
    expect(listing.partitions).toEqual(heldBy(partial));
    expect(listing.entries.map((e) => e.path).sort()).toEqual(
      [...files.keys()].filter((path) => heldBy(partial).includes(partitionOf(path, PARTITIONS))).sort(),
    );
    // `pfs ls` asks the other nodes for the rest, and merges the lists in path order.
    const listed = await pfs(partial, 'ls');
    expect(listed.code, listed.stderr).toBe(0);
    expect((JSON.parse(listed.stdout) as { entries: { path: string }[] }).entries.map((e) => e.path)).toEqual(
      [...files.keys()].sort(compareStorePaths),
    );

    // A fourth node: it takes the partitions it wins, and the nodes they leave drop their copies.
    nodes.push(await start(await config()));
    await placementSettled(nodes, 2);
    await filesWherePlaced(nodes, 2, files);
    for (const agent of nodes) {
      for (const p of await statusOf(agent)) {
        // A partition let go leaves no log behind either.
        if (!p.holds) expect(p.lastTxid).toBe('0');
      }
    }
    for (const [path, body] of files) {
      const read = await fetch(`${nodes[3]!.url}/v1/files/${encodePath(path)}`);
      expect(await read.text()).toBe(body);
    }
    // Writes go on, to the new placement.
    const late = await put(nodes[1]!, 'album-0/late.jpg', 'written after the move');
    expect(late.status).toBe(201);
    files.set('album-0/late.jpg', 'written after the move');

    // A node leaves: the partitions it held are placed on the others, which copy them.
    const leaving = nodes.splice(0, 1)[0]!;
    await stopForRestart(leaving);
    await placementSettled(nodes, 2);
    await filesWherePlaced(nodes, 2, files);
  }, 180_000);

  it('answers a read of a partition it does not hold with a redirect to its master', async () => {
    const cluster = `placement-${++clusterSeq}`;
    const config = () => agentConfig(cluster, undefined, ['--partitions=2', '--replication-factor=1']);
    const nodes = [await start(await config()), await start(await config())];
    await placementSettled(nodes, 1);
    const ids = nodes.map((a) => a.config.nodeId);
    // With one replica per partition, a file is on one node; the other is asked for it.
    const path = 'held-elsewhere';
    const holder = nodes.find((a) => a.config.nodeId === placeReplicas(partitionOf(path, 2), ids, 1)[0])!;
    const other = nodes.find((a) => a !== holder)!;
    // ack=local: with one node per partition there is no replica to wait for.
    expect((await put(other, path, 'held by one node', 'local')).status).toBe(201);
    const read = await fetch(`${other.url}/v1/files/${encodePath(path)}?minTxid=1`, { redirect: 'manual' });
    expect(read.status).toBe(307);
    expect(read.headers.get('location')).toBe(`${holder.url}/v1/files/${encodePath(path)}?minTxid=1`);
    expect(await read.json()).toMatchObject({ code: 'NOT_HELD' });
    expect(await (await fetch(`${other.url}/v1/files/${encodePath(path)}`)).text()).toBe('held by one node');
    expect(existsSync(join(other.config.dataDir, 'filestore', path))).toBe(false);
  });

  it('refuses to start a node whose partition count or replication factor differs from the cluster', async () => {
    const cluster = `placement-${++clusterSeq}`;
    await start(await agentConfig(cluster, undefined, ['--partitions=4', '--replication-factor=2']));
    await expect(
      start(await agentConfig(cluster, undefined, ['--partitions=8', '--replication-factor=2'])),
    ).rejects.toMatchObject({
      code: 'SETTINGS_MISMATCH',
      message: expect.stringMatching(
        /start it with --partitions 4 --replication-factor 2, or use another --cluster$/,
      ),
    });
  });
});

describe('a partition whose only holder is away', () => {
  it('waits for it rather than start empty, and it takes the partition back and hands it to where it is now placed', async () => {
    const cluster = `placement-${++clusterSeq}`;
    const config = (extra: string[] = []) =>
      agentConfig(cluster, undefined, [
        '--partitions=1',
        '--replication-factor=1',
        '--placement-grace-ms=0',
        ...extra,
      ]);
    const first = [await start(await config()), await start(await config())];
    await placementSettled(first, 1);
    const ids = first.map((a) => a.config.nodeId);
    const holder = first.find((a) => a.config.nodeId === placeReplicas(0, ids, 1)[0])!;
    const other = first.find((a) => a !== holder)!;
    const files = new Map<string, string>();
    for (let i = 0; i < 5; i++) {
      files.set(`kept-${i}`, `only on one node ${i}`);
      expect((await put(other, `kept-${i}`, `only on one node ${i}`, 'local')).status).toBe(201);
    }
    const dataDir = await stopForRestart(holder);

    // A node that wins the placement over the holder joins while the holder is away.
    let newId = 0;
    while (placeReplicas(0, [holder.config.nodeId, `winner-${newId}`], 1)[0] !== `winner-${newId}`) newId++;
    const { logger, entries } = capturingLogger();
    const winner = await start(await config([`--node-id=winner-${newId}`]), logger);
    await until('the winner refusing to start the partition empty', async () =>
      entries.some((e) => /^partition 0: this node has 0:0, .*; not standing for election/.test(e.msg))
        ? true
        : undefined,
    );
    expect((await statusOf(other))[0]!.master).toBeNull();

    // The holder comes back: not placed, but the only one with the records, it masters the
    // partition again until the winner has them, then hands over and drops its copy.
    const back = await start(
      await agentConfig(cluster, dataDir, [
        '--partitions=1',
        '--replication-factor=1',
        '--placement-grace-ms=0',
      ]),
    );
    const live = [other, winner, back];
    await placementSettled(live, 1);
    expect((await statusOf(winner))[0]!.master).toBe(winner.config.nodeId);
    await filesWherePlaced(live, 1, files, 1);
    for (const [path, body] of files) {
      expect(await (await fetch(`${back.url}/v1/files/${encodePath(path)}`)).text()).toBe(body);
    }
    expect((await statusOf(back))[0]!.lastTxid).toBe('0');
  }, 120_000);
});

describe('election', () => {
  it('never lets a node behind where an earlier generation ended take over, so it cannot cut what others hold', async () => {
    const cluster = `placement-${++clusterSeq}`;
    // The cluster's record: generation 1 ended at 1:5, and generation 2 is current.
    etcdctl('put', keys.generation(cluster, 0), '2');
    etcdctl('put', keys.history(cluster, 0, 1n), String(makeTxId(1, 5)));
    const { logger, entries } = capturingLogger();
    const fresh = await start(await agentConfig(cluster), logger);
    await until('the refusal logged', async () =>
      entries.some((e) =>
        /has 0:0, behind 1:5 where an earlier generation ended; not standing for election until a node that has them is back$/.test(
          e.msg,
        ),
      )
        ? true
        : undefined,
    );
    await new Promise((resolve) => setTimeout(resolve, 1500));
    expect((await statusOf(fresh))[0]).toMatchObject({ master: null, role: 'offline' });

    // A node that has the ended generation's records takes over.
    const config = await agentConfig(cluster);
    // Its store is in place (a log with records and no store sentinel would be an unmounted store).
    await initStore(join(config.dataDir, 'filestore'));
    const log = await TxLog.open(join(config.dataDir, 'changelog', '0'));
    await log.startGeneration(1n);
    for (let i = 0; i < 5; i++)
      await log.appendChange({ kind: 'delete', path: `gone-${i}`, size: 0n, sha256: '', mtimeNs: 0n });
    await log.close();
    const holder = await start(config);
    await until('the holder as master', async () =>
      (await statusOf(holder))[0]!.role === 'master' ? true : undefined,
    );
    await until('the fresh node following', async () =>
      (await statusOf(fresh))[0]!.role === 'replica' ? true : undefined,
    );
  });

  it("never lets a node behind what the current generation's master handed over with take over, even one that never saw the handover", async () => {
    const cluster = `placement-${++clusterSeq}`;
    // Generation 1's master handed over at 1:5 (its placed replicas had acknowledged it) and is gone.
    etcdctl('put', keys.generation(cluster, 0), '1');
    etcdctl(
      'put',
      keys.handover(cluster, 0),
      JSON.stringify({ generation: '1', finalTxid: String(makeTxId(1, 5)) }),
    );
    const withRecords = async (count: number) => {
      const config = await agentConfig(cluster);
      await initStore(join(config.dataDir, 'filestore'));
      const log = await TxLog.open(join(config.dataDir, 'changelog', '0'));
      await log.startGeneration(1n);
      for (let i = 0; i < count; i++)
        await log.appendChange({ kind: 'delete', path: `gone-${i}`, size: 0n, sha256: '', mtimeNs: 0n });
      await log.close();
      return config;
    };
    const { logger, entries } = capturingLogger();
    const behind = await start(await withRecords(3), logger);
    await until('the refusal logged', async () =>
      entries.some((e) => /has 1:3, behind 1:5 where the last master handed over; not standing/.test(e.msg))
        ? true
        : undefined,
    );
    await new Promise((resolve) => setTimeout(resolve, 1500));
    expect((await statusOf(behind))[0]).toMatchObject({ master: null, role: 'offline' });
    const holder = await start(await withRecords(5));
    await until('the node with every record as master', async () =>
      (await statusOf(holder))[0]!.role === 'master' ? true : undefined,
    );
    await until('the other following', async () =>
      (await statusOf(behind))[0]!.role === 'replica' ? true : undefined,
    );
  });
});
