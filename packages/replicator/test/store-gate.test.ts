import { describe, expect, it } from 'vitest';
import { StoreGate } from '../src/store-gate.ts';

/** A run that stays in its section until `release` is called. */
function held(events: string[], name: string) {
  let release!: () => void;
  const done = new Promise<void>((resolve) => {
    release = resolve;
  });
  return {
    run: async () => {
      events.push(`${name} in`);
      await done;
      events.push(`${name} out`);
    },
    release: () => release(),
  };
}

const turn = () => new Promise((resolve) => setImmediate(resolve));

describe('StoreGate', () => {
  it('runs shared sections side by side, and an exclusive one alone', async () => {
    const gate = new StoreGate();
    const events: string[] = [];
    const a = held(events, 'a');
    const b = held(events, 'b');
    const copy = held(events, 'copy');
    const runs = [gate.shared(a.run), gate.shared(b.run), gate.exclusive(copy.run)];
    await turn();
    expect(events).toEqual(['a in', 'b in']);
    a.release();
    await turn();
    expect(events).toEqual(['a in', 'b in', 'a out']);
    b.release();
    await turn();
    expect(events).toEqual(['a in', 'b in', 'a out', 'b out', 'copy in']);
    copy.release();
    await Promise.all(runs);
  });

  it('holds back shared sections that come while an exclusive one waits', async () => {
    const gate = new StoreGate();
    const events: string[] = [];
    const a = held(events, 'a');
    const copy = held(events, 'copy');
    const late = held(events, 'late');
    const runs = [gate.shared(a.run), gate.exclusive(copy.run), gate.shared(late.run)];
    await turn();
    expect(events).toEqual(['a in']);
    a.release();
    await turn();
    expect(events).toEqual(['a in', 'a out', 'copy in']);
    copy.release();
    await turn();
    expect(events.slice(3)).toEqual(['copy out', 'late in']);
    late.release();
    await Promise.all(runs);
  });

  it('ends a wait when its signal aborts, and lets those it held back go', async () => {
    const gate = new StoreGate();
    const events: string[] = [];
    const a = held(events, 'a');
    const late = held(events, 'late');
    const first = gate.shared(a.run);
    const controller = new AbortController();
    const copy = gate.exclusive(async () => {
      events.push('copy in');
    }, controller.signal);
    const after = gate.shared(late.run);
    await turn();
    expect(events).toEqual(['a in']);
    controller.abort(new Error('paused'));
    await expect(copy).rejects.toThrow('paused');
    await turn();
    expect(events).toEqual(['a in', 'late in']);
    a.release();
    late.release();
    await Promise.all([first, after]);
    await expect(gate.exclusive(async () => 'alone', AbortSignal.abort(new Error('no')))).rejects.toThrow(
      'no',
    );
    expect(await gate.exclusive(async () => 'alone')).toBe('alone');
  });

  it('asks an exclusive holder to end early when a preempting shared section waits, and only then', async () => {
    const gate = new StoreGate();
    const events: string[] = [];
    const copy = held(events, 'copy');
    let preempted = 0;
    const copying = gate.exclusive(copy.run, undefined, { onPreempt: () => preempted++ });
    await turn();
    const batch = gate.shared(async () => {
      events.push('batch');
    });
    await turn();
    expect(preempted).toBe(0);
    const drain = gate.shared(
      async () => {
        events.push('drain');
      },
      undefined,
      { preempt: true },
    );
    expect(preempted).toBe(1);
    copy.release();
    await Promise.all([copying, batch, drain]);
    // The drain goes first among those waiting.
    expect(events).toEqual(['copy in', 'copy out', 'drain', 'batch']);
    // Nothing held: nothing to preempt.
    await gate.shared(async () => undefined, undefined, { preempt: true });
    expect(preempted).toBe(1);
  });

  it('lets a preempting shared section go ahead of an exclusive one still waiting', async () => {
    const gate = new StoreGate();
    const events: string[] = [];
    const batch = held(events, 'batch');
    const running = gate.shared(batch.run);
    const copy = gate.exclusive(async () => {
      events.push('copy');
    });
    await turn();
    await gate.shared(
      async () => {
        events.push('drain');
      },
      undefined,
      { preempt: true },
    );
    batch.release();
    await Promise.all([running, copy]);
    expect(events).toEqual(['batch in', 'drain', 'batch out', 'copy']);
  });

  it('gives the section back when its run throws', async () => {
    const gate = new StoreGate();
    await expect(
      gate.exclusive(async () => {
        throw new Error('rsync failed');
      }),
    ).rejects.toThrow('rsync failed');
    expect(await gate.shared(async () => 'next')).toBe('next');
  });
});
