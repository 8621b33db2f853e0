/** Stable error codes of @pfs/txlog; callers match on `code`, never on the message. */
export type TxlogErrorCode =
  | 'TXLOG_BAD_TXID'
  | 'TXLOG_SEQUENCE_OVERFLOW'
  | 'TXLOG_GENERATION_OVERFLOW'
  | 'TXLOG_CORRUPT'
  | 'TXLOG_NOT_INCREASING'
  | 'TXLOG_NO_GENERATION'
  | 'TXLOG_BAD_RECORD'
  | 'TXLOG_CLOSED'
  | 'TXLOG_WRITE_FAILED'
  | 'TXLOG_CHECKPOINT_CORRUPT'
  | 'TXLOG_IN_USE';

export class TxlogError extends Error {
  readonly code: TxlogErrorCode;
  readonly segment: string | undefined;
  readonly offset: number | undefined;

  constructor(
    code: TxlogErrorCode,
    message: string,
    options: { segment?: string; offset?: number; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'TxlogError';
    this.code = code;
    this.segment = options.segment;
    this.offset = options.offset;
  }
}
