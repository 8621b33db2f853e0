import { createServer } from 'node:net';
import { describe, expect, it } from 'vitest';
import { isListeningBy } from '../src/listener.ts';
import { startService } from '../src/service.ts';

/** A node script: listens on its port, or, with `taken`, says what etcd says of a port in use and exits. */
const SCRIPT = `const [port, taken] = process.argv.slice(1);
if (taken === 'taken') { console.error('listen tcp 127.0.0.1:' + port + ': bind: address already in use'); process.exit(1); }
require('node:net').createServer().listen(Number(port), '127.0.0.1');`;

describe('startService', () => {
  it('starts again on fresh ports when the service found its port taken, and only then', async () => {
    const attempts: number[][] = [];
    const service = await startService({
      what: 'stand-in',
      bin: process.execPath,
      portCount: 1,
      readyTimeoutMs: 10_000,
      signal: undefined,
      prepare: async (_dir, ports) => {
        attempts.push(ports);
        return ['-e', SCRIPT, String(ports[0]), attempts.length === 1 ? 'taken' : 'free'];
      },
      probe: async (pid, ports) => (await isListeningBy(pid, ports[0]!)) === true,
    });
    try {
      expect(attempts).toHaveLength(2);
      expect(service.ports).toEqual(attempts[1]);
    } finally {
      await service.stop();
    }
  });

  it('does not take a port another process answers on for its own, and fails with the log tail', async () => {
    // The probe asks whether the service's own PID listens: another process on the port does not count.
    const squatter = createServer();
    await new Promise<void>((resolve) => squatter.listen(0, '127.0.0.1', resolve));
    const port = (squatter.address() as { port: number }).port;
    try {
      await expect(
        startService({
          what: 'stand-in',
          bin: process.execPath,
          portCount: 1,
          readyTimeoutMs: 1000,
          signal: undefined,
          prepare: async () => ['-e', `console.log('waiting'); setInterval(() => {}, 1000);`],
          probe: async (pid) => (await isListeningBy(pid, port)) === true,
        }),
      ).rejects.toMatchObject({
        code: 'TESTKIT_START_FAILED',
        message: 'stand-in was not ready within 1000 ms: see logTail',
        logTail: expect.stringContaining('waiting'),
      });
    } finally {
      await new Promise((resolve) => squatter.close(resolve));
    }
  });
});
