import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach } from 'vitest';

const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

export async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'pfs-txlog-'));
  dirs.push(dir);
  return dir;
}

export function put(path: string, n = 0) {
  return {
    kind: 'put' as const,
    path,
    size: BigInt(n),
    mtimeNs: 1_700_000_000_000_000_000n + BigInt(n),
    sha256: n.toString(16).padStart(64, '0'),
  };
}
