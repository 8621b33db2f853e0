import { mkdir, readdir, readFile, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { decodeRecords } from '@pfs/replicator';
import {
  type EtcdHandle,
  freePort,
  killRsyncDaemonOf,
  NodeProcess,
  type NodeSpec,
  startEtcd,
  waitFor,
} from '@pfs/testkit';
import { formatTxId, generationOf, type LogRecord, TxLog } from '@pfs/txlog';

/**
 * The seed's quick demo as a checked story: three nodes, files written into the master's store
 * replicate, the master stops, localhost_12002 takes over with generation 2, localhost_12003
 * follows it, and new files and a delete replicate. Each step is timed; any failed check throws.
 */
export interface StoryOptions {
  /** Parent of each node's data dir (<baseDir>/localhost_<port>). */
  baseDir: string;
  /** HTTP ports of the three nodes; rsync ports are these + 10000 unless `freePorts`. */
  basePort: number;
  /** Pick free ports instead (tests). */
  freePorts?: boolean;
  leaseTtlSeconds?: number;
  /** How the first master is stopped. */
  stopSignal?: 'SIGTERM' | 'SIGKILL';
  say?: (line: string) => void;
}

export interface StoryResult {
  etcd: EtcdHandle;
  nodes: NodeProcess[];
  /** The replica promoted when the first master stopped (either may win: see the story), and the other. */
  master: NodeProcess;
  follower: NodeProcess;
  steps: { name: string; ms: number }[];
  /** Every record of partition 0 as each surviving node logged it. */
  logs: Map<string, LogRecord[]>;
  cleanup(): Promise<void>;
}

export class StoryError extends Error {}

const AGENT_DIR = fileURLToPath(new URL('../../node/', import.meta.url));

function check(condition: boolean, message: string): void {
  if (!condition) throw new StoryError(message);
}

export async function readRecords(node: NodeProcess, partition = 0): Promise<LogRecord[]> {
  const response = await fetch(`${node.url}/v1/partitions/${partition}/records?after=0&max=10000`);
  return decodeRecords(Buffer.from(await response.arrayBuffer()));
}

async function sameBytes(a: string, b: string): Promise<boolean> {
  try {
    return (await readFile(a)).equals(await readFile(b));
  } catch {
    return false;
  }
}

async function gone(file: string): Promise<boolean> {
  return stat(file).then(
    () => false,
    () => true,
  );
}

/**
 * Marks a data dir the demo made. Its dirs are named as a node's default data dir is
 * (`/tmp/localhost_<port>`), so a PFS data dir without it may be a user's node's.
 */
const DEMO_MARK = '.quickdemo';

/** Refuses to wipe a directory that is not a data dir of an earlier run of the demo, then makes it. */
async function freshDataDir(dir: string): Promise<void> {
  const exists = await stat(dir).then(
    () => true,
    () => false,
  );
  if (exists) await wipeDemoDataDir(dir);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, DEMO_MARK), 'a data dir of `pnpm demo`, which removes it at its next run\n');
}

async function wipeDemoDataDir(dir: string): Promise<void> {
  const isPfs = await stat(join(dir, 'filestore', '.pfs', 'sentinel')).then(
    () => true,
    () => false,
  );
  if (!isPfs) {
    throw new StoryError(`${dir} exists and is not a PFS data dir: move it away or pass --base-dir`);
  }
  // Or by an earlier demo, from before the mark: its agents' output went to node.log in the data
  // dir, which a node started by hand (logging to its terminal) does not have.
  const exists = (name: string) =>
    stat(join(dir, name)).then(
      () => true,
      () => false,
    );
  const madeByDemo = (await exists(DEMO_MARK)) || (await exists('node.log'));
  if (!madeByDemo) {
    throw new StoryError(
      `${dir} is a PFS data dir the demo did not make (a node's own, whose default data dir this is): move it away or pass --base-dir`,
    );
  }
  // Its files are about to go, with the PID file that is the only way to find its rsync daemon.
  for (const { pid, args } of await processes()) {
    if (args.includes(`--data-dir=${dir}`)) {
      throw new StoryError(
        `a node of an earlier run still runs on ${dir} (pid ${pid}): stop it (kill ${pid}) or pass --base-dir`,
      );
    }
  }
  // An rsync daemon outlives its agent's SIGKILL (the story does that).
  await killRsyncDaemonOf(dir);
  await rm(dir, { recursive: true, force: true });
}

/** Every process's id and command line (Linux /proc). */
async function processes(): Promise<{ pid: number; args: string[] }[]> {
  const found: { pid: number; args: string[] }[] = [];
  for (const name of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(name)) continue;
    const cmdline = await readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '');
    if (cmdline !== '') found.push({ pid: Number(name), args: cmdline.split('\0') });
  }
  return found;
}

