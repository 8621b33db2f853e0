export type CoordinatorErrorCode =
  | 'ETCD_UNREACHABLE'
  | 'SESSION_LOST'
  | 'NOT_MASTER'
  | 'GENERATION_CONFLICT'
  | 'BAD_VALUE'
  | 'SETTINGS_MISMATCH'
  | 'NODE_ID_TAKEN'
  | 'CLUSTER_MISMATCH'
  | 'CLOSED';

export class CoordinatorError extends Error {
  readonly code: CoordinatorErrorCode;
  constructor(code: CoordinatorErrorCode, message: string, options: { cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'CoordinatorError';
    this.code = code;
  }
}
