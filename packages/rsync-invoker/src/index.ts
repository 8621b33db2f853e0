export { buildPullArgs, buildSyncArgs, DEFAULT_IO_TIMEOUT_SECONDS, encodeFileList } from './args.ts';
export { classifyExit, type ExitVerdict } from './classify.ts';
export { RsyncError, type RsyncErrorCode } from './errors.ts';
export { parseItemizeLine, unescapeRsyncName } from './itemize.ts';
export { type ListedEntry, listTopLevel, parseListLine } from './list.ts';
export { type Progress, parseProgressLine } from './progress.ts';
export {
  type BatchResult,
  type PullBatchOptions,
  pullBatch,
  type StartedPull,
  type StartPullOptions,
  startPull,
} from './pull.ts';
export { type SourceKind, sourceKind } from './source.ts';
export { type SyncResult, type SyncTreeOptions, syncTree } from './sync.ts';
export { parseRsyncVersion, rsyncVersion } from './version.ts';
