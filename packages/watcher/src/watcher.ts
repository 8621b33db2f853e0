import { isAbsolute, relative } from 'node:path';
import { isInternalPath, statFile, walkStore } from '@pfs/filestore';
import { type FSWatcher, watch } from 'chokidar';

/**
 * Watches a store directory and reports which relative paths changed. The one file that touches
 * chokidar.
 *
 * chokidar drops a second `change` that comes within 50 ms and never replays events from before
 * it started, so events here mean "this path is dirty": each path is settled for `settleMs` past
 * its last raw event, then re-stat'ed, and the event type says what is on disk now. Callers that
 * must not miss anything also run `listStoreFiles()` (at start, on promotion, periodically).
 */
export type StoreEventType = 'add' | 'change' | 'unlink';

export interface StoreEvent {
  type: StoreEventType;
  /** Relative to the store root, `/`-separated, exactly as named on disk. */
  path: string;
}

export interface StoreWatcherOptions {
  root: string;
  onEvent: (event: StoreEvent) => void;
  onError?: (error: Error) => void;
  /** Quiet time after a path's last raw event before it is reported; lets in-place writers finish. */
  settleMs?: number;
  signal?: AbortSignal;
}

export interface StoreWatcher {
  /** Resolves once the initial directory scan is done and events are being delivered. */
  readonly ready: Promise<void>;
  /** Stops watching; pending settles are dropped. Safe to call twice. */
  close(): Promise<void>;
}

export const DEFAULT_SETTLE_MS = 100;
/** Longer than chokidar's 50 ms throttle of repeated `change` events. */
const TRAILING_CHECK_MS = 75;
/** When a path whose stat failed is looked at again. */
const STAT_RETRY_MS = 5000;

export function watchStore(options: StoreWatcherOptions): StoreWatcher {
  const settleMs = options.settleMs ?? DEFAULT_SETTLE_MS;
  const timers = new Map<string, NodeJS.Timeout>();
  const known = new Set<string>();
  let closed = false;

  const toRelative = (p: string) => (isAbsolute(p) ? relative(options.root, p) : p).split('\\').join('/');

  const watcher: FSWatcher = watch(options.root, {
    cwd: options.root,
    ignoreInitial: false,
    followSymlinks: false,
    atomic: false,
    awaitWriteFinish: false,
    alwaysStat: false,
    ignored: (p: string) => {
      const rel = toRelative(p);
      return rel !== '' && isInternalPath(rel);
    },
  });
  watcher.on('error', (error) => options.onError?.(error as Error));

  // What was on disk when each path was last reported, until its trailing re-check.
  const reported = new Map<string, string>();
  const fingerprint = (info: { size: bigint; mtimeNs: bigint; ino: bigint; ctimeNs: bigint }) =>
    `${info.size}:${info.mtimeNs}:${info.ino}:${info.ctimeNs}`;

  const settle = (path: string, trailing = false) => {
    timers.delete(path);
    if (closed) return;
    statFile(options.root, path).then(
      (info) => {
        if (closed) return;
        if (info === undefined) {
          reported.delete(path);
          known.delete(path);
          // Told even for a path not reported yet: one a file-server put created and a hand
          // removed within the settle window is in the log, and only this tells it is gone.
          options.onEvent({ type: 'unlink', path });
          return;
        }
        const print = fingerprint(info);
        // Kept only until the trailing check: every path an API put renames into place passes
        // here, and a map of them all would grow with the store.
        if (trailing && reported.get(path) === print) {
          reported.delete(path);
          return;
        }
        reported.set(path, print);
        const type: StoreEventType = known.has(path) ? 'change' : 'add';
        known.add(path);
        options.onEvent({ type, path });
        // chokidar drops a `change` that follows another within 50 ms: look once more after
        // that window, so a write that landed in it is still reported.
        if (!timers.has(path)) timers.set(path, setTimeout(settle, settleMs + TRAILING_CHECK_MS, path, true));
      },
      (error: Error) => {
        // Looked at again later (EACCES, EIO may pass); the error is told meanwhile.
        reported.delete(path);
        options.onError?.(error);
        if (!closed && !timers.has(path)) {
          timers.set(path, setTimeout(settle, STAT_RETRY_MS, path));
        }
      },
    );
  };
  const touch = (raw: string) => {
    const path = toRelative(raw);
    if (path === '' || isInternalPath(path)) return;
    clearTimeout(timers.get(path));
    timers.set(path, setTimeout(settle, settleMs, path));
  };

  let initialDone = false;
  const initial: string[] = [];
  watcher.on('all', (event, raw) => {
    if (event === 'addDir' || event === 'unlinkDir') return;
    if (!initialDone && event === 'add') {
      // Files present before start are listed by the reconcile scan, not reported as changes.
      initial.push(toRelative(raw));
      return;
    }
    touch(raw);
  });
  const ready = new Promise<void>((resolve) => {
    watcher.once('ready', () => {
      initialDone = true;
      for (const path of initial) known.add(path);
      // Kept in `known` now: the list itself would hold every path of the store for good.
      initial.length = 0;
      resolve();
    });
  });

  // Every caller, the abort's included, waits for the same close.
  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= (async () => {
      closed = true;
      for (const timer of timers.values()) clearTimeout(timer);
      timers.clear();
      options.signal?.removeEventListener('abort', onAbort);
      await watcher.close();
    })();
    return closing;
  };
  const onAbort = () => void close();
  options.signal?.addEventListener('abort', onAbort, { once: true });
  return { ready, close };
}

/** Every regular file now in the store, for the reconcile scan (internal files and symlinks skipped). */
export async function listStoreFiles(root: string): Promise<string[]> {
  const paths: string[] = [];
  for await (const entry of walkStore(root)) paths.push(entry.path);
  return paths;
}
