import pino from 'pino';
import { startAgent } from './agent.ts';
import { loadConfig, USAGE } from './config.ts';

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
  let agent: Awaited<ReturnType<typeof startAgent>>;
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
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info(`${signal}: handing over and stopping`);
    agent.close().then(
      () => process.exit(0),
      (error: Error) => {
        process.stderr.write(`pfs-node: shutdown: ${error.message}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

void main();
