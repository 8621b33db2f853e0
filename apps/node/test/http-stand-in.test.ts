import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { type AddressInfo, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ChangelogError } from '@pfs/changelog-generator';
import { compareStorePaths, initStore, partitionOf, type StagedFile } from '@pfs/filestore';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { AgentState } from '../src/agent-state.ts';
import { bodyBalanceAfter, buildHttpServer, nextChunkDeadline, withBodyLimits } from '../src/http.ts';

const dirs: string[] = [];
const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

/**
 * The HTTP API over a stand-in node that masters partition 0 and may be bulk-copying its store;
 * `deletes` records what reached the changelog generator, which logs each as record `txid`.
 * `node.writable` says whether it still masters the partition; `waitForAcks` stands for its
 * replicas' acknowledgements.
 */
async function server(
  copy: { running: boolean },
  node: {
    writable: boolean;
    generation?: bigint;
    waitForAcks?: () => Promise<boolean>;
    lostAt?: (txid: bigint) => bigint | undefined;
  } = { writable: true },
  layout: {
    partitions: number;
    servesReads: number[];
    /** How the replica of partition p (any but 0) catches up with its master when asked. */
    catchUp?: (partition: number) => Promise<boolean>;
    bodyIdleTimeoutMs?: number;
    bodyMinBytesPerSecond?: number;
    /** Partitions whose reads are refused while a former master checks its store. */
    readsRefused?: number[];
  } = { partitions: 1, servesReads: [0] },
) {
  const dataDir = await mkdtemp(join(tmpdir(), 'pfs-store-copy-'));
  dirs.push(dataDir);
  const deletes: string[] = [];
  const state = {
    config: {
      dataDir,
      partitions: layout.partitions,
      ackMode: 'local',
      ackTimeoutMs: 1000,
      maxFileBytes: 1024,
      bodyIdleTimeoutMs: layout.bodyIdleTimeoutMs ?? 30_000,
      bodyMinBytesPerSecond: layout.bodyMinBytesPerSecond ?? 240,
      nodeId: 'n1',
    },
    logs: Array.from({ length: layout.partitions }, () => ({
      lastTxid: (1n << 32n) | 8n,
      waitForRecordsAfter: async () => false,
    })),
    controllers: Array.from({ length: layout.partitions }, (_, partition) => ({
      partition,
      writable: () => partition === 0 && node.writable,
      // The stand-in generator logs every record in generation 1.
      get generation() {
        return node.generation ?? 1n;
      },
      role: partition === 0 ? 'master' : 'replica',
      catchUpWithMaster: async () => (await layout.catchUp?.(partition)) ?? false,
      checkLog: () => {},
      holds: layout.servesReads.includes(partition),
      servesReads: layout.servesReads.includes(partition),
      readsRefused: layout.readsRefused?.includes(partition) ?? false,
      get copyingStore() {
        return copy.running;
      },
    })),
    generator: {
      commitPut: async (staged: StagedFile) => {
        const info = await staged.commit();
        const { path, size, sha256 } = staged;
        return { txid: (1n << 32n) | 8n, kind: 'put', path, size, mtimeNs: info.mtimeNs, sha256 };
      },
      commitDelete: async (path: string) => {
        deletes.push(path);
        if (node.waitForAcks === undefined) throw new Error('stand-in generator');
        return { txid: (1n << 32n) | 7n, kind: 'delete', path, size: 0n, mtimeNs: 0n, sha256: '' };
      },
    },
    waitForAcks: async () => (await node.waitForAcks?.()) ?? false,
    metrics: {
      writes: { inc: () => {} },
      writeBytes: { inc: () => {} },
      conflictWaits: { inc: () => {} },
      readDigests: { inc: () => {} },
    },
    masterOf: () => ({ nodeId: 'n1', host: '127.0.0.1', httpPort: 1 }),
    lostAt: (_partition: number, txid: bigint) => node.lostAt?.(txid),
  } as unknown as AgentState;
  const app = await buildHttpServer(state, pino({ level: 'silent' }));
  return { app, deletes, dataDir, state };
}

