import { createServer } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { FEED_CONTENT_TYPE, httpFeedSource } from '@pfs/replicator';
import { afterEach, describe, expect, it } from 'vitest';

const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0)) await close();
});

/**
 * A feed that answers every request with no records and remembers the query it got and the
 * connection it came on. `dropReused`: a request that is not its connection's first gets the
 * connection closed without an answer, as when a server's keep-alive timeout strikes.
 * `hold`: requests are never answered (a long poll).
 */
async function recordingFeed(behaviour: { dropReused?: boolean; hold?: boolean } = {}) {
  const queries: URLSearchParams[] = [];
  const connections: number[] = [];
  const served = new WeakMap<Socket, number>();
  let nextConnection = 0;
  const server = createServer((request, response) => {
    queries.push(new URL(request.url ?? '/', 'http://x').searchParams);
    const socket = request.socket;
    const connection = served.get(socket) ?? nextConnection++;
    const reused = served.has(socket);
    served.set(socket, connection);
    connections.push(connection);
    if (behaviour.hold) return;
    if (behaviour.dropReused && reused) {
      socket.destroy();
      return;
    }
    response.writeHead(200, { 'content-type': FEED_CONTENT_TYPE, 'x-pfs-last-txid': '0' }).end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  closers.push(
    () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}/v1/partitions/0/records`, queries, connections };
}

describe('httpFeedSource', () => {
  it('names the replica (its acknowledgement) only when asked to acknowledge', async () => {
    const feed = await recordingFeed();
    const source = httpFeedSource({ feedUrl: feed.url, filesSource: '/nowhere', replicaId: 'r1' });
    const signal = new AbortController().signal;
    await source.fetch(7n, { waitMs: 0, maxRecords: 10, signal, acknowledges: true });
    await source.fetch(9n, { waitMs: 0, maxRecords: 10, signal });
    await source.fetch(11n, { waitMs: 0, maxRecords: 10, signal, acknowledges: false });
    expect(feed.queries.map((q) => [q.get('after'), q.get('replica')])).toEqual([
      ['7', 'r1'],
      ['9', null],
      ['11', null],
    ]);
  });

  it('keeps one connection for back-to-back requests', async () => {
    const feed = await recordingFeed();
    const source = httpFeedSource({ feedUrl: feed.url, filesSource: '/nowhere' });
    const signal = new AbortController().signal;
    for (let i = 0; i < 3; i++) await source.fetch(0n, { waitMs: 0, maxRecords: 10, signal });
    expect(feed.connections).toEqual([0, 0, 0]);
  });

  it('asks again on a new connection when a kept one was closed under the request', async () => {
    const feed = await recordingFeed({ dropReused: true });
    const source = httpFeedSource({ feedUrl: feed.url, filesSource: '/nowhere' });
    const signal = new AbortController().signal;
    await source.fetch(0n, { waitMs: 0, maxRecords: 10, signal });
    await expect(source.fetch(5n, { waitMs: 0, maxRecords: 10, signal })).resolves.toMatchObject({
      records: [],
      lastTxid: 0n,
    });
    expect(feed.connections).toEqual([0, 0, 1]);
    expect(feed.queries.map((q) => q.get('after'))).toEqual(['0', '5', '5']);
  });

  it('is unreachable when nothing listens, and aborted by its signal while it waits', async () => {
    const closed = await recordingFeed();
    const url = closed.url;
    await closers.shift()?.();
    const signal = new AbortController().signal;
    await expect(
      httpFeedSource({ feedUrl: url, filesSource: '/nowhere' }).fetch(0n, {
        waitMs: 0,
        maxRecords: 10,
        signal,
      }),
    ).rejects.toMatchObject({
      code: 'SOURCE_UNAVAILABLE',
      message: expect.stringContaining('is unreachable'),
    });

    const held = await recordingFeed({ hold: true });
    const controller = new AbortController();
    const waiting = httpFeedSource({ feedUrl: held.url, filesSource: '/nowhere' }).fetch(0n, {
      waitMs: 30_000,
      maxRecords: 10,
      signal: controller.signal,
    });
    await expect.poll(() => held.queries.length, { timeout: 10_000 }).toBe(1);
    controller.abort(new Error('switching source'));
    await expect(waiting).rejects.toMatchObject({ name: 'AbortError' });
  });
});
