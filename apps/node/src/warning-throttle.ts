/**
 * At most one warning of each kind per interval, with how many were held back meanwhile: an
 * error retried every few hundred ms (a replica's failing batch, a watcher failing directory
 * after directory) must show in the log without flooding it.
 */
export class WarningThrottle {
  private readonly last = new Map<string, { at: number; heldBack: number }>();

  constructor(
    private readonly intervalMs: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Whether a warning of `kind` is due now, and how many of it were held back since the last one. */
  take(kind: string): { due: boolean; heldBack: number } {
    const now = this.now();
    const last = this.last.get(kind);
    if (last !== undefined && now - last.at < this.intervalMs) {
      last.heldBack++;
      return { due: false, heldBack: last.heldBack };
    }
    this.last.set(kind, { at: now, heldBack: 0 });
    return { due: true, heldBack: last?.heldBack ?? 0 };
  }

  /** Lets the next warning of `kind` through at once (what it was about is over). */
  forget(kind: string): void {
    this.last.delete(kind);
  }
}
