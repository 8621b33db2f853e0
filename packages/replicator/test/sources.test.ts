import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { FEED_CONTENT_TYPE, httpFeedSource } from '@pfs/replicator';
import { afterEach, describe, expect, it } from 'vitest';

const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0)) await close();
});

/** A feed that answers every request with no records and remembers the query it got. */
async function recordingFeed() {
  const queries: URLSearchParams[] = [];
  const server = createServer((request, response) => {
    queries.push(new URL(request.url ?? '/', 'http://x').searchParams);
    response.writeHead(200, { 'content-type': FEED_CONTENT_TYPE, 'x-pfs-last-txid': '0' }).end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  closers.push(() => new Promise((resolve) => server.close(() => resolve())));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}/v1/partitions/0/records`, queries };
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
});
