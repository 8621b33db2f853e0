import {
  currentHandover,
  keys,
  masterOfCurrentProcess,
  partitionMembers,
  placeReplicas,
  rankCandidates,
  reportedByCurrentProcess,
  reportedSinceMasterLeft,
} from '@pfs/coordinator-etcd';
import { describe, expect, it } from 'vitest';
import { applyKey, badGenerationMessage, emptyView } from '../src/view.ts';

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

  it('ranks a node by what its current process reported, not by a key its previous one left', () => {
    const view = emptyView();
    applyKey(view, 'c', keys.node('c', 'a'), node('a'), 10n);
    // `b` restarted (registered again at 30) with a key its previous process wrote at 20.
    applyKey(view, 'c', keys.node('c', 'b'), node('b'), 30n);
    applyKey(view, 'c', keys.replica('c', 0, 'a'), '10', 11n);
    applyKey(view, 'c', keys.replica('c', 0, 'b'), '99', 20n);
    expect(rankCandidates(view, 0)).toEqual(['a', 'b']);
    applyKey(view, 'c', keys.replica('c', 0, 'b'), '12', 20n, 31n);
    expect(rankCandidates(view, 0)).toEqual(['b', 'a']);
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

  it('keeps the last generation seen while the key holds none, and says what to put back', () => {
    const view = emptyView();
    applyKey(view, 'c', keys.generation('c', 0), '3', 5n);
    applyKey(view, 'c', keys.history('c', 0, 2n), String((2n << 32n) | 9n), 5n);
    const p = view.partitions.get(0)!;
    for (const bad of ['x7', '', '-1', '4294967296', '12345678901']) {
      applyKey(view, 'c', keys.generation('c', 0), bad, 6n);
      expect(p.generation).toBe(3n);
      expect(p.badGeneration).toBe(bad);
    }
    const message = badGenerationMessage(keys.generation('c', 0), 'x7', p);
    expect(message).toContain(`etcdctl put ${keys.generation('c', 0)} 3`);
    // A serving master's generation wins over the history's.
    const master = { nodeId: 'n1', incarnation: 'n1:1', state: 'serving', generation: '4' };
    applyKey(view, 'c', keys.master('c', 0), JSON.stringify(master), 7n);
    expect(badGenerationMessage(keys.generation('c', 0), 'x7', p)).toContain(' 4: ');
    expect(badGenerationMessage(keys.generation('c', 1), 'x7', undefined)).toContain(' 1: ');
    applyKey(view, 'c', keys.generation('c', 0), '4294967295', 8n);
    expect(p.generation).toBe(4294967295n);
    expect(p.badGeneration).toBeUndefined();
  });
});

describe('an election after a master left', () => {
  const master = JSON.stringify({ nodeId: 'old', incarnation: 'old:1', state: 'serving', generation: '1' });

  it('knows once every member has reported since the master key was deleted', () => {
    const view = emptyView();
    applyKey(view, 'c', keys.master('c', 0), master, 10n);
    applyKey(view, 'c', keys.replica('c', 0, 'a'), '5', 11n, 11n);
    applyKey(view, 'c', keys.replica('c', 0, 'b'), '5', 11n, 12n);
    expect(reportedSinceMasterLeft(view, 0, ['a', 'b'])).toBe(false);
    applyKey(view, 'c', keys.master('c', 0), undefined, 0n, 20n);
    // Reports from before it left may be short of what the nodes applied since.
    expect(reportedSinceMasterLeft(view, 0, ['a', 'b'])).toBe(false);
    applyKey(view, 'c', keys.replica('c', 0, 'a'), '6', 11n, 21n);
    expect(reportedSinceMasterLeft(view, 0, ['a', 'b'])).toBe(false);
    applyKey(view, 'c', keys.replica('c', 0, 'b'), '5', 11n, 22n);
    expect(reportedSinceMasterLeft(view, 0, ['a', 'b'])).toBe(true);
    // A member that has not reported at all.
    expect(reportedSinceMasterLeft(view, 0, ['a', 'b', 'c'])).toBe(false);
    applyKey(view, 'c', keys.master('c', 0), master, 30n);
    expect(reportedSinceMasterLeft(view, 0, ['a', 'b'])).toBe(false);
  });

  it('never knows it in a view that began without a master', () => {
    const view = emptyView();
    applyKey(view, 'c', keys.replica('c', 0, 'a'), '5', 11n, 11n);
    expect(reportedSinceMasterLeft(view, 0, ['a'])).toBe(false);
  });
});

