import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePortBase } from '@pfs/testkit';
import { generationOf } from '@pfs/txlog';
import { afterEach, describe, expect, it } from 'vitest';
import { runStory } from '../src/story.ts';

const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

describe('the quick demo, end to end', () => {
  for (const stopSignal of ['SIGTERM', 'SIGKILL'] as const) {
    it(`runs every step of the seed's story when the master is stopped with ${stopSignal}`, async () => {
      const baseDir = await mkdtemp(join(tmpdir(), 'pfs-demo-'));
      dirs.push(baseDir);
      const result = await runStory({ baseDir, basePort: 0, freePorts: true, stopSignal });
      try {
        expect(result.steps).toHaveLength(9);
        // Whichever replica took over is the one named master, the other its follower.
        expect((await result.master.status()).partitions[0]?.role).toBe('master');
        expect((await result.follower.status()).partitions[0]?.following).toBe(result.master.id);
        const [onMaster, onReplica, onOldMaster] = [...result.logs.values()];
        expect(onReplica).toEqual(onMaster);
        expect(onMaster!.slice(0, onOldMaster!.length)).toEqual(onOldMaster);
        const generations = onMaster!.map((r) => generationOf(r.txid));
        expect(generations[0]).toBe(1n);
        expect(generations.at(-1)).toBe(2n);
        // The end-of-generation marker opens generation 2 and names the last txid of generation 1.
        const marker = onMaster!.find((r) => r.kind === 'end-of-generation' && generationOf(r.txid) === 2n);
        expect(marker?.previousTxid).toBe(onMaster!.filter((r) => generationOf(r.txid) === 1n).at(-1)!.txid);
      } finally {
        await result.cleanup();
      }
    });
  }

  it('will not wipe the data dir of a node that still runs from an earlier run', async () => {
    const { baseDir, basePort, dataDir } = await firstNodeDataDir('kept', 'still served');
    await writeFile(join(dataDir, '.quickdemo'), '');
    // Stands for an agent left running on it.
    const leftover = spawn(process.execPath, [
      '-e',
      'setTimeout(() => {}, 60_000)',
      '--',
      `--data-dir=${dataDir}`,
    ]);
    try {
      await expect(runStory({ baseDir, basePort })).rejects.toThrow(
        `a node of an earlier run still runs on ${dataDir} (pid ${leftover.pid}): stop it (kill ${leftover.pid}) or pass --base-dir`,
      );
      expect(await readFile(join(dataDir, 'filestore', 'kept'), 'utf8')).toBe('still served');
    } finally {
      leftover.kill('SIGKILL');
    }
  });

  it("will not wipe a node's own data dir, which has the name the demo gives its own", async () => {
    // A stopped node's default data dir (/tmp/localhost_<port> when --base-dir is /tmp).
    const { baseDir, basePort, dataDir } = await firstNodeDataDir('photo.jpg', 'a user file');
    await expect(runStory({ baseDir, basePort })).rejects.toThrow(
      `${dataDir} is a PFS data dir the demo did not make (a node's own, whose default data dir this is): move it away or pass --base-dir`,
    );
    expect(await readFile(join(dataDir, 'filestore', 'photo.jpg'), 'utf8')).toBe('a user file');
    // One an earlier demo left (its agents logged to node.log there) is wiped and used again.
    await writeFile(join(dataDir, 'node.log'), '');
    const result = await runStory({ baseDir, basePort });
    await result.cleanup();
    await expect(readFile(join(dataDir, 'filestore', 'photo.jpg'), 'utf8')).rejects.toMatchObject({
      code: 'ENOENT',
    });
  });

  it("does not take another node's answer on its port for its own node's", async () => {
    const baseDir = await mkdtemp(join(tmpdir(), 'pfs-demo-'));
    dirs.push(baseDir);
    const basePort = await freeBasePort();
    // A node of the user's on the demo's first port, under the id the demo's node would have.
    const other = createServer((_request, response) => {
      response
        .writeHead(200, { 'content-type': 'application/json' })
        .end(JSON.stringify({ ok: true, nodeId: `localhost_${basePort}`, pid: process.pid }));
    });
    await new Promise<void>((resolve) => other.listen(basePort, '127.0.0.1', resolve));
    try {
      await expect(runStory({ baseDir, basePort })).rejects.toThrow(
        new RegExp(
          `localhost_${basePort} exited during start-up: .*HTTP port ${basePort} on 127\\.0\\.0\\.1 is in use`,
        ),
      );
    } finally {
      other.closeAllConnections();
      await new Promise((resolve) => other.close(resolve));
    }
  });

  it('leaves no node or rsync daemon behind when the demo itself is killed part-way', async () => {
    const baseDir = await mkdtemp(join(tmpdir(), 'pfs-demo-'));
    dirs.push(baseDir);
    const basePort = await freeBasePort();
    // Its etcd's data dir goes under TMPDIR: under baseDir, leftBehind sees that etcd too.
    const tmp = join(baseDir, 'tmp');
    await mkdir(tmp);
    const demo = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        'src/main.ts',
        '--no-keep-running',
        `--base-dir=${baseDir}`,
        `--base-port=${basePort}`,
      ],
      {
        cwd: fileURLToPath(new URL('..', import.meta.url)),
        stdio: ['ignore', 'pipe', 'inherit'],
        env: {
          ...process.env,
          TMPDIR: tmp,
          PFS_TEST_PORTS_DIR: process.env.PFS_TEST_PORTS_DIR ?? join(tmpdir(), 'pfs-test-ports'),
        },
      },
    );
    const exited = new Promise((resolve) => demo.once('exit', resolve));
    try {
      // Killed once its first node runs, as by a closed terminal or a CI job's end.
      await new Promise<void>((resolve, reject) => {
        let out = '';
        demo.stdout.on('data', (data: Buffer) => {
          out += data.toString();
          if (out.includes('✔')) resolve();
        });
        demo.once('exit', () => reject(new Error(`the demo ended before its first step: ${out}`)));
      });
      demo.kill('SIGKILL');
      await exited;
      const deadline = Date.now() + 20_000;
      let left = await leftBehind(baseDir);
      while (left.length > 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100));
        left = await leftBehind(baseDir);
      }
      expect(left).toEqual([]);
    } finally {
      demo.kill('SIGKILL');
      for (const { pid } of await leftBehind(baseDir)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {}
      }
    }
  });
});

