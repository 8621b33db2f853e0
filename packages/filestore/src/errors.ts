/** Stable error codes of @pfs/filestore; callers (e.g. the HTTP layer) map them to statuses. */
export type FilestoreErrorCode =
  | 'PATH_EMPTY'
  | 'PATH_ABSOLUTE'
  | 'PATH_TRAVERSAL'
  | 'PATH_NOT_NORMALIZED'
  | 'PATH_NUL'
  | 'PATH_INVALID_UTF8'
  | 'PATH_COMPONENT_TOO_LONG'
  | 'PATH_TOO_LONG'
  | 'PATH_RESERVED'
  | 'PATH_ESCAPED_WILDCARD'
  | 'PATH_THROUGH_SYMLINK'
  | 'PATH_CONFLICT'
  | 'PATH_IS_DIRECTORY'
  | 'PATH_EXISTS'
  | 'NOT_FOUND'
  | 'FILE_TOO_LARGE'
  | 'CONTENT_MISMATCH'
  | 'DISK_FULL'
  | 'STORE_MISSING'
  | 'NOT_DURABLE'
  | 'MTIME_OUT_OF_RANGE'
  | 'ABORTED';

export class FilestoreError extends Error {
  readonly code: FilestoreErrorCode;
  readonly path: string | undefined;

  constructor(code: FilestoreErrorCode, message: string, options: { path?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'FilestoreError';
    this.code = code;
    this.path = options.path;
  }
}

/** Quotes a user path for a one-line message: newlines and other controls stay escaped. */
export function quote(path: string): string {
  const shown = path.length > 120 ? `${path.slice(0, 117)}...` : path;
  return JSON.stringify(shown);
}
