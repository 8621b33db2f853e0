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

function allZero(buf: Buffer, from: number, to = buf.length): boolean {
  for (let i = from; i < to; i++) if (buf[i] !== 0) return false;
  return true;
}

/** Disk sector size assumed by the torn-write rule below: the unit a lost write leaves as zeros. */
export const SECTOR_BYTES = 512;

/**
 * Whether a whole sector of `buf` that overlaps `[from, to)` reads as zeros. `baseOffset` is the
 * file offset of `buf[0]`: sectors are aligned in the file. No stretch of valid frames holds 512
 * zero bytes (a frame's head is never zero and a path is at most 4 KiB of non-NUL bytes), so such
 * a sector is writeback that never happened.
 */
function zeroSectorOverlapping(buf: Buffer, from: number, to: number, baseOffset: number): boolean {
  let sector = from - ((baseOffset + from) % SECTOR_BYTES);
  for (; sector < to && sector + SECTOR_BYTES <= buf.length; sector += SECTOR_BYTES) {
    if (sector >= 0 && allZero(buf, sector, sector + SECTOR_BYTES)) return true;
  }
  return false;
}

/**
 * Whether the head at `offset` crosses a sector boundary with nothing but zeros before it: the
 * append began in a page whose writeback never happened (its sector holds the durable frames
 * before, then zeros), while the next page's did.
 */
function zerosToSectorInHead(buf: Buffer, offset: number, baseOffset: number): boolean {
  const boundary = offset + ((SECTOR_BYTES - ((baseOffset + offset) % SECTOR_BYTES)) % SECTOR_BYTES);
  return boundary > offset && boundary < offset + FRAME_HEAD_BYTES && allZero(buf, offset, boundary);
}

/**
 * Decodes frames from `start` to the end of `buf` (`baseOffset`: the file offset of `buf[0]`).
 *
 * A bad frame (a length or payload failing its checksum) is a torn tail, cut at open, when it
 * bears the marks of an append whose fdatasync never completed, and corruption, which is never
 * cut, otherwise. An append's bytes reach the disk a page at a time,
 * in any order, and a page that never did reads back as zeros (or is past the end). Torn:
 * - a short header, or a payload running past the end;
 * - nothing but zeros from the bad frame's first bad byte to the end (the length of a head whose
 *   checksum is zero, the payload of a frame that fails its checksum);
 * - a head of twelve zero bytes (never valid: the checksum of a zero length is not zero), or a
 *   head crossing a sector boundary with only zeros before it;
 * - a whole zero sector overlapping the bad frame (its head, when the length is what failed):
 *   part of the frame was never written, and valid frames after
 *   it belong to the same append, which no fdatasync ever covered, since one that completed later
 *   would have written this page too.
 * A bad frame without these marks (a flipped bit), and a length out of range under a good
 * checksum, are corruption: cutting there would drop the acknowledged records after it.
 */
export function scanFrames(
  buf: Buffer,
  start: number,
  maxRecords = Number.POSITIVE_INFINITY,
  baseOffset = 0,
): { records: ScannedRecord[]; end: ScanEnd } {
  const records: ScannedRecord[] = [];
  let offset = start;
  const judge = (reason: string, frameEnd: number | undefined): ScanEnd => {
    // A length that fails its checksum is explained by a lost page only where the head's own
    // bytes are zeros: a zero sector further on says nothing about a flipped bit here.
    const spanEnd = frameEnd ?? offset + FRAME_HEAD_BYTES;
    const torn =
      allZero(buf, offset, offset + FRAME_HEAD_BYTES) ||
      zerosToSectorInHead(buf, offset, baseOffset) ||
      (frameEnd === undefined ? allZero(buf, offset + 4) : allZero(buf, offset + FRAME_HEAD_BYTES)) ||
      zeroSectorOverlapping(buf, offset, spanEnd, baseOffset);
    return { kind: torn ? 'torn' : 'corrupt', offset, reason };
  };
  while (offset < buf.length && records.length < maxRecords) {
    const remaining = buf.length - offset;
    if (allZero(buf, offset)) return { records, end: { kind: 'torn', offset, reason: 'zero-filled tail' } };
    if (remaining < FRAME_HEAD_BYTES) {
      return { records, end: { kind: 'torn', offset, reason: 'incomplete frame header' } };
    }
    const length = buf.readUInt32LE(offset);
    if (crc32(buf.subarray(offset, offset + 4)) !== buf.readUInt32LE(offset + 4)) {
      return { records, end: judge('frame length fails its checksum', undefined) };
    }
    if (length < RECORD_HEAD_BYTES || length > MAX_PAYLOAD_BYTES) {
      // Its checksum holds: written so, not torn.
      return { records, end: { kind: 'corrupt', offset, reason: `frame length ${length} is out of range` } };
    }
    const frameEnd = offset + FRAME_HEAD_BYTES + length;
    if (frameEnd > buf.length) {
      return { records, end: { kind: 'torn', offset, reason: 'frame runs past the end of the segment' } };
    }
    const payload = buf.subarray(offset + FRAME_HEAD_BYTES, frameEnd);
    if (crc32(payload) !== buf.readUInt32LE(offset + 8)) {
      const reason = 'payload fails its checksum';
      // Nothing after it: the rest of this append never reached the disk.
      if (allZero(buf, frameEnd)) return { records, end: { kind: 'torn', offset, reason } };
      return { records, end: judge(reason, frameEnd) };
    }
    const record = decodeRecord(payload);
    if (typeof record === 'string') return { records, end: { kind: 'corrupt', offset, reason: record } };
    records.push({ record, offset, end: frameEnd });
    offset = frameEnd;
  }
  return { records, end: { kind: 'clean', offset } };
}
