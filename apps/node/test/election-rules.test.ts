import type { ClusterView, NodeInfo } from '@pfs/coordinator-etcd';
import { makeTxId } from '@pfs/txlog';
import { describe, expect, it } from 'vitest';
import {
  behindTheCluster,
  electionOrder,
  promotionRetryDelayMs,
  retryDelayMs,
} from '../src/partition-controller.ts';

describe('retryDelayMs', () => {
  it('retries a first failure soon and spaces out failures that keep coming, up to 5 s', () => {
    expect([1, 2, 3, 4, 5, 6, 7, 50].map(retryDelayMs)).toEqual([
      200, 400, 800, 1600, 3200, 5000, 5000, 5000,
    ]);
  });
});

describe('promotionRetryDelayMs', () => {
  it('keeps a node whose promotion failed out of elections for 2 s, doubling to 30 s', () => {
    expect([1, 2, 3, 4, 5, 6, 50].map(promotionRetryDelayMs)).toEqual([
      2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000,
    ]);
  });
});

describe('behindTheCluster', () => {
  const history = new Map([
    [1n, makeTxId(1, 40)],
    [2n, makeTxId(2, 7)],
  ]);

  it('keeps out a node behind where the latest ended generation ended', () => {
    expect(behindTheCluster(makeTxId(2, 6), 3n, history)).toBe(
      'behind 2:7 where an earlier generation ended',
    );
    expect(behindTheCluster(makeTxId(1, 40), 3n, history)).toBe(
      'behind 2:7 where an earlier generation ended',
    );
    expect(behindTheCluster(makeTxId(2, 7), 3n, history)).toBeUndefined();
    expect(behindTheCluster(makeTxId(3, 1), 3n, history)).toBeUndefined();
  });

  it('keeps out a node behind the txid the last master handed over with', () => {
    expect(behindTheCluster(makeTxId(3, 4), 3n, history, makeTxId(3, 5))).toBe(
      'behind 3:5 where the last master handed over',
    );
    expect(behindTheCluster(makeTxId(3, 5), 3n, history, makeTxId(3, 5))).toBeUndefined();
  });

  it('keeps out a node with nothing of a partition that has had a master, and lets anyone start a new one', () => {
    expect(behindTheCluster(0n, 1n, new Map())).toBe('nothing of a partition that has had a master');
    expect(behindTheCluster(0n, 0n, new Map())).toBeUndefined();
    expect(behindTheCluster(makeTxId(1, 0), 1n, undefined)).toBeUndefined();
  });
});

describe('electionOrder', () => {
  /** Partition 0 in generation 3 (generation 2 ended at 2:7), with what each node reported. */
  const view = (reports: Record<string, bigint>): ClusterView => {
    const info = (id: string): NodeInfo => ({
      id,
      host: 'h',
      httpPort: 1,
      rsyncPort: 2,
      pid: 1,
      startedAt: 't',
    });
    return {
      nodes: new Map(Object.keys(reports).map((id) => [id, info(id)])),
      registeredAt: new Map(Object.keys(reports).map((id) => [id, 1n])),
      partitions: new Map([
        [
          0,
          {
            master: undefined,
            generation: 3n,
            history: new Map([[2n, makeTxId(2, 7)]]),
            replicas: new Map(Object.entries(reports)),
            replicaRevisions: new Map(Object.keys(reports).map((id) => [id, 2n])),
            handover: undefined,
            masterLeftAt: undefined,
          },
        ],
      ]),
      revision: 3n,
    };
  };

  it('ranks the placed members that may stand before a holder letting the partition go, however far it got', () => {
    // `old` was master and resigned on its way out: it reported the most, and will not stand.
    const reports = { a: makeTxId(3, 5), c: makeTxId(3, 4), old: makeTxId(3, 9) };
    expect(electionOrder(view(reports), 0, ['a', 'c', 'old'], ['a', 'c'])).toEqual(['a', 'c', 'old']);
  });

  it('ranks a holder first when no placed member may stand without its records', () => {
    const reports = { a: makeTxId(2, 3), c: 0n, holder: makeTxId(2, 7) };
    expect(electionOrder(view(reports), 0, ['a', 'c', 'holder'], ['a', 'c'])).toEqual(['holder', 'a', 'c']);
  });
});
