import { spawn } from 'node:child_process';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';

/**
 * The node's own rsync daemon: read-only modules `filestore` and `changelog`, which replicas pull
 * from and new masters drain. It is started detached (its own process group) on purpose: when the
 * agent dies, the daemon keeps serving, so a successor can still drain this node. Its PID file
 * lets the next start of the agent stop a daemon left by a killed predecessor.
 */
export interface RsyncDaemon {
  readonly pid: number;
  readonly port: number;
  stop(): Promise<void>;
}

export class RsyncDaemonError extends Error {
  readonly code: 'RSYNC_NOT_INSTALLED' | 'RSYNC_PORT_IN_USE' | 'RSYNC_DAEMON_FAILED';
  constructor(code: RsyncDaemonError['code'], message: string) {
    super(message);
    this.code = code;
  }
}

export function rsyncdConf(options: {
  host: string;
  port: number;
  dataDir: string;
  uid: number;
  gid: number;
}): string {
  const { dataDir } = options;
  return [
    `# Written by the PFS node agent at each start; edits are overwritten.`,
    `address = ${options.host}`,
    `port = ${options.port}`,
    `pid file = ${join(dataDir, 'run', 'rsyncd.pid')}`,
    `log file = ${join(dataDir, 'run', 'rsyncd.log')}`,
    `use chroot = no`,
    `munge symlinks = yes`,
    `numeric ids = yes`,
    `uid = ${options.uid}`,
    `gid = ${options.gid}`,
    `read only = yes`,
    `list = yes`,
    `timeout = 30`,
    // Without TCP_NODELAY every small protocol message waits for a delayed ACK (~40 ms each).
    `socket options = TCP_NODELAY`,
    // Every pull is a new connection: no reverse DNS lookup of the peer (a slow or dead resolver
    // would stall each one).
    `reverse lookup = no`,
    '',
    '[filestore]',
    `  path = ${join(dataDir, 'filestore')}`,
    `  comment = PFS file store (read only)`,
    // The store's own files (rsync temp files, a bulk copy being received) and writes in
    // progress are never served, whoever asks.
    `  exclude = /.pfs/ .pfs-tmp.*`,
    '',
    '[changelog]',
    `  path = ${join(dataDir, 'changelog')}`,
    `  comment = PFS partition logs (read only)`,
    '',
  ].join('\n');
}

async function portAnswers(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function stopGroup(pid: number): Promise<void> {
  try {
    process.kill(-pid, 'SIGTERM');
  } catch {
    return;
  }
  for (let i = 0; i < 60 && alive(pid); i++) await new Promise((r) => setTimeout(r, 50));
  if (alive(pid)) {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {}
  }
}

/** Stops a daemon a killed predecessor of this node left running, found by its PID file. */
async function stopLeftover(pidFile: string): Promise<void> {
  const text = await readFile(pidFile, 'utf8').catch(() => '');
  const pid = Number(text.trim());
  if (!Number.isInteger(pid) || pid <= 1 || !alive(pid)) return;
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  if (cmdline.includes('rsync') && cmdline.includes('--daemon')) await stopGroup(pid);
  await rm(pidFile, { force: true });
}

export async function startRsyncDaemon(options: {
  host: string;
  port: number;
  dataDir: string;
  rsyncBin: string;
  /** Told when the daemon dies on its own (it is then restarted). */
  onUnexpectedExit?: (reason: string) => void;
}): Promise<RsyncDaemon> {
  const run = join(options.dataDir, 'run');
  await mkdir(run, { recursive: true });
  const pidFile = join(run, 'rsyncd.pid');
  await stopLeftover(pidFile);
  if (await portAnswers(options.host, options.port)) {
    throw new RsyncDaemonError(
      'RSYNC_PORT_IN_USE',
      `rsync port ${options.port} on ${options.host} is in use: stop what holds it or pick another --rsync-port`,
    );
  }
  const conf = join(run, 'rsyncd.conf');
  await writeFile(
    conf,
    rsyncdConf({ ...options, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 }),
  );
  let current = await launch(options, conf, run);
  let stopping = false;
  let restartTimer: NodeJS.Timeout | undefined;
  // Supervision: a daemon that dies while the agent runs is started again (replicas depend on it).
  const supervise = (daemon: Launched) => {
    daemon.child.once('exit', (code, signal) => {
      if (stopping) return;
      options.onUnexpectedExit?.(`rsync daemon exited (${signal ?? code}): restarting it`);
      const retry = () => {
        restartTimer = setTimeout(() => {
          if (stopping) return;
          launch(options, conf, run).then(
            (next) => {
              if (stopping) {
                void stopGroup(next.pid);
                return;
              }
              current = next;
              supervise(next);
            },
            () => retry(),
          );
        }, RESTART_DELAY_MS);
        restartTimer.unref();
      };
      retry();
    });
  };
  supervise(current);
  return {
    get pid() {
      return current.pid;
    },
    port: options.port,
    async stop() {
      stopping = true;
      clearTimeout(restartTimer);
      await stopGroup(current.pid);
      await rm(pidFile, { force: true });
    },
  };
}

const RESTART_DELAY_MS = 500;

interface Launched {
  pid: number;
  child: ReturnType<typeof spawn>;
}

async function launch(
  options: { host: string; port: number; rsyncBin: string },
  conf: string,
  run: string,
): Promise<Launched> {
  const child = spawn(options.rsyncBin, ['--daemon', '--no-detach', `--config=${conf}`], {
    detached: true,
    stdio: 'ignore',
  });
  const spawnError = await new Promise<Error | undefined>((resolve) => {
    child.once('error', resolve);
    child.once('spawn', () => resolve(undefined));
  });
  if (spawnError !== undefined || child.pid === undefined) {
    throw new RsyncDaemonError(
      'RSYNC_NOT_INSTALLED',
      `cannot run ${options.rsyncBin} (${spawnError?.message}): rsync is not installed, run scripts/bootstrap.sh`,
    );
  }
  child.unref();
  const pid = child.pid;
  let exited = false;
  child.once('exit', () => {
    exited = true;
  });
  for (let i = 0; i < 200 && !exited; i++) {
    if (await portAnswers(options.host, options.port)) return { pid, child };
    await new Promise((r) => setTimeout(r, 25));
  }
  await stopGroup(pid);
  const log = await readFile(join(run, 'rsyncd.log'), 'utf8').catch(() => '');
  throw new RsyncDaemonError(
    'RSYNC_DAEMON_FAILED',
    `rsync daemon did not come up on ${options.host}:${options.port} (${log.trim().split('\n').at(-1) ?? 'no log'}): check ${join(run, 'rsyncd.log')}`,
  );
}
