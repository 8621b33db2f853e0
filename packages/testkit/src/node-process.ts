import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { withParentDeathSignal } from './process-group.ts';

/**
 * Starts and stops real node agents as child processes (each in its own process group) for the
 * quick demo, the end-to-end tests and the benchmarks, and reads their status over HTTP. Every
 * process it starts, including the rsync daemon each agent leaves running when it is killed, is
 * stopped by PID. The agent runs from its bundle, `agentDir/dist/pfs-node.mjs`, which is rebuilt
 * first when any of its sources is newer (apps/node's `scripts/build.mjs`; quick when it is not).
 */

export interface NodeSpec {
  /** Directory of the agent app (apps/node), which has `scripts/build.mjs` and `dist/pfs-node.mjs`. */
  agentDir: string;
  httpPort: number;
  rsyncPort: number;
  dataDir: string;
  etcd: string;
  cluster: string;
  partitions?: number;
  leaseTtlSeconds?: number;
  extraArgs?: string[];
}

export interface PartitionStatus {
  partition: number;
  role: string;
  generation: string;
  lastTxid: string;
  lastTxidText: string;
  master: string | null;
  /** False while a new master drains, before it takes writes. */
  masterServing?: boolean;
  following: string | null;
  /** On a master: per live replica, how long its oldest unacknowledged record has waited. */
  replicaLagMs?: Record<string, number | null>;
  /** Whether this node holds the partition, and the live nodes placed on it. */
  holds?: boolean;
  placedOn?: string[];
}

export interface NodeStatus {
  nodeId: string;
  session: boolean;
  partitions: PartitionStatus[];
}

export class NodeProcess {
  readonly id: string;
  readonly url: string;
  readonly fileStore: string;
  private exited: Promise<number | null>;
  private alive = true;

  private constructor(
    readonly spec: NodeSpec,
    readonly pid: number,
    exited: Promise<number | null>,
  ) {
    this.id = `localhost_${spec.httpPort}`;
    this.url = `http://127.0.0.1:${spec.httpPort}`;
    this.fileStore = join(spec.dataDir, 'filestore');
    this.exited = exited.then((code) => {
      this.alive = false;
      return code;
    });
  }

