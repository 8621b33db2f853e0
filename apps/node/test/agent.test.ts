import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import {
  type FileHandle,
  mkdir,
  mkdtemp,
  open,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { request } from 'node:http';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Coordinator, keys } from '@pfs/coordinator-etcd';
import { partitionOf } from '@pfs/filestore';
import { decodeRecords } from '@pfs/replicator';
import { freePort } from '@pfs/testkit';
import { generationOf, TxLog } from '@pfs/txlog';
import { describe, expect, it, vi } from 'vitest';
import { type Agent, startAgent } from '../src/agent.ts';
import { encodePath } from '../src/http.ts';
import { capturingLogger, until, useAgents } from './agent-harness.ts';

const { agents, dirs, agentConfig, start, stopForRestart, ...harness } = useAgents();
let clusterSeq = 0;

function rawRequest(
  port: number,
  method: string,
  path: string,
  body: string | Buffer,
  options: { headers?: Record<string, string>; endBody?: boolean } = {},
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path, headers: options.headers }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        text += chunk;
      });
      res.on('end', () => resolve({ status: res.statusCode!, body: text }));
    });
    req.once('error', reject);
    // Unended, the body stops there: the answer must come without the rest.
    if (options.endBody === false) req.write(body);
    else req.end(body);
  });
}

/** The pids of the `name` processes (by their first argument's end) with an argument containing `part`. */
function processesWithArgument(part: string, name: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const args = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (args[0]?.endsWith(name) && args.some((arg) => arg.includes(part))) pids.push(Number(entry));
    } catch {}
  }
  return pids;
}

/** Sends `signal` to `pid`; false if it has exited meanwhile. */
function signalIfAlive(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(pid, signal);
    return true;
  } catch {
    return false;
  }
}

/** The status a request is answered with (its body read and dropped). */
async function statusOf(url: string, init?: RequestInit): Promise<number> {
  const response = await fetch(url, init);
  await response.arrayBuffer();
  return response.status;
}

const role = async (agent: Agent) =>
  (
    (await (await fetch(`${agent.url}/v1/status`)).json()) as {
      partitions: { role: string; lastTxid: string }[];
    }
  ).partitions[0]!;

/** Waits until `replica` has applied all that `master` has logged so far; returns that txid. */
/** The agent's coordinator, which its partition controllers share (tests wrap its calls). */
function coordinatorOf(agent: Agent): Coordinator {
  return (agent.state.controllers[0] as unknown as { deps: { coordinator: Coordinator } }).deps.coordinator;
}

async function caughtUp(master: Agent, replica: Agent, what = 'replica caught up'): Promise<string> {
  const last = (await role(master)).lastTxid;
  await until(what, async () => ((await role(replica)).lastTxid === last ? true : undefined));
  return last;
}

/**
 * A node registered in `cluster` (id `a-phantom`, ranked before any `localhost_…` as caught up)
 * that reports `applied` for partition 0 and never claims; its addresses refuse connections, or
 * are both `port` when given.
 */
async function phantomNode(cluster: string, applied: bigint, port?: number): Promise<Coordinator> {
  const phantom = await Coordinator.connect({
    endpoints: [harness.etcdEndpoint()],
    cluster,
    node: {
      id: 'a-phantom',
      host: '127.0.0.1',
      httpPort: port ?? (await freePort()),
      rsyncPort: port ?? (await freePort()),
      pid: process.pid,
      startedAt: new Date().toISOString(),
    },
    ttlSeconds: 5,
  });
  await phantom.reportApplied(0, applied);
  return phantom;
}

/** A master and a replica of a new cluster, the replica logging into `entries`. */
async function masterAndLoggedReplica(name: string) {
  const cluster = `${name}-${++clusterSeq}`;
  const master = await start(await agentConfig(cluster));
  await until('master', async () => ((await role(master)).role === 'master' ? true : undefined));
  const { logger, entries } = capturingLogger();
  const replica = await startAgent(await agentConfig(cluster), logger);
  agents.push(replica);
  await until('replica', async () => ((await role(replica)).role === 'replica' ? true : undefined));
  return { cluster, master, replica, entries };
}

async function twoNodes() {
  const cluster = `agent-${++clusterSeq}`;
  const master = await start(await agentConfig(cluster));
  await until('master', async () => ((await role(master)).role === 'master' ? true : undefined));
  const replica = await start(await agentConfig(cluster));
  await until('replica', async () => ((await role(replica)).role === 'replica' ? true : undefined));
  return { cluster, master, replica };
}

