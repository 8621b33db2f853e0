import { spawn } from 'node:child_process';
import { mkdir, readdir, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
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
    // An unmounted store (an empty mount point) is refused, not served empty: a replica pulling
    // it, or a new master draining this node, would take every path it asks for as deleted.
    `  pre-xfer exec = test -f ${shellQuote(join(dataDir, 'filestore', '.pfs', 'sentinel'))}`,
    '',
    '[changelog]',
    `  path = ${join(dataDir, 'changelog')}`,
    `  comment = PFS partition logs (read only)`,
    '',
  ].join('\n');
}

/** `text` as one word for sh, whatever it holds. */
function shellQuote(text: string): string {
  return `'${text.replaceAll("'", "'\\''")}'`;
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

/**
 * Whether process `pid` itself holds a listening TCP socket on `port` (Linux /proc), undefined
 * where /proc cannot tell. Answering on the port is not enough: when another process took the
 * port, this daemon fails to bind and exits while the other answers. (The test kit has its own
 * copy: it must not lean on the code it tests.)
 */
async function listeningBy(pid: number, port: number): Promise<boolean | undefined> {
  const wanted = `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  const inodes = new Set<string>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    const text = await readFile(table, 'utf8').catch(() => undefined);
    if (text === undefined) {
      if (table.endsWith('6')) continue;
      return undefined;
    }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      // Column 4 is the state (0A: LISTEN), column 10 the socket's inode.
      if (cols.length >= 10 && cols[3] === '0A' && cols[1]!.endsWith(wanted)) inodes.add(cols[9]!);
    }
  }
  if (inodes.size === 0) return false;
  const fds = await readdir(`/proc/${pid}/fd`).catch(() => undefined);
  // Its descriptors out of sight (hidepid, a lost race with its exit): /proc cannot tell.
  if (fds === undefined) return undefined;
  for (const fd of fds) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    if (inodes.has(/^socket:\[(\d+)\]$/.exec(target)?.[1] ?? '')) return true;
  }
  return false;
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

/**
 * Stops a daemon a killed predecessor of this node left running, found by its PID file. Only one
 * started with this node's own config: rsync leaves its PID file behind when killed, and the PID
 * may since name another node's daemon on this host.
 */
async function stopLeftover(pidFile: string, conf: string): Promise<void> {
  const text = await readFile(pidFile, 'utf8').catch(() => '');
  const pid = Number(text.trim());
  if (!Number.isInteger(pid) || pid <= 1 || !alive(pid)) return;
  const args = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
  if (args.includes('--daemon') && args.includes(`--config=${conf}`)) await stopGroup(pid);
  await rm(pidFile, { force: true });
}

async function portInUse(options: { host: string; port: number }): Promise<RsyncDaemonError> {
  const leftover = await leftoverDaemonOn(options.port);
  return new RsyncDaemonError(
    'RSYNC_PORT_IN_USE',
    leftover === undefined
      ? `rsync port ${options.port} on ${options.host} is in use: stop what holds it or pick another --rsync-port`
      : `rsync port ${options.port} on ${options.host} is held by the rsync daemon that a stopped PFS agent left for ${leftover.dataDir} (pid ${leftover.pid}; it serves that node's data to a successor): start that node again, which stops it, or kill ${leftover.pid}; or pick another --rsync-port`,
  );
}

/**
 * A PFS node's rsync daemon (`rsync --daemon --config=<dataDir>/run/rsyncd.conf`) listening on
 * `port`: a killed agent's daemon keeps serving on purpose (see RsyncDaemon), and a node started
 * on another data dir with the same port finds its port taken by it.
 */
async function leftoverDaemonOn(port: number): Promise<{ pid: number; dataDir: string } | undefined> {
  for (const entry of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(entry)) continue;
    const args = (await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '')).split('\0');
    const conf = args.find((a) => a.startsWith('--config=') && a.endsWith('/run/rsyncd.conf'));
    if (!args.includes('--daemon') || conf === undefined) continue;
    if ((await listeningBy(Number(entry), port)) === true) {
      return { pid: Number(entry), dataDir: conf.slice('--config='.length, -'/run/rsyncd.conf'.length) };
    }
  }
  return undefined;
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
  const conf = join(run, 'rsyncd.conf');
  await stopLeftover(pidFile, conf);
  if (await portAnswers(options.host, options.port)) throw await portInUse(options);
  await writeFile(
    conf,
    rsyncdConf({ ...options, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 }),
  );
  let current = await launch(options, conf, run);
  let stopping = false;
  let restartTimer: NodeJS.Timeout | undefined;
  /** A restart under way: stop() waits for it, or the daemon it starts would outlive the stop. */
  let restarting: Promise<unknown> | undefined;
  // Supervision: a daemon that dies while the agent runs is started again (replicas depend on it).
  const supervise = (daemon: Launched) => {
    const onExit = () => {
      if (stopping) return;
      const { exitCode, signalCode } = daemon.child;
      options.onUnexpectedExit?.(`rsync daemon exited (${signalCode ?? exitCode}): restarting it`);
      let failures = 0;
      const retry = () => {
        restartTimer = setTimeout(
          () => {
            if (stopping) return;
            restarting = launch(options, conf, run).then(
              async (next) => {
                if (stopping) {
                  await stopGroup(next.pid);
                  return;
                }
                current = next;
                supervise(next);
              },
              (error: Error) => {
                options.onUnexpectedExit?.(`rsync daemon did not start again: ${error.message}`);
                failures++;
                retry();
              },
            );
          },
          Math.min(RESTART_DELAY_MS * 2 ** failures, MAX_RESTART_DELAY_MS),
        );
        restartTimer.unref();
      };
      retry();
    };
    // It may have exited already, between the launch's last look and now.
    if (daemon.child.exitCode !== null || daemon.child.signalCode !== null) onExit();
    else daemon.child.once('exit', onExit);
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
      await restarting?.catch(() => {});
      await stopGroup(current.pid);
      await rm(pidFile, { force: true });
    },
  };
}

