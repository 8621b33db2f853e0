export type ReplicatorErrorCode =
  | 'SOURCE_UNAVAILABLE'
  | 'BAD_FEED'
  | 'NOT_INCREASING'
  | 'DIVERGED'
  | 'STALE_SOURCE'
  | 'CONTENT_MISMATCH'
  | 'CHECKPOINT_FAILED'
  | 'DIRECTORY_IN_THE_WAY'
  | 'FILE_IN_THE_WAY'
  | 'HELD_BY_ANOTHER_PARTITION'
  | 'SYNC_FAILED'
  | 'UNSETTLED'
  | 'STORE_MISSING'
  | 'BAD_OPTIONS'
  | 'BUSY'
  | 'CLOSED';

export class ReplicatorError extends Error {
  readonly code: ReplicatorErrorCode;
  constructor(code: ReplicatorErrorCode, message: string, options: { cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ReplicatorError';
    this.code = code;
  }
}
