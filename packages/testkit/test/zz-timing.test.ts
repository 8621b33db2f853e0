import { makeTempDir, startEtcd, startRsyncDaemon, stopAll } from '@pfs/testkit';
import { it } from 'vitest';

it('timing', async () => {
  const src = await makeTempDir('x');
  for (let i = 0; i < 3; i++) {
    let t = performance.now();
    const d = await startRsyncDaemon({ modules: { a: src } });
    const t1 = performance.now() - t;
    t = performance.now();
    await d.stop();
    console.log('rsyncd start', t1.toFixed(0), 'stop', (performance.now() - t).toFixed(0));
  }
  let t = performance.now();
  const e = await startEtcd();
  const t1 = performance.now() - t;
  t = performance.now();
  await e.stop();
  console.log('etcd start', t1.toFixed(0), 'stop', (performance.now() - t).toFixed(0));
  await stopAll();
});
