import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { watch } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sleep } from '@pfs/testkit';
import { summarize } from './cluster.ts';
import { warmUpFiles } from './lag.ts';

/**
 * The same paced workload as `lag`, through lsyncd (default.rsync, delay 0) from one plain
 * directory into another on this machine: the floor a user would compare PFS's lag with.
 */
export async function measureLsyncdLag(options: { files: number; ratePerSecond: number; sizeBytes: number }) {
  const base = await mkdtemp(join(tmpdir(), 'pfs-lsyncd-'));
  const src = join(base, 'src');
  const dst = join(base, 'dst');
  await mkdir(src);
  await mkdir(dst);
  const config = join(base, 'lsyncd.lua');
  await writeFile(
    config,
    `settings { nodaemon = true, logfile = "${base}/lsyncd.log", statusFile = "${base}/status" }
sync { default.rsync, source = "${src}", target = "${dst}", delay = 0 }
`,
  );
  const lsyncd = spawn('lsyncd', [config], { stdio: 'ignore', detached: true });
  const failed = new Promise<never>((_, reject) => {
    lsyncd.once('error', (error: NodeJS.ErrnoException) =>
      reject(
        error.code === 'ENOENT'
          ? new LsyncdMissing('lsyncd is not installed: run PFS_BOOTSTRAP_LSYNCD=1 bash scripts/bootstrap.sh')
          : error,
      ),
    );
    // An lsyncd that ends by itself (a bad config, inotify's limits) is no floor: the run fails
    // rather than report an empty lsyncd column after its waits.
    lsyncd.once('exit', (code, signal) =>
      reject(new Error(`lsyncd exited during the run (${signal ?? `code ${code}`}): see ${base}/lsyncd.log`)),
    );
  });
  failed.catch(() => {});
  try {
    await Promise.race([sleep(1500), failed]);
    const sentAt = new Map<string, number>();
    const seen = new Map<string, number>();
    const watcher = watch(dst, (_event, name) => {
      const file = name?.toString();
      if (file !== undefined && sentAt.has(file) && !seen.has(file)) seen.set(file, performance.now());
    });
    const body = randomBytes(options.sizeBytes);
    const writePaced = async (prefix: string, count: number) => {
      const started = performance.now();
      for (let n = 0; n < count; n++) {
        const wait = started + (n * 1000) / options.ratePerSecond - performance.now();
        if (wait > 0) await sleep(wait);
        const name = `${prefix}-${String(n).padStart(6, '0')}.bin`;
        sentAt.set(name, performance.now());
        await writeFile(join(src, name), body);
      }
      const deadline = performance.now() + 30_000;
      while (seen.size < sentAt.size && performance.now() < deadline) await sleep(10);
    };
    // The same uncounted warm-up as PFS gets (see measureLag).
    await writePaced('warm', warmUpFiles(options.ratePerSecond));
    seen.clear();
    sentAt.clear();
    await writePaced('lag', options.files);
    watcher.close();
    // Ended by itself while the files were written: its figures would be files it never copied.
    await Promise.race([failed, Promise.resolve()]);
    return {
      scenario: 'lag-lsyncd',
      params: options,
      lagMs: summarize([...seen].map(([name, at]) => at - sentAt.get(name)!)),
      missing: options.files - seen.size,
    };
  } finally {
    try {
      process.kill(-lsyncd.pid!, 'SIGKILL');
    } catch {}
    await rm(base, { recursive: true, force: true });
  }
}

/** lsyncd is not installed: the PFS figures stand alone, with a note. */
export class LsyncdMissing extends Error {}
