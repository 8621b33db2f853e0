import { spawn } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { freePort, sleep } from '@pfs/testkit';
import autocannon from 'autocannon';
import { cpuPerOperation, sampleCpu } from './cpu.ts';

/**
 * The one load generator every PUT-throughput figure uses (PFS and the bare server alike):
 * autocannon, `connections` keep-alive connections, each request to a fresh path.
 */
export interface PutLoadResult {
  putsPerSecond: number;
  megabytesPerSecond: number;
  failed: number;
  /** autocannon's histogram has p97.5, not p95: named for what it is. */
  latencyMs: { count: number; p50: number; p97_5: number; p99: number; max: number };
  /**
   * CPU milliseconds per successful PUT while loaded: `box` for the whole machine (load generator
   * included), one entry per process named in `processes`; `boxBusy` is the busy fraction.
   */
  cpuMsPerPut: Record<string, number>;
}

export async function putLoad(options: {
  url: string;
  pathOf: (n: number) => string;
  connections: number;
  durationMs: number;
  body: Buffer;
  headers?: Record<string, string>;
  /** Processes whose CPU time to report per PUT, by name. */
  processes?: Record<string, number>;
}): Promise<PutLoadResult> {
  let n = 0;
  const cpuBefore = sampleCpu(options.processes);
  const result = await autocannon({
    url: options.url,
    connections: options.connections,
    duration: options.durationMs / 1000,
    requests: [
      {
        method: 'PUT',
        body: options.body,
        headers: { 'content-type': 'application/octet-stream', ...options.headers },
        setupRequest: (request) => ({ ...request, path: options.pathOf(n++) }),
      },
    ],
  });
  const cpuAfter = sampleCpu(options.processes);
  const ok = result['2xx'];
  const seconds = result.duration;
  return {
    putsPerSecond: Math.round(ok / seconds),
    megabytesPerSecond: Math.round(((ok * options.body.length) / 2 ** 20 / seconds) * 10) / 10,
    failed: result.non2xx + result.errors + result.timeouts,
    latencyMs: {
      count: ok,
      p50: result.latency.p50,
      p97_5: result.latency.p97_5,
      p99: result.latency.p99,
      max: result.latency.max,
    },
    cpuMsPerPut: cpuPerOperation(cpuBefore, cpuAfter, ok),
  };
}

/**
 * The bare floor: a Node HTTP server that only does temp write + fdatasync + rename per PUT,
 * in its own process like a PFS agent. With `durable` it also fsyncs the directory after the
 * rename, without which a crash may lose an acknowledged file: the least a store that promises
 * durability has to do per PUT.
 */
const BARE_SERVER = `
const http = require('node:http');
const fs = require('node:fs/promises');
const path = require('node:path');
const root = process.argv[1];
const durable = process.argv[3] === 'durable';
let n = 0;
http.createServer(async (req, res) => {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const target = path.join(root, String(n++));
  const tmp = target + '.tmp';
  const h = await fs.open(tmp, 'w');
  await h.writeFile(Buffer.concat(chunks));
  await h.datasync();
  await h.close();
  await fs.rename(tmp, target);
  if (durable) {
    const d = await fs.open(root, 'r');
    await d.sync();
    await d.close();
  }
  res.writeHead(201).end();
}).listen(Number(process.argv[2]), '127.0.0.1');
`;

async function startBareServer(
  dir: string,
  durable: boolean,
): Promise<{ url: string; pid: number; close(): void }> {
  await mkdir(dir, { recursive: true });
  const port = await freePort();
  const server = spawn(
    process.execPath,
    ['-e', BARE_SERVER, dir, String(port), durable ? 'durable' : 'plain'],
    { stdio: 'ignore' },
  );
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i++) {
    const up = await fetch(`${url}/`, { method: 'PUT', body: 'x' }).then(
      () => true,
      () => false,
    );
    if (up) return { url, pid: server.pid!, close: () => server.kill('SIGKILL') };
    await sleep(50);
  }
  server.kill('SIGKILL');
  throw new Error('bench: the bare PUT server did not start');
}

/** The bare server under the same load as PFS gets: the floor of every throughput ratio. */
export async function measureBareServer(
  dir: string,
  load: { connections: number; durationMs: number; body: Buffer },
  options: { durable?: boolean } = {},
): Promise<PutLoadResult> {
  const server = await startBareServer(dir, options.durable === true);
  try {
    return await putLoad({
      url: server.url,
      pathOf: (n) => `/${n}`,
      ...load,
      processes: { server: server.pid, loadGenerator: process.pid },
    });
  } finally {
    server.close();
  }
}