/** `method`s on /v1/files/a.txt each answer 503, retry-after 1 and (but HEAD's) `code`, `message`. */
async function expectRetryLater(
  app: Awaited<ReturnType<typeof server>>['app'],
  methods: readonly ('PUT' | 'DELETE' | 'GET' | 'HEAD')[],
  code: string,
  message?: RegExp,
) {
  for (const method of methods) {
    const refused = await app.inject({
      method,
      url: '/v1/files/a.txt',
      payload: method === 'PUT' ? 'x' : undefined,
    });
    expect(refused.statusCode).toBe(503);
    expect(refused.headers['retry-after']).toBe('1');
    if (method === 'HEAD') continue;
    expect(refused.json()).toMatchObject({ code });
    if (message !== undefined) expect(refused.json().message).toMatch(message);
  }
}

describe('writes on a master whose node is bulk-copying its store', () => {
  it('are refused with 503 STORE_COPY until the copy ends', async () => {
    const copy = { running: true };
    const { app, deletes } = await server(copy);
    try {
      await expectRetryLater(app, ['PUT', 'DELETE'], 'STORE_COPY');
      expect(deletes).toEqual([]);
      copy.running = false;
      await app.inject({ method: 'DELETE', url: '/v1/files/a.txt' });
      expect(deletes).toEqual(['a.txt']);
    } finally {
      await app.close();
    }
  });
});

describe('a put told apart before its body is read', () => {
  it('answers a malformed content-sha256 or a declared size over the limit at once, and takes any content type', async () => {
    const { app, dataDir } = await server({ running: false });
    await mkdir(join(dataDir, 'filestore'));
    try {
      const badHash = await app.inject({
        method: 'PUT',
        url: '/v1/files/a.txt',
        payload: 'x',
        headers: { 'content-sha256': 'abc' },
      });
      expect(badHash.statusCode).toBe(400);
      expect(badHash.json()).toMatchObject({ code: 'BAD_CONTENT_SHA256' });
      expect(badHash.json().message).toBe(
        'content-sha256 must be the content\'s sha-256 as 64 hex digits, not "abc"',
      );
      const tooLarge = await app.inject({ method: 'PUT', url: '/v1/files/a.txt', payload: 'x'.repeat(2048) });
      expect(tooLarge.statusCode).toBe(413);
      expect(tooLarge.json().message).toBe(
        '"a.txt" is 2048 bytes, over the 1024-byte limit: split it or raise maxFileBytes',
      );
      expect(await readdir(join(dataDir, 'filestore'))).toEqual([]);
      // Sent as is over a socket (inject, like fetch, would drop the fragment first).
      await app.listen({ port: 0, host: '127.0.0.1' });
      const rawHash = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = request(
          {
            host: '127.0.0.1',
            port: (app.server.address() as { port: number }).port,
            method: 'PUT',
            path: '/v1/files/a#b',
          },
          (res) => {
            let body = '';
            res.on('data', (chunk: Buffer) => {
              body += chunk;
            });
            res.on('end', () => resolve({ status: res.statusCode!, body }));
          },
        );
        req.once('error', reject);
        req.end('x');
      });
      expect(rawHash.status).toBe(400);
      expect(JSON.parse(rawHash.body)).toMatchObject({ code: 'PATH_RAW_HASH' });
      expect(await readdir(join(dataDir, 'filestore'))).toEqual([]);
      for (const type of [
        '',
        'text',
        'a/b c',
        'a/b/c',
        'text/plain,text/html',
        'image/jpeg',
        'application/json',
      ]) {
        const stored = await app.inject({
          method: 'PUT',
          url: '/v1/files/b.txt',
          payload: '{"x":1}',
          headers: { 'content-type': type },
        });
        expect({ type, status: stored.statusCode }).toEqual({ type, status: 201 });
      }
    } finally {
      await app.close();
    }
  });
});

