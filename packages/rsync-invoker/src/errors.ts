/** Stable error codes of @pfs/rsync-invoker; callers match on `code`, never on the message. */
export type RsyncErrorCode =
  | 'RSYNC_NOT_INSTALLED'
  | 'RSYNC_BAD_PATH'
  | 'RSYNC_ABORTED'
  | 'RSYNC_TIMEOUT'
  | 'RSYNC_SYNTAX_OR_CONFIG'
  | 'RSYNC_PROTOCOL'
  | 'RSYNC_FILE_SELECTION'
  | 'RSYNC_UNSUPPORTED'
  | 'RSYNC_START_FAILED'
  | 'RSYNC_DAEMON_LOG'
  | 'RSYNC_SOCKET'
  | 'RSYNC_FILE_IO'
  | 'RSYNC_STREAM'
  | 'RSYNC_IPC'
  | 'RSYNC_KILLED'
  | 'RSYNC_NO_MEMORY'
  | 'RSYNC_PARTIAL'
  | 'RSYNC_MAX_DELETE'
  | 'RSYNC_CONNECT_TIMEOUT'
  | 'RSYNC_REMOTE_SHELL'
  | 'RSYNC_FAILED';

export interface RsyncErrorDetails {
  exitCode?: number | undefined;
  signal?: string | undefined;
  /** The last lines rsync wrote to stderr. */
  stderr?: string;
  cause?: unknown;
}

export class RsyncError extends Error {
  readonly code: RsyncErrorCode;
  /** Whether the same call may succeed later (peer down, timeout) rather than needing a fix. */
  readonly retryable: boolean;
  readonly exitCode: number | undefined;
  readonly signal: string | undefined;
  readonly stderr: string;

  constructor(code: RsyncErrorCode, message: string, retryable: boolean, details: RsyncErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'RsyncError';
    this.code = code;
    this.retryable = retryable;
    this.exitCode = details.exitCode;
    this.signal = details.signal;
    this.stderr = details.stderr ?? '';
  }
}

export const NOT_INSTALLED_MESSAGE =
  'rsync is not installed: run scripts/bootstrap.sh (apt-get install rsync)';
