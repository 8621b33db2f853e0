/** Stable error codes of @pfs/testkit; tests match on `code`, never on the message. */
export type TestkitErrorCode =
  | 'TESTKIT_NOT_INSTALLED'
  | 'TESTKIT_START_FAILED'
  | 'TESTKIT_ABORTED'
  | 'TESTKIT_STOP_FAILED'
  | 'TESTKIT_BAD_OPTIONS';

export class TestkitError extends Error {
  readonly code: TestkitErrorCode;
  /** Last lines of the service's log, when there is one: the reason a start failed is usually there. */
  readonly logTail: string | undefined;

  constructor(code: TestkitErrorCode, message: string, options: { logTail?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'TestkitError';
    this.code = code;
    this.logTail = options.logTail;
  }
}
