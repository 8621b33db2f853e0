import { fileURLToPath } from 'node:url';
import { pullBatch, type RsyncError, rsyncVersion } from '@pfs/rsync-invoker';
import { groupAlive } from '@pfs/testkit';
import { execa } from 'execa';
import { describe, expect, it, onTestFinished } from 'vitest';
import { launcherPid } from '../src/launcher.ts';
import { pidsMatching, rsyncGroup, silentServer, tempDir } from './helpers.ts';

const INDEX = fileURLToPath(new URL('../src/index.ts', import.meta.url));
const LAUNCHER = fileURLToPath(new URL('../src/launcher.ts', import.meta.url));

/** The launcher leads a process group of its own. */
const alive = (launcher: number) => groupAlive(launcher);

/** Polls `check` for up to `withinMs`; rsync's own --timeout (10 s) must not be what ends it. */
async function until(what: string, check: () => boolean | Promise<boolean>, withinMs = 5000): Promise<void> {
  for (let i = 0; i < withinMs / 20; i++) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`timed out waiting until ${what}`);
}

/** Starts an ES module snippet in a fresh Node process that loads this package's TypeScript. */
function startScript(source: string, args: string[] = [], options: { timeout?: number } = {}) {
  return execa(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', source, ...args], {
    cwd: fileURLToPath(new URL('..', import.meta.url)),
    reject: false,
    ...options,
  });
}

/** Runs a snippet to its end; one that never ends is killed after 20 s. */
const runScript = (source: string, args: string[] = []) => startScript(source, args, { timeout: 20_000 });

/** The numbers a script prints on its first line of output. */
function firstNumbers(script: ReturnType<typeof startScript>): Promise<number[]> {
  return new Promise((resolve) => {
    script.stdout.once('data', (chunk: Buffer) => resolve(chunk.toString().trim().split(' ').map(Number)));
  });
}

