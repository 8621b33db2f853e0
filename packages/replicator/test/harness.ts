import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ChangelogGenerator } from '@pfs/changelog-generator';
import { initStore, stageFile } from '@pfs/filestore';
import { encodeRecords, FEED_CONTENT_TYPE, parseFeedQuery, readFeed } from '@pfs/replicator';
import { type RsyncDaemonHandle, startRsyncDaemon } from '@pfs/testkit';
import { type LogRecord, TxLog } from '@pfs/txlog';
import { onTestFinished } from 'vitest';

/** A master without the agent: a store, a log, a generator, its feed over HTTP and a real rsync daemon. */
export interface TestMaster {
  root: string;
  log: TxLog;
  generation: bigint;
  feedUrl: string;
  filesSource: string;
  daemon: RsyncDaemonHandle;
  put(path: string, content: string | Buffer): Promise<LogRecord>;
  remove(path: string): Promise<LogRecord>;
  close(): Promise<void>;
}

export async function tempDir(prefix: string): Promise<{ dir: string; remove: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

/** A temp dir removed once the test that made it has finished, passed or not. */
export async function testDir(prefix: string): Promise<string> {
  const { dir, remove } = await tempDir(prefix);
  onTestFinished(remove);
  return dir;
}

export async function startTestMaster(generation = 1n): Promise<TestMaster> {
  const { dir, remove } = await tempDir('pfs-master-');
  const root = join(dir, 'filestore');
  await initStore(root);
  const log = await TxLog.open(join(dir, 'changelog', '0'));
  await log.startGeneration(generation);
  const generator = new ChangelogGenerator({ root, partitionCount: 1 });
  await generator.attach(0, log);
  const server: Server = createServer((request, response) => {
    const url = new URL(request.url!, 'http://x');
    const query = parseFeedQuery(Object.fromEntries(url.searchParams));
    const aborted = new AbortController();
    request.once('close', () => aborted.abort());
    readFeed(log, query, aborted.signal).then(
      (records) => {
        response.writeHead(200, {
          'content-type': FEED_CONTENT_TYPE,
          'x-pfs-generation': generation.toString(),
          'x-pfs-last-txid': log.lastTxid.toString(),
        });
        response.end(encodeRecords(records));
      },
      (error: Error) => {
        response.writeHead(500);
        response.end(error.message);
      },
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  const daemon = await startRsyncDaemon({ modules: { filestore: root } });
  return {
    root,
    log,
    generation,
    feedUrl: `http://127.0.0.1:${port}/v1/partitions/0/records`,
    filesSource: daemon.url('filestore'),
    daemon,
    async put(path, content) {
      return generator.commitPut(await stageFile(root, path, Buffer.from(content)));
    },
    remove(path) {
      return generator.commitDelete(path);
    },
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      await daemon.stop();
      await log.close();
      await remove();
    },
  };
}

export async function allRecords(log: TxLog): Promise<LogRecord[]> {
  const out: LogRecord[] = [];
  for await (const record of log.readFrom(0n)) out.push(record);
  return out;
}

export async function until(
  check: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 15_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
