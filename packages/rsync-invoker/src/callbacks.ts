/**
 * Calls a caller's callbacks from inside stream 'data' handlers, where a throw would crash the
 * process: the first exception is kept, later calls are skipped, and rethrow() raises it once
 * rsync has ended.
 */
export class CallbackGuard {
  private failure: { error: unknown } | undefined;

  call<T>(callback: ((value: T) => void) | undefined, value: T): void {
    if (callback === undefined || this.failure !== undefined) return;
    try {
      callback(value);
    } catch (error) {
      this.failure = { error };
    }
  }

  rethrow(): void {
    if (this.failure !== undefined) throw this.failure.error;
  }
}
