import { type StoreWatcher, watchStore } from '@pfs/watcher';
import type { ChangelogGenerator } from './generator.ts';

/**
 * Feeds watcher events of the generator's store into `observe`, so files dropped into the store by
 * hand are logged. Errors (including inotify ENOSPC) go to `onError`; callers should also run
 * `generator.reconcile()` periodically, since no watcher sees everything.
 */
export function followWatcher(
  generator: ChangelogGenerator,
  options: { settleMs?: number; signal?: AbortSignal; onError?: (error: Error) => void },
): StoreWatcher {
  const onError = options.onError ?? (() => {});
  return watchStore({
    root: generator.root,
    ...(options.settleMs === undefined ? {} : { settleMs: options.settleMs }),
    ...(options.signal === undefined ? {} : { signal: options.signal }),
    onError,
    onEvent: (event) => {
      generator.observe(event.path).catch(onError);
    },
  });
}
