import { crc32 } from 'node:zlib';
import { decodeRecord, type LogRecord, MAX_PATH_BYTES, RECORD_HEAD_BYTES } from './record.ts';

/**
 * Frame codec (pure). Every record is framed as
 *   u32 LE payload length | u32 LE CRC-32 of those 4 length bytes | u32 LE CRC-32 of the payload | payload
 * The length has its own CRC so that a flipped length is recognised as corruption rather than
 * being mistaken for a torn tail (which would silently truncate good records after it).
 */
export const FRAME_HEAD_BYTES = 12;
export const MAX_PAYLOAD_BYTES = RECORD_HEAD_BYTES + MAX_PATH_BYTES;

export function encodeFrame(payload: Buffer): Buffer {
  const frame = Buffer.allocUnsafe(FRAME_HEAD_BYTES + payload.length);
  frame.writeUInt32LE(payload.length, 0);
  frame.writeUInt32LE(crc32(frame.subarray(0, 4)), 4);
  frame.writeUInt32LE(crc32(payload), 8);
  payload.copy(frame, FRAME_HEAD_BYTES);
  return frame;
}

export interface ScannedRecord {
  record: LogRecord;
  /** Byte offset of the frame in the scanned buffer. */
  offset: number;
  /** Byte offset just past the frame. */
  end: number;
}

/** How a scan ended: at the clean end, at a torn tail (truncatable), or at corruption (never truncated). */
export type ScanEnd =
  | { kind: 'clean'; offset: number }
  | { kind: 'torn'; offset: number; reason: string }
  | { kind: 'corrupt'; offset: number; reason: string };

function allZero(buf: Buffer, from: number): boolean {
  for (let i = from; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}

/**
 * Decodes frames from `start` to the end of `buf`. A bad frame is a torn tail only when nothing but
 * it (or zeros) follows it: a short header, a payload running past the end, or a bad frame that
 * is the last thing in the buffer. A bad frame with data after it is corruption.
 */
export function scanFrames(
  buf: Buffer,
  start: number,
  maxRecords = Number.POSITIVE_INFINITY,
): { records: ScannedRecord[]; end: ScanEnd } {
  const records: ScannedRecord[] = [];
  let offset = start;
  while (offset < buf.length && records.length < maxRecords) {
    const remaining = buf.length - offset;
    if (allZero(buf, offset)) return { records, end: { kind: 'torn', offset, reason: 'zero-filled tail' } };
    if (remaining < FRAME_HEAD_BYTES) {
      return { records, end: { kind: 'torn', offset, reason: 'incomplete frame header' } };
    }
    const length = buf.readUInt32LE(offset);
    if (crc32(buf.subarray(offset, offset + 4)) !== buf.readUInt32LE(offset + 4)) {
      return { records, end: { kind: 'corrupt', offset, reason: 'frame length fails its checksum' } };
    }
    if (length < RECORD_HEAD_BYTES || length > MAX_PAYLOAD_BYTES) {
      return { records, end: { kind: 'corrupt', offset, reason: `frame length ${length} is out of range` } };
    }
    const frameEnd = offset + FRAME_HEAD_BYTES + length;
    if (frameEnd > buf.length) {
      return { records, end: { kind: 'torn', offset, reason: 'frame runs past the end of the segment' } };
    }
    const payload = buf.subarray(offset + FRAME_HEAD_BYTES, frameEnd);
    const isLast = frameEnd === buf.length || allZero(buf, frameEnd);
    if (crc32(payload) !== buf.readUInt32LE(offset + 8)) {
      return {
        records,
        end: { kind: isLast ? 'torn' : 'corrupt', offset, reason: 'payload fails its checksum' },
      };
    }
    const record = decodeRecord(payload);
    if (typeof record === 'string') return { records, end: { kind: 'corrupt', offset, reason: record } };
    records.push({ record, offset, end: frameEnd });
    offset = frameEnd;
  }
  return { records, end: { kind: 'clean', offset } };
}
