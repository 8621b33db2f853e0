import { execFile } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
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
