import { randomUUID } from 'node:crypto';
import { request } from 'node:http';
import { join } from 'node:path';
import { isListeningBy } from './listener.ts';
import { startService } from './service.ts';

export interface EtcdHandle {
  /** Client URL, e.g. http://127.0.0.1:40123 */
  readonly endpoint: string;
  readonly pid: number;
  readonly dataDir: string;
  /** SIGTERM to the process group, SIGKILL after ~3 s, waits until it is gone, removes the dir. Idempotent. */
  stop(): Promise<void>;
  /** Signals the process group without waiting (crash tests); stop() still cleans up afterwards. */
  kill(signal: NodeJS.Signals): void;
}

export interface StartEtcdOptions {
  signal?: AbortSignal;
  /** Defaults to $ETCD_BIN, then `etcd` on PATH. */
  etcdBin?: string;
}

const READY_TIMEOUT_MS = 15_000;

/** Starts a real single-member etcd on free loopback ports with its data in a temp dir. */
export async function startEtcd(options: StartEtcdOptions = {}): Promise<EtcdHandle> {
  const service = await startService({
    what: 'etcd',
    bin: options.etcdBin ?? process.env.ETCD_BIN ?? 'etcd',
    portCount: 2,
    readyTimeoutMs: READY_TIMEOUT_MS,
    signal: options.signal,
    async prepare(dir, [clientPort, peerPort]) {
      const name = `pfs-test-${randomUUID().slice(0, 8)}`;
      const client = `http://127.0.0.1:${clientPort}`;
      const peer = `http://127.0.0.1:${peerPort}`;
      return [
        `--name=${name}`,
        `--data-dir=${join(dir, 'data')}`,
        `--listen-client-urls=${client}`,
        `--advertise-client-urls=${client}`,
        `--listen-peer-urls=${peer}`,
        `--initial-advertise-peer-urls=${peer}`,
        // The member name in --initial-cluster must match --name, or etcd refuses to start.
        `--initial-cluster=${name}=${peer}`,
        `--initial-cluster-token=${name}`,
        '--initial-cluster-state=new',
        // Without compaction the history grows until the quota alarm (etcd 3.4 compacts nothing by default).
        '--auto-compaction-retention=1',
        // zap is the non-deprecated logger in 3.4; the log goes to etcd.log in the temp dir.
        '--logger=zap',
      ];
    },
    async probe(pid, [clientPort]) {
      if (!(await healthy(clientPort!))) return false;
      // /health could be answered by another etcd that won the race for this port.
      return (await isListeningBy(pid, clientPort!)) !== false;
    },
  });
  return {
    endpoint: `http://127.0.0.1:${service.ports[0]}`,
    pid: service.pid,
    dataDir: join(service.dir, 'data'),
    stop: () => service.stop(),
    kill: (signal) => service.kill(signal),
  };
}

/** GET /health without a keep-alive agent, so no pooled socket outlives the check. */
function healthy(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path: '/health', agent: false, timeout: 1000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        body += chunk;
      });
      res.on('end', () => resolve(res.statusCode === 200 && /"health"\s*:\s*"true"/.test(body)));
      res.on('error', () => resolve(false));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
    req.end();
  });
}
