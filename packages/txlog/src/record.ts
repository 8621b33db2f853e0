import { TxlogError } from './errors.ts';
import type { TxId } from './txid.ts';

/**
 * Record payload codec (pure). Little-endian, fixed 68-byte head then the path:
 *   0 u8 kind (1 put, 2 delete, 3 end-of-generation)   1 u8 flags (0)
 *   2 u16 path length in bytes                          4 u64 txid
 *  12 u64 size                                          20 i64 mtime (ns since epoch)
 *  28 32B sha-256 (put; zeros otherwise)                60 u64 previous txid (marker only)
 *  68 path, UTF-8
 */
export type RecordKind = 'put' | 'delete' | 'end-of-generation';

export interface LogRecord {
  readonly txid: TxId;
  readonly kind: RecordKind;
  /** Relative path in the store; empty for end-of-generation markers. */
  readonly path: string;
  readonly size: bigint;
  readonly mtimeNs: bigint;
  /** Lower-case hex sha-256 of the content for `put`, empty string otherwise. */
  readonly sha256: string;
  /** For end-of-generation markers: the last txid of the generation that ended. */
  readonly previousTxid: TxId;
}

export const RECORD_HEAD_BYTES = 68;
export const MAX_PATH_BYTES = 4096;
const KIND_CODE: Record<RecordKind, number> = { put: 1, delete: 2, 'end-of-generation': 3 };
const CODE_KIND: Record<number, RecordKind> = { 1: 'put', 2: 'delete', 3: 'end-of-generation' };
const ZERO_HASH = Buffer.alloc(32);

export function encodeRecord(record: LogRecord): Buffer {
  const path = Buffer.from(record.path, 'utf8');
  if (path.length > MAX_PATH_BYTES) {
    throw new TxlogError('TXLOG_BAD_RECORD', `path is ${path.length} bytes, the limit is ${MAX_PATH_BYTES}`);
  }
  if (record.path.includes('\0')) throw new TxlogError('TXLOG_BAD_RECORD', 'path contains NUL');
  const buf = Buffer.allocUnsafe(RECORD_HEAD_BYTES + path.length);
  buf.writeUInt8(KIND_CODE[record.kind], 0);
  buf.writeUInt8(0, 1);
  buf.writeUInt16LE(path.length, 2);
  buf.writeBigUInt64LE(record.txid, 4);
  buf.writeBigUInt64LE(record.size, 12);
  buf.writeBigInt64LE(record.mtimeNs, 20);
  if (record.kind === 'put') {
    if (!/^[0-9a-f]{64}$/.test(record.sha256)) {
      throw new TxlogError('TXLOG_BAD_RECORD', `put of "${record.path}" needs a 64-hex-digit sha-256`);
    }
    buf.write(record.sha256, 28, 32, 'hex');
  } else {
    ZERO_HASH.copy(buf, 28);
  }
  buf.writeBigUInt64LE(record.previousTxid, 60);
  path.copy(buf, RECORD_HEAD_BYTES);
  return buf;
}

// Writers only log valid paths: bytes that are not UTF-8 were never a path, and replacing them
// (U+FFFD) would name another file. A leading U+FEFF is part of the name, not a byte-order mark.
const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Decodes one payload; returns a reason string instead of throwing when it is malformed. */
export function decodeRecord(payload: Buffer): LogRecord | string {
  if (payload.length < RECORD_HEAD_BYTES)
    return `payload of ${payload.length} bytes is shorter than a record`;
  const kind = CODE_KIND[payload.readUInt8(0)];
  if (kind === undefined) return `unknown record kind ${payload.readUInt8(0)}`;
  if (payload.readUInt8(1) !== 0) return `unknown record flags ${payload.readUInt8(1)}`;
  const pathLength = payload.readUInt16LE(2);
  if (RECORD_HEAD_BYTES + pathLength !== payload.length)
    return 'path length does not match the payload length';
  let path: string;
  try {
    path = STRICT_UTF8.decode(payload.subarray(RECORD_HEAD_BYTES));
  } catch {
    return 'path is not UTF-8';
  }
  return {
    txid: payload.readBigUInt64LE(4),
    kind,
    path,
    size: payload.readBigUInt64LE(12),
    mtimeNs: payload.readBigInt64LE(20),
    sha256: kind === 'put' ? payload.toString('hex', 28, 60) : '',
    previousTxid: payload.readBigUInt64LE(60),
  };
}
