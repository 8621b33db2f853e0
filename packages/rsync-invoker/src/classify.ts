import type { RsyncErrorCode } from './errors.ts';
import { NOT_INSTALLED_MESSAGE } from './errors.ts';

export type ExitVerdict =
  | { ok: true; vanished: boolean }
  | { ok: false; code: RsyncErrorCode; retryable: boolean; message: string };

type Row = [code: RsyncErrorCode, retryable: boolean, cause: string, fix: string];

const RETRY = 'retry with backoff';

/**
 * rsync's exit values (errcode.h, man rsync "EXIT VALUES"). `retryable` answers "can the same
 * batch succeed later without anyone fixing anything": a peer that is down or slow, yes; a
 * configuration, protocol or safety stop (max-delete), no.
 */
// biome-ignore format: one row per exit code reads best as a table
const TABLE: Record<number, Row> = {
  1: ['RSYNC_SYNTAX_OR_CONFIG', false, 'rsync rejected the command or the daemon refused it (e.g. module is read only)', 'fix the arguments or rsyncd.conf'],
  2: ['RSYNC_PROTOCOL', false, 'protocol incompatibility between the two rsyncs', 'run the same rsync version on both ends'],
  3: ['RSYNC_FILE_SELECTION', false, 'rsync could not select the input/output files or dirs', 'check that the source and destination directories exist'],
  4: ['RSYNC_UNSUPPORTED', false, 'an option is not supported by one side', 'run the same rsync version (>= 3.2.4 for --fsync) on both ends'],
  5: ['RSYNC_START_FAILED', true, 'the daemon session did not start (unknown module, auth, max connections)', `check the module name and rsyncd.conf; ${RETRY}`],
  6: ['RSYNC_DAEMON_LOG', false, 'the daemon cannot append to its log file', 'fix the log file path or permissions in rsyncd.conf'],
  10: ['RSYNC_SOCKET', true, 'socket error (connection refused or reset)', `check that the rsync daemon runs at that host:port; ${RETRY}`],
  11: ['RSYNC_FILE_IO', false, 'file I/O error (disk full, permission denied, read-only fs)', 'free space or fix permissions on the destination'],
  12: ['RSYNC_STREAM', true, 'the data stream broke (the peer died or hung up)', `check the peer; ${RETRY}`],
  13: ['RSYNC_FAILED', false, 'rsync failed writing its diagnostics', 'check stdout/stderr of the process'],
  14: ['RSYNC_IPC', true, 'rsync could not fork or create a pipe', `check process and fd limits; ${RETRY}`],
  15: ['RSYNC_KILLED', true, 'an rsync sibling process crashed', `check dmesg (OOM killer); ${RETRY}`],
  16: ['RSYNC_KILLED', true, 'an rsync sibling process was killed', `check dmesg (OOM killer); ${RETRY}`],
  19: ['RSYNC_KILLED', true, 'rsync received SIGUSR1', `find who signalled it; ${RETRY}`],
  20: ['RSYNC_KILLED', true, 'rsync was killed by SIGINT/SIGTERM/SIGHUP', `find who killed it; ${RETRY}`],
  21: ['RSYNC_IPC', true, 'waitpid() failed inside rsync', RETRY],
  22: ['RSYNC_NO_MEMORY', true, 'rsync could not allocate memory', `free memory or split the batch; ${RETRY}`],
  23: ['RSYNC_PARTIAL', true, 'partial transfer: some files or attributes were not transferred', 'requeue the batch and alert if it repeats (see stderr)'],
  25: ['RSYNC_MAX_DELETE', false, 'refusing to delete more than --max-delete files', 'check that the source is mounted and current before re-running'],
  30: ['RSYNC_TIMEOUT', true, 'no data for --timeout seconds (the peer stalled)', `check the peer; ${RETRY}`],
  35: ['RSYNC_CONNECT_TIMEOUT', true, 'timed out connecting to the daemon (--contimeout)', `check that the host is up and reachable; ${RETRY}`],
  124: ['RSYNC_REMOTE_SHELL', true, 'the remote shell (ssh) failed', `check ssh access to the host; ${RETRY}`],
  125: ['RSYNC_REMOTE_SHELL', true, 'the remote shell (ssh) was killed', RETRY],
  126: ['RSYNC_REMOTE_SHELL', false, 'the remote shell (ssh) could not be run', 'check the -e command and its permissions'],
  255: ['RSYNC_REMOTE_SHELL', true, 'ssh failed (connection or authentication)', `check ssh access to the host; ${RETRY}`],
};

/** Maps how rsync ended to success or a typed failure. Pure: the whole table lives here. */
export function classifyExit(exitCode: number | undefined, signal: string | undefined): ExitVerdict {
  if (exitCode === 0) return { ok: true, vanished: false };
  // 24: a source file vanished while the list was built; the rest is done, so it counts as success.
  if (exitCode === 24) return { ok: true, vanished: true };
  if (exitCode === undefined) {
    return signal === undefined
      ? fail('RSYNC_FAILED', false, 'rsync ended without an exit code', 'check the spawn error')
      : fail('RSYNC_KILLED', true, `rsync was killed by ${signal}`, `find who killed it; ${RETRY}`, signal);
  }
  // 127: the shell's "command not found" (an rsync wrapper, or ssh / the remote rsync missing).
  if (exitCode === 127) {
    return {
      ok: false,
      code: 'RSYNC_NOT_INSTALLED',
      retryable: false,
      message: `${NOT_INSTALLED_MESSAGE} [exit 127]`,
    };
  }
  const row = TABLE[exitCode];
  if (row === undefined) return fail('RSYNC_FAILED', false, 'rsync failed', 'see stderr', exitCode);
  return fail(...row, exitCode);
}

function fail(
  code: RsyncErrorCode,
  retryable: boolean,
  cause: string,
  fix: string,
  how?: number | string,
): ExitVerdict {
  const suffix = how === undefined ? '' : typeof how === 'number' ? ` [exit ${how}]` : ` [${how}]`;
  return { ok: false, code, retryable, message: `${cause}: ${fix}${suffix}` };
}