describe('the process launcher', { timeout: 30_000 }, () => {
  it('runs rsync from a helper process, not from this one', async () => {
    await rsyncVersion('rsync');
    const helper = launcherPid();
    expect(helper).toBeTypeOf('number');
    expect(helper).not.toBe(process.pid);
    const silent = await silentServer();
    // rsync waits for the silent daemon until it is aborted, after its parent has been read.
    const controller = new AbortController();
    const pulling = pullBatch({
      source: silent.url,
      dest: await tempDir(),
      paths: ['a'],
      signal: controller.signal,
    });
    const pgid = await rsyncGroup(`127.0.0.1:${silent.port}/`);
    const { stdout } = await execa('ps', ['-o', 'ppid=', '-p', String(pgid)]);
    expect(Number(stdout.trim())).toBe(helper);
    controller.abort(new Error('done'));
    await expect(pulling).rejects.toMatchObject({ code: 'RSYNC_ABORTED' });
    await silent.close();
  });

  it('kills an rsync whose abort came while it was being started', async () => {
    const silent = await silentServer();
    const controller = new AbortController();
    const pulling = pullBatch({
      source: silent.url,
      dest: await tempDir(),
      paths: ['a'],
      signal: controller.signal,
    });
    // The launcher has not answered with a pid yet.
    controller.abort(new Error('fenced'));
    // Unkilled, this rsync would wait for the silent daemon until its own --timeout (10 s).
    const outcome = await Promise.race([
      pulling.catch((error: unknown) => error),
      new Promise((resolve) => setTimeout(resolve, 5000, 'still running')),
    ]);
    expect(outcome).toMatchObject({ code: 'RSYNC_ABORTED' });
    await until(
      'no rsync of this run is left',
      async () => (await pidsMatching(`^rsync .*127.0.0.1:${silent.port}/`)).length === 0,
    );
    await silent.close();
  });

  it('kills a run whose launcher died, says so, and starts a new launcher for the next run', async () => {
    const silent = await silentServer();
    const pulling = pullBatch({
      source: silent.url,
      dest: await tempDir(),
      paths: ['a'],
    });
    const pgid = await rsyncGroup(`127.0.0.1:${silent.port}/`);
    const helper = launcherPid()!;
    process.kill(helper, 'SIGKILL');
    const error = (await pulling.catch((e: unknown) => e)) as RsyncError;
    expect(error).toMatchObject({ name: 'RsyncError', code: 'RSYNC_FAILED', retryable: true });
    expect(error.message).toMatch(new RegExp(`launcher process ${helper} exited`));
    expect(error.message).not.toContain('\n');
    expect(groupAlive(pgid)).toBe(false);
    await expect(rsyncVersion('rsync')).resolves.toMatch(/^\d/);
    expect(launcherPid()).not.toBe(helper);
    await silent.close();
  });

  it('kills the rsyncs it started when the process that asked for them dies', async () => {
    const silent = await silentServer();
    const dest = await tempDir();
    const child = startScript(
      `import { pullBatch } from ${JSON.stringify(INDEX)};
       import { launcherPid } from ${JSON.stringify(LAUNCHER)};
       void pullBatch({ source: process.argv[1], dest: process.argv[2], paths: ['a'] }).catch(() => {});
       console.log(launcherPid());
       setInterval(() => {}, 1000);`,
      [silent.url, dest],
    );
    // A failed expectation must not leave the script (it runs for ever) or the server behind.
    onTestFinished(() => {
      child.kill('SIGKILL');
      return silent.close();
    });
    const [helper] = (await firstNumbers(child)) as [number];
    // The script's own command line names the URL too: match rsync's.
    const pgid = await rsyncGroup(`^rsync .*127.0.0.1:${silent.port}/`);
    child.kill('SIGKILL');
    await child;
    await until('the rsync group is gone', () => !groupAlive(pgid));
    await until('the launcher has exited', () => !alive(helper));
    expect(await pidsMatching(`127.0.0.1:${silent.port}/`)).toEqual([]);
  });

  it('kills what it started when the process that asked dies while that floods its output', async () => {
    const child = startScript(
      `import { launch, launcherPid } from ${JSON.stringify(LAUNCHER)};
       const run = launch({ bin: 'sh', args: ['-c', 'trap "" PIPE; while :; do echo pfs-flood; done'], stdin: false, onStdout() {}, onStderr() {} });
       console.log(launcherPid(), await run.pid);
       setInterval(() => {}, 1000);`,
    );
    onTestFinished(() => {
      child.kill('SIGKILL');
    });
    const [helper, pgid] = (await firstNumbers(child)) as [number, number];
    onTestFinished(() => {
      for (const group of [pgid, helper]) if (groupAlive(group)) process.kill(-group, 'SIGKILL');
    });
    expect(groupAlive(pgid)).toBe(true);
    // It ignores SIGPIPE: the launcher's end alone would not end it.
    child.kill('SIGKILL');
    await child;
    await until('the flooding group is gone', () => !groupAlive(pgid));
    await until('the launcher has exited', () => !alive(helper));
  });

  it('settles a run whose launcher died even when nothing else keeps the process alive', async () => {
    const silent = await silentServer();
    const result = await runScript(
      `import { pullBatch } from ${JSON.stringify(INDEX)};
       import { launcherPid } from ${JSON.stringify(LAUNCHER)};
       const pulling = pullBatch({ source: process.argv[1], dest: process.argv[2], paths: ['a'] });
       setTimeout(() => process.kill(launcherPid(), 'SIGKILL'), 300);
       const error = await pulling.catch((e) => e);
       console.log('settled', error.code);`,
      [silent.url, await tempDir()],
    );
    expect(result.stdout).toBe('settled RSYNC_FAILED');
    expect(result.exitCode).toBe(0);
    await until(
      'no rsync of that run is left',
      async () => (await pidsMatching(`^rsync .*127.0.0.1:${silent.port}/`)).length === 0,
    );
    await silent.close();
  });

  it('gives up on a launcher that does not answer: the run times out and the next one works', async () => {
    await rsyncVersion('rsync');
    const helper = launcherPid()!;
    process.kill(helper, 'SIGSTOP');
    try {
      const pulling = pullBatch({ source: '/nowhere/', dest: await tempDir(), paths: ['a'], timeoutMs: 200 });
      const outcome = await Promise.race([
        pulling.catch((error: unknown) => error),
        new Promise((resolve) => setTimeout(resolve, 5000, 'still waiting')),
      ]);
      expect(outcome).toMatchObject({ code: 'RSYNC_TIMEOUT' });
      await until('the stopped launcher is gone', () => !alive(helper));
    } finally {
      if (alive(helper)) process.kill(helper, 'SIGCONT');
    }
    await expect(rsyncVersion('rsync')).resolves.toMatch(/^\d/);
    expect(launcherPid()).not.toBe(helper);
  });

  it('outlives signals meant for a whole process group or service: the runs go on', async () => {
    const silent = await silentServer();
    const pulling = pullBatch({
      source: silent.url,
      dest: await tempDir(),
      paths: ['a'],
      timeoutMs: 1500,
    });
    await rsyncGroup(`^rsync .*127.0.0.1:${silent.port}/`);
    const helper = launcherPid()!;
    for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.kill(helper, signal);
    // Ended by its own timeout, not by a lost launcher.
    await expect(pulling).rejects.toMatchObject({ code: 'RSYNC_TIMEOUT' });
    expect(launcherPid()).toBe(helper);
    expect(alive(helper)).toBe(true);
    await silent.close();
  });

  it('does not keep an idle process alive', async () => {
    const result = await runScript(
      `import { rsyncVersion } from ${JSON.stringify(INDEX)};
       const version = await rsyncVersion('rsync');
       console.log('ran rsync', version);`,
    );
    expect(result.timedOut).toBe(false);
    expect(result.stderr).toBe('');
    expect(result.stdout).toMatch(/^ran rsync \d/);
    expect(result.exitCode).toBe(0);
  });
});
