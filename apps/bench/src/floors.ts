import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, sleep } from '@pfs/testkit';
import { summarize, timeBulkRsync } from './cluster.ts';

/**
 * The floors PFS is judged against, measured on this machine in the same run:
 * - a bare Node HTTP PUT server that only does temp write + fdatasync + rename per request,
 *   loaded by the same generator as `throughput`;
 * - bulk `rsync -a` of the same number of 4 KiB files into an empty directory.
 */
const BARE_SERVER = `
const http = require('node:http');
const fs = require('node:fs/promises');
const path = require('node:path');
const root = process.argv[1];
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
  res.writeHead(201).end();
}).listen(Number(process.argv[2]), '127.0.0.1');
`;

export async function measureFloors(options: {
  connections: number;
  durationMs: number;
  sizeBytes: number;
  files: number;
}) {
  const base = await mkdtemp(join(tmpdir(), 'pfs-floors-'));
  try {
    const port = await freePort();
    await mkdir(join(base, 'bare'));
    const server = spawn(process.execPath, ['-e', BARE_SERVER, join(base, 'bare'), String(port)], {
      stdio: 'ignore',
    });
    try {
      for (let i = 0; i < 100; i++) {
        if (
          await fetch(`http://127.0.0.1:${port}/`, { method: 'PUT', body: 'x' }).then(
            () => true,
            () => false,
          )
        )
          break;
        await sleep(50);
      }
      const body = randomBytes(options.sizeBytes);
      const latencies: number[] = [];
      const end = performance.now() + options.durationMs;
      const started = performance.now();
      await Promise.all(
        Array.from({ length: options.connections }, async () => {
          while (performance.now() < end) {
            const t0 = performance.now();
            const response = await fetch(`http://127.0.0.1:${port}/`, { method: 'PUT', body });
            await response.arrayBuffer();
            latencies.push(performance.now() - t0);
          }
        }),
      );
      const bare = {
        putsPerSecond: Math.round(latencies.length / ((performance.now() - started) / 1000)),
        latencyMs: summarize(latencies),
      };
      const src = join(base, 'src');
      await mkdir(src);
      for (let i = 0; i < options.files; i++) await writeFile(join(src, `f${i}`), body);
      const rsyncSeconds = await timeBulkRsync(src, join(base, 'dst'));
      return {
        scenario: 'floors',
        params: options,
        bareHttpPutsPerSecond: bare.putsPerSecond,
        bare,
        bulkRsyncFilesPerSecond: Math.round(options.files / rsyncSeconds),
      };
    } finally {
      server.kill('SIGKILL');
    }
  } finally {
    await rm(base, { recursive: true, force: true });
  }
}
