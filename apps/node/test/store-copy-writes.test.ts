import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentState } from '../src/agent-state.ts';
import { buildHttpServer } from '../src/http.ts';

const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

/**
 * The HTTP API over a stand-in node that masters partition 0 and may be bulk-copying its store;
 * `deletes` records what reached the changelog generator.
 */
async function server(copy: { running: boolean }) {
  const dataDir = await mkdtemp(join(tmpdir(), 'pfs-store-copy-'));
  dirs.push(dataDir);
  const deletes: string[] = [];
  const state = {
    config: {
      dataDir,
      partitions: 1,
      ackMode: 'local',
      ackTimeoutMs: 1000,
      maxFileBytes: 1024,
      nodeId: 'n1',
    },
    controllers: [
      {
        writable: () => true,
        get copyingStore() {
          return copy.running;
        },
      },
    ],
    generator: {
      commitDelete: async (path: string) => {
        deletes.push(path);
        throw new Error('stand-in generator');
      },
    },
    masterOf: () => ({ nodeId: 'n1', host: '127.0.0.1', httpPort: 1 }),
  } as unknown as AgentState;
  const app = await buildHttpServer(state, pino({ level: 'silent' }));
  return { app, deletes };
}

describe('writes on a master whose node is bulk-copying its store', () => {
  it('are refused with 503 STORE_COPY until the copy ends', async () => {
    const copy = { running: true };
    const { app, deletes } = await server(copy);
    try {
      for (const method of ['PUT', 'DELETE'] as const) {
        const refused = await app.inject({
          method,
          url: '/v1/files/a.txt',
          payload: method === 'PUT' ? 'x' : undefined,
        });
        expect(refused.statusCode).toBe(503);
        expect(refused.headers['retry-after']).toBe('1');
        expect(refused.json()).toMatchObject({ code: 'STORE_COPY' });
      }
      expect(deletes).toEqual([]);
      copy.running = false;
      await app.inject({ method: 'DELETE', url: '/v1/files/a.txt' });
      expect(deletes).toEqual(['a.txt']);
    } finally {
      await app.close();
    }
  });
});
