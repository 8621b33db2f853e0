export {
  DEFAULT_SETTLE_MS,
  listStoreFiles,
  type StoreEvent,
  type StoreEventType,
  type StoreWatcher,
  type StoreWatcherOptions,
  watchStore,
} from './watcher.ts';
