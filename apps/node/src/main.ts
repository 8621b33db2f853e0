import pino from 'pino';
import { startAgent } from './agent.ts';
import { loadConfig, USAGE } from './config.ts';

/** A signal this soon after the first is the same one delivered twice (see onSignal). */
const REPEAT_SIGNAL_MS = 1000;

/** Entry point of `pnpm --filter node start`: one-line errors, clean exit on SIGINT/SIGTERM. */
async function main(): Promise<void> {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig(
      process.argv.slice(2).filter((a) => a !== '--'),
      process.env,
    );
  } catch (error) {
    process.stderr.write(`pfs-node: ${(error as Error).message}\n`);
    process.exit(2);
  }
  if (config.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const logger = pino({
    level: config.logLevel,
    base: { node: config.nodeId },
    ...(process.stdout.isTTY ? { transport: { target: 'pino-pretty', options: { colorize: true } } } : {}),
  });
  // Handled from before the start: a signal while it runs (the rsync daemon up, etcd slow to
  // answer) waits for the start to end and then stops what it started. Killed by the default
  // action instead, the node would leave its detached rsync daemon running.
  let agent: Awaited<ReturnType<typeof startAgent>> | undefined;
  let stopping: string | undefined;
  const stop = () => {
    logger.info(`${stopping}: handing over and stopping (a second signal exits at once)`);
    agent!.close().then(
      () => process.exit(0),
      (error: Error) => {
        process.stderr.write(`pfs-node: shutdown: ${error.message}\n`);
        process.exit(1);
      },
    );
  };
  let firstSignalAt = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping !== undefined) {
      // One Ctrl-C under `pnpm … start` arrives twice: from the terminal to the whole process
      // group, and again from pnpm, which forwards it (systemd and pnpm do the same with
      // SIGTERM). Only a signal well after the first is an operator who insists.
      if (performance.now() - firstSignalAt < REPEAT_SIGNAL_MS) return;
      // The handover and the successor's drain can take seconds; an operator who insists gets
      // the process back now. The rsync daemon stays for a successor's drain, as after a crash.
      process.stderr.write(`pfs-node: second ${signal}: exiting now\n`);
      process.exit(signal === 'SIGINT' ? 130 : 143);
    }
    firstSignalAt = performance.now();
    stopping = signal;
    if (agent !== undefined) stop();
    else logger.info(`${signal} while starting: stopping once the start is over`);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    agent = await startAgent(config, logger);
  } catch (error) {
    process.stderr.write(`pfs-node: ${(error as Error).message}\n`);
    process.exit(1);
  }
  logger.info(
    { url: agent.url, dataDir: config.dataDir, rsyncPort: config.rsyncPort },
    `node ${config.nodeId} up at ${agent.url}`,
  );
  if (stopping !== undefined) stop();
}

void main();
