import { fsyncDir } from '@pfs/txlog';

/**
 * Group commit for fsyncs of one key (a directory): a caller waits for a sync that *starts after*
 * it called, so whatever it changed before calling is covered; callers arriving while one sync
 * runs share the single sync queued behind it. Under 32 concurrent PUTs into one directory this
 * turns 32 directory fsyncs (each a journal commit) into about two.
 */
export function coalescingSync(sync: (key: string) => Promise<void>): (key: string) => Promise<void> {
  const states = new Map<string, { running: Promise<void>; queued: Promise<void> | undefined }>();
  // Its state is set before the sync can settle (settling is always asynchronous).
  const start = (key: string): Promise<void> =>
    sync(key).finally(() => {
      if (states.get(key)!.queued === undefined) states.delete(key);
    });
  return (key) => {
    const state = states.get(key);
    if (state === undefined) {
      const running = start(key);
      states.set(key, { running, queued: undefined });
      return running;
    }
    if (state.queued !== undefined) return state.queued;
    // The running sync may have started before this caller's change: it needs the next one. If
    // the running one fails, so do the queued callers: their changes may have been in the
    // writeback that failed, and a file system reports such an error only once.
    const queued = state.running.then(
      () => {
        state.queued = undefined;
        state.running = start(key);
        return state.running;
      },
      (error: unknown) => {
        state.queued = undefined;
        if (states.get(key) === state) states.delete(key);
        throw error;
      },
    );
    state.queued = queued;
    return queued;
  };
}

/** fsync of a directory, shared by concurrent callers (see coalescingSync). */
export const syncDirectory = coalescingSync(fsyncDir);
