import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
});
