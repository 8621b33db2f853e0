import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';

const servers: Server[] = [];
afterEach(async () => {
  await Promise.all(
    servers.splice(0).map((s) => {
      s.closeAllConnections();
      return new Promise((resolve) => s.close(resolve));
    }),
  );
});

/**
 * A stand-in node answering only `GET /v1/status` with what `status(url)` returns; with no
 * `status`, a frozen node that accepts connections and never answers.
 */
async function fakeNode(status?: (url: string) => unknown): Promise<string> {
  const server = createServer((request, response) => {
    if (status === undefined) return;
    if (request.url !== '/v1/status') {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(status(url)));
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return url;
}

function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [fileURLToPath(new URL('../bin/pfs.mjs', import.meta.url)), '--json', ...args],
      (error, stdout, stderr) => resolve({ code: error ? Number(error.code) : 0, stdout, stderr }),
    );
  });
}

describe('pfs status', () => {
  it('asks every live node for a bulk copy in progress, and does not wait long for one that does not answer', async () => {
    const progress = {
      elapsedMs: 2100,
      files: 1200,
      bytes: 4_800_000,
      parts: [{ percent: 40, files: 1200, bytes: 4_800_000 }],
    };
    const partition = (bootstrap: unknown) => ({
      partition: 0,
      role: 'replica',
      master: 'a',
      generation: '1',
      lastTxid: '4294967297',
      reported: { a: '4294967297' },
      replicaLagMs: {},
      bootstrap,
    });
    let urls: { a: string; b: string; c: string } | undefined;
    const nodes = () => [
      { id: 'a', url: urls!.a, rsyncPort: 1 },
      { id: 'b', url: urls!.b, rsyncPort: 2 },
      { id: 'c', url: urls!.c, rsyncPort: 3 },
    ];
    const a = await fakeNode(() => ({ nodeId: 'a', partitions: [partition(null)], nodes: nodes() }));
    const b = await fakeNode(() => ({ nodeId: 'b', partitions: [partition(progress)], nodes: nodes() }));
    const c = await fakeNode();
    urls = { a, b, c };
    const result = await cli('--node', a, 'status');
    expect(result.code, result.stderr).toBe(0);
    const printed = JSON.parse(result.stdout);
    expect(printed.copying).toEqual([{ node: 'b', partition: 0, progress }]);
    expect(printed.unanswered).toEqual(['c']);
    expect(Object.keys(printed.masters)).toEqual(['a']);
  });
});