describe('a write waiting for its replicas', () => {
  it('is answered OUTCOME_UNKNOWN, not ACK_TIMEOUT, when mastership was lost meanwhile', async () => {
    const node = {
      writable: true,
      // No replica acknowledged it, and the node was fenced while it waited.
      waitForAcks: async () => {
        node.writable = false;
        return false;
      },
    };
    const { app, deletes } = await server({ running: false }, node);
    try {
      const answer = await app.inject({
        method: 'DELETE',
        url: '/v1/files/a.txt',
        headers: { 'x-pfs-ack': 'one' },
      });
      expect(deletes).toEqual(['a.txt']);
      expect(answer.statusCode).toBe(503);
      expect(answer.json()).toMatchObject({ code: 'OUTCOME_UNKNOWN', txid: '4294967303' });
      expect(answer.json().message).toMatch(/read the path back from the new master/);
      // Still master: the replicas are only late.
      node.writable = true;
      node.waitForAcks = async () => false;
      const late = await app.inject({
        method: 'DELETE',
        url: '/v1/files/b.txt',
        headers: { 'x-pfs-ack': 'one' },
      });
      expect(late.statusCode).toBe(504);
      expect(late.json()).toMatchObject({ code: 'ACK_TIMEOUT' });
    } finally {
      await app.close();
    }
  });

  it('is answered OUTCOME_UNKNOWN, not 200, when its ack came after mastership was lost', async () => {
    const node = {
      writable: true,
      // A replica acknowledged it, but only once the node was fenced: the vote that follows may
      // rank the members before that replica reports it.
      waitForAcks: async () => {
        node.writable = false;
        return true;
      },
    };
    const { app } = await server({ running: false }, node);
    try {
      const answer = await app.inject({
        method: 'DELETE',
        url: '/v1/files/a.txt',
        headers: { 'x-pfs-ack': 'one' },
      });
      expect(answer.statusCode).toBe(503);
      expect(answer.json()).toMatchObject({ code: 'OUTCOME_UNKNOWN' });
      node.writable = true;
      node.waitForAcks = async () => true;
      const acked = await app.inject({
        method: 'DELETE',
        url: '/v1/files/b.txt',
        headers: { 'x-pfs-ack': 'one' },
      });
      expect(acked.statusCode).toBe(200);
    } finally {
      await app.close();
    }
  });
});

describe('a write waiting for its replicas, in another term', () => {
  it('is answered OUTCOME_UNKNOWN when the node was fenced and elected again meanwhile', async () => {
    const node: { writable: boolean; generation: bigint; waitForAcks: () => Promise<boolean> } = {
      writable: true,
      generation: 1n,
      // Fenced, its record cut back, then master again in generation 3: writable, and its
      // replicas' acks (txids of generation 3) are past the record's 1:7.
      waitForAcks: async () => {
        node.generation = 3n;
        return true;
      },
    };
    const { app } = await server({ running: false }, node);
    try {
      const answer = await app.inject({
        method: 'DELETE',
        url: '/v1/files/a.txt',
        headers: { 'x-pfs-ack': 'one' },
      });
      expect(answer.statusCode).toBe(503);
      expect(answer.json()).toMatchObject({ code: 'OUTCOME_UNKNOWN', txidText: '1:7' });
      // Still in generation 3, a record of generation 1 is not this term's either.
      const local = await app.inject({ method: 'DELETE', url: '/v1/files/b.txt' });
      expect(local.statusCode).toBe(503);
    } finally {
      await app.close();
    }
  });
});

describe('the ack headers of a write', () => {
  it('refuses an unknown ack mode, and an ack timeout that is not a whole number of ms up to 600000, empty included', async () => {
    const { app } = await server({ running: false }, { writable: true, waitForAcks: async () => true });
    try {
      for (const headers of [
        { 'x-pfs-ack': 'some' },
        { 'x-pfs-ack-timeout-ms': '' },
        { 'x-pfs-ack-timeout-ms': ' ' },
        { 'x-pfs-ack-timeout-ms': 'abc' },
        { 'x-pfs-ack-timeout-ms': '-1' },
        { 'x-pfs-ack-timeout-ms': '1.5' },
        { 'x-pfs-ack-timeout-ms': '600001' },
      ]) {
        const refused = await app.inject({ method: 'DELETE', url: '/v1/files/a.txt', headers });
        expect({ headers, status: refused.statusCode, code: refused.json().code }).toEqual({
          headers,
          status: 400,
          code: 'x-pfs-ack' in headers ? 'BAD_ACK_MODE' : 'BAD_ACK_TIMEOUT',
        });
      }
      const taken = await app.inject({
        method: 'DELETE',
        url: '/v1/files/a.txt',
        headers: { 'x-pfs-ack': 'local', 'x-pfs-ack-timeout-ms': '0' },
      });
      expect(taken.statusCode).toBe(200);
    } finally {
      await app.close();
    }
  });
});

