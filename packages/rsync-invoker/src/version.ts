import { RsyncError } from './errors.ts';
import { checkOutcome } from './outcome.ts';
import { runRsync } from './run.ts';

/** The version of the rsync binary, e.g. '3.5.0'; log it at start-up, both ends must match. */
export async function rsyncVersion(rsyncBin = 'rsync'): Promise<string> {
  const chunks: Buffer[] = [];
  const run = await runRsync({ bin: rsyncBin, args: ['--version'], onStdout: (c) => chunks.push(c) });
  checkOutcome(run);
  const output = Buffer.concat(chunks).toString('utf8');
  const version = parseRsyncVersion(output);
  if (version === undefined) {
    throw new RsyncError(
      'RSYNC_FAILED',
      `${rsyncBin} --version printed no version: check that ${rsyncBin} is rsync`,
      false,
      { stderr: output.slice(0, 300) },
    );
  }
  return version;
}

/** First line of `rsync --version`: "rsync  version 3.5.0  protocol version 32". */
export function parseRsyncVersion(output: string): string | undefined {
  return /^rsync\s+version\s+v?(\d+\.\d+\.\d+\S*)/m.exec(output)?.[1];
}
