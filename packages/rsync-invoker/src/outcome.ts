import { classifyExit } from './classify.ts';
import { RsyncError } from './errors.ts';
import type { RunResult } from './run.ts';

/** Throws the typed error for a failed run; returns whether files vanished (exit 24) otherwise. */
export function checkOutcome(run: RunResult): { vanished: boolean } {
  const verdict = classifyExit(run.exitCode, run.signal);
  if (verdict.ok) return { vanished: verdict.vanished };
  const said = keyLine(run.stderr);
  // Not a version mismatch, as exit 4 usually is: rsync 3.2.5+ refuses a listed name that its
  // own check reads as a pattern (a backslash before a wildcard), whatever the versions.
  const message = said?.startsWith('ERROR: rejecting unrequested file-list name')
    ? `rsync refused a listed name, reading a backslash in it before "*", "?", "[" or "]" as an escape: rename that file on the source (new names like it are refused) [exit ${run.exitCode}]`
    : verdict.message;
  throw new RsyncError(verdict.code, said ? `${message}; rsync said: ${said}` : message, verdict.retryable, {
    exitCode: run.exitCode,
    signal: run.signal,
    stderr: run.stderr,
  });
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
