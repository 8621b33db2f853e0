export { readCheckpoint, writeCheckpoint } from './checkpoint.ts';
export { type DirectoryLock, lockDirectory } from './dir-lock.ts';
export { fsyncDir, mkdirDurable, writeFileAtomic } from './durable.ts';
export { TxlogError, type TxlogErrorCode } from './errors.ts';
export { encodeFrame, type ScanEnd, scanFrames } from './frame.ts';
export {
  type ChangeInput,
  DEFAULT_SEGMENT_SIZE_BYTES,
  type OpenReport,
  TxLog,
  type TxLogOptions,
} from './log.ts';
export { decodeRecord, encodeRecord, type LogRecord, type RecordKind } from './record.ts';
export { segmentFileName } from './segment-name.ts';
export {
  compareTxId,
  firstTxIdOf,
  formatTxId,
  generationMarkerTxId,
  generationOf,
  MAX_U32,
  makeTxId,
  nextTxId,
  parseTxId,
  sequenceOf,
  type TxId,
  txIdToHex,
  ZERO_TXID,
} from './txid.ts';
