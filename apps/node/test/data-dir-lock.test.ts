import { type ChildProcess, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { lockDataDir } from '../src/data-dir-lock.ts';

const dirs: string[] = [];
const children: ChildProcess[] = [];
afterEach(async () => {
  for (const child of children.splice(0)) child.kill('SIGKILL');
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

async function dataDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'pfs-lock-'));
  dirs.push(dir);
  await mkdir(join(dir, 'run'));
  return dir;
}

describe('data dir lock', () => {
  it('refuses a second holder, by whatever path it names the directory, until the first lets go', async () => {
    const dir = await dataDir();
    const first = await lockDataDir(dir, 'n1');
    await expect(lockDataDir(dir, 'n2')).rejects.toMatchObject({
      code: 'DATA_DIR_IN_USE',
      message: `data dir ${dir} is in use by another PFS agent on this machine (pid ${process.pid}, node n1): stop it, or give this node a data dir of its own (--data-dir)`,
    });
    const link = join(await dataDir(), 'link');
    await symlink(dir, link);
    await expect(lockDataDir(link, 'n2')).rejects.toMatchObject({ code: 'DATA_DIR_IN_USE' });
    // Another directory is another lock.
    const other = await lockDataDir(await dataDir(), 'n3');
    await first.release();
    const second = await lockDataDir(dir, 'n2');
    expect(await readFile(join(dir, 'run', 'agent.pid'), 'utf8')).toBe(`pid ${process.pid}, node n2\n`);
    await Promise.all([second.release(), other.release()]);
  });

  it('is free again once its holder is killed, with nothing to clear by hand', async () => {
    const dir = await dataDir();
    const script = `import { lockDataDir } from ${JSON.stringify(fileURLToPath(new URL('../src/data-dir-lock.ts', import.meta.url)))};
await lockDataDir(process.argv[1], 'killed');
process.stdout.write('locked\\n');
setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script, dir], {
      cwd: fileURLToPath(new URL('..', import.meta.url)),
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.push(child);
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (chunk: Buffer) => {
        if (chunk.toString().includes('locked')) resolve();
      });
      child.once('exit', (code) => reject(new Error(`the holder exited (${code}) before it locked`)));
    });
    await expect(lockDataDir(dir, 'n2')).rejects.toThrow(/\(pid \d+, node killed\)/);
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
    const lock = await lockDataDir(dir, 'n2');
    await lock.release();
  });
});