describe('listing', () => {
  it('refuses a limit that is not a whole number, with 400 BAD_LIMIT, and takes one out of bounds as the nearest', async () => {
    const { app, dataDir } = await server({ running: false });
    try {
      await initStore(join(dataDir, 'filestore'));
      for (const name of ['a', 'b', 'c']) await writeFile(join(dataDir, 'filestore', name), name);
      for (const limit of ['1.5', 'abc', '-1', '']) {
        const refused = await app.inject({ method: 'GET', url: `/v1/files?limit=${limit}` });
        expect(refused.statusCode).toBe(400);
        expect(refused.json()).toMatchObject({ code: 'BAD_LIMIT' });
        expect(refused.json().message).toMatch(/whole number of entries, 1 to 10000/);
      }
      // A whole number past the bounds is taken as the nearest, whatever its length.
      for (const [limit, listed] of [
        ['0', 1],
        ['12345678901234567890', 3],
      ] as const) {
        const clamped = await app.inject({ method: 'GET', url: `/v1/files?limit=${limit}` });
        expect(clamped.statusCode).toBe(200);
        expect(clamped.json().entries).toHaveLength(listed);
      }
      const page = await app.inject({ method: 'GET', url: '/v1/files?limit=2' });
      expect(page.json()).toMatchObject({ next: 'b' });
      expect(page.json().entries.map((e: { path: string }) => e.path)).toEqual(['a', 'b']);
    } finally {
      await app.close();
    }
  });
});

describe('a node still starting', () => {
  it('answers reads and writes with 503 STARTING until its partitions are set up', async () => {
    const { app, deletes, state } = await server({ running: false });
    const controllers = state.controllers.splice(0);
    try {
      await expectRetryLater(
        app,
        ['PUT', 'DELETE', 'GET', 'HEAD'],
        'STARTING',
        /this node is starting .*partition 0.*retry shortly/,
      );
      expect(deletes).toEqual([]);
      state.controllers.push(...controllers);
      await app.inject({ method: 'DELETE', url: '/v1/files/a.txt' });
      expect(deletes).toEqual(['a.txt']);
    } finally {
      await app.close();
    }
  });
});

describe('an unknown route', () => {
  it('answers 404 with the code and message every error of the API has', async () => {
    const { app } = await server({ running: false });
    try {
      const response = await app.inject({ method: 'GET', url: '/v1/file/a.txt?x=1' });
      expect(response.statusCode).toBe(404);
      expect(response.json()).toEqual({
        code: 'NO_ROUTE',
        message: 'no GET /v1/file/a.txt in this API: see docs/protocol.md (files are under /v1/files/)',
      });
    } finally {
      await app.close();
    }
  });
});

describe('reads of a store that is not in place', () => {
  it('answer 503 STORE_MISSING, not a 404 or an empty listing, while the store is unmounted', async () => {
    const { app, dataDir } = await server({ running: false });
    try {
      // No sentinel: the store's file system is not mounted there.
      await mkdir(join(dataDir, 'filestore'), { recursive: true });
      for (const method of ['GET', 'HEAD'] as const) {
        const read = await app.inject({ method, url: '/v1/files/kept.txt' });
        expect(read.statusCode).toBe(503);
        expect(read.headers['retry-after']).toBe('1');
      }
      const listed = await app.inject({ method: 'GET', url: '/v1/files' });
      expect(listed.statusCode).toBe(503);
      expect(listed.json().code).toBe('STORE_MISSING');
      await initStore(join(dataDir, 'filestore'));
      expect((await app.inject({ method: 'GET', url: '/v1/files/kept.txt' })).statusCode).toBe(404);
      expect((await app.inject({ method: 'GET', url: '/v1/files' })).json().entries).toEqual([]);
    } finally {
      await app.close();
    }
  });
});

