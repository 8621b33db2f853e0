import { lstat, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeTempDir, removeTempDir } from '@pfs/testkit';
import { execa } from 'execa';
import { afterAll, onTestFinished } from 'vitest';

const dirs: string[] = [];
afterAll(async () => {
  await Promise.all(dirs.splice(0).map((dir) => removeTempDir(dir)));
});

export async function tempDir(): Promise<string> {
  const dir = await makeTempDir('pfs-rsync-invoker');
  dirs.push(dir);
  return dir;
}

/** Writes files (creating parent dirs); content defaults to the path itself. */
export async function writeTree(root: string, files: Record<string, string> | string[]): Promise<void> {
  const entries = Array.isArray(files) ? files.map((p) => [p, p] as const) : Object.entries(files);
  for (const [path, content] of entries) {
    await mkdir(dirname(join(root, path)), { recursive: true });
    await writeFile(join(root, path), content);
  }
}

/**
 * Every regular file under root: relative path as raw bytes (hex) → contents (hex). Names are
 * read as Buffers so that NFC/NFD and odd bytes are compared exactly, not after decoding.
 */
export async function snapshot(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const slash = Buffer.from('/');
  const walk = async (abs: Buffer, rel: Buffer) => {
    for (const name of await readdir(abs, { encoding: 'buffer' })) {
      const childAbs = Buffer.concat([abs, slash, name]);
      const childRel = rel.length === 0 ? name : Buffer.concat([rel, slash, name]);
      const info = await lstat(childAbs);
      if (info.isDirectory()) await walk(childAbs, childRel);
      else out.set(childRel.toString('hex'), (await readFile(childAbs)).toString('hex'));
    }
  };
  await walk(Buffer.from(root), Buffer.alloc(0));
  return out;
}

export const hexPath = (path: string) => Buffer.from(path, 'utf8').toString('hex');

/** The `accept` names of <repo>/testdata/odd-names.json. */
export async function oddNames(): Promise<string[]> {
  const url = new URL('../../../testdata/odd-names.json', import.meta.url);
  let text: string;
  try {
    text = await readFile(url, 'utf8');
  } catch (error) {
    throw new Error(
      `odd-names.json not found at ${fileURLToPath(url)}: restore testdata/odd-names.json from git`,
      { cause: error },
    );
  }
  const accept = (JSON.parse(text) as { accept?: unknown }).accept;
  if (!Array.isArray(accept) || accept.length === 0)
    throw new Error(`${fileURLToPath(url)} has no 'accept' array`);
  return accept as string[];
}

/** Pids whose command line contains `needle` (pgrep -f), excluding pgrep itself. */
export async function pidsMatching(needle: string): Promise<number[]> {
  const { stdout } = await execa('pgrep', ['-f', '--', needle], { reject: false });
  return stdout.split('\n').filter(Boolean).map(Number);
}

/**
 * A TCP server that accepts and never says a word: rsync waits for the daemon greeting. `url` is
 * a module on it.
 */
export async function silentServer(): Promise<{ port: number; url: string; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  const close = () =>
    new Promise<void>((resolve) => {
      for (const socket of sockets) socket.destroy();
      server.close(() => resolve());
    });
  // Closed after the test however it ends (a second close is harmless).
  onTestFinished(close);
  return { port, url: `rsync://127.0.0.1:${port}/m/`, close };
}

/** Waits until an rsync whose command line mentions `needle` runs; returns its process group. */
export async function rsyncGroup(needle: string): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const [pid] = await pidsMatching(needle);
    if (pid !== undefined) {
      const { stdout } = await execa('ps', ['-o', 'pgid=', '-p', String(pid)]);
      return Number(stdout.trim());
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error(`no rsync process mentioning ${needle} appeared`);
}
