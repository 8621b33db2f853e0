// What the options, events and sources speak of, for an embedder that has no other use for txlog.
export type { LogRecord, TxId, TxLog } from '@pfs/txlog';
export { type BatchPlan, planBatch } from './batch.ts';
export { discardBulkCopyStaging } from './bulk-copy-staging.ts';
export { ReplicatorError, type ReplicatorErrorCode } from './errors.ts';
export {
  decodeRecords,
  encodeRecords,
  FEED_CONTENT_TYPE,
  type FeedQuery,
  MAX_FEED_RECORDS,
  parseFeedQuery,
  readFeed,
} from './feed.ts';
export {
  type AppliedBatch,
  type BootstrapDone,
  type BootstrapProgress,
  createReplicator,
  DEFAULT_POLL_WAIT_MS,
  type Replicator,
  type ReplicatorEvents,
  type ReplicatorOptions,
  rsyncTempDirOf,
} from './replicator.ts';
export {
  type FetchOptions,
  type FetchResult,
  httpFeedSource,
  localLogSource,
  type RecordSource,
  rsyncLogSource,
} from './sources.ts';
export { StoreGate } from './store-gate.ts';