describe('a listing on a former master checking its store', () => {
  it('leaves out the partition whose reads are refused', async () => {
    const { app, dataDir } = await server(
      { running: false },
      { writable: true },
      { partitions: 2, servesReads: [0, 1], readsRefused: [1] },
    );
    try {
      await initStore(join(dataDir, 'filestore'));
      const names = ['a', 'b', 'c', 'd', 'e', 'f'];
      for (const name of names) await writeFile(join(dataDir, 'filestore', name), name);
      const listed = (await app.inject({ method: 'GET', url: '/v1/files' })).json();
      expect(listed.partitions).toEqual([0]);
      expect(listed.entries.map((e: { path: string }) => e.path)).toEqual(
        names.filter((n) => partitionOf(n, 2) === 0),
      );
    } finally {
      await app.close();
    }
  });
});

describe('a read after a write that was lost in a failover', () => {
  it('answers 410 TXID_NOT_KEPT rather than wait for it or serve what is there', async () => {
    // Generation 1 ended at 1:5; the node's log is at 1:8 (the stand-in's).
    const { app, dataDir } = await server(
      { running: false },
      {
        writable: true,
        lostAt: (txid) => (txid >> 32n === 1n && txid > ((1n << 32n) | 5n) ? (1n << 32n) | 5n : undefined),
      },
    );
    try {
      await initStore(join(dataDir, 'filestore'));
      await writeFile(join(dataDir, 'filestore', 'a.txt'), 'the version before it');
      const lost = await app.inject({ method: 'GET', url: '/v1/files/a.txt?minTxid=1:9&waitMs=0' });
      expect(lost.statusCode).toBe(410);
      expect(lost.json()).toEqual({
        code: 'TXID_NOT_KEPT',
        message:
          'write 1:9 was not kept: generation 1 of partition 0 ended at 1:5 when its master failed over before a replica had it; write it again',
      });
      expect((await app.inject({ method: 'GET', url: '/v1/files/a.txt?minTxid=1:4' })).statusCode).toBe(200);
    } finally {
      await app.close();
    }
  });
});

describe('a reader that stops reading', () => {
  it('is dropped once nothing has gone out for the body idle limit', async () => {
    const { app, dataDir } = await server(
      { running: false },
      { writable: true },
      { partitions: 1, servesReads: [0], bodyIdleTimeoutMs: 300 },
    );
    await initStore(join(dataDir, 'filestore'));
    // Far more than the socket buffers hold: the stream waits on the reader.
    await writeFile(join(dataDir, 'filestore', 'big.bin'), Buffer.alloc(32 * 1024 * 1024, 1));
    await app.listen({ port: 0, host: '127.0.0.1' });
    const socket = connect((app.server.address() as AddressInfo).port, '127.0.0.1');
    try {
      await new Promise<void>((resolve) => socket.once('connect', resolve));
      let received = 0;
      socket.on('data', (chunk: Buffer) => {
        received += chunk.length;
      });
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      socket.on('error', () => {});
      socket.write('GET /v1/files/big.bin HTTP/1.1\r\nhost: x\r\n\r\n');
      await new Promise<void>((resolve) => socket.once('data', () => resolve()));
      // Stops reading for a while, well past the limit, then reads what is left.
      socket.pause();
      await pause(1_500);
      socket.resume();
      const ended = await Promise.race([closed.then(() => true), pause(10_000).then(() => false)]);
      expect(ended).toBe(true);
      // What the buffers held when the node dropped it, not the whole file.
      expect(received).toBeLessThan(32 * 1024 * 1024);
    } finally {
      socket.destroy();
      await app.close();
    }
  });
});

describe('a resumed download (If-Range)', () => {
  it('gets the range only while the file is the version it names, else the whole file', async () => {
    const { app, dataDir } = await server({ running: false });
    try {
      await initStore(join(dataDir, 'filestore'));
      await writeFile(join(dataDir, 'filestore', 'v.mp4'), 'first version');
      const first = await app.inject({ method: 'GET', url: '/v1/files/v.mp4' });
      expect(first.body).toBe('first version');
      const etag = first.headers.etag as string;
      const resumed = await app.inject({
        method: 'GET',
        url: '/v1/files/v.mp4',
        headers: { range: 'bytes=6-', 'if-range': etag },
      });
      expect(resumed.statusCode).toBe(206);
      expect(resumed.body).toBe('version');
      // Replaced since: its tail would be joined to the old head.
      await writeFile(join(dataDir, 'filestore', 'v.mp4'), 'second, longer version');
      for (const ifRange of [etag, first.headers['last-modified'] as string]) {
        const whole = await app.inject({
          method: 'GET',
          url: '/v1/files/v.mp4',
          headers: { range: 'bytes=6-', 'if-range': ifRange },
        });
        expect(whole.statusCode).toBe(200);
        expect(whole.body).toBe('second, longer version');
      }
    } finally {
      await app.close();
    }
  });
});

