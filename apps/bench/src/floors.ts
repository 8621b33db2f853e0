import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { timeBulkRsync } from './cluster.ts';
import { measureBareServer } from './load.ts';

/**
 * The floors PFS is judged against, measured on this machine in the same run:
 * - a bare Node HTTP PUT server that only does temp write + fdatasync + rename per request,
 *   loaded by the same generator as `throughput`;
 * - bulk `rsync -a` of the same number of files into an empty directory.
 */
export async function measureFloors(options: {
  connections: number;
  durationMs: number;
  sizeBytes: number;
  files: number;
}) {
  const base = await mkdtemp(join(tmpdir(), 'pfs-floors-'));
  try {
    const body = randomBytes(options.sizeBytes);
    const bare = await measureBareServer(join(base, 'bare'), {
      connections: options.connections,
      durationMs: options.durationMs,
      body,
    });
    return {
      scenario: 'floors',
      params: options,
      bareHttpPutsPerSecond: bare.putsPerSecond,
      bare,
      bulkRsyncFilesPerSecond: Math.round(
        options.files / (await bulkRsyncSeconds(base, options.files, body)),
      ),
    };
  } finally {
    await rm(base, { recursive: true, force: true });
  }
}

/** Seconds `rsync -a` takes to copy `files` copies of `body` into an empty directory. */
export async function bulkRsyncSeconds(base: string, files: number, body: Buffer): Promise<number> {
  const src = join(base, 'rsync-src');
  await mkdir(src);
  for (let i = 0; i < files; i++) await writeFile(join(src, `f${i}`), body);
  return timeBulkRsync(src, join(base, 'rsync-dst'));
}
