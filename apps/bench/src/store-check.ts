import { mkdir, mkdtemp, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ChangelogGenerator, findUnloggedChanges, findUnloggedChangesOf } from '@pfs/changelog-generator';
import { initStore } from '@pfs/filestore';
import { TxLog } from '@pfs/txlog';

/**
 * A former master's store check with several partitions: a store of `files` small files logged
 * across `partitions` logs, checked against every log as a node that had mastered them all does
 * when it comes back — once with a walk per partition, side by side (as before the checks shared
 * a walk), once with one shared walk. Warm page cache for both (one uncounted walk first);
 * alternated over `rounds`. The files' mtimes are spread over the hours before, so that only the
 * newest are hashed, as in a store written over time.
 */
export async function measureStoreCheck(options: { files: number; partitions: number; rounds: number }) {
  const base = await mkdtemp(join(tmpdir(), 'pfs-store-check-'));
  const root = join(base, 'filestore');
  const logs: TxLog[] = [];
  try {
    await initStore(root);
    const body = Buffer.alloc(100, 7);
    for (let d = 0; d * 1000 < options.files; d++) {
      await mkdir(join(root, `d${d}`), { recursive: true });
      const count = Math.min(1000, options.files - d * 1000);
      await Promise.all(
        Array.from({ length: count }, async (_, i) => {
          const path = join(root, `d${d}`, `f${i}`);
          await writeFile(path, body);
          // Written over hours, as a store is, rather than in the last second, whose files a
          // check always hashes (an unlogged rename can only be that recent).
          const at = new Date(Date.now() - (options.files - d * 1000 - i) * 1000);
          await utimes(path, at, at);
        }),
      );
    }
    const generator = new ChangelogGenerator({ root, partitionCount: options.partitions });
    for (let p = 0; p < options.partitions; p++) {
      const log = await TxLog.open(join(base, 'changelog', String(p)));
      await log.startGeneration(1n);
      await generator.attach(p, log);
      logs.push(log);
    }
    await generator.reconcile();
    const logOf = (path: string) => generator.partitionOf(path);
    const separate = () =>
      Promise.all(
        logs.map((log, p) => findUnloggedChanges({ root, log, belongs: (path) => logOf(path) === p })),
      );
    const shared = () =>
      findUnloggedChangesOf({ root, logs: new Map(logs.map((log, p) => [p, { log }])), logOf });
    const timed = async (run: () => Promise<unknown>) => {
      const cpu = process.cpuUsage();
      const started = performance.now();
      await run();
      const used = process.cpuUsage(cpu);
      return { seconds: (performance.now() - started) / 1000, cpuSeconds: (used.user + used.system) / 1e6 };
    };
    await shared();
    type Run = { seconds: number; cpuSeconds: number };
    const results: { separate: Run[]; shared: Run[] } = { separate: [], shared: [] };
    for (let round = 0; round < options.rounds; round++) {
      results.separate.push(await timed(separate));
      results.shared.push(await timed(shared));
    }
    const median = (values: number[]) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
    const round2 = (value: number) => Math.round(value * 100) / 100;
    const separateSeconds = median(results.separate.map((r) => r.seconds));
    const sharedSeconds = median(results.shared.map((r) => r.seconds));
    return {
      params: options,
      files: options.files,
      partitions: options.partitions,
      walkPerPartitionSeconds: round2(separateSeconds),
      walkPerPartitionCpuSeconds: round2(median(results.separate.map((r) => r.cpuSeconds))),
      sharedWalkSeconds: round2(sharedSeconds),
      sharedWalkCpuSeconds: round2(median(results.shared.map((r) => r.cpuSeconds))),
      speedup: round2(separateSeconds / sharedSeconds),
    };
  } finally {
    for (const log of logs) await log.close();
    await rm(base, { recursive: true, force: true });
  }
}
