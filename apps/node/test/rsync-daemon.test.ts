import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
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