describe('node agent over HTTP', () => {
  it('stores, reads, replicates and deletes files, odd names and empty files included', async () => {
    const { master, replica } = await twoNodes();
    const names = ['plain.txt', 'dir/new\nline ü.bin', '#hash', 'empty'];
    for (const name of names) {
      const body = name === 'empty' ? '' : `content of ${name}`;
      const response = await fetch(`${master.url}/v1/files/${encodePath(name)}`, { method: 'PUT', body });
      expect(response.status).toBe(201);
      const result = (await response.json()) as { txidText: string; size: string; path: string };
      expect(result).toMatchObject({ path: name, size: String(Buffer.byteLength(body)) });
      expect(result.txidText).toMatch(/^1:\d+$/);
    }
    const last = await caughtUp(master, replica);
    for (const name of names) {
      const fromReplica = await fetch(`${replica.url}/v1/files/${encodePath(name)}`);
      expect(fromReplica.status).toBe(200);
      expect(fromReplica.headers.get('x-pfs-applied-txid')).toBe(last);
      expect(await fromReplica.text()).toBe(name === 'empty' ? '' : `content of ${name}`);
    }
    const overwritten = await fetch(`${master.url}/v1/files/plain.txt`, {
      method: 'PUT',
      body: 'second version',
    });
    expect(overwritten.status).toBe(201);
    await until('overwrite replicated', async () =>
      (await (await fetch(`${replica.url}/v1/files/plain.txt`)).text()) === 'second version'
        ? true
        : undefined,
    );
    const deleted = await fetch(`${master.url}/v1/files/plain.txt`, { method: 'DELETE' });
    expect(deleted.status).toBe(200);
    expect((await fetch(`${master.url}/v1/files/plain.txt`)).status).toBe(404);
    expect((await fetch(`${master.url}/v1/files/plain.txt`, { method: 'DELETE' })).status).toBe(404);
    await until('delete replicated', async () =>
      (await fetch(`${replica.url}/v1/files/plain.txt`)).status === 404 ? true : undefined,
    );
    // Deleting the last file under `dir/` leaves `dir` an empty directory: a file may take its
    // place, on the master and on the replica.
    expect(
      (await fetch(`${master.url}/v1/files/${encodePath('dir/new\nline ü.bin')}`, { method: 'DELETE' }))
        .status,
    ).toBe(200);
    const overDirectory = await fetch(`${master.url}/v1/files/dir`, {
      method: 'PUT',
      body: 'now a file',
      // No file is there: a write that must not overwrite one goes through too.
      headers: { 'if-none-match': '*' },
    });
    expect(overDirectory.status).toBe(201);
    await until('the file in place of the directory replicated', async () =>
      (await (await fetch(`${replica.url}/v1/files/dir`)).text()) === 'now a file' ? true : undefined,
    );
  });

  it('answers a GET of an unchanged file with its remembered sha-256, and re-hashes it once changed in place', async () => {
    const cluster = `agent-${++clusterSeq}`;
    const master = await start(await agentConfig(cluster));
    await until('master', async () => ((await role(master)).role === 'master' ? true : undefined));
    const sha = (text: string) => createHash('sha256').update(text).digest('hex');
    const digestsBy = async (source: string) => {
      const text = await (await fetch(`${master.url}/metrics`)).text();
      return Number(
        new RegExp(`^pfs_read_digests_total\\{source="${source}"\\} (\\d+)$`, 'm').exec(text)?.[1] ?? 0,
      );
    };
    expect(
      (await fetch(`${master.url}/v1/files/video.bin`, { method: 'PUT', body: 'first take' })).status,
    ).toBe(201);
    // Only a file left alone for a while is remembered (timestamps are coarse).
    await new Promise((resolve) => setTimeout(resolve, 2100));
    for (let i = 0; i < 3; i++) {
      const read = await fetch(`${master.url}/v1/files/video.bin`);
      expect(read.headers.get('etag')).toBe(`"${sha('first take')}"`);
      expect(await read.text()).toBe('first take');
    }
    expect(await digestsBy('hashed')).toBe(1);
    expect(await digestsBy('cache')).toBe(2);
    // Same size, same inode, mtime put back: only ctime tells it changed.
    const file = join(master.config.dataDir, 'filestore', 'video.bin');
    const { mtime, atime } = await stat(file);
    await writeFile(file, 'other take');
    await utimes(file, atime, mtime);
    const changed = await fetch(`${master.url}/v1/files/video.bin`);
    expect(changed.headers.get('etag')).toBe(`"${sha('other take')}"`);
    expect(await changed.text()).toBe('other take');
    expect(await digestsBy('hashed')).toBe(2);
    const ranged = await fetch(`${master.url}/v1/files/video.bin`, { headers: { range: 'bytes=6-' } });
    expect(await ranged.text()).toBe('take');
    const empty = await fetch(`${master.url}/v1/files/nothing`, { method: 'PUT', body: '' });
    expect(empty.status).toBe(201);
    const readEmpty = await fetch(`${master.url}/v1/files/nothing`);
    expect(readEmpty.status).toBe(200);
    expect(readEmpty.headers.get('content-length')).toBe('0');
    expect(await readEmpty.text()).toBe('');
    // A new large file read by several at once (not yet remembered): one read of it for them all.
    const big = Buffer.alloc(64 * 1024 * 1024, 7);
    expect((await fetch(`${master.url}/v1/files/big.bin`, { method: 'PUT', body: big })).status).toBe(201);
    const hashedBefore = await digestsBy('hashed');
    const reads = await Promise.all(
      [0, 1, 2].map(async () => {
        const read = await fetch(`${master.url}/v1/files/big.bin`);
        return { etag: read.headers.get('etag'), size: (await read.arrayBuffer()).byteLength };
      }),
    );
    const bigEtag = `"${createHash('sha256').update(big).digest('hex')}"`;
    expect(reads).toEqual([0, 1, 2].map(() => ({ etag: bigEtag, size: big.length })));
    expect((await digestsBy('hashed')) - hashedBefore + (await digestsBy('shared'))).toBe(3);
    expect(await digestsBy('shared')).toBeGreaterThan(0);
  });

  it('serves ETag, ranges, conditional writes, listings and read-your-writes by txid', async () => {
    const { master, replica } = await twoNodes();
    const body = Buffer.from('0123456789');
    const put = await fetch(`${master.url}/v1/files/docs/digits`, {
      method: 'PUT',
      body,
      headers: { 'if-none-match': '*' },
    });
    expect(put.status).toBe(201);
    const written = (await put.json()) as { txid: string; sha256: string };
    const again = await fetch(`${master.url}/v1/files/docs/digits`, {
      method: 'PUT',
      body: 'x',
      headers: { 'if-none-match': '*' },
    });
    expect(again.status).toBe(409);
    expect(((await again.json()) as { code: string }).code).toBe('PATH_EXISTS');
    // `*` within a list (or two if-none-match lines, which arrive joined) still means "only if absent".
    const putStatus = (path: string, body: string, headers: Record<string, string>) =>
      statusOf(`${master.url}/v1/files/${path}`, { method: 'PUT', body, headers });
    expect(await putStatus('docs/digits', 'x', { 'if-none-match': '"other", *' })).toBe(409);
    // If-Match makes a write conditional on the version it names (strong comparison).
    const stale = await fetch(`${master.url}/v1/files/docs/digits`, {
      method: 'PUT',
      body: 'overwritten',
      headers: { 'if-match': `"${'0'.repeat(64)}"` },
    });
    expect(stale.status).toBe(412);
    expect(((await stale.json()) as { code: string }).code).toBe('PRECONDITION_FAILED');
    for (const [method, headers] of [
      ['DELETE', { 'if-match': `"${'0'.repeat(64)}"` }],
      ['DELETE', { 'if-match': `W/"${written.sha256}"` }],
      ['PUT', { 'if-none-match': `"other", "${written.sha256}"` }],
    ] as const) {
      const refused = await fetch(`${master.url}/v1/files/docs/digits`, {
        method,
        headers,
        ...(method === 'PUT' ? { body: 'overwritten' } : {}),
      });
      expect({ method, headers, status: refused.status }).toEqual({ method, headers, status: 412 });
    }
    expect(await putStatus('docs/absent', 'x', { 'if-match': '*' })).toBe(412);
    expect((await fetch(`${master.url}/v1/files/docs/absent`)).status).toBe(404);
    // A precondition the server does not evaluate refuses the write instead of being ignored.
    const dated = await fetch(`${master.url}/v1/files/docs/digits`, {
      method: 'PUT',
      body: 'overwritten',
      headers: { 'if-unmodified-since': new Date(0).toUTCString() },
    });
    expect(dated.status).toBe(400);
    expect(((await dated.json()) as { code: string }).code).toBe('PRECONDITION_UNSUPPORTED');
    expect(await (await fetch(`${master.url}/v1/files/docs/digits`)).text()).toBe('0123456789');
    // With the version it holds, the write goes ahead, and the next one must name the new one.
    const swapped = await fetch(`${master.url}/v1/files/docs/swapped`, { method: 'PUT', body: 'v1' });
    const v1 = ((await swapped.json()) as { sha256: string }).sha256;
    // The sha-256 as the write's answer gives it, unquoted, names the same version.
    const v2put = await fetch(`${master.url}/v1/files/docs/swapped`, {
      method: 'PUT',
      body: 'v2',
      headers: { 'if-match': v1 },
    });
    expect(v2put.status).toBe(201);
    expect(await putStatus('docs/swapped', 'v3', { 'if-match': `"${v1}"` })).toBe(412);
    const v2 = ((await v2put.json()) as { sha256: string }).sha256;
    expect(
      await statusOf(`${master.url}/v1/files/docs/swapped`, {
        method: 'DELETE',
        headers: { 'if-match': `"${v2}"` },
      }),
    ).toBe(200);
    // Read-your-writes on the replica: wait for the txid the write answered with.
    const read = await fetch(`${replica.url}/v1/files/docs/digits?minTxid=${written.txid}&waitMs=10000`);
    expect(read.status).toBe(200);
    expect(read.headers.get('etag')).toBe(`"${written.sha256}"`);
    expect(BigInt(read.headers.get('x-pfs-applied-txid')!)).toBeGreaterThanOrEqual(BigInt(written.txid));
    expect(await read.text()).toBe('0123456789');
    const notYet = await fetch(
      `${replica.url}/v1/files/docs/digits?minTxid=${BigInt(written.txid) + 100n}&waitMs=50`,
    );
    expect(notYet.status).toBe(409);
    expect(((await notYet.json()) as { code: string }).code).toBe('NOT_CAUGHT_UP');
    const ranged = await fetch(`${master.url}/v1/files/docs/digits`, { headers: { range: 'bytes=2-4' } });
    expect(ranged.status).toBe(206);
    expect(ranged.headers.get('content-range')).toBe('bytes 2-4/10');
    expect(await ranged.text()).toBe('234');
    expect(
      (await fetch(`${master.url}/v1/files/docs/digits`, { headers: { range: 'bytes=20-' } })).status,
    ).toBe(416);
    const cached = await fetch(`${master.url}/v1/files/docs/digits`, {
      headers: { 'if-none-match': `"${written.sha256}"` },
    });
    expect(cached.status).toBe(304);
    // A cache holding the weak form, or asking with several validators, is answered the same.
    const cachedWeak = await fetch(`${master.url}/v1/files/docs/digits`, {
      headers: { 'if-none-match': `"other", W/"${written.sha256}"` },
    });
    expect(cachedWeak.status).toBe(304);
    const head = await fetch(`${master.url}/v1/files/docs/digits`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toBe('10');
    expect(head.headers.get('etag')).toBe(`"${written.sha256}"`);
    const rangedHead = await fetch(`${master.url}/v1/files/docs/digits`, {
      method: 'HEAD',
      headers: { range: 'bytes=2-4' },
    });
    expect(rangedHead.status).toBe(206);
    expect(rangedHead.headers.get('content-range')).toBe('bytes 2-4/10');
    expect(rangedHead.headers.get('content-length')).toBe('3');
    for (const name of ['docs/a', 'docs/b', 'other'])
      await fetch(`${master.url}/v1/files/${name}`, { method: 'PUT', body: name });
    const page1 = (await (await fetch(`${master.url}/v1/files?prefix=docs/&limit=2`)).json()) as {
      entries: { path: string; size: string }[];
      next: string | null;
    };
    expect(page1.entries.map((e) => e.path)).toEqual(['docs/a', 'docs/b']);
    const page2 = (await (
      await fetch(`${master.url}/v1/files?prefix=docs/&limit=2&after=${encodeURIComponent(page1.next!)}`)
    ).json()) as {
      entries: { path: string; size: string }[];
      next: string | null;
    };
    expect(page2).toEqual({
      entries: [expect.objectContaining({ path: 'docs/digits', size: '10' })],
      next: null,
      // The partitions the listing covers: every one, on a node that holds them all.
      partitions: [0],
      partitionCount: 1,
    });
  });

  it('refuses a put whose If-Match already fails before taking its body', async () => {
    const cluster = `precheck-${++clusterSeq}`;
    // A body that stops coming is dropped after 2 s: taking it would end in that, not in a 412.
    const master = await start(await agentConfig(cluster, undefined, ['--body-idle-timeout-ms=2000']));
    await until('master', async () => ((await role(master)).role === 'master' ? true : undefined));
    expect((await fetch(`${master.url}/v1/files/big`, { method: 'PUT', body: 'v1' })).status).toBe(201);
    // The first 64 KiB of a 512 MiB upload, and then nothing.
    const answer = await rawRequest(master.config.httpPort, 'PUT', '/v1/files/big', Buffer.alloc(64 * 1024), {
      headers: { 'content-length': String(512 * 1024 * 1024), 'if-match': `"${'0'.repeat(64)}"` },
      endBody: false,
    });
    expect(answer.status).toBe(412);
    expect(JSON.parse(answer.body).code).toBe('PRECONDITION_FAILED');
    expect(await (await fetch(`${master.url}/v1/files/big`)).text()).toBe('v1');
  });

  it('streams a 64 MiB file in and out, byte for byte', async () => {
    const { master, replica } = await twoNodes();
    const big = Buffer.alloc(64 * 1024 * 1024);
    for (let i = 0; i < big.length; i += 4096) big.writeUInt32LE(i, i);
    const expected = createHash('sha256').update(big).digest('hex');
    const response = await fetch(`${master.url}/v1/files/big.bin`, {
      method: 'PUT',
      body: big,
      headers: { 'x-pfs-ack': 'all' },
    });
    const answer = (await response.json()) as { sha256: string };
    expect({ status: response.status, answer }).toMatchObject({ status: 201, answer: { sha256: expected } });
    const copy = Buffer.from(await (await fetch(`${replica.url}/v1/files/big.bin`)).arrayBuffer());
    expect(createHash('sha256').update(copy).digest('hex')).toBe(expected);
  });

  it('exposes Prometheus metrics that parse, with role, generation, writes and batches', async () => {
    const { master, replica } = await twoNodes();
    for (let i = 0; i < 3; i++) {
      const put = await fetch(`${master.url}/v1/files/m${i}`, {
        method: 'PUT',
        body: 'abcd',
        headers: { 'x-pfs-ack': 'one' },
      });
      expect(put.status).toBe(201);
    }
    const scrape = async (agent: Agent) => {
      const response = await fetch(`${agent.url}/metrics`);
      expect(response.headers.get('content-type')).toMatch(/^text\/plain/);
      const samples = new Map<string, number>();
      for (const line of (await response.text()).split('\n')) {
        if (line === '' || line.startsWith('#')) continue;
        const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (-?[0-9.e+-]+|NaN|\+Inf|-Inf)$/.exec(line);
        expect(match, line).not.toBeNull();
        samples.set(match![1]!, Number(match![2]));
      }
      return samples;
    };
    const onMaster = await scrape(master);
    expect(onMaster.get('pfs_role{partition="0"}')).toBe(2);
    expect(onMaster.get('pfs_generation{partition="0"}')).toBe(1);
    expect(onMaster.get('pfs_writes_total{op="put"}')).toBe(3);
    expect(onMaster.get('pfs_write_bytes_total')).toBe(12);
    expect(
      onMaster.get(`pfs_replication_lag_records{partition="0",replica="${replica.config.nodeId}"}`),
    ).toBe(0);
    const onReplica = await scrape(replica);
    expect(onReplica.get('pfs_role{partition="0"}')).toBe(1);
    expect(onReplica.get('pfs_replication_batches_total{result="ok"}')).toBeGreaterThanOrEqual(1);
    expect(onReplica.get('pfs_replication_batch_seconds_count')).toBeGreaterThanOrEqual(1);
    // One write at a time: the first pull starts its rsync cold, the next ones find one waiting.
    expect(onReplica.get('pfs_replication_pulls_total{rsync="cold"}')).toBeGreaterThanOrEqual(1);
    expect(onReplica.get('pfs_replication_pulls_total{rsync="ahead"}')).toBeGreaterThanOrEqual(1);
    // The master reconciles its store once it is master (in the background: it serves before);
    // a replica, whose store is the log's by construction, never walks it so.
    await until('the master done with its first reconcile', async () =>
      ((await scrape(master)).get('pfs_reconciles_completed') ?? 0) >= 1 ? true : undefined,
    );
    expect(onReplica.get('pfs_reconciles_completed')).toBe(0);
  });

  it('answers 507 when the disk is full, and loses nothing already stored', async () => {
    expect(process.getuid?.(), 'this test mounts a tmpfs and must run as root').toBe(0);
    const mountPoint = await mkdtemp(join(tmpdir(), 'pfs-full-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', mountPoint]);
    let started: Agent | undefined;
    try {
      const config = await agentConfig(`full-${++clusterSeq}`, mountPoint);
      const master = await start(config);
      started = master;
      await until('master', async () => ((await role(master)).role === 'master' ? true : undefined));
      expect((await fetch(`${master.url}/v1/files/keep`, { method: 'PUT', body: 'precious' })).status).toBe(
        201,
      );
      const full = await fetch(`${master.url}/v1/files/huge`, {
        method: 'PUT',
        body: Buffer.alloc(8 * 1024 * 1024),
      });
      expect(full.status).toBe(507);
      expect(((await full.json()) as { code: string }).code).toBe('DISK_FULL');
      expect(await (await fetch(`${master.url}/v1/files/keep`)).text()).toBe('precious');
      expect((await fetch(`${master.url}/v1/files/after`, { method: 'PUT', body: 'small' })).status).toBe(
        201,
      );
    } finally {
      // The agent holds files open on the tmpfs: close it before unmounting, or a failed
      // assertion above would leave the mount behind.
      if (started !== undefined) {
        agents.splice(agents.indexOf(started), 1);
        await started.close();
      }
      execFileSync('umount', [mountPoint]);
      await rm(mountPoint, { recursive: true, force: true });
    }
  });

  it('refuses a file over the size limit with 413 and stores nothing', async () => {
    const cluster = `limit-${++clusterSeq}`;
    const config = { ...(await agentConfig(cluster)), maxFileBytes: 1000 };
    const master = await start(config);
    await until('master', async () => ((await role(master)).role === 'master' ? true : undefined));
    const response = await fetch(`${master.url}/v1/files/too-big`, {
      method: 'PUT',
      body: Buffer.alloc(5000),
    });
    expect(response.status).toBe(413);
    expect(((await response.json()) as { code: string }).code).toBe('FILE_TOO_LARGE');
    expect(await readdir(join(config.dataDir, 'filestore'))).toEqual(['.pfs']);
  });

  it('never applies a write on a replica: 307 to the master, nothing stored', async () => {
    const { master, replica } = await twoNodes();
    const response = await fetch(`${replica.url}/v1/files/x.txt`, {
      method: 'PUT',
      body: 'x',
      redirect: 'manual',
    });
    expect(response.status).toBe(307);
    expect(response.headers.get('location')).toBe(`${master.url}/v1/files/x.txt`);
    const del = await fetch(`${replica.url}/v1/files/x.txt`, { method: 'DELETE', redirect: 'manual' });
    expect(del.status).toBe(307);
    await expect(stat(join(replica.config.dataDir, 'filestore', 'x.txt'))).rejects.toThrow();
  });

  it("logs a new replica's bulk copy of the master's store as it goes, and shows it in status only while it runs", async () => {
    const cluster = `agent-${++clusterSeq}`;
    const master = await start(await agentConfig(cluster));
    await until('master', async () => ((await role(master)).role === 'master' ? true : undefined));
    for (let i = 0; i < 100; i++) {
      const put = await fetch(`${master.url}/v1/files/copy/${i}`, {
        method: 'PUT',
        body: `file ${i} `.repeat(100),
      });
      expect(put.status).toBe(201);
    }
    const { logger, entries: logged } = capturingLogger();
    const replica = await startAgent(await agentConfig(cluster), logger);
    agents.push(replica);
    await caughtUp(master, replica);
    const copying = logged.filter((l) => l.msg.includes("copying the master's store"));
    expect(copying.length).toBeGreaterThan(0);
    expect(copying[0]!.msg).toMatch(
      /^partition 0: copying the master's store: \d+ files, [\d.]+ MB in [\d.]+ s \(rsync at \d+ %\)$/,
    );
    expect(copying[0]!.bootstrap).toMatchObject({
      files: expect.any(Number),
      bytes: expect.any(Number),
      parts: [{ percent: expect.any(Number), files: expect.any(Number), bytes: expect.any(Number) }],
    });
    // The last progress update counts every file and byte.
    const copied = logged.find((l) => l.msg.includes("copied the master's store"));
    const bytes = Array.from({ length: 100 }, (_, i) => `file ${i} `.repeat(100).length).reduce(
      (a, b) => a + b,
    );
    expect(copied).toMatchObject({ files: 100, bytes });
    const status = (await (await fetch(`${replica.url}/v1/status`)).json()) as {
      partitions: { bootstrap: unknown }[];
    };
    expect(status.partitions[0]!.bootstrap).toBeNull();
  });

  it('throws away at start a bulk copy its last run was killed during, none of it reaching the store', async () => {
    const cluster = `agent-${++clusterSeq}`;
    const config = await agentConfig(cluster);
    // A node killed while it made a new replica's bulk copy: its staging directory, with a file
    // copied whole and rsync's temp file of the one it was receiving.
    const staging = join(config.dataDir, 'filestore', '.pfs', 'bulk-copy');
    await mkdir(join(staging, 'album'), { recursive: true });
    await writeFile(join(staging, 'album', 'a.jpg'), 'copied whole');
    await writeFile(join(staging, 'album', '.b.jpg.Xy12Ab'), 'half of b.jpg');
    // Alone, it becomes master without a drain and reconciles its store with its log.
    const node = await start(config);
    await until('master', async () => ((await role(node)).role === 'master' ? true : undefined));
    await until('the staging directory removed', async () =>
      (await readdir(join(config.dataDir, 'filestore', '.pfs'))).some((name) => name.startsWith('bulk-copy'))
        ? undefined
        : true,
    );
    expect(await readdir(join(config.dataDir, 'filestore'))).toEqual(['.pfs']);
    for (const path of ['album/a.jpg', 'album/.b.jpg.Xy12Ab'])
      expect((await fetch(`${node.url}/v1/files/${path}`)).status, path).toBe(404);
  });

  it("removes the temp files of writes a killed agent left, on promotion and in a former master's check", async () => {
    const { cluster, master, replica } = await twoNodes();
    expect(
      (await fetch(`${master.url}/v1/files/album/kept.jpg`, { method: 'PUT', body: 'kept' })).status,
    ).toBe(201);
    await caughtUp(master, replica);
    // What an agent killed during a PUT leaves: the temp file beside the target, an hour old here.
    const hourAgo = new Date(Date.now() - 3_600_000);
    const leaveTemp = async (dataDir: string) => {
      const path = join(dataDir, 'filestore', 'album', '.pfs-tmp.0123456789ab');
      await writeFile(path, 'half an upload');
      await utimes(path, hourAgo, hourAgo);
      return path;
    };
    const onReplica = await leaveTemp(replica.config.dataDir);
    const dataDir = await stopForRestart(master);
    const onMaster = await leaveTemp(dataDir);
    // The replica's promotion walks its store (the reconcile).
    await until('the replica promoted', async () =>
      (await role(replica)).role === 'master' ? true : undefined,
    );
    await until("the promoted node's temp file removed", async () =>
      (await stat(onReplica).catch(() => undefined)) === undefined ? true : undefined,
    );
    // The former master walks its store against its log when it comes back.
    const again = await start({ ...(await agentConfig(cluster, dataDir)), httpPort: master.config.httpPort });
    await caughtUp(replica, again, 'the old master following');
    await until("the former master's temp file removed", async () =>
      (await stat(onMaster).catch(() => undefined)) === undefined ? true : undefined,
    );
    for (const agent of [replica, again])
      expect(await (await fetch(`${agent.url}/v1/files/album/kept.jpg`)).text()).toBe('kept');
  });

  it('sets aside a directory a replica holds where the master puts a file, and lists it in quarantine', async () => {
    const { master, replica } = await twoNodes();
    // Past its bootstrap (an empty store's bulk copy), following record by record.
    expect((await fetch(`${master.url}/v1/files/first`, { method: 'PUT', body: '1' })).status).toBe(201);
    await caughtUp(master, replica, 'replica past its bootstrap');
    const local = join(replica.config.dataDir, 'filestore', 'album');
    await mkdir(local);
    await writeFile(join(local, 'only-here.jpg'), 'replica-only bytes');
    const response = await fetch(`${master.url}/v1/files/album`, { method: 'PUT', body: 'a file now' });
    expect(response.status).toBe(201);
    await caughtUp(master, replica);
    expect(await (await fetch(`${replica.url}/v1/files/album`)).text()).toBe('a file now');
    const listed = (await (await fetch(`${replica.url}/v1/quarantine`)).json()) as {
      entries: { kind: string; path: string; quarantinedAs: string | null }[];
    };
    expect(listed.entries).toHaveLength(1);
    expect(listed.entries[0]).toMatchObject({ kind: 'directory', path: 'album' });
    expect(await readFile(join(listed.entries[0]!.quarantinedAs!, 'only-here.jpg'), 'utf8')).toBe(
      'replica-only bytes',
    );
  });

  it("leaves another partition's file in a directory where the master puts a file, and goes on once it is gone", async () => {
    const cluster = `agent-${++clusterSeq}`;
    const config = async () => ({ ...(await agentConfig(cluster)), partitions: 2 });
    const statuses = async (agent: Agent) =>
      (
        (await (await fetch(`${agent.url}/v1/status`)).json()) as {
          partitions: { role: string; lastTxid: string }[];
        }
      ).partitions;
    const master = await start(await config());
    await until('master of both partitions', async () =>
      (await statuses(master)).every((p) => p.role === 'master') ? true : undefined,
    );
    const { logger, entries } = capturingLogger();
    const replica = await startAgent(await config(), logger);
    agents.push(replica);
    // A file, and a path below it that is in the other partition.
    let i = 0;
    while (partitionOf(`album${i}`, 2) === partitionOf(`album${i}/theirs.jpg`, 2)) i++;
    const [album, theirs] = [`album${i}`, `album${i}/theirs.jpg`];
    const p = partitionOf(album, 2);
    // Past its bootstrap (an empty store's bulk copy), following record by record.
    expect((await fetch(`${master.url}/v1/files/first`, { method: 'PUT', body: '1' })).status).toBe(201);
    const caughtUpWith = async (what: string) => {
      const want = (await statuses(master)).map((s) => s.lastTxid).join();
      await until(what, async () =>
        (await statuses(replica)).map((s) => s.lastTxid).join() === want ? true : undefined,
      );
    };
    await caughtUpWith('replica past its bootstrap');
    // As the other partition's current file would be here while this partition lags behind.
    await mkdir(join(replica.config.dataDir, 'filestore', album));
    const local = join(replica.config.dataDir, 'filestore', theirs);
    await writeFile(local, 'the other partition');
    expect(
      (await fetch(`${master.url}/v1/files/${album}`, { method: 'PUT', body: 'a file now' })).status,
    ).toBe(201);
    const waiting = await until('the batch waiting', async () =>
      entries.find(
        (e) =>
          e.level === 40 && e.msg.includes(`holding ${JSON.stringify(theirs)}, a file of another partition`),
      ),
    );
    expect(waiting.msg).toMatch(new RegExp(`^partition ${p}: "${album}" is a directory here`));
    // Something to alert on: it lasts until the other partition removes the file.
    expect(await (await fetch(`${replica.url}/metrics`)).text()).toMatch(
      /^pfs_replication_errors_total\{code="HELD_BY_ANOTHER_PARTITION"\} [1-9]\d*$/m,
    );
    expect(await readFile(local, 'utf8')).toBe('the other partition');
    expect(
      ((await (await fetch(`${replica.url}/v1/quarantine`)).json()) as { entries: unknown[] }).entries,
    ).toEqual([]);
    // The other partition, caught up, deletes it: this one goes on.
    await rm(local);
    await caughtUpWith('replica caught up');
    expect(await readFile(join(replica.config.dataDir, 'filestore', album), 'utf8')).toBe('a file now');
    expect(
      ((await (await fetch(`${replica.url}/v1/quarantine`)).json()) as { entries: unknown[] }).entries,
    ).toEqual([]);
  });

  it('answers bad paths with 400 and a code, storing nothing', async () => {
    const { master } = await twoNodes();
    for (const [path, code] of [
      ['a/%2E%2E/%2E%2E/escape', 'PATH_TRAVERSAL'],
      ['nul%00byte', 'PATH_NUL'],
      ['.pfs/sentinel', 'PATH_RESERVED'],
      ['a//b', 'PATH_NOT_NORMALIZED'],
    ] as const) {
      // A raw request: fetch() would resolve the dot segments before sending.
      const { status, body } = await rawRequest(master.config.httpPort, 'PUT', `/v1/files/${path}`, 'x');
      expect(status, path).toBe(400);
      expect((JSON.parse(body) as { code: string }).code).toBe(code);
    }
    expect(await readdir(join(master.config.dataDir, 'filestore'))).toEqual(['.pfs']);
  });

  it('resumes a restarted replica from its checkpoint with identical logs', async () => {
    const { cluster, master, replica } = await twoNodes();
    for (let i = 0; i < 5; i++)
      await fetch(`${master.url}/v1/files/before-${i}`, { method: 'PUT', body: `${i}` });
    const before = await caughtUp(master, replica);
    const dataDir = await stopForRestart(replica);
    for (let i = 0; i < 5; i++)
      await fetch(`${master.url}/v1/files/after-${i}`, { method: 'PUT', body: `${i}` });
    const checkpoint = await readFile(join(dataDir, 'checkpoint', '0'), 'utf8');
    expect(checkpoint).toBe(`pfs-checkpoint 1 ${before}\n`);
    const again = await start({
      ...(await agentConfig(cluster, dataDir)),
      httpPort: replica.config.httpPort,
    });
    await caughtUp(master, again, 'restarted replica caught up');
    const read = async (dir: string) => {
      const log = await TxLog.open(join(dir, 'changelog', '0'));
      const records = [];
      for await (const r of log.readFrom(0n)) records.push(r);
      await log.close();
      return records;
    };
    await Promise.all(agents.splice(0).map((a) => a.close()));
    expect(await read(dataDir)).toEqual(await read(master.config.dataDir));
  });

  it("sets aside bytes an old master's log does not record before it follows the new master", async () => {
    const { cluster, master, replica } = await twoNodes();
    for (const [path, body] of [
      ['photo.jpg', 'the acknowledged photo'],
      ['gone.txt', 'acknowledged too'],
      ['was-a-file', 'a file in the log'],
    ])
      expect((await fetch(`${master.url}/v1/files/${path}`, { method: 'PUT', body })).status).toBe(201);
    await caughtUp(master, replica);
    const marker = join(master.config.dataDir, 'run', 'mastered-0');
    expect((await stat(marker)).isFile()).toBe(true);
    await expect(stat(join(replica.config.dataDir, 'run', 'mastered-0'))).rejects.toThrow();
    const dataDir = await stopForRestart(master);
    await until('the replica promoted', async () =>
      (await role(replica)).role === 'master' ? true : undefined,
    );
    const store = join(dataDir, 'filestore');
    // What a master killed between renaming a put into place and logging it leaves behind, and a
    // delete whose record never came.
    await writeFile(join(store, 'photo.jpg'), 'bytes nobody acknowledged');
    await writeFile(join(store, 'stray.bin'), 'never logged anywhere');
    await rm(join(store, 'gone.txt'));
    // Deleted without its record, and a directory made there since: nothing in it is deleted.
    await rm(join(store, 'was-a-file'));
    await mkdir(join(store, 'was-a-file'));
    await writeFile(join(store, 'was-a-file', 'inside'), 'kept');
    // A file the new master wrote since, already here with its bytes (as a drain past the log
    // leaves it): explained by the new master's later record, it stays where it is.
    const late = await fetch(`${replica.url}/v1/files/late.txt`, { method: 'PUT', body: 'late' });
    expect(late.status).toBe(201);
    await writeFile(join(store, 'late.txt'), 'late');
    // Its check cannot set anything aside yet (a file where quarantine/1 goes): it keeps failing,
    // and meanwhile the node serves none of the bytes it found.
    await writeFile(join(dataDir, 'quarantine', '1'), 'in the way');
    const again = await start({ ...(await agentConfig(cluster, dataDir)), httpPort: master.config.httpPort });
    const refused = await until('reads refused during the check', async () => {
      const response = await fetch(`${again.url}/v1/files/photo.jpg`);
      return response.status === 503 ? ((await response.json()) as { code: string }) : undefined;
    });
    expect(refused.code).toBe('STORE_CHECK');
    await rm(join(dataDir, 'quarantine', '1'));
    await caughtUp(replica, again, 'the old master following');
    expect(await (await fetch(`${again.url}/v1/files/photo.jpg`)).text()).toBe('the acknowledged photo');
    expect(await readFile(join(store, 'photo.jpg'), 'utf8')).toBe('the acknowledged photo');
    expect(await readFile(join(store, 'gone.txt'), 'utf8')).toBe('acknowledged too');
    expect(await readFile(join(store, 'late.txt'), 'utf8')).toBe('late');
    await expect(stat(join(store, 'stray.bin'))).rejects.toThrow();
    const listed = (await (await fetch(`${again.url}/v1/quarantine`)).json()) as {
      entries: { kind: string; path: string; quarantinedAs: string | null }[];
    };
    expect(listed.entries.map((e) => `${e.kind} ${e.path}`).sort()).toEqual([
      'directory was-a-file',
      'unlogged photo.jpg',
      'unlogged stray.bin',
      'unlogged was-a-file/inside',
    ]);
    expect(await readFile(join(store, 'was-a-file'), 'utf8')).toBe('a file in the log');
    const inside = listed.entries.find((e) => e.path === 'was-a-file/inside')!.quarantinedAs!;
    expect(await readFile(inside, 'utf8')).toBe('kept');
    const aside = listed.entries.find((e) => e.path === 'photo.jpg')!.quarantinedAs!;
    expect(await readFile(aside, 'utf8')).toBe('bytes nobody acknowledged');
    // Checked: the next restart follows at once.
    await expect(stat(marker)).rejects.toThrow();
  });

  it('checks its store once for all the partitions an old master had, when it comes back', async () => {
    const cluster = `agent-${++clusterSeq}`;
    const config = async (dataDir?: string) => ({ ...(await agentConfig(cluster, dataDir)), partitions: 3 });
    const partitions = async (agent: Agent) =>
      (
        (await (await fetch(`${agent.url}/v1/status`)).json()) as {
          partitions: { role: string; lastTxid: string }[];
        }
      ).partitions;
    const allAre = (agent: Agent, role: string) => async () =>
      (await partitions(agent)).every((p) => p.role === role) ? true : undefined;
    const master = await start(await config());
    await until('master of every partition', allAre(master, 'master'));
    const replica = await start(await config());
    await until('replica of every partition', allAre(replica, 'replica'));
    // One acknowledged file in each partition.
    const names = [0, 1, 2].map((p) => {
      for (let i = 0; ; i++) if (partitionOf(`f${i}`, 3) === p) return `f${i}`;
    });
    for (const name of names)
      expect(
        (await fetch(`${master.url}/v1/files/${name}`, { method: 'PUT', body: `acknowledged ${name}` }))
          .status,
      ).toBe(201);
    const sameAs = (a: Agent, b: Agent) => async () => {
      const [x, y] = [await partitions(a), await partitions(b)];
      return x.every((p, i) => p.lastTxid === y[i]!.lastTxid) ? true : undefined;
    };
    await until('replica caught up', sameAs(master, replica));
    const dataDir = await stopForRestart(master);
    await until('the replica master of every partition', allAre(replica, 'master'));
    for (const name of names) await writeFile(join(dataDir, 'filestore', name), `unlogged ${name}`);
    const again = await start({ ...(await config(dataDir)), httpPort: master.config.httpPort });
    await until('the old master following every partition', allAre(again, 'replica'));
    await until('the old master caught up', sameAs(replica, again));
    for (const name of names)
      expect(await readFile(join(dataDir, 'filestore', name), 'utf8')).toBe(`acknowledged ${name}`);
    const listed = (await (await fetch(`${again.url}/v1/quarantine`)).json()) as {
      entries: { kind: string; path: string }[];
    };
    expect(listed.entries.map((e) => `${e.kind} ${e.path}`).sort()).toEqual(
      names.map((n) => `unlogged ${n}`).sort(),
    );
    const metrics = await (await fetch(`${again.url}/metrics`)).text();
    expect(metrics).toMatch(/^pfs_store_check_walks_total 1$/m);
  });

  it('acks a write with ack=one or all only once the replica has it, and answers 504 without losing it', async () => {
    const { cluster, master, replica } = await twoNodes();
    for (const mode of ['one', 'all']) {
      const response = await fetch(`${master.url}/v1/files/acked-${mode}`, {
        method: 'PUT',
        body: `replicated before the answer (${mode})`,
        headers: { 'x-pfs-ack': mode },
      });
      expect(response.status).toBe(201);
      expect(((await response.json()) as { ack: string }).ack).toBe(mode);
      // The replica applied (and fsynced) it before the master answered.
      expect(await readFile(join(replica.config.dataDir, 'filestore', `acked-${mode}`), 'utf8')).toBe(
        `replicated before the answer (${mode})`,
      );
    }
    const dataDir = await stopForRestart(replica);
    const late = await fetch(`${master.url}/v1/files/unacked`, {
      method: 'PUT',
      body: 'durable on the master only',
      headers: { 'x-pfs-ack': 'one', 'x-pfs-ack-timeout-ms': '300' },
    });
    expect(late.status).toBe(504);
    const body = (await late.json()) as { code: string; txid: string; message: string };
    expect(body.code).toBe('ACK_TIMEOUT');
    expect(body.message).toMatch(/is durable on this master but not yet acknowledged/);
    expect(await (await fetch(`${master.url}/v1/files/unacked`)).text()).toBe('durable on the master only');
    const bad = await fetch(`${master.url}/v1/files/x`, {
      method: 'PUT',
      body: 'x',
      headers: { 'x-pfs-ack': 'most' },
    });
    expect(bad.status).toBe(400);
    const again = await start({
      ...(await agentConfig(cluster, dataDir)),
      httpPort: replica.config.httpPort,
    });
    await until('the unacknowledged write reaches the returning replica', async () =>
      (await fetch(`${again.url}/v1/files/unacked`)).status === 200 ? true : undefined,
    );
  });

  it('does not hold up ack=all writes for a node that is making its first copy of the store', async () => {
    const { cluster, master, replica } = await twoNodes();
    // Enough to copy that the copy can be caught and frozen.
    const big = 'x'.repeat(4 * 2 ** 20);
    for (let i = 0; i < 4; i++)
      expect((await fetch(`${master.url}/v1/files/big-${i}`, { method: 'PUT', body: big })).status).toBe(201);
    const joining = await start(await agentConfig(cluster));
    const staging = join(joining.config.dataDir, 'filestore', '.pfs', 'bulk-copy');
    const frozen = await until('the joining node copying', async () => {
      const pids = processesWithArgument(staging, 'rsync');
      for (const pid of pids) process.kill(pid, 'SIGSTOP');
      return pids.length > 0 ? pids : undefined;
    });
    try {
      const response = await fetch(`${master.url}/v1/files/during-the-copy`, {
        method: 'PUT',
        body: 'on the master and the replica that follows it',
        headers: { 'x-pfs-ack': 'all', 'x-pfs-ack-timeout-ms': '20000' },
      });
      expect(response.status).toBe(201);
      expect(await readFile(join(replica.config.dataDir, 'filestore', 'during-the-copy'), 'utf8')).toBe(
        'on the master and the replica that follows it',
      );
      expect(processesWithArgument(staging, 'rsync').length).toBeGreaterThan(0);
    } finally {
      for (const pid of frozen) signalIfAlive(pid, 'SIGCONT');
    }
    // Once it asks for records, it counts: an ack=all write is on it before the answer.
    await caughtUp(master, joining, 'the joining node caught up');
    const after = await fetch(`${master.url}/v1/files/after-the-copy`, {
      method: 'PUT',
      body: 'on every node',
      headers: { 'x-pfs-ack': 'all' },
    });
    expect(after.status).toBe(201);
    for (const node of [replica, joining])
      expect(await readFile(join(node.config.dataDir, 'filestore', 'after-the-copy'), 'utf8')).toBe(
        'on every node',
      );
    expect(await readFile(join(joining.config.dataDir, 'filestore', 'during-the-copy'), 'utf8')).toBe(
      'on the master and the replica that follows it',
    );
  });

  it('fences a master whose lease is revoked: no fork, no acknowledged write lost', async () => {
    const { cluster, master, replica } = await twoNodes();
    const acked: string[] = [];
    let writing = true;
    const writer = (async () => {
      for (let i = 0; writing; i++) {
        for (const node of [master, replica]) {
          const response = await fetch(`${node.url}/v1/files/w-${i}`, {
            method: 'PUT',
            body: `${i}`,
            redirect: 'manual',
          }).catch(() => undefined);
          if (response?.status === 201) acked.push(`w-${i}`);
          await response?.body?.cancel();
        }
      }
    })();
    // The writer stops however this ends: left running, it would load every later test.
    let newMaster: Agent;
    try {
      await until('some writes', async () => (acked.length >= 5 ? true : undefined));
      const raw = execFileSync(
        'etcdctl',
        [
          `--endpoints=${harness.etcdEndpoint()}`,
          'get',
          `/pfs/${cluster}/nodes/${master.config.nodeId}`,
          '-w',
          'json',
        ],
        {
          env: { ...process.env, ETCDCTL_API: '3' },
          encoding: 'utf8',
        },
      );
      const lease = BigInt(/"lease":(\d+)/.exec(raw)![1]!);
      execFileSync(
        'etcdctl',
        [`--endpoints=${harness.etcdEndpoint()}`, 'lease', 'revoke', lease.toString(16)],
        {
          env: { ...process.env, ETCDCTL_API: '3' },
        },
      );
      const generationTwo = async (agent: Agent) => {
        const status = await role(agent);
        return status.role === 'master' && (status as { generation?: string }).generation === '2'
          ? agent
          : undefined;
      };
      newMaster = await until(
        'a master in generation 2',
        async () => (await generationTwo(replica)) ?? (await generationTwo(master)),
      );
      const countBefore = acked.length;
      await until('writes accepted by the new master', async () =>
        acked.length >= countBefore + 5 ? true : undefined,
      );
    } finally {
      writing = false;
      await writer;
    }
    const other = newMaster === master ? replica : master;
    const last = (await role(newMaster)).lastTxid;
    await until('the other node follows the new master', async () =>
      (await role(other)).lastTxid === last ? true : undefined,
    );
    const records = async (agent: Agent) =>
      decodeRecords(
        Buffer.from(
          await (await fetch(`${agent.url}/v1/partitions/0/records?after=0&max=10000`)).arrayBuffer(),
        ),
      );
    const [onMaster, onOther] = [await records(newMaster), await records(other)];
    expect(onOther).toEqual(onMaster);
    const logged = new Set(onMaster.filter((r) => r.kind === 'put').map((r) => r.path));
    expect(acked.filter((path) => !logged.has(path))).toEqual([]);
    const refused = await fetch(`${other.url}/v1/files/after-fence`, {
      method: 'PUT',
      body: 'x',
      redirect: 'manual',
    });
    expect(refused.status).toBe(307);
  });

  it('quarantines the divergent writes of a returning old master and converges on the new one', async () => {
    const { cluster, master: a, replica: b } = await twoNodes();
    const put = (agent: Agent, path: string, body: string) =>
      fetch(`${agent.url}/v1/files/${path}`, { method: 'PUT', body }).then((r) => expect(r.status).toBe(201));
    await put(a, 'shared.txt', 'agreed version');
    await put(a, 'gone.txt', 'deleted only on the old master');
    const agreed = (await role(a)).lastTxid;
    await until('b caught up', async () => ((await role(b)).lastTxid === agreed ? true : undefined));
    const [aConfig, bConfig] = [a.config, b.config];
    agents.splice(agents.indexOf(b), 1);
    await b.close();
    await put(a, 'div.txt', 'written while alone');
    await put(a, 'shared.txt', 'divergent version');
    expect((await fetch(`${a.url}/v1/files/gone.txt`, { method: 'DELETE' })).status).toBe(200);
    agents.splice(agents.indexOf(a), 1);
    await a.close();
    // As if it had crashed: a master that stops on purpose records the txid it handed over with,
    // and then no node with less stands (placement.test.ts); a crashed one records nothing.
    harness.etcdctl('del', keys.handover(cluster, 0));

    const newMaster = await start({
      ...(await agentConfig(cluster, bConfig.dataDir)),
      httpPort: bConfig.httpPort,
    });
    await until('b master in generation 2', async () => {
      const s = (await role(newMaster)) as { role: string; generation?: string };
      return s.role === 'master' && s.generation === '2' ? true : undefined;
    });
    await put(newMaster, 'after.txt', 'generation 2');
    const returning = await start({
      ...(await agentConfig(cluster, aConfig.dataDir)),
      httpPort: aConfig.httpPort,
    });
    const last = (await role(newMaster)).lastTxid;
    await until('the old master converges', async () =>
      (await role(returning)).lastTxid === last ? true : undefined,
    );

    const store = async (dir: string) => {
      const files: Record<string, string> = {};
      for (const name of (await readdir(join(dir, 'filestore'))).filter((n) => n !== '.pfs').sort()) {
        files[name] = await readFile(join(dir, 'filestore', name), 'utf8');
      }
      return files;
    };
    expect(await store(aConfig.dataDir)).toEqual(await store(bConfig.dataDir));
    expect(await store(aConfig.dataDir)).toEqual({
      'after.txt': 'generation 2',
      'gone.txt': 'deleted only on the old master',
      'shared.txt': 'agreed version',
    });
    const files = join(aConfig.dataDir, 'quarantine', '1', 'files');
    expect(await readFile(join(files, 'div.txt'), 'utf8')).toBe('written while alone');
    expect(await readFile(join(files, 'shared.txt'), 'utf8')).toBe('divergent version');
    const listed = (await (await fetch(`${returning.url}/v1/quarantine`)).json()) as {
      entries: { kind: string; path: string; quarantinedAs: string | null }[];
    };
    expect(listed.entries.map((e) => `${e.kind} ${e.path}`)).toEqual([
      'put div.txt',
      'put shared.txt',
      'delete gone.txt',
    ]);
    expect(listed.entries.find((e) => e.kind === 'delete')?.quarantinedAs).toBeNull();
    const records = async (agent: Agent) =>
      decodeRecords(
        Buffer.from(
          await (await fetch(`${agent.url}/v1/partitions/0/records?after=0&max=10000`)).arrayBuffer(),
        ),
      );
    expect(await records(returning)).toEqual(await records(newMaster));
  });

  it('drives a 3-node cluster through the pfs CLI: put, get, ls, rm, status, quarantine ls', async () => {
    const { cluster, master, replica } = await twoNodes();
    const third = await start(await agentConfig(cluster));
    await until('third replica', async () => ((await role(third)).role === 'replica' ? true : undefined));
    const work = await mkdtemp(join(tmpdir(), 'pfs-cli-'));
    dirs.push(work);
    const cli = (...args: string[]) =>
      new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
        // Through a replica: writes must follow the 307 to the master.
        execFile(
          process.execPath,
          [fileURLToPath(new URL('../bin/pfs.mjs', import.meta.url)), '--json', ...args],
          {
            env: { ...process.env, PFS_NODE: replica.url },
          },
          (error, stdout, stderr) => resolve({ code: error ? Number(error.code) : 0, stdout, stderr }),
        );
      });
    await writeFile(join(work, 'photo.jpg'), 'not really a jpeg');
    const put = await cli('put', join(work, 'photo.jpg'), 'album/new\nline.jpg', '--ack', 'all');
    expect(put.code, put.stderr).toBe(0);
    expect(JSON.parse(put.stdout)).toMatchObject({ path: 'album/new\nline.jpg', size: '17', ack: 'all' });
    const got = await cli('get', 'album/new\nline.jpg', join(work, 'back.jpg'));
    expect(got.code, got.stderr).toBe(0);
    expect(await readFile(join(work, 'back.jpg'), 'utf8')).toBe('not really a jpeg');
    const listed = await cli('ls', 'album/');
    expect(JSON.parse(listed.stdout).entries.map((e: { path: string }) => e.path)).toEqual([
      'album/new\nline.jpg',
    ]);
    const status = JSON.parse((await cli('status')).stdout) as {
      partitions: { master: string }[];
      nodes: unknown[];
    };
    expect(status.partitions[0]!.master).toBe(master.config.nodeId);
    expect(status.nodes).toHaveLength(3);
    expect((await cli('rm', 'album/new\nline.jpg')).code).toBe(0);
    const missing = await cli('get', 'album/new\nline.jpg');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^pfs: 404 NOT_FOUND: /);
    expect(JSON.parse((await cli('quarantine', 'ls')).stdout)).toEqual({ entries: [] });
    const usage = await cli('frobnicate');
    expect(usage.code).toBe(2);
  });

  it('says which port is taken and how to fix it', async () => {
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const taken = (blocker.address() as { port: number }).port;
    try {
      const config = await agentConfig(`ports-${++clusterSeq}`);
      await expect(start({ ...config, rsyncPort: taken })).rejects.toThrow(
        `rsync port ${taken} on 127.0.0.1 is in use: stop what holds it or pick another --rsync-port`,
      );
      await expect(start({ ...config, httpPort: taken })).rejects.toThrow(
        `HTTP port ${taken} on 127.0.0.1 is in use: stop what holds it or pick another --http-port`,
      );
    } finally {
      blocker.close();
    }
  });

  it('keeps a node whose promotion keeps failing out of elections, so another replica takes over', async () => {
    const cluster = `failing-promotion-${++clusterSeq}`;
    const master = await start(await agentConfig(cluster));
    await until('master', async () => ((await role(master)).role === 'master' ? true : undefined));
    // The replica that ranks first (smallest id, as caught up as the other) cannot promote:
    // its mark of a partition it masters cannot be written.
    const [first, second] = [await agentConfig(cluster), await agentConfig(cluster)].sort((a, b) =>
      a.nodeId < b.nodeId ? -1 : 1,
    );
    const failing = await start(first!);
    const healthy = await start(second!);
    for (const replica of [failing, healthy])
      await until('replica', async () => ((await role(replica)).role === 'replica' ? true : undefined));
    expect((await fetch(`${master.url}/v1/files/before`, { method: 'PUT', body: 'b' })).status).toBe(201);
    await caughtUp(master, failing);
    await caughtUp(master, healthy);
    await mkdir(join(failing.config.dataDir, 'run', 'mastered-0'));
    await stopForRestart(master);
    // Without a pause after each failure, the failing node claims again at once at every vote,
    // and the other, waiting its turn, never does.
    await until(
      'the healthy replica to take over',
      async () => ((await role(healthy)).role === 'master' ? true : undefined),
      20_000,
    );
    expect((await fetch(`${healthy.url}/v1/files/after`, { method: 'PUT', body: 'a' })).status).toBe(201);
  });

  it('stands for no election while the generation key holds no generation, and takes over once it is put back', async () => {
    const { cluster, master, replica, entries } = await masterAndLoggedReplica('bad-generation');
    expect((await fetch(`${master.url}/v1/files/before`, { method: 'PUT', body: 'b' })).status).toBe(201);
    await caughtUp(master, replica);
    const key = keys.generation(cluster, 0);
    harness.etcdctl('put', key, 'x7');
    await stopForRestart(master);
    const refusal = await until('the replica to refuse to stand', async () =>
      entries.find((e) => typeof e.msg === 'string' && e.msg.includes(`${key} holds "x7"`)),
    );
    // It names the value to put back: the generation the master was serving.
    expect(refusal.msg).toContain(`etcdctl put ${key} 1`);
    // No claim was made, so no promotion failed (and none counts against it once the key is fixed).
    expect(entries.filter((e) => String(e.msg).includes('promotion'))).toEqual([]);
    expect((await role(replica)).role).toBe('offline');
    harness.etcdctl('put', key, '1');
    await until('the replica to take over', async () =>
      (await role(replica)).role === 'master' ? true : undefined,
    );
    expect(harness.etcdctl('get', key, '--print-value-only').trim()).toBe('2');
    expect(await (await fetch(`${replica.url}/v1/files/before`)).text()).toBe('b');
  });

  it('keeps serving its records after a handover its replica missed, until the successor has them', async () => {
    const { master, replica } = await twoNodes();
    expect((await fetch(`${master.url}/v1/files/before`, { method: 'PUT', body: 'b' })).status).toBe(201);
    await caughtUp(master, replica);
    // The replica stops following: the handover's wait for it (1 s) runs out.
    const controller = replica.state.controllers[0] as unknown as { replicator: { pause(): Promise<void> } };
    await controller.replicator.pause();
    const acked: string[] = [];
    for (let i = 0; i < 10; i++) {
      const response = await fetch(`${master.url}/v1/files/w-${i}`, {
        method: 'PUT',
        body: `acknowledged ${i}`,
        headers: { 'x-pfs-ack': 'local' },
      });
      if (response.status === 201) acked.push(`w-${i}`);
    }
    expect(acked).toHaveLength(10);
    await stopForRestart(master);
    await until('the replica to take over', async () =>
      (await role(replica)).role === 'master' ? true : undefined,
    );
    for (const [i, path] of acked.entries()) {
      const response = await fetch(`${replica.url}/v1/files/${path}`);
      expect({ path, status: response.status, body: await response.text() }).toEqual({
        path,
        status: 200,
        body: `acknowledged ${i}`,
      });
    }
  });

  it('reports how far it got before it gives its mastership up', async () => {
    const { master, replica } = await twoNodes();
    for (let i = 0; i < 3; i++) {
      expect((await fetch(`${master.url}/v1/files/r-${i}`, { method: 'PUT', body: `${i}` })).status).toBe(
        201,
      );
    }
    const last = BigInt((await role(master)).lastTxid);
    // Its key says how far it had got when it stood, before its term's writes.
    const coordinator = coordinatorOf(master);
    expect(coordinator.view.partitions.get(0)!.replicas.get(master.config.nodeId)).toBeLessThan(last);
    const calls: string[] = [];
    const { reportApplied, resignMaster } = coordinator;
    coordinator.reportApplied = (partition, txid) => {
      calls.push(`report ${partition} ${txid}`);
      return reportApplied.call(coordinator, partition, txid);
    };
    coordinator.resignMaster = (partition, token) => {
      calls.push(`resign ${partition}`);
      return resignMaster.call(coordinator, partition, token);
    };
    await stopForRestart(master);
    // A successor whose drain of its log fails then still sees that it has more, and reads it
    // through its feed.
    expect(calls.indexOf(`report 0 ${last}`)).toBeGreaterThanOrEqual(0);
    expect(calls.indexOf(`report 0 ${last}`)).toBeLessThan(calls.indexOf('resign 0'));
    await until('the replica to take over', async () =>
      (await role(replica)).role === 'master' ? true : undefined,
    );
  });

  it('gives its mastership up even when that report fails', async () => {
    const { master, replica } = await twoNodes();
    expect((await fetch(`${master.url}/v1/files/r`, { method: 'PUT', body: 'r' })).status).toBe(201);
    await caughtUp(master, replica);
    const coordinator = coordinatorOf(master);
    const calls: string[] = [];
    const { resignMaster } = coordinator;
    coordinator.reportApplied = async () => {
      throw new Error('etcdserver: request timed out');
    };
    coordinator.resignMaster = (partition, token) => {
      calls.push(`resign ${partition}`);
      return resignMaster.call(coordinator, partition, token);
    };
    await stopForRestart(master);
    expect(calls).toContain('resign 0');
    await until('the replica to take over', async () =>
      (await role(replica)).role === 'master' ? true : undefined,
    );
  });

  it('steps down as master once its log cannot be appended to, and a replica takes over', async () => {
    const { master, replica } = await twoNodes();
    expect((await fetch(`${master.url}/v1/files/before`, { method: 'PUT', body: 'b' })).status).toBe(201);
    await caughtUp(master, replica);
    // The master's log fails an fdatasync, then the truncation that would take the write back.
    const logDir = join(master.config.dataDir, 'changelog');
    const probe = await open(join(logDir, 'probe'), 'w');
    const prototype = Object.getPrototypeOf(probe) as FileHandle;
    await probe.close();
    const onMastersLog = (handle: FileHandle) => {
      try {
        return readlinkSync(`/proc/self/fd/${handle.fd}`).startsWith(`${logDir}/0/`);
      } catch {
        return false;
      }
    };
    const eio = () => Promise.reject(Object.assign(new Error('EIO: i/o error'), { code: 'EIO' }));
    const { datasync, truncate } = prototype;
    const failDatasync = vi.spyOn(prototype, 'datasync').mockImplementation(function (this: FileHandle) {
      return onMastersLog(this) ? eio() : datasync.call(this);
    });
    const failTruncate = vi.spyOn(prototype, 'truncate').mockImplementation(function (
      this: FileHandle,
      length,
    ) {
      return onMastersLog(this) ? eio() : truncate.call(this, length);
    });
    try {
      const refused = await fetch(`${master.url}/v1/files/during`, { method: 'PUT', body: 'd' });
      expect(refused.status).toBe(507);
      await until(
        'the replica to take over',
        async () => ((await role(replica)).role === 'master' ? true : undefined),
        20_000,
      );
    } finally {
      failDatasync.mockRestore();
      failTruncate.mockRestore();
    }
    expect((await fetch(`${replica.url}/v1/files/after`, { method: 'PUT', body: 'a' })).status).toBe(201);
    expect(await (await fetch(`${replica.url}/v1/files/before`)).text()).toBe('b');
  });

  it('steps down as master once an append fails, though its log took the write back (a full disk)', async () => {
    const { master, replica } = await twoNodes();
    expect((await fetch(`${master.url}/v1/files/before`, { method: 'PUT', body: 'b' })).status).toBe(201);
    await caughtUp(master, replica);
    // Every fdatasync of the master's log fails as on a full disk; the truncation that takes a
    // failed write back works, so the log stays appendable.
    const logDir = join(master.config.dataDir, 'changelog');
    const probe = await open(join(logDir, 'probe'), 'w');
    const prototype = Object.getPrototypeOf(probe) as FileHandle;
    await probe.close();
    const { datasync } = prototype;
    const failDatasync = vi.spyOn(prototype, 'datasync').mockImplementation(function (this: FileHandle) {
      let onMastersLog = false;
      try {
        onMastersLog = readlinkSync(`/proc/self/fd/${this.fd}`).startsWith(`${logDir}/0/`);
      } catch {}
      return onMastersLog
        ? Promise.reject(Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' }))
        : datasync.call(this);
    });
    try {
      const notLogged = await fetch(`${master.url}/v1/files/during`, { method: 'PUT', body: 'd' });
      expect(notLogged.status).toBe(507);
      expect(master.state.controllers[0]!.role).not.toBe('master');
      await until(
        'the replica to take over',
        async () => ((await role(replica)).role === 'master' ? true : undefined),
        20_000,
      );
    } finally {
      failDatasync.mockRestore();
    }
    expect((await fetch(`${replica.url}/v1/files/after`, { method: 'PUT', body: 'a' })).status).toBe(201);
    expect(await (await fetch(`${replica.url}/v1/files/before`)).text()).toBe('b');
  });

  it('gives back a claim it no longer acts on, trying again while etcd refuses', async () => {
    const cluster = `resign-retried-${++clusterSeq}`;
    const master = await start(await agentConfig(cluster));
    await until('master', async () => ((await role(master)).role === 'master' ? true : undefined));
    const controller = master.state.controllers[0]!;
    const coordinator = coordinatorOf(master);
    const resign = coordinator.resignMaster.bind(coordinator);
    let refusals = 2;
    coordinator.resignMaster = async (partition, token) => {
      if (refusals-- > 0) throw new Error('etcdserver: no leader');
      return resign(partition, token);
    };
    // The role comes from the node's own state; its view of etcd may lag the bump by a watch event.
    const generation = await until('the view to show the mastership', async () =>
      coordinator.view.partitions.get(0)?.master === undefined
        ? undefined
        : coordinator.view.partitions.get(0)!.generation,
    );
    // Fenced with its key still in etcd: until the key goes, nobody else may stand.
    controller.fence('test');
    await until(
      'master again, in a later generation',
      async () =>
        (await role(master)).role === 'master' && coordinator.view.partitions.get(0)!.generation > generation
          ? true
          : undefined,
      10_000,
    );
    expect(refusals).toBeLessThan(0);
    expect((await fetch(`${master.url}/v1/files/after`, { method: 'PUT', body: 'a' })).status).toBe(201);
  });

  it('does not claim a partition it was voting for once it is told to stop', async () => {
    const cluster = `stopping-voter-${++clusterSeq}`;
    const master = await start(await agentConfig(cluster));
    await until('master', async () => ((await role(master)).role === 'master' ? true : undefined));
    const replica = await start(await agentConfig(cluster));
    await until('replica', async () => ((await role(replica)).role === 'replica' ? true : undefined));
    expect((await fetch(`${master.url}/v1/files/x`, { method: 'PUT', body: 'x' })).status).toBe(201);
    const applied = BigInt(await caughtUp(master, replica));
    // A better-ranked candidate that never claims: the replica waits its turn (750 ms) first.
    const phantom = await phantomNode(cluster, applied);
    try {
      const generation = phantom.view.partitions.get(0)!.generation;
      // The phantom never acknowledges: the master's handover is incomplete, and it keeps
      // serving its records until a successor serves (none will here), so it is not awaited.
      const masterStopped = stopForRestart(master);
      await until('the replica voting', async () =>
        (await role(replica)).role === 'electing' ? true : undefined,
      );
      await stopForRestart(replica);
      await masterStopped;
      // Nothing claimed, nothing bumped.
      await new Promise((r) => setTimeout(r, 200));
      expect(phantom.view.partitions.get(0)?.master).toBeUndefined();
      expect(phantom.view.partitions.get(0)!.generation).toBe(generation);
    } finally {
      await phantom.close();
    }
  });

  it('gives the vote back rather than promote without the records a live peer reported and cannot give', async () => {
    const { cluster, master, replica, entries } = await masterAndLoggedReplica('undrainable-peer');
    expect((await fetch(`${master.url}/v1/files/x`, { method: 'PUT', body: 'x' })).status).toBe(201);
    const applied = BigInt(await caughtUp(master, replica));
    // A live peer that says it has one more record, at an address that refuses connections.
    const phantom = await phantomNode(cluster, applied + 1n);
    try {
      const generation = phantom.view.partitions.get(0)!.generation;
      await stopForRestart(master);
      const failed = await until('a failed promotion', async () =>
        entries.find((e) =>
          e.msg.startsWith('partition 0: promotion failed: cannot drain http://127.0.0.1:'),
        ),
      );
      expect(failed.msg).toMatch(/, which has up to 1:\d+: .*; not standing for election for 2000 ms$/);
      expect(phantom.view.partitions.get(0)!.generation).toBe(generation);
      expect((await role(replica)).role).not.toBe('master');
    } finally {
      await phantom.close();
    }
  });

  it('stops at once when told to during a promotion, giving the claim back', async () => {
    const { cluster, master, replica } = await masterAndLoggedReplica('stopped-promotion');
    expect((await fetch(`${master.url}/v1/files/x`, { method: 'PUT', body: 'x' })).status).toBe(201);
    const applied = BigInt(await caughtUp(master, replica));
    // A live peer that says it has one more record, at addresses that take connections and never
    // answer: the promotion's drain of it waits until it is stopped.
    const silent = createServer(() => {});
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const port = (silent.address() as { port: number }).port;
    const phantom = await phantomNode(cluster, applied + 1n, port);
    try {
      await stopForRestart(master);
      await until('the promotion', async () =>
        (await role(replica)).role === 'promoting' ? true : undefined,
      );
      const closing = await Promise.race([
        stopForRestart(replica).then(() => 'stopped'),
        new Promise((resolve) => setTimeout(() => resolve('still stopping'), 5000)),
      ]);
      expect(closing).toBe('stopped');
      // The claim was given back (the phantom's view may lag that by a watch event).
      await until('the claim given back', async () =>
        phantom.view.partitions.get(0)?.master === undefined ? true : undefined,
      );
    } finally {
      await phantom.close();
      silent.close();
    }
  });

  it('logs a replica that keeps failing at warn, once per kind of error and not at every retry', async () => {
    const { master, replica, entries } = await masterAndLoggedReplica('failing-replica');
    // Every pull now fails: rsync cannot use its temp dir.
    const tempDir = join(replica.config.dataDir, 'filestore', '.pfs', 'rsync-tmp', '0');
    await rm(tempDir, { recursive: true });
    await writeFile(tempDir, 'in the way');
    expect((await fetch(`${master.url}/v1/files/x`, { method: 'PUT', body: 'x' })).status).toBe(201);
    const failedBatches = async () =>
      Number(
        /^pfs_replication_batches_total\{result="error"\} (\d+)$/m.exec(
          await (await fetch(`${replica.url}/metrics`)).text(),
        )?.[1] ?? 0,
      );
    // The rsync started ahead may have opened its temp dir already: a later batch fails.
    // (until takes a throw for "not yet": the statuses are checked after it.)
    const statuses: number[] = [];
    await until('three failed batches', async () => {
      if ((await failedBatches()) >= 3) return true;
      const path = `/v1/files/y${statuses.length + 1}`;
      statuses.push((await fetch(`${master.url}${path}`, { method: 'PUT', body: 'y' })).status);
      return undefined;
    });
    expect(statuses.filter((s) => s !== 201)).toEqual([]);
    const aboutPulls = entries.filter((e) => e.level === 40 && e.msg.startsWith('partition 0: rsync'));
    expect(aboutPulls).toHaveLength(1);
  });

  it('drops an upload whose body goes silent, and keeps no temp file of it', async () => {
    const cluster = `silent-upload-${++clusterSeq}`;
    const master = await start({ ...(await agentConfig(cluster)), bodyIdleTimeoutMs: 300 });
    await until('master', async () => ((await role(master)).role === 'master' ? true : undefined));
    const store = join(master.config.dataDir, 'filestore');
    // Ten of a hundred announced bytes, then nothing, the connection left open.
    const socket = connect(master.config.httpPort, '127.0.0.1');
    await new Promise<void>((resolve) => socket.once('connect', resolve));
    // Closed by the node, or here if the test fails first.
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    let closedHere = false;
    const guard = setTimeout(() => {
      closedHere = true;
      socket.destroy();
    }, 20_000);
    socket.write('PUT /v1/files/stalled HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789');
    await closed;
    clearTimeout(guard);
    expect(closedHere).toBe(false);
    // Removed as the write unwinds, just after the connection closed.
    await until('no temp file', async () =>
      (await readdir(store)).every((n) => n === '.pfs') ? true : undefined,
    );
    expect((await fetch(`${master.url}/v1/files/stalled`)).status).toBe(404);
    // The node goes on taking writes.
    expect((await fetch(`${master.url}/v1/files/after`, { method: 'PUT', body: 'a' })).status).toBe(201);
  });

  it('will not start on a store without its sentinel while its log holds records (an unmounted store)', async () => {
    const cluster = `unmounted-${++clusterSeq}`;
    const master = await start(await agentConfig(cluster));
    await until('master', async () => ((await role(master)).role === 'master' ? true : undefined));
    expect((await fetch(`${master.url}/v1/files/kept.txt`, { method: 'PUT', body: 'kept' })).status).toBe(
      201,
    );
    const dataDir = await stopForRestart(master);
    const store = join(dataDir, 'filestore');
    // The store's own file system unmounted: an empty directory in its place.
    await rename(store, join(dataDir, 'mounted'));
    await mkdir(store);
    const config = { ...(await agentConfig(cluster, dataDir)), httpPort: master.config.httpPort };
    await expect(start(config)).rejects.toThrow(
      `${store} has no .pfs/sentinel but partition 0's log holds records: the store looks unmounted or replaced; mount it (or put the sentinel back if this is the right store), or remove ${join(dataDir, 'changelog')} and ${join(dataDir, 'checkpoint')} to rejoin as a new replica`,
    );
    // Nothing was made in the empty mount point, and the store is whole once mounted again.
    expect(await readdir(store)).toEqual([]);
    await rm(store, { recursive: true });
    await rename(join(dataDir, 'mounted'), store);
    const again = await start(config);
    await until('master again', async () => ((await role(again)).role === 'master' ? true : undefined));
    expect(await (await fetch(`${again.url}/v1/files/kept.txt`)).text()).toBe('kept');
  });

  it('refuses a second agent on a data dir in use, and leaves the first as it was', async () => {
    const cluster = `twice-${++clusterSeq}`;
    const first = await start(await agentConfig(cluster));
    await until('master', async () => ((await role(first)).role === 'master' ? true : undefined));
    expect((await fetch(`${first.url}/v1/files/kept`, { method: 'PUT', body: 'one' })).status).toBe(201);
    const conf = await readFile(join(first.config.dataDir, 'run', 'rsyncd.conf'), 'utf8');
    const logged = first.state.logs[0]!.lastTxid;
    const second = await agentConfig(cluster, first.config.dataDir);
    await expect(start(second)).rejects.toMatchObject({
      code: 'DATA_DIR_IN_USE',
      message: expect.stringMatching(
        new RegExp(
          `^data dir ${first.config.dataDir} is in use by another PFS agent on this machine \\(pid \\d+, node ${first.config.nodeId}\\): stop it, or give this node a data dir of its own \\(--data-dir\\)$`,
        ),
      ),
    });
    // Its rsync daemon and config are the first agent's still, and it goes on logging writes.
    expect(await readFile(join(first.config.dataDir, 'run', 'rsyncd.conf'), 'utf8')).toBe(conf);
    expect(
      processesWithArgument(`--config=${join(first.config.dataDir, 'run', 'rsyncd.conf')}`, 'rsync'),
    ).toHaveLength(1);
    expect((await fetch(`${first.url}/v1/files/next`, { method: 'PUT', body: 'two' })).status).toBe(201);
    expect(first.state.logs[0]!.lastTxid).toBeGreaterThan(logged);
    // Stopped, the first lets the data dir go.
    await stopForRestart(first);
    const again = await start(second);
    await until('master again', async () => ((await role(again)).role === 'master' ? true : undefined));
    expect(await (await fetch(`${again.url}/v1/files/next`)).text()).toBe('two');
  });

  it("refuses a data dir another cluster made, and adopts one into an emptied etcd once told to, past its log's generation", async () => {
    const cluster = `home-${++clusterSeq}`;
    let config = await agentConfig(cluster);
    let agent = await start(config);
    await until('master', async () => ((await role(agent)).role === 'master' ? true : undefined));
    expect((await fetch(`${agent.url}/v1/files/kept`, { method: 'PUT', body: 'kept' })).status).toBe(201);
    // Two more terms: its log reaches generation 3.
    for (let i = 0; i < 2; i++) {
      config = await agentConfig(cluster, await stopForRestart(agent));
      agent = await start(config);
      await until('master again', async () => ((await role(agent)).role === 'master' ? true : undefined));
    }
    const dataDir = await stopForRestart(agent);
    const log = await TxLog.open(join(dataDir, 'changelog', '0'));
    expect(generationOf(log.lastTxid)).toBe(3n);
    await log.close();
    // Another cluster on the same etcd: refused before it registers there.
    const other = `elsewhere-${++clusterSeq}`;
    await expect(start(await agentConfig(other, dataDir))).rejects.toMatchObject({
      code: 'DATA_DIR_OF_ANOTHER_CLUSTER',
      message: expect.stringMatching(
        new RegExp(
          `^data dir ${dataDir} was made in cluster "${cluster}": this node's data belongs to the cluster with id [0-9a-f-]{36}, and etcd's cluster "${other}" does not exist \\(no /pfs/${other}/config key, or one without an id\\): the data is another cluster's, or etcd was replaced or lost its keys; start it with the --etcd and --cluster it was made in, or, if etcd was replaced and this data is to join the new one, remove ${dataDir}/cluster.json first$`,
        ),
      ),
    });
    // Nothing was made of that cluster in etcd.
    expect(harness.etcdctl('get', '--prefix', `/pfs/${other}/`, '--keys-only').trim()).toBe('');
    expect(harness.etcdctl('get', '--prefix', `/pfs/${other}/nodes/`, '--keys-only').trim()).toBe('');
    // Its own cluster's keys gone (a new etcd): refused too, until told to join it.
    harness.etcdctl('del', '--prefix', `/pfs/${cluster}/`);
    await expect(start(await agentConfig(cluster, dataDir))).rejects.toMatchObject({
      code: 'DATA_DIR_OF_ANOTHER_CLUSTER',
    });
    await rm(join(dataDir, 'cluster.json'));
    const { logger, entries } = capturingLogger();
    const adopted = await startAgent(await agentConfig(cluster, dataDir), logger);
    agents.push(adopted);
    await until('master in the new etcd', async () =>
      (await role(adopted)).role === 'master' ? true : undefined,
    );
    // One promotion, straight past the log's generation 3 (not a bump of etcd's by one per failure).
    expect(generationOf(BigInt((await role(adopted)).lastTxid))).toBe(4n);
    expect(entries.filter((e) => e.msg.includes('promotion failed'))).toEqual([]);
    expect(await (await fetch(`${adopted.url}/v1/files/kept`)).text()).toBe('kept');
  });

  it('says what to do about a data dir it cannot use', async () => {
    const parent = await mkdtemp(join(tmpdir(), 'pfs-unusable-'));
    dirs.push(parent);
    await writeFile(join(parent, 'file'), 'not a directory');
    await expect(
      start(await agentConfig(`unusable-${++clusterSeq}`, join(parent, 'file', 'node'))),
    ).rejects.toMatchObject({
      code: 'DATA_DIR_UNUSABLE',
      message: expect.stringMatching(
        new RegExp(
          `^ENOTDIR: not a directory, mkdir '${join(parent, 'file')}[^']*': a file is where the data dir needs a directory: move it, or give another --data-dir$`,
        ),
      ),
    });
  });

  it('warns of a data dir on a tmpfs, whose files a reboot takes', async () => {
    expect(process.getuid?.(), 'this test mounts a tmpfs and must run as root').toBe(0);
    const mountPoint = await mkdtemp(join(tmpdir(), 'pfs-tmpfs-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', mountPoint]);
    try {
      const { logger, entries } = capturingLogger();
      const agent = await startAgent(await agentConfig(`tmpfs-${++clusterSeq}`, mountPoint), logger);
      try {
        expect(entries.filter((e) => e.level === 40 && e.msg.includes('tmpfs')).map((e) => e.msg)).toEqual([
          `data dir ${mountPoint} is on a tmpfs, in memory: what this node stores is gone at its machine's next reboot, with any write no other node has yet; give it a --data-dir on a disk`,
        ]);
      } finally {
        await agent.close();
      }
    } finally {
      execFileSync('umount', [mountPoint]);
      await rm(mountPoint, { recursive: true, force: true });
    }
  });

  it('says when etcd is unreachable and leaves nothing running', async () => {
    const config = await agentConfig(`down-${++clusterSeq}`);
    await expect(start({ ...config, etcd: [`http://127.0.0.1:${await freePort()}`] })).rejects.toThrow(
      /is unreachable .*: start etcd or fix the endpoints$/,
    );
    // The rsync daemon it had started is gone again: its port is free.
    const probe = createServer();
    await new Promise<void>((resolve, reject) => {
      probe.once('error', reject);
      probe.listen(config.rsyncPort, '127.0.0.1', resolve);
    });
    probe.close();
  });
});
