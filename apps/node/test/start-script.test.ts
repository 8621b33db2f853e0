import { readFile } from 'node:fs/promises';
import { AGENT_NODE_FLAGS } from '@pfs/testkit';
import { describe, expect, it } from 'vitest';

describe('the start script', () => {
  it('runs the bundle with the node flags the tests, the demo and the benchmarks run it with', async () => {
    const manifest = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8')) as {
      scripts: { start: string };
    };
    const command = /exec node ((?:\S+ )*)dist\/pfs-node\.mjs$/.exec(manifest.scripts.start);
    expect(command?.[1]?.split(' ').filter((flag) => flag !== '')).toEqual([...AGENT_NODE_FLAGS]);
  });
});
