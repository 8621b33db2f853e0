import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { measureBootstrap } from './bootstrap.ts';
import { measureBurst } from './burst.ts';
import { measureChaos } from './chaos.ts';
import { measureFailover } from './failover.ts';
import { measureFloors } from './floors.ts';
import { measureLag } from './lag.ts';
import { LsyncdMissing, measureLsyncdLag } from './lsyncd.ts';
import { measureScale } from './scale.ts';
import { measureScaleOut } from './scale-out.ts';
import { measureStoreCheck } from './store-check.ts';
import { measureThroughput } from './throughput.ts';

/**
 * `pnpm bench [lag|failover|handover]`: runs the scenarios on a local 3-node cluster (real etcd,
 * rsync and agents), prints a table and writes JSON to bench-results/<scenario>.json.
 * Benchmarks measure; they never fail on a number.
 */
const RESULTS_DIR = fileURLToPath(new URL('../../../bench-results/', import.meta.url));

/**
 * PFS's lag and, in the same run, the same paced workload through lsyncd: the floor the issue
 * compares it with. Without lsyncd installed the PFS figures stand alone, with a note.
 */
async function lagWithLsyncd(options: Parameters<typeof measureLag>[0]) {
  const pfs = await measureLag(options);
  // Only a missing lsyncd is skipped; any other failure of it fails the run.
  const lsyncd = await measureLsyncdLag(options).then(
    (result) => ({ lagMs: result.lagMs, missing: result.missing }),
    (error: Error) => {
      if (error instanceof LsyncdMissing) return { skipped: error.message };
      throw error;
    },
  );
  return { ...pfs, lsyncd };
}

/** Four nodes, 8 partitions on 2 nodes each, 60 s of kills and restarts, unless overridden. */
function chaos(overrides: Partial<Parameters<typeof measureChaos>[0]>) {
  return measureChaos({
    nodes: 4,
    partitions: 8,
    replicationFactor: 2,
    seconds: 60,
    writers: 8,
    pathsPerWriter: 50,
    placementGraceMs: 3000,
    ...overrides,
  });
}

const scenarios = {
  lag: () => lagWithLsyncd({ files: 200, ratePerSecond: 20, sizeBytes: 4096, leaseTtlSeconds: 2 }),
  'lag-1-replica': () =>
    measureLag({ files: 200, ratePerSecond: 20, sizeBytes: 4096, leaseTtlSeconds: 2, replicas: 1 }),
  'lag-200': () => measureLag({ files: 1000, ratePerSecond: 200, sizeBytes: 4096, leaseTtlSeconds: 2 }),
  'lag-200-nowatch': () =>
    lagWithLsyncd({ files: 1000, ratePerSecond: 200, sizeBytes: 4096, leaseTtlSeconds: 2, watch: false }),
  'lag-1000-nowatch': () =>
    lagWithLsyncd({ files: 5000, ratePerSecond: 1000, sizeBytes: 4096, leaseTtlSeconds: 2, watch: false }),
  'lag-nowatch': () =>
    lagWithLsyncd({ files: 200, ratePerSecond: 20, sizeBytes: 4096, leaseTtlSeconds: 2, watch: false }),
  failover: () => measureFailover({ rounds: 10, leaseTtlSeconds: 2, signal: 'SIGKILL' }),
  'failover-ttl5': () => measureFailover({ rounds: 5, leaseTtlSeconds: 5, signal: 'SIGKILL' }),
  'failover-revoke': () =>
    measureFailover({
      rounds: 10,
      leaseTtlSeconds: 2,
      signal: 'SIGKILL',
      extraArgs: ['--revoke-refusing-master=true'],
    }),
  burst: () => measureBurst({ files: 5000, sizeBytes: 4096, connections: 32, watch: false }),
  handover: () => measureFailover({ rounds: 5, leaseTtlSeconds: 2, signal: 'SIGTERM' }),
  bootstrap: () => measureBootstrap({ files: 50_000, sizeBytes: 4096 }),
  'bootstrap-5k': () => measureBootstrap({ files: 5_000, sizeBytes: 4096 }),
  'scale-out': () =>
    measureScaleOut({ nodes: 3, partitions: 16, replicationFactor: 2, files: 10_000, sizeBytes: 4096 }),
  chaos: () => chaos({}),
  'chaos-etcd-pauses': () => chaos({ etcdPauses: true }),
  'chaos-ack-local': () => chaos({ ack: 'local' }),
  'chaos-all-nodes': () => chaos({ nodes: 3, partitions: 4, replicationFactor: 0 }),
  'chaos-nested': () => chaos({ nested: true }),
  scale: () => measureScale({ files: 1_000_000, sizeBytes: 100 }),
  'store-check': () => measureStoreCheck({ files: 50_000, partitions: 8, rounds: 3 }),
  'scale-100k': () => measureScale({ files: 100_000, sizeBytes: 100 }),
  floors: () => measureFloors({ connections: 32, durationMs: 5000, sizeBytes: 4096, files: 5000 }),
  throughput: () => measureThroughput({ connections: 32, durationMs: 5000, sizeBytes: 4096, watch: true }),
  'throughput-nowatch': () =>
    measureThroughput({ connections: 32, durationMs: 5000, sizeBytes: 4096, watch: false }),
  'throughput-256k': () =>
    measureThroughput({ connections: 32, durationMs: 5000, sizeBytes: 256 * 1024, watch: false }),
} as const;

