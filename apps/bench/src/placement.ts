import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { partitionOf } from '@pfs/filestore';
import { type NodeProcess, waitFor } from '@pfs/testkit';

/**
 * Waits until every node holds exactly the partitions placed on it, each with a serving master
 * among them, and (given the paths) each node's store has exactly the files of those partitions.
 */
export async function placementSettled(
  nodes: NodeProcess[],
  options: { paths?: string[]; partitions?: number; timeoutMs?: number } = {},
): Promise<void> {
  const { paths, partitions = 1, timeoutMs = 60_000 } = options;
  await waitFor(
    'the placement to settle',
    async () => {
      for (const node of nodes) {
        const status = await node.status();
        for (const p of status.partitions) {
          const placed = p.placedOn ?? [];
          if (p.holds !== placed.includes(node.id) || p.master === null || !placed.includes(p.master))
            return undefined;
        }
        if (paths !== undefined) {
          const held = new Set(status.partitions.filter((p) => p.holds).map((p) => p.partition));
          const expected = paths.filter((path) => held.has(partitionOf(path, partitions))).length;
          if ((await countFiles(node.fileStore)) !== expected) return undefined;
        }
      }
      return true;
    },
    timeoutMs,
  );
}

/** The regular files in a store, its `.pfs/` left out. */
export async function countFiles(dir: string): Promise<number> {
  let count = 0;
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (entry.name === '.pfs') continue;
    if (entry.isDirectory()) count += await countFiles(join(dir, entry.name));
    else if (entry.isFile()) count++;
  }
  return count;
}