/** Processes whose command line names a path under `dir` (its nodes, their rsync daemons). */
async function leftBehind(dir: string): Promise<{ pid: number; args: string }[]> {
  const found: { pid: number; args: string }[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const args = (await readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '')).replaceAll('\0', ' ');
    if (args.includes(`${dir}/`) && !args.includes('src/main.ts')) found.push({ pid: Number(name), args });
  }
  return found;
}

/** A PFS data dir where the demo's first node's goes, holding `file` (the demo's ports reserved). */
async function firstNodeDataDir(file: string, text: string) {
  const baseDir = await mkdtemp(join(tmpdir(), 'pfs-demo-'));
  dirs.push(baseDir);
  const basePort = await freeBasePort();
  const dataDir = join(baseDir, `localhost_${basePort}`);
  await mkdir(join(dataDir, 'filestore', '.pfs'), { recursive: true });
  await writeFile(join(dataDir, 'filestore', '.pfs', 'sentinel'), '');
  await writeFile(join(dataDir, 'filestore', file), text);
  return { baseDir, basePort, dataDir };
}

/** A base port N with N..N+2 and N+10000..N+10002 all free and reserved (the demo's fixed layout). */
function freeBasePort(): Promise<number> {
  return freePortBase([0, 1, 2, 10_000, 10_001, 10_002]);
}