async function main(): Promise<void> {
  const wanted = process.argv.slice(2).filter((a) => a !== '--');
  const names = (wanted.length > 0 ? wanted : ['lag', 'failover', 'handover']) as (keyof typeof scenarios)[];
  for (const name of names) {
    if (!(name in scenarios)) {
      process.stderr.write(
        `bench: unknown scenario ${name}: choose from ${Object.keys(scenarios).join(', ')}\n`,
      );
      process.exit(2);
    }
  }
  await mkdir(RESULTS_DIR, { recursive: true });
  const machine = {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
  };
  for (const name of names) {
    process.stdout.write(`running ${name}…\n`);
    const result = { ...(await scenarios[name]()), machine, date: new Date().toISOString() };
    await writeFile(join(RESULTS_DIR, `${name}.json`), `${JSON.stringify(result, null, 2)}\n`);
    const rows: [string, unknown][] = [];
    for (const [key, value] of Object.entries(result)) {
      if (typeof value !== 'object' || value === null) continue;
      if ('p50' in value) rows.push([key, value]);
      else if (!('latencyMs' in value))
        for (const [sub, stats] of Object.entries(value))
          if (typeof stats === 'object' && stats !== null && 'p50' in stats)
            rows.push([`${key} ${sub}`, stats]);
      if ('latencyMs' in value) {
        const v = value as {
          putsPerSecond: number;
          megabytesPerSecond: number;
          latencyMs: unknown;
          ratioOfBare?: number;
          ratioOfDurableBare?: number;
          ratioOfBulkRsync?: number;
          replicasKeptUp?: boolean;
          cpuMsPerPut?: Record<string, number>;
        };
        const ratio =
          (v.ratioOfBare === undefined ? '' : `, ${v.ratioOfBare} of bare`) +
          (v.ratioOfDurableBare === undefined ? '' : `, ${v.ratioOfDurableBare} of durable bare`) +
          (v.ratioOfBulkRsync === undefined ? '' : `, ${v.ratioOfBulkRsync} of rsync -a`) +
          (v.replicasKeptUp === undefined
            ? ''
            : v.replicasKeptUp
              ? ', replicas kept up'
              : ', replicas did NOT keep up (lag p99 > 1 s or unknown): not a rate the target counts');
        process.stdout.write(
          `${name.padEnd(10)} ${key.padEnd(21)} ${v.putsPerSecond} PUT/s, ${v.megabytesPerSecond} MB/s${ratio}\n`,
        );
        rows.push([`${key} latencyMs`, v.latencyMs]);
        if (v.cpuMsPerPut !== undefined) {
          const { boxBusy, ...perPut } = v.cpuMsPerPut;
          const parts = Object.entries(perPut).map(([who, ms]) => `${who} ${ms}`);
          process.stdout.write(
            `${name.padEnd(10)} ${key.padEnd(21)} CPU ms per PUT: ${parts.join(', ')} (machine ${Math.round((boxBusy ?? 0) * 100)} % busy)\n`,
          );
        }
      }
    }
    for (const [metric, stats] of rows) {
      const s = stats as Record<string, number>;
      process.stdout.write(
        `${name.padEnd(10)} ${metric.padEnd(22)} n=${String(s.count).padEnd(5)} p50=${s.p50}ms ${s.p97_5 === undefined ? `p95=${s.p95}` : `p97.5=${s.p97_5}`}ms p99=${s.p99}ms max=${s.max}ms\n`,
      );
    }
    for (const [key, value] of Object.entries(result)) {
      if (typeof value === 'number' && key !== 'missing')
        process.stdout.write(`${name.padEnd(10)} ${key} ${value}\n`);
      // A part that did not run says why (lsyncd skipped: not installed).
      if (typeof value === 'object' && value !== null && 'skipped' in value)
        process.stdout.write(`${name.padEnd(10)} ${key} skipped: ${String(value.skipped)}\n`);
    }
    if ('missing' in result && result.missing > 0)
      process.stdout.write(`${name}: ${result.missing} files never seen\n`);
  }
  process.stdout.write(`results in ${RESULTS_DIR}\n`);
}

void main();
