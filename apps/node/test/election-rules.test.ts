import { makeTxId } from '@pfs/txlog';
import { describe, expect, it } from 'vitest';
import {
  behindTheCluster,
  promotionRetryDelayMs,
  retryDelayMs,
  retryUnavailable,
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

describe('retryUnavailable', () => {
  // As rsyncLogSource wraps rsync-invoker's error: the classification of exit 10 names
  // "connection refused or reset" whatever rsync said; its own line is in the stderr.
  const unavailable = (why = 'Connection refused (111)') => {
    const said = `rsync: [Receiver] failed to connect to o (10.0.0.9): ${why}`;
    const cause = Object.assign(
      new Error(
        `socket error (connection refused or reset): check that the rsync daemon runs; rsync said: ${said}`,
      ),
      {
        code: 'RSYNC_FAILED',
        stderr: `${said}\nrsync error: error in socket IO (code 10) at clientserver.c(139)\n`,
      },
    );
    return Object.assign(new Error(`log rsync://o:1/changelog/0/ is unreachable: ${cause.message}`), {
      code: 'SOURCE_UNAVAILABLE',
      cause,
    });
  };

  it("reads the old master's log again while its daemon refuses connections (its node restarting)", async () => {
    let attempts = 0;
    const drained = await retryUnavailable(
      async () => {
        if (++attempts < 3) throw unavailable();
        return 'drained';
      },
      () => {},
    );
    expect(drained).toBe('drained');
    expect(attempts).toBe(3);
  });

  it('gives up at once on any other failure, a source that does not answer, or a lost mastership', async () => {
    let attempts = 0;
    const failing = (error: Error) => async () => {
      attempts++;
      throw error;
    };
    await expect(
      retryUnavailable(failing(Object.assign(new Error('bad feed'), { code: 'BAD_FEED' })), () => {}),
    ).rejects.toMatchObject({ code: 'BAD_FEED' });
    expect(attempts).toBe(1);
    // Its machine down: each attempt would take rsync's connect timeout, and the failover with it.
    for (const why of ['Connection timed out (110)', 'No route to host (113)']) {
      await expect(retryUnavailable(failing(unavailable(why)), () => {})).rejects.toMatchObject({
        code: 'SOURCE_UNAVAILABLE',
      });
    }
    expect(attempts).toBe(3);
    await expect(
      retryUnavailable(failing(unavailable()), () => {
        throw new Error('mastership lost during promotion');
      }),
    ).rejects.toThrow('mastership lost during promotion');
  });
});
