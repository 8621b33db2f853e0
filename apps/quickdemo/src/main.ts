import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { runStory, StoryError } from './story.ts';

/**
 * `pnpm demo`: runs the seed's quick demo against real etcd, rsync and three node agents, checks
 * every step, then (in a terminal, or with --keep-running) leaves the cluster up until Ctrl-C.
 */
const USAGE = `usage: pnpm demo [-- --base-dir DIR] [--base-port N] [--keep-running | --no-keep-running] [--kill]
  --base-dir DIR      node data dirs go to DIR/localhost_<port> (default /tmp, as in the seed)
  --base-port N       HTTP ports N..N+2, rsync ports N+10000.. (default 12001)
  --kill              stop the first master with SIGKILL instead of SIGTERM
  --keep-running      keep the cluster up after the story (default in an interactive terminal)`;

const PACKAGE_DIR = fileURLToPath(new URL('..', import.meta.url));

async function main(): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({
      args: process.argv.slice(2).filter((a) => a !== '--'),
      options: {
        'base-dir': { type: 'string', default: '/tmp' },
        'base-port': { type: 'string', default: '12001' },
        'keep-running': { type: 'boolean' },
        'no-keep-running': { type: 'boolean' },
        kill: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }).values;
  } catch (error) {
    process.stderr.write(`quickdemo: ${(error as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const basePort = Number(values['base-port']);
  if (!Number.isInteger(basePort) || basePort < 1 || basePort + 10_002 > 65_535) {
    process.stderr.write(
      `quickdemo: --base-port must be a port with room for +10002, got ${values['base-port']}\n`,
    );
    return 2;
  }
  const interactive = process.stdin.isTTY === true && process.env.CI === undefined;
  const keepRunning = values['no-keep-running'] ? false : (values['keep-running'] ?? interactive);
  const say = (line: string) => process.stdout.write(`${line}\n`);
  say('PFS quick demo: three nodes, replication, failover (see the seed recipe)');
  const started = performance.now();
  let result: Awaited<ReturnType<typeof runStory>>;
  try {
    result = await runStory({
      // pnpm runs the script in apps/quickdemo and says where it was called from in INIT_CWD
      // (only this package's own script: pnpm's variables are inherited by all a script starts);
      // the agents run in apps/node: a relative base dir must mean the same to all of them.
      baseDir: resolve(
        process.env.INIT_CWD &&
          process.env.npm_package_json === join(PACKAGE_DIR, 'package.json') &&
          resolve(process.cwd()) === resolve(PACKAGE_DIR)
          ? process.env.INIT_CWD
          : process.cwd(),
        values['base-dir'] as string,
      ),
      basePort,
      stopSignal: values.kill ? 'SIGKILL' : 'SIGTERM',
      say,
    });
  } catch (error) {
    say(`✘ ${error instanceof StoryError ? '' : 'error: '}${(error as Error).message}`);
    return 1;
  }
  say(`all steps passed in ${Math.round(performance.now() - started)} ms`);
  if (!keepRunning) {
    await result.cleanup();
    return 0;
  }
  const { master, follower: replica } = result;
  say('');
  say(
    `The cluster stays up: ${master.id} is master, ${replica.id} its replica (etcd ${result.etcd.endpoint}).`,
  );
  for (const node of [master, replica]) {
    say(`  ${node.id}: filestore ${node.fileStore}, HTTP ${node.url}, rsync port ${node.spec.rsyncPort}`);
  }
  say(`Create a file in ${master.fileStore} and watch it appear in ${replica.fileStore}.`);
  say(`Or: curl -X PUT --data-binary @FILE ${master.url}/v1/files/NAME`);
  say('Ctrl-C stops everything.');
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  say('stopping…');
  await result.cleanup();
  return 0;
}

main().then((code) => process.exit(code));
