import type { BootstrapProgress } from '@pfs/replicator';

/** What `/v1/status` shows of a bulk copy in progress (docs/operations.md, Adding a node). */
export interface BootstrapSummary {
  elapsedMs: number;
  /** Files and bytes received so far, all rsyncs together. */
  files: number;
  bytes: number;
  /**
   * Each rsync's own figures. Its percent is of the bytes it knows of so far: rsync lists the
   * tree as it goes, so the percent can drop when it finds more.
   */
  parts: { percent: number; files: number; bytes: number }[];
}

/**
 * The progress of a new replica's bulk copy, from its rsyncs' progress2 updates, and when to
 * say so in the log: at the first update, then at most every `logEveryMs`.
 */
export class BootstrapTracker {
  private readonly parts = new Map<number, BootstrapProgress>();
  private loggedAt: number | undefined;

  constructor(
    private readonly startedAt: number,
    private readonly logEveryMs: number,
  ) {}

  note(progress: BootstrapProgress): void {
    this.parts.set(progress.part, progress);
  }

  summary(now: number): BootstrapSummary {
    const parts = [...this.parts.entries()]
      .sort(([a], [b]) => a - b)
      .map(([, p]) => ({ percent: p.percent, files: p.transferredFiles ?? 0, bytes: p.bytes }));
    return {
      elapsedMs: Math.max(0, Math.round(now - this.startedAt)),
      files: parts.reduce((sum, p) => sum + p.files, 0),
      bytes: parts.reduce((sum, p) => sum + p.bytes, 0),
      parts,
    };
  }

  /** True when a progress line is due at `now`; the caller logs it then. */
  logDue(now: number): boolean {
    if (this.loggedAt !== undefined && now - this.loggedAt < this.logEveryMs) return false;
    this.loggedAt = now;
    return true;
  }
}

/**
 * One line for the log: "12000 files, 48.3 MB in 2.1 s (rsyncs at 40 %, 45 %)", or "listing
 * the store" before any rsync has reported.
 */
export function describeBootstrap(summary: BootstrapSummary): string {
  const megabytes = (summary.bytes / 1e6).toFixed(1);
  const seconds = (summary.elapsedMs / 1000).toFixed(1);
  if (summary.parts.length === 0) return `listing the store, ${seconds} s so far`;
  const percents = summary.parts.map((p) => `${p.percent} %`).join(', ');
  const rsyncs = summary.parts.length === 1 ? 'rsync at' : 'rsyncs at';
  return `${summary.files} files, ${megabytes} MB in ${seconds} s (${rsyncs} ${percents})`;
}