export async function runStory(options: StoryOptions): Promise<StoryResult> {
  const say = options.say ?? (() => {});
  const steps: { name: string; ms: number }[] = [];
  const nodes: NodeProcess[] = [];
  const etcd = await startEtcd();
  const cleanup = async () => {
    await Promise.all(nodes.map((n) => n.destroy()));
    await etcd.stop();
  };
  const step = async <T>(name: string, work: () => Promise<T>): Promise<T> => {
    const started = performance.now();
    const value = await work();
    const ms = Math.round(performance.now() - started);
    steps.push({ name, ms });
    say(`✔ ${name} (${ms} ms)`);
    return value;
  };
  try {
    say(`etcd ${etcd.endpoint} (pid ${etcd.pid})`);
    const cluster = `quickdemo-${Date.now().toString(36)}`;
    const specs: NodeSpec[] = [];
    // Ties in the promotion ranking go to the smallest node id: with free ports, hand them out in
    // ascending order so the second node is the one expected to take over, as in the seed.
    const httpPorts = options.freePorts
      ? (await Promise.all([freePort(), freePort(), freePort()])).sort((a, b) =>
          String(a).localeCompare(String(b)),
        )
      : [0, 1, 2].map((i) => options.basePort + i);
    for (let i = 0; i < 3; i++) {
      const httpPort = httpPorts[i]!;
      const rsyncPort = options.freePorts ? await freePort() : options.basePort + 10_000 + i;
      const dataDir = join(options.baseDir, `localhost_${httpPort}`);
      await freshDataDir(dataDir);
      specs.push({
        agentDir: AGENT_DIR,
        httpPort,
        rsyncPort,
        dataDir,
        etcd: etcd.endpoint,
        cluster,
        leaseTtlSeconds: options.leaseTtlSeconds ?? 2,
      });
    }
    const [first, second, third] = [0, 1, 2].map((i) => `localhost_${specs[i]!.httpPort}`) as [
      string,
      string,
      string,
    ];

    await step(`${first} started and is master`, async () => {
      nodes.push(await NodeProcess.start(specs[0]!));
      await waitFor(`${first} to be master`, async () =>
        (await nodes[0]!.status()).partitions[0]?.role === 'master' ? true : undefined,
      );
    });
    await step(`${second} and ${third} started as replicas of ${first}`, async () => {
      // Both kept as they start, so that the clean-up stops one that started when the other did not.
      const starts = await Promise.allSettled([NodeProcess.start(specs[1]!), NodeProcess.start(specs[2]!)]);
      for (const start of starts) if (start.status === 'fulfilled') nodes.push(start.value);
      const failed = starts.find((start): start is PromiseRejectedResult => start.status === 'rejected');
      if (failed !== undefined) throw failed.reason;
      for (const node of nodes.slice(1)) {
        await waitFor(`${node.id} to follow ${first}`, async () =>
          (await node.status()).partitions[0]?.following === first ? true : undefined,
        );
      }
    });
    const n1 = nodes[0]!;

    await step(
      `a.txt and b.txt written into ${n1.fileStore} appear byte-identical on ${second} and ${third}`,
      async () => {
        await writeFile(join(n1.fileStore, 'a.txt'), 'this is a.txt\n');
        await writeFile(join(n1.fileStore, 'b.txt'), 'and this is b.txt\n');
        for (const node of nodes.slice(1)) {
          for (const name of ['a.txt', 'b.txt']) {
            await waitFor(`${name} on ${node.id}`, async () =>
              (await sameBytes(join(n1.fileStore, name), join(node.fileStore, name))) ? true : undefined,
            );
          }
        }
        // Replicated means logged there too: a replica that joined after the files were written
        // has them from its copy of the master's store before its log has their records, and a
        // node with no record does not stand for election.
        const logged = await waitFor(`a.txt and b.txt logged on ${first}`, async () => {
          // In txid order: the last of these is the later of the two.
          const puts = (await readRecords(n1)).filter(
            (r) => r.kind === 'put' && (r.path === 'a.txt' || r.path === 'b.txt'),
          );
          const both = new Set(puts.map((r) => r.path)).size === 2;
          return both ? puts.at(-1)!.txid : undefined;
        });
        for (const node of nodes.slice(1)) {
          await waitFor(`${node.id} to have logged them`, async () =>
            BigInt((await node.status()).partitions[0]?.lastTxid ?? '0') >= logged ? true : undefined,
          );
        }
      },
    );

    const signal = options.stopSignal ?? 'SIGTERM';
    await step(`${first} stopped (${signal})`, async () => {
      if (signal === 'SIGTERM') {
        const code = await n1.stop();
        check(code === 0, `${first} exited with ${code} on SIGTERM, expected 0`);
      } else {
        n1.kill('SIGKILL');
        await waitFor(`${first} to die`, async () => (n1.running ? undefined : true));
      }
    });

    // The ranking prefers the second node (the same log as the third, the smaller id), but a
    // candidate that has not claimed within its turn is passed over: on a loaded machine the
    // third may take over, and the story goes on with whichever did.
    let promoted: NodeProcess | undefined;
    await step(`a replica (${second}, as in the seed, or ${third}) promoted to master`, async () => {
      promoted = await waitFor(`${second} or ${third} to be master`, async () => {
        for (const node of [nodes[1]!, nodes[2]!]) {
          if ((await node.status()).partitions[0]?.role === 'master') return node;
        }
        return undefined;
      }).catch(async (error: Error) => {
        // What the candidates said is what tells why none took over.
        const tails = await Promise.all(
          [nodes[1]!, nodes[2]!].map(async (n) => `${n.id}: ${await n.logTail(8)}`),
        );
        throw new StoryError(`${error.message}; ${tails.join('; ')}`);
      });
    });
    const n2 = promoted!;
    say(`  ${n2.id} is master`);
    const n3 = n2 === nodes[1] ? nodes[2]! : nodes[1]!;
    const [newMaster, follower] = [n2.id, n3.id];
    const generation = (await n2.status()).partitions[0]!.generation;
    check(generation === '2', `${newMaster} is master in generation ${generation}, expected 2`);

    await step(`the other replica now replicates from the new master`, async () => {
      await waitFor(`${follower} to follow ${newMaster}`, async () =>
        (await n3.status()).partitions[0]?.following === newMaster ? true : undefined,
      );
    });

    await step(`c.txt and d.txt written into ${n2.fileStore} appear on ${follower}`, async () => {
      await writeFile(join(n2.fileStore, 'c.txt'), 'c.txt, written to the new master\n');
      await writeFile(join(n2.fileStore, 'd.txt'), 'd.txt, written to the new master\n');
      for (const name of ['c.txt', 'd.txt']) {
        await waitFor(`${name} on ${follower}`, async () =>
          (await sameBytes(join(n2.fileStore, name), join(n3.fileStore, name))) ? true : undefined,
        );
      }
    });

    await step(`a.txt deleted on ${newMaster} disappears on ${follower}`, async () => {
      await unlink(join(n2.fileStore, 'a.txt'));
      await waitFor(`a.txt gone on ${follower}`, async () =>
        (await gone(join(n3.fileStore, 'a.txt'))) ? true : undefined,
      );
    });

    const logs = new Map<string, LogRecord[]>();
    await step(
      'txids of the new writes carry generation 2; logs match, the old master’s is a prefix',
      async () => {
        const want = n2.status().then((s) => s.partitions[0]!.lastTxid);
        const last = await want;
        await waitFor(`${follower} to apply ${last}`, async () =>
          (await n3.status()).partitions[0]!.lastTxid === last ? true : undefined,
        );
        for (const node of [n2, n3]) logs.set(node.id, await readRecords(node));
        const onMaster = logs.get(newMaster)!;
        const onReplica = logs.get(follower)!;
        check(
          JSON.stringify(onMaster, jsonBigint) === JSON.stringify(onReplica, jsonBigint),
          `logs of ${newMaster} and ${follower} differ`,
        );
        // The stopped master's log is a prefix of the new one: nothing it logged was lost or reordered.
        const oldLog = await TxLog.open(join(n1.spec.dataDir, 'changelog', '0'));
        const old: LogRecord[] = [];
        for await (const record of oldLog.readFrom(0n)) old.push(record);
        await oldLog.close();
        check(old.length > 0, `${first} logged nothing`);
        check(
          JSON.stringify(old, jsonBigint) === JSON.stringify(onMaster.slice(0, old.length), jsonBigint),
          `the log of ${first} is not a prefix of the log of ${newMaster}`,
        );
        logs.set(first, old);
        for (let i = 1; i < onMaster.length; i++) {
          check(
            onMaster[i]!.txid > onMaster[i - 1]!.txid,
            `txids do not increase at ${formatTxId(onMaster[i]!.txid)}`,
          );
        }
        for (const [kind, path] of [
          ['put', 'c.txt'],
          ['put', 'd.txt'],
          ['delete', 'a.txt'],
        ] as const) {
          const record = onMaster.find((r) => r.kind === kind && r.path === path);
          check(record !== undefined, `no ${kind} record for ${path}`);
          check(
            generationOf(record!.txid) === 2n,
            `${kind} ${path} has txid ${formatTxId(record!.txid)}, not generation 2`,
          );
          say(`  ${kind.padEnd(6)} ${path}  txid ${formatTxId(record!.txid)} (${record!.txid})`);
        }
      },
    );
    return { etcd, nodes, master: n2, follower: n3, steps, logs, cleanup };
  } catch (error) {
    for (const node of nodes) say(`  ${node.id} log: ${await node.logTail(3)}`);
    await cleanup();
    throw error;
  }
}

function jsonBigint(_key: string, value: unknown): unknown {
  return typeof value === 'bigint' ? value.toString() : value;
}