describe('listing the partitions a client names', () => {
  it('lists the files of those it serves among them, names them, and refuses a bad list with 400 BAD_PARTITIONS', async () => {
    const { app, dataDir } = await server(
      { running: false },
      { writable: true },
      { partitions: 3, servesReads: [0, 1] },
    );
    try {
      await initStore(join(dataDir, 'filestore'));
      const byPartition = new Map<number, string[]>([
        [0, []],
        [1, []],
        [2, []],
      ]);
      for (let i = 0; i < 30; i++) {
        await writeFile(join(dataDir, 'filestore', `f${i}`), 'x');
        byPartition.get(partitionOf(`f${i}`, 3))!.push(`f${i}`);
      }
      const list = async (query: string) => {
        const answer = await app.inject({ method: 'GET', url: `/v1/files?limit=100${query}` });
        return answer.json() as { entries: { path: string }[]; partitions: number[]; partitionCount: number };
      };
      const sorted = (paths: string[]) => [...paths].sort(compareStorePaths);
      const all = await list('');
      expect(all.partitions).toEqual([0, 1]);
      expect(all.partitionCount).toBe(3);
      expect(all.entries.map((e) => e.path)).toEqual(
        sorted([...byPartition.get(0)!, ...byPartition.get(1)!]),
      );
      // Partition 2 is named but not served here: left to the nodes that serve it.
      const some = await list('&partitions=1,2');
      expect(some.partitions).toEqual([1]);
      expect(some.entries.map((e) => e.path)).toEqual(sorted(byPartition.get(1)!));
      for (const bad of ['x', '1,', '3', '0,7', '']) {
        const refused = await app.inject({ method: 'GET', url: `/v1/files?partitions=${bad}` });
        expect(refused.statusCode).toBe(400);
        expect(refused.json()).toMatchObject({ code: 'BAD_PARTITIONS' });
        expect(refused.json().message).toMatch(/comma-separated partition numbers, 0 to 2/);
      }
    } finally {
      await app.close();
    }
  });
});

describe('nextChunkDeadline and bodyBalanceAfter', () => {
  const limits = { idleMs: 30_000, minBytesPerSecond: 100 };
  it.each([
    ['a body in credit gets the idle limit', 0, { ms: 30_000, cause: 'idle' }],
    ['one that waited more than its bytes earned gets what is left', -28_000, { ms: 2_000, cause: 'slow' }],
    ['one that waited past it gets nothing', -45_000, { ms: 0, cause: 'slow' }],
  ])('%s', (_, balanceMs, want) => {
    expect(nextChunkDeadline(balanceMs, limits)).toEqual(want);
  });

  it('earns 1000 / minBytesPerSecond ms a byte, spends each wait, and banks at most ten idle limits', () => {
    expect(bodyBalanceAfter(0, 5_000, 100, limits)).toBe(-4_000);
    expect(bodyBalanceAfter(-4_000, 1_000, 1_000, limits)).toBe(5_000);
    // 100 MB earn 11 days, of which 300 s are kept.
    expect(bodyBalanceAfter(0, 1_000, 100_000_000, limits)).toBe(300_000);
  });
});

