import { execFileSync, spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '@pfs/testkit';
import { afterEach, describe, expect, it } from 'vitest';
import { rsyncdConf, startRsyncDaemon } from '../src/rsync-daemon.ts';

const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

const answers = (port: number) =>
  new Promise<boolean>((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });

/** The first line a server on `port` sends, or '' when none answers. */
const greeting = (port: number) =>
  new Promise<string>((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    let text = '';
    socket.on('data', (data) => {
      text += data.toString();
      if (text.includes('\n')) socket.destroy();
    });
    socket.once('close', () => resolve(text));
    socket.once('error', () => resolve(''));
  });

async function waitFor(check: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe("the node's rsync daemon", () => {
  it('serves read-only filestore and changelog modules with TCP_NODELAY and no reverse DNS lookup', () => {
    const conf = rsyncdConf({ host: '127.0.0.1', port: 1, dataDir: '/d', uid: 0, gid: 0 });
    expect(conf).toContain('read only = yes');
    expect(conf).toContain('socket options = TCP_NODELAY');
    expect(conf).toContain('reverse lookup = no');
    expect(conf).toMatch(/\[filestore\]\n {2}path = \/d\/filestore\n/);
    expect(conf).toMatch(/\[changelog\]\n {2}path = \/d\/changelog\n/);
    expect(conf).toContain('exclude = /.pfs/ .pfs-tmp.*');
  });

  it("never serves the store's own .pfs/ directory nor writes in progress", async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'pfs-rsyncd-'));
    dirs.push(dataDir);
    const store = join(dataDir, 'filestore');
    await mkdir(join(store, '.pfs', 'bulk-copy', 'a'), { recursive: true });
    await writeFile(join(store, '.pfs', 'sentinel'), 'pfs file store\n');
    await writeFile(join(store, '.pfs', 'bulk-copy', 'a', '.b.Xy12Ab'), 'half a file');
    await mkdir(join(store, 'a', '.pfs'), { recursive: true });
    await writeFile(join(store, 'a', '.pfs', 'kept'), 'a user file under a nested .pfs');
    await writeFile(join(store, 'a', '.pfs-tmp.0123456789ab'), 'a write in progress');
    await writeFile(join(store, 'a', 'b'), 'a user file');
    const port = await freePort();
    const daemon = await startRsyncDaemon({ host: '127.0.0.1', port, dataDir, rsyncBin: 'rsync' });
    try {
      const copy = join(dataDir, 'copy');
      execFileSync('rsync', ['-a', `rsync://127.0.0.1:${port}/filestore/`, `${copy}/`]);
      expect((await readdir(copy, { recursive: true })).sort()).toEqual([
        'a',
        'a/.pfs',
        'a/.pfs/kept',
        'a/b',
      ]);
    } finally {
      await daemon.stop();
    }
  });

  it('refuses to serve a store that is not in place (no sentinel: an empty mount point) rather than serve it empty', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), "pfs-rsyncd-it's "));
    dirs.push(dataDir);
    const store = join(dataDir, 'filestore');
    await mkdir(store, { recursive: true });
    await writeFile(join(store, 'a'), 'a file');
    const port = await freePort();
    const daemon = await startRsyncDaemon({ host: '127.0.0.1', port, dataDir, rsyncBin: 'rsync' });
    try {
      const pull = (into: string) =>
        spawnSync('rsync', ['-a', `rsync://127.0.0.1:${port}/filestore/`, `${join(dataDir, into)}/`], {
          encoding: 'utf8',
        });
      const refused = pull('copy1');
      expect(refused.status).not.toBe(0);
      expect(refused.stderr).toContain('pre-xfer exec returned failure');
      // Mounted (the sentinel there), it is served; the data dir's quote does not get in the way.
      await mkdir(join(store, '.pfs'));
      await writeFile(join(store, '.pfs', 'sentinel'), 'pfs file store\n');
      expect(pull('copy2').status).toBe(0);
      expect(await readdir(join(dataDir, 'copy2'))).toEqual(['a']);
    } finally {
      await daemon.stop();
    }
  });

  it('is restarted when it dies, and stopped for good by stop()', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'pfs-rsyncd-'));
    dirs.push(dataDir);
    const port = await freePort();
    const reasons: string[] = [];
    const daemon = await startRsyncDaemon({
      host: '127.0.0.1',
      port,
      dataDir,
      rsyncBin: 'rsync',
      onUnexpectedExit: (reason) => reasons.push(reason),
    });
    try {
      const first = daemon.pid;
      process.kill(-first, 'SIGKILL');
      const deadline = Date.now() + 10_000;
      while ((daemon.pid === first || !(await answers(port))) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(daemon.pid).not.toBe(first);
      expect(await answers(port)).toBe(true);
      expect(reasons[0]).toMatch(/^rsync daemon exited \(SIGKILL\): restarting it$/);
    } finally {
      await daemon.stop();
    }
    expect(await answers(port)).toBe(false);
  });

  it('tells a port another process took while it restarted, and starts again once the port is free', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'pfs-rsyncd-'));
    dirs.push(dataDir);
    const port = await freePort();
    const reasons: string[] = [];
    const daemon = await startRsyncDaemon({
      host: '127.0.0.1',
      port,
      dataDir,
      rsyncBin: 'rsync',
      onUnexpectedExit: (reason) => reasons.push(reason),
    });
    const squatter = createServer((socket) => {
      socket.on('error', () => {});
      socket.end('not rsync\n');
    });
    try {
      const first = daemon.pid;
      // Another process binds the port before the restart (500 ms later) does; on a loaded
      // machine the restart may win, and its daemon is killed again until the squatter binds.
      for (let bound = false; !bound; ) {
        try {
          process.kill(-daemon.pid, 'SIGKILL');
        } catch {}
        await waitFor(async () => !(await answers(port)));
        bound = await new Promise<boolean>((resolve) => {
          squatter.once('error', () => resolve(false));
          squatter.listen(port, '127.0.0.1', () => resolve(true));
        });
      }
      await waitFor(async () => reasons.some((r) => r.includes('is in use')));
      expect(reasons).toContain(
        `rsync daemon did not start again: rsync port ${port} on 127.0.0.1 is in use: stop what holds it or pick another --rsync-port`,
      );
      await new Promise((resolve) => squatter.close(resolve));
      await waitFor(async () => daemon.pid !== first && (await greeting(port)).startsWith('@RSYNCD:'));
    } finally {
      squatter.close();
      await daemon.stop();
    }
    expect(await answers(port)).toBe(false);
  });

  it("stops a daemon its killed predecessor left, never another node's that took over its PID", async () => {
    const [mine, theirs] = [
      await mkdtemp(join(tmpdir(), 'pfs-rsyncd-')),
      await mkdtemp(join(tmpdir(), 'pfs-rsyncd-')),
    ];
    dirs.push(mine, theirs);
    const [myPort, theirPort] = [await freePort(), await freePort()];
    const other = await startRsyncDaemon({
      host: '127.0.0.1',
      port: theirPort,
      dataDir: theirs,
      rsyncBin: 'rsync',
    });
    try {
      // This node's daemon was killed and its PID file left naming a PID now the other node's.
      await mkdir(join(mine, 'run'), { recursive: true });
      await writeFile(join(mine, 'run', 'rsyncd.pid'), `${other.pid}\n`);
      const daemon = await startRsyncDaemon({
        host: '127.0.0.1',
        port: myPort,
        dataDir: mine,
        rsyncBin: 'rsync',
      });
      await daemon.stop();
      expect(await answers(theirPort)).toBe(true);
      // Its own leftover is stopped.
      const left = await startRsyncDaemon({
        host: '127.0.0.1',
        port: myPort,
        dataDir: mine,
        rsyncBin: 'rsync',
      });
      const leftPid = left.pid;
      const again = await startRsyncDaemon({
        host: '127.0.0.1',
        port: myPort,
        dataDir: mine,
        rsyncBin: 'rsync',
      });
      try {
        await waitFor(async () => {
          try {
            process.kill(leftPid, 0);
            return false;
          } catch {
            return true;
          }
        });
        expect(again.pid).not.toBe(leftPid);
      } finally {
        await again.stop();
        await left.stop();
      }
    } finally {
      await other.stop();
    }
  });

  it("names a stopped node's daemon that holds the port, and the way to free it", async () => {
    const [left, next] = [
      await mkdtemp(join(tmpdir(), 'pfs-rsyncd-')),
      await mkdtemp(join(tmpdir(), 'pfs-rsyncd-')),
    ];
    dirs.push(left, next);
    const port = await freePort();
    const leftover = await startRsyncDaemon({ host: '127.0.0.1', port, dataDir: left, rsyncBin: 'rsync' });
    try {
      await expect(
        startRsyncDaemon({ host: '127.0.0.1', port, dataDir: next, rsyncBin: 'rsync' }),
      ).rejects.toMatchObject({
        code: 'RSYNC_PORT_IN_USE',
        message: `rsync port ${port} on 127.0.0.1 is held by the rsync daemon that a stopped PFS agent left for ${left} (pid ${leftover.pid}; it serves that node's data to a successor): start that node again, which stops it, or kill ${leftover.pid}; or pick another --rsync-port`,
      });
    } finally {
      await leftover.stop();
    }
  });

  it('says when rsync is missing', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'pfs-rsyncd-'));
    dirs.push(dataDir);
    await expect(
      startRsyncDaemon({
        host: '127.0.0.1',
        port: await freePort(),
        dataDir,
        rsyncBin: '/nonexistent/rsync',
      }),
    ).rejects.toThrow(/rsync is not installed, run scripts\/bootstrap.sh$/);
  });
});
