import { classifyExit } from './classify.ts';
import { RsyncError } from './errors.ts';
import type { RunResult } from './run.ts';

/** Throws the typed error for a failed run; returns whether files vanished (exit 24) otherwise. */
export function checkOutcome(run: RunResult): { vanished: boolean } {
  const verdict = classifyExit(run.exitCode, run.signal);
  if (verdict.ok) return { vanished: verdict.vanished };
  const said = keyLine(run.stderr);
  throw new RsyncError(
    verdict.code,
    said ? `${verdict.message}; rsync said: ${said}` : verdict.message,
    verdict.retryable,
    {
      exitCode: run.exitCode,
      signal: run.signal,
      stderr: run.stderr,
    },
  );
}

/**
 * The stderr line that names the cause: rsync ends with a generic "rsync error: … (code N) at
 * main.c(…)" and the useful line ("@ERROR: Unknown module", "failed to connect") comes before.
 */
export function keyLine(stderr: string): string | undefined {
  const lines = stderr
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter(Boolean);
  const useful = lines.find((line) => /^(@ERROR|ERROR:|rsync: )/.test(line)) ?? lines.at(-1);
  return useful === undefined ? undefined : useful.slice(0, 300);
}
