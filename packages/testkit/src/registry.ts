import { rmSync } from 'node:fs';

/** Something a test started: a process group and the temp dir it owns. */
export interface Tracked {
  readonly pid: number;
  readonly dir: string;
  stop(): Promise<void>;
}

const live = new Set<Tracked>();
let exitHookInstalled = false;

/**
 * Remembers a started service until it is stopped. The exit hook is installed on the first
 * start, not at import: a signal handler installed at import would keep vitest from terminating
 * its fork workers, and an 'exit' listener costs nothing to a worker that never starts anything.
 */
export function track(item: Tracked): void {
  live.add(item);
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', killAllNow);
}

export function untrack(item: Tracked): void {
  live.delete(item);
}

/** Stops everything still running; tests call it in afterAll/afterEach. Throws the first failure. */
export async function stopAll(): Promise<void> {
  const results = await Promise.allSettled([...live].map((item) => item.stop()));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

/** Number of services started and not yet stopped (for tests of the testkit itself). */
export function liveCount(): number {
  return live.size;
}

function killAllNow(): void {
  // 'exit' handlers must be synchronous: SIGKILL the groups and remove the dirs, best effort.
  for (const item of live) {
    try {
      process.kill(-item.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
    try {
      rmSync(item.dir, { recursive: true, force: true });
    } catch {
      // A dir we cannot remove at exit is left to the OS temp cleaner.
    }
  }
  live.clear();
}
