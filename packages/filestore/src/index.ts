export { FilestoreError, type FilestoreErrorCode } from './errors.ts';
export { partitionOf } from './partition.ts';
export {
  isInternalPath,
  MAX_COMPONENT_BYTES,
  MAX_PATH_BYTES,
  STORE_META_DIR,
  TEMP_PREFIX,
  validateStorePath,
} from './path-rules.ts';
export {
  compareStorePaths,
  deleteFile,
  type FileStat,
  hashFile,
  initStore,
  listStore,
  putFile,
  quarantineFile,
  SENTINEL_FILE,
  type StagedFile,
  type StageOptions,
  type StoreEntry,
  stageFile,
  statFile,
  walkStore,
} from './store.ts';
