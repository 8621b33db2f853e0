import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { TestkitError } from './errors.ts';
import { isListeningBy } from './listener.ts';
import { canConnect } from './ports.ts';
import { startService } from './service.ts';

export interface RsyncDaemonHandle {
  readonly port: number;
  readonly pid: number;
  /** rsync://127.0.0.1:PORT/module/ */
  url(module: string): string;
  stop(): Promise<void>;
  kill(signal: NodeJS.Signals): void;
}

export interface StartRsyncDaemonOptions {
  /** Module name → directory served. */
  modules: Record<string, string>;
  /** Defaults to true: PFS replicas pull, nobody pushes into a module. */
  readOnly?: boolean;
  signal?: AbortSignal;
  /**
   * Defaults to true when running as root (chroot needs root). rsync 3.5.0 without chroot
   * cannot send files listed with --files-from from a sub-directory of a module
   * (rsync://…/module/sub/): each one is reported as vanished (exit 24) and not sent.
   */
  useChroot?: boolean;
  /** Defaults to $RSYNC_BIN, then `rsync` on PATH. */
  rsyncBin?: string;
}

const READY_TIMEOUT_MS = 10_000;

/** Starts a real `rsync --daemon` on a free loopback port serving the given modules. */
export async function startRsyncDaemon(options: StartRsyncDaemonOptions): Promise<RsyncDaemonHandle> {
  const modules = Object.entries(options.modules);
  for (const [name, path] of modules) checkModule(name, path);
  const settings = {
    readOnly: options.readOnly ?? true,
    useChroot: options.useChroot ?? process.getuid?.() === 0,
  };
  const service = await startService({
    what: 'rsyncd',
    bin: options.rsyncBin ?? process.env.RSYNC_BIN ?? 'rsync',
    portCount: 1,
    readyTimeoutMs: READY_TIMEOUT_MS,
    signal: options.signal,
    async prepare(dir, [port]) {
      const config = join(dir, 'rsyncd.conf');
      await writeFile(config, renderConfig(dir, port!, modules, settings));
      return ['--daemon', '--no-detach', `--config=${config}`];
    },
    async probe(pid, [port]) {
      // The bind happens after the pid file and log are written, so only a listening socket
      // counts. A probe connection is avoided where /proc can tell: each one forks a daemon
      // child that lingers ~1 s after the client hangs up and then slows down stop().
      const owned = await isListeningBy(pid, port!);
      return owned ?? (await canConnect(port!));
    },
  });
  const port = service.ports[0]!;
  return {
    port,
    pid: service.pid,
    url: (module) => `rsync://127.0.0.1:${port}/${module}/`,
    stop: () => service.stop(),
    kill: (signal) => service.kill(signal),
  };
}

function renderConfig(
  dir: string,
  port: number,
  modules: [string, string][],
  settings: { readOnly: boolean; useChroot: boolean },
): string {
  const global = [
    `port = ${port}`,
    'address = 127.0.0.1',
    `pid file = ${join(dir, 'rsyncd.pid')}`,
    `log file = ${join(dir, 'rsyncd.log')}`,
    // Stated explicitly: the default became "chroot if root" in 3.2.7.
    `use chroot = ${settings.useChroot ? 'yes' : 'no'}`,
    // Without chroot a served symlink could point out of the module; munged it is harmless.
    // Set either way so that behaviour does not depend on who runs the tests.
    'munge symlinks = yes',
    // Keep the files' owner: as root, the daemon would otherwise switch to nobody.
    `uid = ${process.getuid?.() ?? 0}`,
    `gid = ${process.getgid?.() ?? 0}`,
    'numeric ids = yes',
    // ~90 ms per call on loopback without it (Nagle + delayed ACK), ~8 ms with it on both ends.
    'socket options = TCP_NODELAY',
    'timeout = 30',
    'hosts allow = 127.0.0.1',
    // No DNS lookups for the log: they can stall a loopback test for seconds.
    'reverse lookup = no',
  ];
  const sections = modules.map(([name, path]) =>
    [`[${name}]`, `  path = ${resolve(path)}`, `  read only = ${settings.readOnly ? 'yes' : 'no'}`].join(
      '\n',
    ),
  );
  return `${global.join('\n')}\n\n${sections.join('\n\n')}\n`;
}

function checkModule(name: string, path: string): void {
  // rsyncd.conf has no quoting: these characters would end the section or the line.
  if (!/^[A-Za-z0-9._-]+$/.test(name)) {
    throw new TestkitError('TESTKIT_BAD_OPTIONS', `module name ${JSON.stringify(name)}: use [A-Za-z0-9._-]`);
  }
  const absolute = resolve(path);
  if (/[\n\r]/.test(absolute) || absolute.trim() !== absolute) {
    throw new TestkitError(
      'TESTKIT_BAD_OPTIONS',
      `module path ${JSON.stringify(path)} cannot go into rsyncd.conf`,
    );
  }
}