const RESTART_DELAY_MS = 500;
const MAX_RESTART_DELAY_MS = 10_000;

interface Launched {
  pid: number;
  child: ReturnType<typeof spawn>;
}

async function launch(
  options: { host: string; port: number; rsyncBin: string },
  conf: string,
  run: string,
): Promise<Launched> {
  // Only what this start writes to the log is quoted if it fails.
  const logFile = join(run, 'rsyncd.log');
  const logStart = (await stat(logFile).catch(() => undefined))?.size ?? 0;
  const child = spawn(options.rsyncBin, ['--daemon', '--no-detach', `--config=${conf}`], {
    detached: true,
    // What rsync says before its log is open (a bad config, a pid file it cannot write).
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    if (stderr.length < 4096) stderr += chunk.toString();
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
  (child.stderr as { unref?: () => void } | null)?.unref?.();
  const pid = child.pid;
  const exited = () => child.exitCode !== null || child.signalCode !== null;
  for (let i = 0; i < 200 && !exited(); i++) {
    const listening = await listeningBy(pid, options.port);
    const ready = listening ?? (await portAnswers(options.host, options.port));
    if (ready && !exited()) return { pid, child };
    await new Promise((r) => setTimeout(r, 25));
  }
  await stopGroup(pid);
  // Failed to bind: another process took the port since it was found free.
  if (exited() && (await portAnswers(options.host, options.port))) throw await portInUse(options);
  const log = await readFile(logFile).catch(() => Buffer.alloc(0));
  const said =
    `${stderr}\n${log.subarray(logStart).toString()}`.trim().split('\n').at(-1) || 'nothing logged';
  throw new RsyncDaemonError(
    'RSYNC_DAEMON_FAILED',
    `rsync daemon did not come up on ${options.host}:${options.port} (${said}): check ${logFile}`,
  );
}