  static async start(spec: NodeSpec): Promise<NodeProcess> {
    await buildAgent(spec.agentDir);
    await mkdir(spec.dataDir, { recursive: true });
    const args = [
      ...(process.env.PFS_NODE_CPU_PROF
        ? ['--cpu-prof', `--cpu-prof-dir=${process.env.PFS_NODE_CPU_PROF}`]
        : []),
      ...AGENT_NODE_FLAGS,
      AGENT_BUNDLE,
      `--http-port=${spec.httpPort}`,
      `--rsync-port=${spec.rsyncPort}`,
      `--data-dir=${spec.dataDir}`,
      `--etcd=${spec.etcd}`,
      `--cluster=${spec.cluster}`,
      `--partitions=${spec.partitions ?? 1}`,
      `--lease-ttl=${spec.leaseTtlSeconds ?? 2}`,
      ...(spec.extraArgs ?? []),
    ];
    const log = createWriteStream(join(spec.dataDir, 'node.log'), { flags: 'a' });
    // In a group of its own (kill() signals the agent alone, not this process), and, where
    // setpriv exists, sent SIGTERM when this process dies however it dies (a test worker ended
    // by a signal, a demo interrupted): the agent then stops its rsync daemon as on any stop.
    const [file, argv] = withParentDeathSignal(process.execPath, args, 'TERM');
    const child = spawn(file, argv, {
      cwd: spec.agentDir,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout.pipe(log);
    child.stderr.pipe(log);
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const node = new NodeProcess(spec, child.pid!, exited);
    try {
      await node.waitHealthy();
    } catch (error) {
      // Nobody else holds it to destroy: the agent, and the daemon it may have started.
      await node.destroy();
      throw error;
    }
    return node;
  }

  get running(): boolean {
    return this.alive;
  }

  private async waitHealthy(): Promise<void> {
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      if (!this.alive) {
        throw new Error(`${this.id} exited during start-up: ${await this.logTail()}`);
      }
      try {
        // Its own answer: another node may hold the port, even under the same id (a node of the
        // user's on the demo's ports), and this agent then exits with "port in use".
        const response = await fetch(`${this.url}/healthz`);
        if (response.ok && ((await response.json()) as { pid?: number }).pid === this.pid) return;
      } catch {}
      await sleep(50);
    }
    throw new Error(`${this.id} did not answer /healthz within 30 s: ${await this.logTail()}`);
  }

  async logTail(lines = 5): Promise<string> {
    const text = await readFile(join(this.spec.dataDir, 'node.log'), 'utf8').catch(() => '');
    return text.trim().split('\n').slice(-lines).join(' | ');
  }

  async status(): Promise<NodeStatus> {
    const response = await fetch(`${this.url}/v1/status`);
    return (await response.json()) as NodeStatus;
  }

  /** Sends `signal` to the agent's process group; with SIGKILL its rsync daemon keeps running, as on a live host. */
  kill(signal: NodeJS.Signals): void {
    try {
      process.kill(-this.pid, signal);
    } catch {}
  }

  /** Graceful stop (SIGTERM) and wait for the exit code. */
  async stop(): Promise<number | null> {
    this.kill('SIGTERM');
    // Cleared once it exits: a pending 15 s timer would keep the caller's process alive.
    let timer: NodeJS.Timeout | undefined;
    const code = await Promise.race([
      this.exited,
      new Promise<'timeout'>((resolve) => {
        timer = setTimeout(() => resolve('timeout'), 15_000);
      }),
    ]).finally(() => clearTimeout(timer));
    if (code === 'timeout') {
      this.kill('SIGKILL');
      return this.exited;
    }
    return code;
  }

  /** Kills whatever is left: the agent and the rsync daemon it started. Idempotent. */
  async destroy(): Promise<void> {
    if (this.alive) {
      this.kill('SIGKILL');
      await this.exited;
    }
    await killRsyncDaemonOf(this.spec.dataDir);
  }
}

/**
 * SIGKILLs the rsync daemon a node agent started for `dataDir`, found by its PID file, if it
 * still runs: it outlives its agent's SIGKILL (as on a live host). Only a daemon running that
 * data dir's config: rsync leaves its PID file when killed, and the PID may since name another
 * process group.
 */
export async function killRsyncDaemonOf(dataDir: string): Promise<void> {
  const pid = Number((await readFile(join(dataDir, 'run', 'rsyncd.pid'), 'utf8').catch(() => '')).trim());
  if (!Number.isInteger(pid) || pid <= 1) return;
  const args = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
  if (!args.includes(`--config=${join(dataDir, 'run', 'rsyncd.conf')}`)) return;
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    // Gone meanwhile.
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` every 10 ms until it returns a value other than undefined; throws after `timeoutMs`. */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined>,
  timeoutMs = 15_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    await sleep(10);
  }
  throw new Error(
    `timed out after ${timeoutMs} ms waiting for ${what}${lastError ? ` (${String(lastError)})` : ''}`,
  );
}

const AGENT_BUNDLE = 'dist/pfs-node.mjs';

/**
 * Node flags the agent runs with, as apps/node's `start` script gives them (a test checks they
 * agree). A young generation of 4 MiB semi-spaces instead of V8's 16: a restart's log replay
 * and store walk make garbage by the gigabyte, and the larger semi-spaces held ~35 MiB more at
 * a million files (peak 296–299 MiB against 262–272, docs/benchmarks.md), for ~0.02 ms more
 * garbage collection per PUT.
 */
export const AGENT_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=4'];
const builds = new Map<string, Promise<void>>();

/** Brings the agent's bundle up to date, once per agent directory and process. */
function buildAgent(agentDir: string): Promise<void> {
  let build = builds.get(agentDir);
  if (build === undefined) {
    build = execa(process.execPath, ['scripts/build.mjs'], { cwd: agentDir, reject: false }).then(
      (result) => {
        if (result.exitCode !== 0) {
          builds.delete(agentDir);
          throw new Error(
            `building the agent in ${agentDir} failed (exit ${result.exitCode}): ${result.stderr.trim().split('\n').slice(-3).join(' | ')}; run "pnpm --filter node build" to see why`,
          );
        }
      },
    );
    builds.set(agentDir, build);
  }
  return build;
}
