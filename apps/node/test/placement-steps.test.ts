import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ClusterView, Coordinator, NodeInfo, PartitionView } from '@pfs/coordinator-etcd';
import { placeReplicas } from '@pfs/coordinator-etcd';
import { initStore } from '@pfs/filestore';
import { StoreGate } from '@pfs/replicator';
import { makeTxId, type TxLog } from '@pfs/txlog';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import type { PartitionController } from '../src/partition-controller.ts';
import { PartitionPlacement } from '../src/placement.ts';

/**
 * The steps of letting a partition go, against a view and controllers the test sets: which
 * step each state of the view allows, and that nothing is let go on what etcd does not show.
 */
const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

const nodeInfo = (id: string): NodeInfo => ({
  id,
  host: '127.0.0.1',
  httpPort: 1,
  rsyncPort: 2,
  pid: 1,
  startedAt: 'then',
});

/** Two partitions, factor 1, nodes `me` and `other`; partition 0 is placed on `other`, 1 is held here. */
async function setup() {
  const me = 'me';
  // A node id that wins partition 0 over `me`, so that `me` is not placed on it.
  let n = 0;
  while (placeReplicas(0, [me, `other-${n}`], 1)[0] !== `other-${n}`) n++;
  const other = `other-${n}`;
  const root = await mkdtemp(join(tmpdir(), 'pfs-placement-'));
  dirs.push(root);
  const fileStore = join(root, 'filestore');
  await initStore(fileStore);
  await mkdir(join(root, 'run'));
  const pv = (): PartitionView => ({
    master: undefined,
    generation: 2n,
    history: new Map(),
    replicas: new Map(),
    replicaRevisions: new Map(),
    handover: undefined,
    masterLeftAt: undefined,
  });
  const view: ClusterView = {
    nodes: new Map([
      [me, nodeInfo(me)],
      [other, nodeInfo(other)],
    ]),
    // Every node registered at revision 10; what they write comes after, at 20.
    registeredAt: new Map([
      [me, 10n],
      [other, 10n],
    ]),
    partitions: new Map([[0, pv()]]),
    revision: 1n,
  };
  const report = (id: string, txid: bigint, revision = 20n) => {
    view.partitions.get(0)!.replicas.set(id, txid);
    view.partitions.get(0)!.replicaRevisions.set(id, revision);
  };
  const register = (id: string) => {
    view.nodes.set(id, nodeInfo(id));
    view.registeredAt.set(id, 10n);
  };
  const calls: string[] = [];
  let session = true;
  const coordinator = {
    view,
    sessionValid: () => session,
    withdrawReplica: async (p: number) => {
      calls.push(`withdraw ${p}`);
      view.partitions.get(p)!.replicas.delete(me);
    },
    reportApplied: async (p: number, txid: bigint) => {
      calls.push(`report ${p} ${txid}`);
      report(me, txid);
    },
  } as unknown as Coordinator;
  const log = { lastTxid: makeTxId(2, 10) };
  const controller = {
    partition: 0,
    holds: false,
    activate() {
      calls.push('activate');
      const was = controller.holds;
      controller.holds = true;
      return !was;
    },
    async release() {
      calls.push('release');
      controller.holds = false;
    },
    async dropLog() {
      calls.push('dropLog');
      log.lastTxid = 0n;
      return true;
    },
    async forgetMastered() {
      calls.push('forgetMastered');
    },
    ensureReported() {},
  };
  // Partition 1, placed here and held: the sweep leaves its files alone.
  const held = { partition: 1, holds: true, activate: () => false, ensureReported() {} };
  let acked = 0n;
  // The placement's clock, which the test moves.
  let clock = 0;
  const fresh = () =>
    new PartitionPlacement({
      nodeId: me,
      replicationFactor: 1,
      coordinator,
      controllers: [controller, held].map((c) => c as unknown as PartitionController),
      logs: [log, { lastTxid: makeTxId(2, 3) }].map((l) => l as unknown as TxLog),
      acked: () => acked,
      storeGate: new StoreGate(),
      fileStore,
      partitionOf: (path) => (path.startsWith('mine/') ? 1 : 0),
      runDir: join(root, 'run'),
      handOverTimeoutMs: 10,
      graceMs: 1000,
      now: () => clock,
      logger: pino({ level: 'silent' }),
    });
  /** One placement's passes, until `settled` holds (or 50 ms, when not given), then it closes. */
  const pass = async (settled?: () => boolean) => {
    view.revision++;
    const p = fresh();
    p.schedule();
    const deadline = Date.now() + 5000;
    await new Promise((resolve) => setTimeout(resolve, 50));
    while (settled !== undefined && !settled() && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    await p.close();
  };
  // A third node that `other` still wins partition 0 over.
  let k = 0;
  while (placeReplicas(0, [me, other, `third-${k}`], 1)[0] !== other) k++;
  const third = `third-${k}`;
  return {
    me,
    other,
    third,
    fresh,
    view,
    calls,
    controller,
    log,
    fileStore,
    pass,
    setAcked: (txid: bigint) => {
      acked = txid;
    },
    advance: (ms: number) => {
      clock += ms;
    },
    endSession: () => {
      session = false;
    },
    report,
    register,
    /** `nodeId` serves partition 0, on a key written at `token` (after its registration, by default). */
    serving: (nodeId: string, token = 30n) => {
      view.partitions.get(0)!.master = {
        nodeId,
        incarnation: `${nodeId}:1`,
        state: 'serving',
        generation: '2',
        token,
      };
    },
  };
}

describe('letting a partition go', () => {
  it('lets a held partition go only once the placed node has nearly all of it', async () => {
    const t = await setup();
    t.controller.holds = true;
    t.report(t.other, makeTxId(1, 3));
    await t.pass();
    expect(t.calls).toEqual([]);
    t.report(t.other, makeTxId(2, 5));
    await t.pass();
    expect(t.calls).toEqual(['release']);
  });

  it('removes its key, log and files only once a master serves elsewhere and the placed node has all of it', async () => {
    const t = await setup();
    await mkdir(join(t.fileStore, 'mine'), { recursive: true });
    await writeFile(join(t.fileStore, 'photo.jpg'), 'partition 0');
    await mkdir(join(t.fileStore, 'album', '2026', 'june'), { recursive: true });
    await writeFile(join(t.fileStore, 'album', '2026', 'june', 'beach.jpg'), 'partition 0');
    await writeFile(join(t.fileStore, 'mine', 'kept.jpg'), 'partition 1');
    t.report(t.me, t.log.lastTxid);
    t.report(t.other, t.log.lastTxid);
    // No master: the placed node may still need to drain this node.
    await t.pass();
    expect(t.calls).toEqual([]);
    t.serving(t.other);
    await t.pass(() => t.calls.includes('forgetMastered'));
    expect(t.calls).toEqual(['withdraw 0', 'dropLog', 'forgetMastered']);
    expect(existsSync(join(t.fileStore, 'photo.jpg'))).toBe(false);
    expect(existsSync(join(t.fileStore, 'mine', 'kept.jpg'))).toBe(true);
    expect(existsSync(join(t.fileStore, 'album', '2026', 'june', 'beach.jpg'))).toBe(false);
  });

  it('removes the files a partition let go before it had a record left, with its key', async () => {
    const t = await setup();
    // A bulk copy brought this file before the partition moved away; the log never had a record.
    await writeFile(join(t.fileStore, 'copied.jpg'), 'partition 0');
    t.log.lastTxid = 0n;
    t.report(t.me, 0n);
    await t.pass(() => t.calls.includes('forgetMastered'));
    expect(t.calls).toEqual(['withdraw 0', 'forgetMastered']);
    expect(existsSync(join(t.fileStore, 'copied.jpg'))).toBe(false);
  });

  it('does not count what a node acknowledged here, which outlives its lease and its disk, nor a master key of an earlier process', async () => {
    const t = await setup();
    t.report(t.me, t.log.lastTxid);
    t.setAcked(t.log.lastTxid);
    t.register(t.third);
    t.serving(t.third);
    // `other` is placed, and reported nothing; `third` serves.
    await t.pass();
    expect(t.calls).toEqual([]);
    // `other` is the master, but on a key left by a process before the one registered now: no
    // master serves, and `other` has nothing, so this node holds the partition again.
    t.view.nodes.delete(t.third);
    t.serving(t.other, 5n);
    await t.pass();
    expect(t.calls).toEqual(['activate']);
  });

  it("does not count a report its node's previous process left", async () => {
    const t = await setup();
    t.report(t.me, t.log.lastTxid);
    t.register(t.third);
    t.serving(t.third);
    t.report(t.other, t.log.lastTxid, 5n);
    await t.pass();
    expect(t.calls).toEqual([]);
    t.report(t.other, t.log.lastTxid);
    await t.pass(() => t.calls.includes('forgetMastered'));
    expect(t.calls).toEqual(['withdraw 0', 'dropLog', 'forgetMastered']);
  });

  it('holds the partition again when no master serves and the placed node cannot stand without its records', async () => {
    const t = await setup();
    t.report(t.me, t.log.lastTxid);
    // Generation 1 ended at 1:8: `other`, at 1:3, may not stand.
    t.view.partitions.get(0)!.history.set(1n, makeTxId(1, 8));
    t.report(t.other, makeTxId(1, 3));
    await t.pass();
    expect(t.calls).toEqual(['activate']);
  });

  it('leaves the partition to a placed node that may stand, keeping its key for it to drain', async () => {
    const t = await setup();
    t.report(t.me, t.log.lastTxid);
    t.view.partitions.get(0)!.history.set(1n, makeTxId(1, 8));
    t.report(t.other, makeTxId(1, 9));
    await t.pass();
    expect(t.calls).toEqual([]);
    expect(t.view.partitions.get(0)!.replicas.get(t.me)).toBe(t.log.lastTxid);
  });

  it('puts back its key, lost with a session, while the placed node may still drain it', async () => {
    const t = await setup();
    t.register(t.third);
    t.serving(t.third);
    t.report(t.other, makeTxId(2, 4));
    await t.pass();
    expect(t.calls).toEqual([`report 0 ${makeTxId(2, 10)}`]);
  });

  it('does not place elsewhere the partitions of a node gone for less than the grace', async () => {
    const t = await setup();
    // This node has nothing of partition 0; only where it is placed matters here.
    t.log.lastTxid = 0n;
    const placement = t.fresh();
    const settle = async () => {
      t.view.revision++;
      placement.schedule();
      await new Promise((resolve) => setTimeout(resolve, 50));
    };
    await settle();
    expect(placement.placedOn(0)).toEqual([t.other]);
    t.view.nodes.delete(t.other);
    t.view.registeredAt.delete(t.other);
    await settle();
    expect(placement.placedOn(0)).toEqual([t.other]);
    expect(placement.replicasOf(0)).toEqual([]);
    expect(t.calls).toEqual([]);
    t.advance(1000);
    await settle();
    expect(placement.placedOn(0)).toEqual([t.me]);
    expect(t.calls).toEqual(['activate']);
    await placement.close();
  });

  it('does nothing without a session', async () => {
    const t = await setup();
    t.controller.holds = true;
    t.report(t.other, makeTxId(2, 10));
    t.endSession();
    await t.pass();
    expect(t.calls).toEqual([]);
  });
});

describe('a pass over several partitions', () => {
  it('goes on to the next partition when one fails its step, and runs again for that one', async () => {
    const me = 'me';
    // A node id that wins both partitions over `me`.
    let n = 0;
    while (![0, 1].every((p) => placeReplicas(p, [me, `other-${n}`], 1)[0] === `other-${n}`)) n++;
    const other = `other-${n}`;
    const root = await mkdtemp(join(tmpdir(), 'pfs-placement-'));
    dirs.push(root);
    const fileStore = join(root, 'filestore');
    await initStore(fileStore);
    await mkdir(join(root, 'run'));
    const last = makeTxId(2, 10);
    const partitionView = (): PartitionView => ({
      master: undefined,
      generation: 2n,
      history: new Map(),
      // `other` has it all.
      replicas: new Map([[other, last]]),
      replicaRevisions: new Map([[other, 20n]]),
      handover: undefined,
      masterLeftAt: undefined,
    });
    const view: ClusterView = {
      nodes: new Map([
        [me, nodeInfo(me)],
        [other, nodeInfo(other)],
      ]),
      registeredAt: new Map([
        [me, 10n],
        [other, 10n],
      ]),
      partitions: new Map([
        [0, partitionView()],
        [1, partitionView()],
      ]),
      revision: 1n,
    };
    const coordinator = { view, sessionValid: () => true } as unknown as Coordinator;
    const calls: string[] = [];
    const controllerOf = (partition: number) => ({
      partition,
      holds: true,
      activate: () => false,
      ensureReported() {},
      async release() {
        calls.push(`release ${partition}`);
        // The first partition's step keeps failing.
        if (partition === 0) throw new Error('a divergent suffix could not be set aside');
        this.holds = false;
      },
    });
    const errors: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (line: string) => errors.push(JSON.parse(line).msg) });
    const placement = new PartitionPlacement({
      nodeId: me,
      replicationFactor: 1,
      coordinator,
      controllers: [controllerOf(0), controllerOf(1)].map((c) => c as unknown as PartitionController),
      logs: [{ lastTxid: last }, { lastTxid: last }].map((l) => l as unknown as TxLog),
      acked: () => 0n,
      storeGate: new StoreGate(),
      fileStore,
      partitionOf: () => 0,
      runDir: join(root, 'run'),
      handOverTimeoutMs: 10,
      graceMs: 1000,
      now: () => 0,
      logger,
    });
    try {
      placement.schedule();
      const deadline = Date.now() + 5000;
      while (!calls.includes('release 1') && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 10));
      expect(calls.slice(0, 2)).toEqual(['release 0', 'release 1']);
      expect(errors).toContain('placement: a divergent suffix could not be set aside');
      while (calls.filter((c) => c === 'release 0').length < 2 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 10));
      }
      expect(calls.filter((c) => c === 'release 0')).toHaveLength(2);
    } finally {
      await placement.close();
    }
  });
});
