import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { type EtcdHandle, freePort, startEtcd, stopAll } from '@pfs/testkit';
import pino, { type Logger } from 'pino';
import { afterAll, afterEach, beforeAll } from 'vitest';
import { type Agent, startAgent } from '../src/agent.ts';
import { loadConfig, type NodeConfig } from '../src/config.ts';

/**
 * In-process agents against one real etcd per test file: registers the file's hooks (etcd up
 * before, agents closed and their data dirs removed after each test, etcd stopped after all).
 */
export function useAgents() {
  let etcd: EtcdHandle | undefined;
  const agents: Agent[] = [];
  const dirs: string[] = [];
  beforeAll(async () => {
    etcd = await startEtcd();
  });
  afterEach(async () => {
    await Promise.all(agents.splice(0).map((a) => a.close()));
    await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
  });
  afterAll(() => stopAll());

  const harness = {
    agents,
    dirs,
    /** The etcd endpoint, once the file's tests run. */
    etcdEndpoint(): string {
      if (etcd === undefined) throw new Error('etcd is not started yet');
      return etcd.endpoint;
    },
    /** Runs etcdctl (API v3) against the test file's etcd. */
    etcdctl(...args: string[]): string {
      return execFileSync('etcdctl', [`--endpoints=${harness.etcdEndpoint()}`, ...args], {
        env: { ...process.env, ETCDCTL_API: '3' },
        encoding: 'utf8',
      });
    },
    /** A node's config in `cluster`, on free ports and a new temp data dir (unless given). */
    async agentConfig(cluster: string, dataDir?: string, extraArgs: string[] = []): Promise<NodeConfig> {
      const dir = dataDir ?? (await mkdtemp(join(tmpdir(), 'pfs-agent-')));
      if (dataDir === undefined) dirs.push(dir);
      return loadConfig(
        [
          `--http-port=${await freePort()}`,
          `--rsync-port=${await freePort()}`,
          `--data-dir=${dir}`,
          `--etcd=${harness.etcdEndpoint()}`,
          `--cluster=${cluster}`,
          '--log-level=silent',
          // Acked writes wait for a replica, which a loaded machine may slow down by seconds; the
          // 504 is tested with a short timeout of its own.
          '--ack-timeout-ms=60000',
          ...extraArgs,
        ],
        {},
      );
    },
    /** Starts an agent that the harness closes after the test. */
    async start(config: NodeConfig, logger?: Logger): Promise<Agent> {
      const agent = await startAgent(
        config,
        logger ?? pino({ level: process.env.PFS_TEST_LOG ?? 'silent' }).child({ node: config.nodeId }),
      );
      agents.push(agent);
      return agent;
    },
    /** Stops `agent` gracefully to start it again on its data dir, which it returns. */
    async stopForRestart(agent: Agent): Promise<string> {
      agents.splice(agents.indexOf(agent), 1);
      await agent.close();
      return agent.config.dataDir;
    },
  };
  return harness;
}

/** Polls `check` until it yields a value other than undefined (a throw counts as undefined). */
export async function until<T>(
  what: string,
  check: () => Promise<T | undefined>,
  timeoutMs = 15_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A logger for one agent whose entries the test reads (`entries`, in order). */
export function capturingLogger() {
  const entries: { level: number; msg: string; [field: string]: unknown }[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line !== '') entries.push(JSON.parse(line));
      done();
    },
  });
  return { logger: pino({ level: 'info' }, stream), entries };
}