describe('placement', () => {
  const nodes = Array.from({ length: 6 }, (_, i) => `node-${i}`);

  it('places each partition on R distinct live nodes, the same whatever order they are listed in', () => {
    for (let p = 0; p < 64; p++) {
      const placed = placeReplicas(p, nodes, 3);
      expect(placed).toHaveLength(3);
      expect(new Set(placed).size).toBe(3);
      expect(placeReplicas(p, [...nodes].reverse(), 3)).toEqual(placed);
    }
  });

  it('places on every node with factor 0, and on all there are when fewer than R', () => {
    expect(placeReplicas(5, nodes, 0).sort()).toEqual(nodes);
    expect(placeReplicas(5, nodes.slice(0, 2), 3).sort()).toEqual(nodes.slice(0, 2));
    expect(placeReplicas(5, [], 3)).toEqual([]);
  });

  it('spreads partitions evenly across nodes', () => {
    const held = new Map<string, number>();
    for (let p = 0; p < 600; p++) {
      for (const id of placeReplicas(p, nodes, 2)) held.set(id, (held.get(id) ?? 0) + 1);
    }
    // 600 × 2 / 6 = 200 each; rendezvous hashing keeps each within a few tens of that.
    for (const id of nodes) expect(held.get(id)).toBeGreaterThan(150);
    for (const id of nodes) expect(held.get(id)).toBeLessThan(250);
  });

  it('moves only what a joining node wins, and only what a leaving node held', () => {
    const before = new Map<number, string[]>();
    for (let p = 0; p < 300; p++) before.set(p, placeReplicas(p, nodes, 2));
    const joined = [...nodes, 'node-6'];
    let moved = 0;
    for (let p = 0; p < 300; p++) {
      const after = placeReplicas(p, joined, 2);
      const lost = before.get(p)!.filter((id) => !after.includes(id));
      // Whatever left the partition's set left it for the new node.
      if (lost.length > 0) expect(after).toContain('node-6');
      moved += lost.length;
    }
    // About 2/7 of 300 partitions gain the new node.
    expect(moved).toBeGreaterThan(50);
    expect(moved).toBeLessThan(125);
    const left = nodes.filter((id) => id !== 'node-2');
    for (let p = 0; p < 300; p++) {
      const kept = before.get(p)!.filter((id) => id !== 'node-2');
      expect(placeReplicas(p, left, 2)).toEqual(expect.arrayContaining(kept));
    }
  });

  it("counts as members the placed live nodes and the live nodes still holding a partition's key", () => {
    const view = emptyView();
    for (const id of nodes) applyKey(view, 'c', keys.node('c', id), node(id), 1n);
    const placed = placeReplicas(7, nodes, 2);
    const holder = nodes.find((id) => !placed.includes(id))!;
    applyKey(view, 'c', keys.replica('c', 7, holder), '5', 1n);
    // A dead node's key does not count.
    applyKey(view, 'c', keys.replica('c', 7, 'gone'), '9', 1n);
    expect(partitionMembers(view, 7, placed)).toEqual([...placed.sort(), holder]);
    expect(rankCandidates(view, 7, partitionMembers(view, 7, placed))[0]).toBe(holder);
    // A placed node that is gone does not take part.
    expect(partitionMembers(view, 7, [...placed, 'gone'])).toEqual([...placed.sort(), holder]);
  });
});

describe("telling a node's current process from an earlier one", () => {
  it('counts reports and master keys written since the node last registered', () => {
    const view = emptyView();
    applyKey(view, 'c', keys.replica('c', 0, 'n1'), '7', 5n, 5n);
    const master = { nodeId: 'n1', incarnation: 'n1:1', state: 'serving', generation: '1' };
    applyKey(view, 'c', keys.master('c', 0), JSON.stringify(master), 6n, 6n);
    // The node registers again (a restart) at revision 10: what it wrote before is its predecessor's.
    applyKey(view, 'c', keys.node('c', 'n1'), node('n1'), 3n, 10n);
    expect(reportedByCurrentProcess(view, 0, 'n1')).toBeUndefined();
    expect(masterOfCurrentProcess(view, 0)).toBe(false);
    applyKey(view, 'c', keys.replica('c', 0, 'n1'), '9', 5n, 11n);
    applyKey(view, 'c', keys.master('c', 0), JSON.stringify(master), 12n, 12n);
    expect(reportedByCurrentProcess(view, 0, 'n1')).toBe(9n);
    expect(masterOfCurrentProcess(view, 0)).toBe(true);
  });

  it("reads a handover as the current generation's only", () => {
    const view = emptyView();
    applyKey(view, 'c', keys.generation('c', 0), '3', 1n);
    applyKey(view, 'c', keys.handover('c', 0), JSON.stringify({ generation: '3', finalTxid: '55' }), 2n);
    expect(currentHandover(view, 0)).toBe(55n);
    applyKey(view, 'c', keys.generation('c', 0), '4', 1n);
    expect(currentHandover(view, 0)).toBeUndefined();
  });
});
