import { keys, rankCandidates } from '@pfs/coordinator-etcd';
import { describe, expect, it } from 'vitest';
import { applyKey, emptyView } from '../src/view.ts';

const node = (id: string) =>
  JSON.stringify({ id, host: '127.0.0.1', httpPort: 1, rsyncPort: 2, pid: 3, startedAt: 'x' });

describe('cluster view', () => {
  it('ranks live nodes by applied txid, ties by smallest id', () => {
    const view = emptyView();
    for (const id of ['localhost_12003', 'localhost_12002', 'localhost_12004']) {
      applyKey(view, 'c', keys.node('c', id), node(id), 1n);
    }
    applyKey(view, 'c', keys.replica('c', 0, 'localhost_12003'), '10', 1n);
    applyKey(view, 'c', keys.replica('c', 0, 'localhost_12002'), '10', 1n);
    applyKey(view, 'c', keys.replica('c', 0, 'localhost_12004'), '7', 1n);
    // A dead node's report does not make it a candidate.
    applyKey(view, 'c', keys.replica('c', 0, 'localhost_12001'), '99', 1n);
    expect(rankCandidates(view, 0)).toEqual(['localhost_12002', 'localhost_12003', 'localhost_12004']);
    applyKey(view, 'c', keys.replica('c', 0, 'localhost_12004'), '11', 1n);
    expect(rankCandidates(view, 0)[0]).toBe('localhost_12004');
  });

  it('tracks master, generation and history, and drops malformed values', () => {
    const view = emptyView();
    const master = { nodeId: 'n1', incarnation: 'n1:1', state: 'serving', generation: '2' };
    applyKey(view, 'c', keys.master('c', 3), JSON.stringify(master), 42n);
    applyKey(view, 'c', keys.generation('c', 3), '2', 5n);
    applyKey(view, 'c', keys.history('c', 3, 1n), String((1n << 32n) | 9n), 5n);
    const p = view.partitions.get(3)!;
    expect(p.master).toEqual({ ...master, token: 42n });
    expect(p.generation).toBe(2n);
    expect(p.history.get(1n)).toBe((1n << 32n) | 9n);
    applyKey(view, 'c', keys.master('c', 3), '{"nodeId": 5}', 43n);
    expect(p.master).toBeUndefined();
    applyKey(view, 'c', '/pfs/other/nodes/x', node('x'), 1n);
    expect(view.nodes.size).toBe(0);
  });
});
