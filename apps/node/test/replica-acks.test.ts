import { describe, expect, it } from 'vitest';
import { ackingReplicas, ackSatisfied, ReplicaAcks } from '../src/replica-acks.ts';

describe('ack modes', () => {
  const applied = new Map([
    ['r1', 10n],
    ['r2', 5n],
  ]);
  it.each([
    ['local', 99n, [], true],
    ['one', 5n, ['r1', 'r2'], true],
    ['one', 10n, ['r1', 'r2'], true],
    ['one', 11n, ['r1', 'r2'], false],
    ['one', 1n, [], false],
    ['all', 5n, ['r1', 'r2'], true],
    ['all', 6n, ['r1', 'r2'], false],
    ['all', 6n, ['r1'], true],
    ['all', 1n, [], false],
    ['one', 5n, ['r3'], false],
  ] as const)('%s of %s with live %j → %s', (mode, txid, live, want) => {
    expect(ackSatisfied(applied, txid, mode, live)).toBe(want);
  });

  it('counts the placed replicas that asked for records or reported some, not one still making its first copy', () => {
    const polled = new Map([['following', 0n]]);
    const reports = new Map<string, bigint | undefined>([
      ['following', 0n],
      ['restarted', 12n],
      ['copying', 0n],
      ['silent', undefined],
    ]);
    const placed = ['following', 'restarted', 'copying', 'silent'];
    expect(ackingReplicas(placed, polled, (id) => reports.get(id))).toEqual(['following', 'restarted']);
    // Its first request for records, once its copy is done: from then on it counts.
    polled.set('copying', 3n);
    expect(ackingReplicas(placed, polled, (id) => reports.get(id))).toEqual([
      'following',
      'restarted',
      'copying',
    ]);
  });

  it('measures lag in milliseconds from when the oldest unacknowledged record was appended', () => {
    const acks = new ReplicaAcks();
    expect(acks.lagMs(0, 'r1', 1000)).toBe(0);
    acks.noteAppended(0, 1n, 100);
    acks.noteAppended(0, 2n, 150);
    acks.noteAppended(0, 3n, 400);
    expect(acks.lagMs(0, 'r1', 1000)).toBe(900);
    acks.note(0, 'r1', 1n);
    expect(acks.lagMs(0, 'r1', 1000)).toBe(850);
    acks.note(0, 'r1', 3n);
    expect(acks.lagMs(0, 'r1', 1000)).toBe(0);
  });

  it('wakes a waiting write when the replicas it waits for change, on recheck', async () => {
    const acks = new ReplicaAcks();
    acks.note(0, 'r1', 7n);
    let replicas = ['r1', 'r2'];
    const waiting = acks.wait(0, 7n, 'all', () => replicas, 10_000);
    // r2 lets the partition go: no request from anyone says so.
    replicas = ['r1'];
    acks.recheck();
    expect(await waiting).toBe(true);
  });

  it('wakes a waiting write on the acknowledging fetch, and times out otherwise', async () => {
    const acks = new ReplicaAcks();
    const waiting = acks.wait(0, 7n, 'one', () => ['r1'], 10_000);
    acks.note(0, 'r1', 6n);
    acks.note(1, 'r1', 9n);
    acks.note(0, 'r1', 7n);
    expect(await waiting).toBe(true);
    expect(await acks.wait(0, 8n, 'all', () => ['r1'], 10)).toBe(false);
    // An older fetch arriving late never moves the acknowledgement back.
    acks.note(0, 'r1', 3n);
    expect(acks.of(0).get('r1')).toBe(7n);
  });
});
