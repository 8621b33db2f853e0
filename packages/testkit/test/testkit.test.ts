import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import {
  freePort,
  groupAlive,
  liveCount,
  makeTempDir,
  removeTempDir,
  startEtcd,
  startRsyncDaemon,
  stopAll,
} from '@pfs/testkit';
import { execa } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';

afterAll(stopAll);

function pidGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/** Non-zombie members of process group `pgid`, via ps (zombies wait for PID 1 to reap them). */
async function liveMembers(pgid: number): Promise<string[]> {
  const { stdout } = await execa('ps', ['-o', 'pid=,stat=', '-g', String(pgid)], { reject: false });
  return stdout
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line && !/\sZ/.test(line));
}

describe('helpers', () => {
  it('freePort returns a bindable port and temp dirs come and go', async () => {
    const port = await freePort();
    expect(port).toBeGreaterThan(0);
    // Outside the range the kernel hands to outgoing connections, which could take it first.
    const [low] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8')
      .trim()
      .split(/\s+/)
      .map(Number);
    expect(port).toBeGreaterThanOrEqual(20_000);
    expect(port).toBeLessThan(low!);
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen({ host: '127.0.0.1', port, exclusive: true }, resolve));
    await new Promise((resolve) => taken.close(resolve));
    const dir = await makeTempDir('pfs-testkit-test');
    expect((await stat(dir)).isDirectory()).toBe(true);
    await removeTempDir(dir);
    await removeTempDir(dir);
    expect(existsSync(dir)).toBe(false);
  });
});

describe('freePort reservations', () => {
  it("never hands out a port another live process holds, and takes over a dead one's", async () => {
    const dir = await makeTempDir('pfs-ports-test');
    const before = process.env.PFS_TEST_PORTS_DIR;
    process.env.PFS_TEST_PORTS_DIR = dir;
    try {
      const [low] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8')
        .trim()
        .split(/\s+/)
        .map(Number);
      const reserveAll = (pid: number) => {
        for (let port = 20_000; port < low!; port++) writeFileSync(join(dir, String(port)), `${pid}\n`);
      };
      // Every port of its range held by a live process (PID 1): the kernel's choice instead.
      reserveAll(1);
      for (let i = 0; i < 3; i++) expect(await freePort()).toBeGreaterThanOrEqual(low!);
      // Held by a process that has exited: taken over, and then held by this one.
      const exited = execa('true');
      const gone = exited.pid!;
      await exited;
      reserveAll(gone);
      const port = await freePort();
      expect(port).toBeLessThan(low!);
      expect(readFileSync(join(dir, String(port)), 'utf8')).toBe(`${process.pid}\n`);
    } finally {
      if (before === undefined) delete process.env.PFS_TEST_PORTS_DIR;
      else process.env.PFS_TEST_PORTS_DIR = before;
      await removeTempDir(dir);
    }
  });
});

describe('startEtcd', () => {
  it('starts a real etcd that answers put/get, then stops it without leftovers', async () => {
    const etcd = await startEtcd();
    expect(etcd.endpoint).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const env = { ETCDCTL_API: '3' };
    const ctl = (...args: string[]) => execa('etcdctl', [`--endpoints=${etcd.endpoint}`, ...args], { env });
    await ctl('put', 'pfs/testkit', 'hello');
    expect((await ctl('get', '--print-value-only', 'pfs/testkit')).stdout).toBe('hello');
    expect(existsSync(etcd.dataDir)).toBe(true);

    await etcd.stop();
    expect(pidGone(etcd.pid)).toBe(true);
    expect(await liveMembers(etcd.pid)).toEqual([]);
    expect(existsSync(etcd.dataDir)).toBe(false);
    await etcd.stop();
  });

  it('cleans up after kill(SIGKILL) and reports a missing binary by code', async () => {
    const etcd = await startEtcd();
    etcd.kill('SIGKILL');
    await etcd.stop();
    expect(pidGone(etcd.pid)).toBe(true);
    await expect(startEtcd({ etcdBin: '/nonexistent/etcd' })).rejects.toMatchObject({
      code: 'TESTKIT_NOT_INSTALLED',
    });
  });

  it('rejects with TESTKIT_ABORTED when the signal is already aborted', async () => {
    await expect(startEtcd({ signal: AbortSignal.abort() })).rejects.toMatchObject({
      code: 'TESTKIT_ABORTED',
    });
  });
});

describe('startRsyncDaemon', () => {
  it('serves a module that rsync lists, then stops without leftovers', async () => {
    const src = await makeTempDir('pfs-testkit-src');
    await writeFile(join(src, 'hello.txt'), 'hi');
    const daemon = await startRsyncDaemon({ modules: { data: src } });
    expect(daemon.url('data')).toBe(`rsync://127.0.0.1:${daemon.port}/data/`);

    const modules = await execa('rsync', ['--list-only', `rsync://127.0.0.1:${daemon.port}/`]);
    expect(modules.stdout).toMatch(/^data\b/m);
    const files = await execa('rsync', ['--list-only', daemon.url('data')]);
    expect(files.stdout).toContain('hello.txt');

    await daemon.stop();
    await daemon.stop();
    expect(pidGone(daemon.pid)).toBe(true);
    expect(await liveMembers(daemon.pid)).toEqual([]);
    await removeTempDir(src);
  });

  it('refuses pushes into a read-only module (rsync exit 1)', async () => {
    const src = await makeTempDir('pfs-testkit-src');
    const daemon = await startRsyncDaemon({ modules: { data: src } });
    const push = await execa('rsync', ['-r', `${src}/`, daemon.url('data')], { reject: false });
    expect(push.exitCode).toBe(1);
    expect(push.stderr).toContain('read only');
    await daemon.stop();
    await removeTempDir(src);
  });

  it('runs two daemons at once on different ports, and stopAll stops both', async () => {
    const src = await makeTempDir('pfs-testkit-src');
    const before = liveCount();
    const [a, b] = await Promise.all([
      startRsyncDaemon({ modules: { a: src } }),
      startRsyncDaemon({ modules: { b: src }, readOnly: false }),
    ]);
    expect(a.port).not.toBe(b.port);
    expect(liveCount()).toBe(before + 2);
    await stopAll();
    expect(liveCount()).toBe(0);
    expect(pidGone(a.pid) && pidGone(b.pid)).toBe(true);
    expect(groupAlive(a.pid) || groupAlive(b.pid)).toBe(false);
    await removeTempDir(src);
  });

  it('rejects module names that cannot go into rsyncd.conf', async () => {
    await expect(startRsyncDaemon({ modules: { 'bad]name': '/tmp' } })).rejects.toMatchObject({
      code: 'TESTKIT_BAD_OPTIONS',
    });
  });
});
