export { FilestoreError, type FilestoreErrorCode } from './errors.ts';
export { partitionOf } from './partition.ts';
export {
  isInternalPath,
  MAX_COMPONENT_BYTES,
  MAX_NEW_PATH_BYTES,
  MAX_PATH_BYTES,
  STORE_META_DIR,
  TEMP_PREFIX,
  validateNewStorePath,
  validateStorePath,
} from './path-rules.ts';
export {
  assertStoreInPlace,
  deleteFile,
  type FileStat,
  fileStatOf,
  firstParentNotADirectory,
  hashFile,
  hashHandle,
  initStore,
  openStoreFile,
  putFile,
  quarantineFile,
  removeEmptyTree,
  SENTINEL_FILE,
  type StagedFile,
  type StageOptions,
  stageFile,
  statFile,
  storeIsInPlace,
  syncParentOf,
} from './store.ts';
export {
  compareStorePaths,
  escapeNameBytes,
  findInStore,
  listStore,
  type StoreEntry,
  type WalkOptions,
  walkStore,
} from './walk.ts';