describe('pfs get', () => {
  /** A stand-in node that serves `content` at every path with `etag`. */
  async function serving(content: string, etag: string): Promise<string> {
    const server = createServer((_request, response) => {
      response.writeHead(200, { etag, 'content-length': Buffer.byteLength(content) }).end(content);
    });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }
  const etagOf = (text: string) => `"${createHash('sha256').update(text).digest('hex')}"`;

  it('saves a file whole once it matches its ETag, and leaves the local file as it was otherwise', async () => {
    const work = await mkdtemp(join(tmpdir(), 'pfs-get-'));
    try {
      const local = join(work, 'photo.jpg');
      await writeFile(local, 'what was here');
      const good = await serving('the stored bytes', etagOf('the stored bytes'));
      expect((await cli('--node', good, 'get', 'photo.jpg', local)).code).toBe(0);
      expect(await readFile(local, 'utf8')).toBe('the stored bytes');
      const bad = await serving('damaged on the way', etagOf('the stored bytes'));
      const refused = await cli('--node', bad, 'get', 'photo.jpg', local);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(
        /^pfs: photo\.jpg arrived with sha-256 [0-9a-f]{64}, not the "[0-9a-f]{64}" the node announced: .* was left as it was; fetch it again\n$/,
      );
      expect(await readFile(local, 'utf8')).toBe('the stored bytes');
      expect(await readdir(work)).toEqual(['photo.jpg']);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });

  it('says how to write a --node without its scheme', async () => {
    const result = await cli('--node', '127.0.0.1:12001', 'status');
    expect(result.code).toBe(2);
    expect(result.stderr).toBe(
      'pfs: --node "127.0.0.1:12001" is not an http:// URL: pass it as http://HOST:PORT\n',
    );
  });
});

describe('pfs, when a request fails', () => {
  /** A stand-in node that reads each request whole and then drops the connection unanswered. */
  async function dropping(): Promise<string> {
    const server = createServer((request) => {
      request.resume();
      request.on('end', () => request.socket.destroy());
    });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  it('says a write whose answer was lost may have been stored, and that repeating it is harmless', async () => {
    const work = await mkdtemp(join(tmpdir(), 'pfs-put-'));
    try {
      const local = join(work, 'a.txt');
      await writeFile(local, 'bytes');
      const node = await dropping();
      const put = await cli('--node', node, 'put', local, 'a.txt');
      expect(put.code).toBe(1);
      expect(put.stderr).toMatch(
        /^pfs: the connection to http:\/\/127\.0\.0\.1:\d+ broke before the answer came \(.+\): the write may or may not have been done; run it again \(repeating it is harmless\)\n$/,
      );
      const removed = await cli('--node', node, 'rm', 'a.txt');
      expect(removed.stderr).toMatch(/: the delete may or may not have been done;/);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });

  it('blames the connection, not the local file, when the node resets it', async () => {
    const work = await mkdtemp(join(tmpdir(), 'pfs-put-'));
    try {
      const local = join(work, 'big.bin');
      await writeFile(local, Buffer.alloc(8 * 1024 * 1024, 7));
      // The whole body read, then a reset (RST): the client's read of the answer fails.
      const server = createServer((request) => {
        request.resume();
        request.on('end', () => request.socket.resetAndDestroy());
      });
      servers.push(server);
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const node = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const put = await cli('--node', node, 'put', local, 'big.bin');
      expect(put.code).toBe(1);
      expect(put.stderr).toMatch(
        /^pfs: the connection to http:\/\/127\.0\.0\.1:\d+ broke before the answer came \(.+\): the write may or may not have been done;/,
      );
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });

  it('names a local file it cannot read, not the node', async () => {
    // A regular file by its stat whose read fails, even for root: this process's own memory at
    // offset 0, which is never mapped.
    const put = await cli('--node', await fakeNode(() => ({})), 'put', '/proc/self/mem', 'a.txt');
    expect(put.code).toBe(1);
    expect(put.stderr).toMatch(/^pfs: cannot read \/proc\/self\/mem \(EIO: .*\): nothing was stored\n$/);
  });

  it('asks whether the node runs when nothing listens at its address', async () => {
    const url = await dropping();
    const server = servers.pop();
    await new Promise((resolve) => server?.close(resolve));
    const get = await cli('--node', url, 'get', 'a.txt');
    expect(get.code).toBe(1);
    expect(get.stderr).toMatch(
      /^pfs: cannot reach http:\/\/127\.0\.0\.1:\d+ \(.*ECONNREFUSED.*\): is the node running\? Pass --node\n$/,
    );
  });
});

describe('pfs, as run through pnpm', () => {
  /** `pnpm --filter node pfs -- …` runs bin/pfs.mjs in apps/node with `--` first. */
  function throughPnpm(
    userDir: string,
    ...args: string[]
  ): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      execFile(
        process.execPath,
        [fileURLToPath(new URL('../bin/pfs.mjs', import.meta.url)), '--', ...args],
        {
          cwd: fileURLToPath(new URL('..', import.meta.url)),
          env: {
            ...process.env,
            INIT_CWD: userDir,
            npm_package_json: fileURLToPath(new URL('../package.json', import.meta.url)),
            npm_lifecycle_event: 'pfs',
          },
        },
        (error, stdout, stderr) => resolve({ code: error ? Number(error.code) : 0, stdout, stderr }),
      );
    });
  }

  it('skips the `--` pnpm passes on and reads a relative file from where the user typed the command', async () => {
    const userDir = await mkdtemp(join(tmpdir(), 'pfs-cli-'));
    await writeFile(join(userDir, 'photo.jpg'), 'jpeg bytes');
    let received = '';
    const server = createServer((request, response) => {
      request.setEncoding('utf8');
      request.on('data', (chunk: string) => {
        received += chunk;
      });
      request.on('end', () =>
        response
          .writeHead(201, { 'content-type': 'application/json' })
          .end(JSON.stringify({ txidText: '1:1', size: '10', partition: 0 })),
      );
    });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const result = await throughPnpm(userDir, '--json', '--node', url, 'put', 'photo.jpg', 'a/photo.jpg');
      expect(result.code, result.stderr).toBe(0);
      expect(received).toBe('jpeg bytes');
    } finally {
      await rm(userDir, { recursive: true, force: true });
    }
  });

  it('answers an unknown option with the usage and exit code 2', async () => {
    const result = await throughPnpm(tmpdir(), 'put', 'a', 'b', '--ack-timeout', '5');
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^pfs: Unknown option '--ack-timeout'.*\nusage: pfs /);
  });
});