describe('withBodyLimits', () => {
  // On fake clocks (setTimeout and performance.now, which is all it uses): a real one, on a
  // loaded machine, may stall past the 60–100 ms limits between two chunks meant to be in time.
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
  });
  afterEach(() => {
    vi.useRealTimers();
  });
  const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
  /** Runs `consume` while the fake clocks advance, in steps, until it is done. */
  async function onFakeTime(consume: () => Promise<void>): Promise<void> {
    let done = false;
    const running = consume().finally(() => {
      done = true;
    });
    for (let i = 0; i < 10_000 && !done; i++) await vi.advanceTimersByTimeAsync(5);
    await running;
  }
  async function* chunks(gapsMs: number[]) {
    for (const gap of gapsMs) {
      await pause(gap);
      yield 'x';
    }
  }

  it('counts only the time the source takes, not the time spent on each chunk', async () => {
    const stalls: string[] = [];
    let got = 0;
    const limits = { idleMs: 60, minBytesPerSecond: 1 };
    await onFakeTime(async () => {
      for await (const _ of withBodyLimits(chunks([5, 5, 5]), limits, (cause) => stalls.push(cause))) {
        got++;
        await pause(100);
      }
    });
    expect(got).toBe(3);
    expect(stalls).toEqual([]);
  });

  it('calls onStall when the next chunk is late', async () => {
    const stalls: string[] = [];
    const limits = { idleMs: 60, minBytesPerSecond: 1 };
    await onFakeTime(async () => {
      for await (const _ of withBodyLimits(chunks([5, 150]), limits, (cause) => stalls.push(cause))) {
      }
    });
    expect(stalls).toEqual(['idle']);
  });

  it('calls onStall when a trickle follows a fast start: what a start earns is capped', async () => {
    const stalls: string[] = [];
    async function* burstThenTrickle() {
      yield 'x'.repeat(1_000_000);
      for (let i = 0; i < 200; i++) {
        await pause(40);
        if (stalls.length > 0) return;
        yield 'x';
      }
    }
    // The burst earns 10 000 s, of which 1 s is banked; each byte earns 10 ms and each wait
    // spends 40: the bank runs out after some 35 bytes, where 200 would take 8 s.
    const limits = { idleMs: 100, minBytesPerSecond: 100 };
    await onFakeTime(async () => {
      for await (const _ of withBodyLimits(burstThenTrickle(), limits, (cause) => stalls.push(cause))) {
      }
    });
    expect(stalls[0]).toBe('slow');
  });

  it('calls onStall when the chunks keep within the idle limit but come too slowly in all', async () => {
    const stalls: string[] = [];
    // 1 byte per 40 ms against 100 ms for the first one and 10 ms per byte received.
    const limits = { idleMs: 100, minBytesPerSecond: 100 };
    await onFakeTime(async () => {
      for await (const _ of withBodyLimits(chunks([40, 40, 40, 40, 40]), limits, (cause) =>
        stalls.push(cause),
      )) {
      }
    });
    expect(stalls[0]).toBe('slow');
  });
});

describe('a body that trickles in', () => {
  it('is dropped once it comes slower than the minimum rate, though each byte is inside the idle limit', async () => {
    const { app, dataDir } = await server(
      { running: false },
      { writable: true },
      { partitions: 1, servesReads: [0], bodyIdleTimeoutMs: 400, bodyMinBytesPerSecond: 100 },
    );
    await mkdir(join(dataDir, 'filestore'), { recursive: true });
    await app.listen({ port: 0, host: '127.0.0.1' });
    const socket = connect((app.server.address() as AddressInfo).port, '127.0.0.1');
    await new Promise<void>((resolve) => socket.once('connect', resolve));
    let answer = '';
    socket.on('data', (data) => {
      answer += data.toString();
    });
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    socket.write('PUT /v1/files/trickled HTTP/1.1\r\nhost: x\r\ncontent-length: 12\r\n\r\n');
    // A byte every 150 ms: 12 bytes in 1.8 s, each well inside the 400 ms idle limit, but the
    // body has earned 400 ms + 10 ms per byte.
    let sent = 0;
    const trickle = setInterval(() => {
      if (sent < 12 && !socket.destroyed) socket.write('y', () => {});
      sent++;
    }, 150);
    try {
      await closed;
    } finally {
      clearInterval(trickle);
      socket.destroy();
      await app.close();
    }
    expect(sent).toBeLessThan(12);
    expect(answer).toBe('');
    // Its temp file goes as the write unwinds, just after the connection closed.
    await vi.waitFor(async () => expect(await readdir(join(dataDir, 'filestore'))).toEqual([]), {
      timeout: 5000,
      interval: 20,
    });
  });
});

