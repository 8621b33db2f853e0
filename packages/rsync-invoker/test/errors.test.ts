import { pullBatch, type RsyncError, rsyncVersion, syncTree } from '@pfs/rsync-invoker';
import { freePort, groupAlive, startRsyncDaemon, stopAll } from '@pfs/testkit';
import { afterAll, describe, expect, it } from 'vitest';
import { pidsMatching, rsyncGroup, silentServer, tempDir, writeTree } from './helpers.ts';

afterAll(stopAll);

describe('typed errors from real rsync runs', { timeout: 30_000 }, () => {
  it('unknown module → RSYNC_START_FAILED (exit 5, retryable)', async () => {
    const daemon = await startRsyncDaemon({ modules: { store: await tempDir() } });
    const error = await pullBatch({ source: daemon.url('nope'), dest: await tempDir(), paths: ['a'] }).catch(
      (e: RsyncError) => e,
    );
    expect(error).toMatchObject({
      name: 'RsyncError',
      code: 'RSYNC_START_FAILED',
      exitCode: 5,
      retryable: true,
    });
    expect((error as RsyncError).message).toContain('Unknown module');
    expect((error as RsyncError).message).not.toContain('\n');
    expect((error as RsyncError).stderr).toContain('@ERROR');
  });

  it('connection refused on a closed port → RSYNC_SOCKET (exit 10)', async () => {
    const port = await freePort();
    await expect(
      pullBatch({ source: `rsync://127.0.0.1:${port}/m/`, dest: await tempDir(), paths: ['a'] }),
    ).rejects.toMatchObject({ code: 'RSYNC_SOCKET', exitCode: 10, retryable: true });
  });

  it('missing binary → RSYNC_NOT_INSTALLED; a path that is not there is named as a wrong path', async () => {
    const dest = await tempDir();
    await expect(
      pullBatch({ source: '/tmp', dest, paths: ['a'], rsyncBin: 'pfs-no-such-rsync' }),
    ).rejects.toMatchObject({
      code: 'RSYNC_NOT_INSTALLED',
      message: expect.stringMatching(
        /^rsync is not installed: run scripts\/bootstrap\.sh \(apt-get install rsync\) \[pfs-no-such-rsync\]$/,
      ),
    });
    const options = { source: '/tmp', dest, paths: ['a'], rsyncBin: '/nonexistent/rsync' };
    await expect(pullBatch(options)).rejects.toMatchObject({
      code: 'RSYNC_NOT_INSTALLED',
      message:
        '/nonexistent/rsync does not exist: give the path of an rsync binary (--rsync-bin), or install rsync',
    });
    await expect(rsyncVersion('/nonexistent/rsync')).rejects.toMatchObject({ code: 'RSYNC_NOT_INSTALLED' });
  });

  it('abort kills the whole process group and rejects with RSYNC_ABORTED', async () => {
    const silent = await silentServer();
    const controller = new AbortController();
    const { url } = silent;
    const pulling = pullBatch({
      source: url,
      dest: await tempDir(),
      paths: ['a'],
      signal: controller.signal,
    });
    const pgid = await rsyncGroup(`127.0.0.1:${silent.port}/`);
    expect(groupAlive(pgid)).toBe(true);
    controller.abort(new Error('fenced'));
    await expect(pulling).rejects.toMatchObject({ code: 'RSYNC_ABORTED', retryable: false });
    expect(groupAlive(pgid)).toBe(false);
    expect(await pidsMatching(`127.0.0.1:${silent.port}/`)).toEqual([]);
    await silent.close();
  });

  it('timeoutMs kills the group and rejects with RSYNC_TIMEOUT; syncTree too', async () => {
    const silent = await silentServer();
    const { url } = silent;
    // Ended by its own timeout, not by rsync's --timeout (exit code 30, another message).
    await expect(
      pullBatch({ source: url, dest: await tempDir(), paths: ['a'], timeoutMs: 300 }),
    ).rejects.toMatchObject({
      code: 'RSYNC_TIMEOUT',
      retryable: true,
      message: expect.stringMatching(/^rsync did not finish within 300 ms and was killed/),
    });
    await expect(syncTree({ source: url, dest: await tempDir(), timeoutMs: 300 })).rejects.toMatchObject({
      code: 'RSYNC_TIMEOUT',
    });
    expect(await pidsMatching(`127.0.0.1:${silent.port}/`)).toEqual([]);
    await silent.close();
  });

  it('a silent daemon trips --timeout → RSYNC_TIMEOUT (exit 30)', async () => {
    const silent = await silentServer();
    const { url } = silent;
    await expect(
      pullBatch({ source: url, dest: await tempDir(), paths: ['a'], ioTimeoutSeconds: 1 }),
    ).rejects.toMatchObject({ code: 'RSYNC_TIMEOUT', exitCode: 30 });
    await silent.close();
  });

  it('an already aborted signal rejects before spawning', async () => {
    const src = await tempDir();
    await writeTree(src, ['a']);
    await expect(
      pullBatch({ source: src, dest: await tempDir(), paths: ['a'], signal: AbortSignal.abort() }),
    ).rejects.toMatchObject({ code: 'RSYNC_ABORTED' });
    await expect(
      pullBatch({ source: src, dest: await tempDir(), paths: [], signal: AbortSignal.abort() }),
    ).rejects.toMatchObject({ code: 'RSYNC_ABORTED' });
  });

  it('refuses bad paths before running rsync', async () => {
    await expect(pullBatch({ source: '/tmp', dest: '/tmp/x', paths: ['../etc'] })).rejects.toMatchObject({
      code: 'RSYNC_BAD_PATH',
    });
  });
});