describe('a put refused for a file or directory of another partition in its way', () => {
  /** A name (under `dir`, if given) that hashes to `partition` of 4. */
  const nameIn = (partition: number, dir?: string) => {
    for (let i = 0; ; i++) {
      const name = dir === undefined ? `n${i}` : `${dir}/n${i}`;
      if (partitionOf(name, 4) === partition) return name;
    }
  };

  /**
   * A master of partition 0, replica of 1 to 3, whose store holds `files`. Asked to catch up, the
   * replica of p deletes `deletedByMaster[p]` (which its master deleted) and says it caught up;
   * with nothing to delete, it says it is still behind.
   */
  async function master(files: string[], deletedByMaster: Record<number, string>) {
    const asked: number[] = [];
    let store = '';
    const { app, dataDir, state } = await server(
      { running: false },
      { writable: true },
      {
        partitions: 4,
        servesReads: [0, 1, 2, 3],
        catchUp: async (partition) => {
          asked.push(partition);
          const deleted = deletedByMaster[partition];
          if (deleted === undefined) return false;
          await rm(join(store, deleted));
          return true;
        },
      },
    );
    store = join(dataDir, 'filestore');
    for (const file of files) {
      await mkdir(join(store, file, '..'), { recursive: true });
      await writeFile(join(store, file), `${file} before the put`);
    }
    const put = async (path: string) =>
      app.inject({ method: 'PUT', url: `/v1/files/${path}`, payload: `${path} put` });
    return { app, asked, store, put, state };
  }

  it("goes through once this node's replica of that partition has caught up and removed the file in its way", async () => {
    const file = nameIn(1);
    const { app, asked, store, put } = await master([file], { 1: file });
    try {
      const under = nameIn(0, file);
      expect((await put(under)).statusCode).toBe(201);
      expect(asked).toEqual([1]);
      expect(await readFile(join(store, under), 'utf8')).toBe(`${under} put`);
    } finally {
      await app.close();
    }
  });

  it('goes through once the files of the directory at its path are gone, replacing it', async () => {
    const target = nameIn(0);
    const inside = nameIn(2, target);
    const { app, asked, store, put } = await master([inside], { 2: inside });
    try {
      expect((await put(target)).statusCode).toBe(201);
      expect(asked).toEqual([2]);
      expect(await readFile(join(store, target), 'utf8')).toBe(`${target} put`);
    } finally {
      await app.close();
    }
  });

  it('answers why the commit tried again failed, when that is not the conflict', async () => {
    const target = nameIn(0);
    const inside = nameIn(2, target);
    const { app, put, state } = await master([inside], { 2: inside });
    try {
      let commits = 0;
      state.generator.commitPut = async (staged) => {
        if (++commits === 1) return staged.commit().then(() => expect.unreachable());
        throw new ChangelogError(
          'NOT_LOGGED',
          `${JSON.stringify(staged.path)} was replaced on this master, but logging it failed`,
          0,
        );
      };
      const answer = await put(target);
      expect(commits).toBe(2);
      expect(answer.statusCode).toBe(507);
      expect(answer.json()).toMatchObject({ code: 'NOT_LOGGED' });
    } finally {
      await app.close();
    }
  });

  it('is refused at once for a file of a partition this node masters, and after the wait for one still behind', async () => {
    const ours = nameIn(0);
    const theirs = nameIn(3);
    const { app, asked, store, put } = await master([ours, theirs], {});
    try {
      const refused = await put(nameIn(0, ours));
      expect(refused.statusCode).toBe(409);
      expect(refused.json()).toMatchObject({ code: 'PATH_CONFLICT' });
      expect(asked).toEqual([]);
      const behind = await put(nameIn(0, theirs));
      expect(behind.statusCode).toBe(409);
      expect(asked).toEqual([3]);
      expect(await readFile(join(store, theirs), 'utf8')).toBe(`${theirs} before the put`);
      // A directory holding that partition's file at the path: the body was staged beside it,
      // kept through the wait, and is discarded with the refusal.
      const over = nameIn(0, 'd');
      const inside = nameIn(3, over);
      await mkdir(join(store, over), { recursive: true });
      await writeFile(join(store, inside), 'not deleted on its master yet');
      const overBehind = await put(over);
      expect(overBehind.statusCode).toBe(409);
      expect(overBehind.json()).toMatchObject({ code: 'PATH_IS_DIRECTORY' });
      expect(asked).toEqual([3, 3]);
      expect(await readdir(join(store, 'd'))).toEqual([over.slice(2)]);
      expect(await readFile(join(store, inside), 'utf8')).toBe('not deleted on its master yet');
    } finally {
      await app.close();
    }
  });
});
