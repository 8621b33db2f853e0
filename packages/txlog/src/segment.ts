import { type FileHandle, open, readFile, rename, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDir } from './durable.ts';
import { TxlogError } from './errors.ts';
import { type ScanEnd, type ScannedRecord, scanFrames } from './frame.ts';
import { segmentFileName } from './segment-name.ts';
import type { TxId } from './txid.ts';

/**
 * The one file of @pfs/txlog that touches segment files. A segment starts with the 8-byte magic
 * below, then frames back to back. It is created as `<name>.tmp` holding only the magic, fsynced,
 * renamed into place and the directory fsynced, so a segment file always has a whole header.
 */
export const SEGMENT_MAGIC = Buffer.from('PFSLOG1\n', 'latin1');

export async function createSegment(dir: string, firstTxid: TxId): Promise<FileHandle> {
  const name = segmentFileName(firstTxid);
  const tmp = join(dir, `${name}.tmp`);
  await writeFile(tmp, SEGMENT_MAGIC, { flush: true });
  await rename(tmp, join(dir, name));
  await fsyncDir(dir);
  return open(join(dir, name), 'a');
}

export async function openSegmentForAppend(dir: string, firstTxid: TxId): Promise<FileHandle> {
  return open(join(dir, segmentFileName(firstTxid)), 'a');
}

export interface SegmentScan {
  name: string;
  size: number;
  records: ScannedRecord[];
  end: ScanEnd;
}

/**
 * Bytes read at a time by a scan that stops after `maxRecords`: a reader paging through a log reads
 * about what it decodes, instead of the whole segment (8 MiB by default) for every page.
 */
export const SCAN_CHUNK_BYTES = 1024 * 1024;

export async function scanSegment(
  dir: string,
  firstTxid: TxId,
  fromOffset?: number,
  maxRecords?: number,
  chunkBytes = SCAN_CHUNK_BYTES,
): Promise<SegmentScan> {
  const name = segmentFileName(firstTxid);
  if (maxRecords !== undefined) return scanSegmentInChunks(dir, name, fromOffset, maxRecords, chunkBytes);
  const buf = await readFile(join(dir, name));
  checkMagic(buf, name, dir);
  const { records, end } = scanFrames(buf, fromOffset ?? SEGMENT_MAGIC.length, maxRecords);
  return { name, size: buf.length, records, end };
}

function checkMagic(buf: Buffer, name: string, dir: string): void {
  if (buf.length < SEGMENT_MAGIC.length || !buf.subarray(0, SEGMENT_MAGIC.length).equals(SEGMENT_MAGIC)) {
    throw new TxlogError('TXLOG_CORRUPT', `segment ${name} in ${dir} does not start with the PFS log magic`, {
      segment: name,
      offset: 0,
    });
  }
}

/**
 * The same scan as one over the whole file, read SCAN_CHUNK_BYTES at a time. A frame decoded whole
 * from a chunk decodes the same from the file. Only a torn end depends on what follows it: when a
 * chunk that is not the end of the file ends torn, the scan goes on from that frame, and if no
 * frame at all decoded, the rest of the file is read in one piece, which judges it as a whole-file
 * scan would.
 */
async function scanSegmentInChunks(
  dir: string,
  name: string,
  fromOffset: number | undefined,
  maxRecords: number,
  firstChunkBytes: number,
): Promise<SegmentScan> {
  const handle = await open(join(dir, name), 'r');
  try {
    let size = (await handle.stat()).size;
    const magic = await readAt(handle, 0, Math.min(size, SEGMENT_MAGIC.length));
    checkMagic(magic, name, dir);
    const records: ScannedRecord[] = [];
    let offset = fromOffset ?? SEGMENT_MAGIC.length;
    let chunkBytes = firstChunkBytes;
    for (;;) {
      if (offset >= size || records.length >= maxRecords) {
        return { name, size, records, end: { kind: 'clean', offset } };
      }
      const length = Math.min(chunkBytes, size - offset);
      const chunk = await readAt(handle, offset, length);
      // Cut while being read (a divergence repair truncates without waiting for readers): what
      // is left is the file.
      if (chunk.length < length) size = offset + chunk.length;
      const scan = scanFrames(chunk, 0, maxRecords - records.length, offset);
      for (const r of scan.records) {
        records.push({ record: r.record, offset: offset + r.offset, end: offset + r.end });
      }
      const end = { ...scan.end, offset: offset + scan.end.offset };
      const wholeRest = offset + chunk.length === size;
      if (scan.end.kind === 'corrupt' || (scan.end.kind === 'torn' && wholeRest)) {
        return { name, size, records, end };
      }
      if (scan.end.kind === 'torn' && scan.records.length === 0) chunkBytes = size - end.offset;
      offset = end.offset;
    }
  } finally {
    await handle.close();
  }
}

async function readAt(handle: FileHandle, position: number, length: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length);
  let filled = 0;
  while (filled < length) {
    const { bytesRead } = await handle.read(buf, filled, length - filled, position + filled);
    if (bytesRead === 0) break;
    filled += bytesRead;
  }
  return filled === length ? buf : buf.subarray(0, filled);
}

/**
 * Cuts a segment at `offset`, keeping the cut bytes in `<segment>.<label>-<offset>` for
 * inspection (never deleted by PFS), then fsyncs the segment. Labels: `torn` (a crash mid-append)
 * and `cut` (a divergent suffix removed by truncateAfter).
 */
export async function cutSegment(
  dir: string,
  firstTxid: TxId,
  offset: number,
  label: 'torn' | 'cut',
): Promise<number> {
  const file = join(dir, segmentFileName(firstTxid));
  const { size } = await stat(file);
  const tail = (await readFile(file)).subarray(offset);
  await keepAside(`${file}.${label}-${offset}`, tail);
  await truncate(file, offset);
  const handle = await open(file, 'r+');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
  await fsyncDir(dir);
  return size - offset;
}

/** Writes `bytes` to `name`, or to `name.1`, `name.2`… when an earlier cut at the same offset kept its own there. */
async function keepAside(name: string, bytes: Buffer): Promise<void> {
  for (let n = 0; ; n++) {
    try {
      await writeFile(n === 0 ? name : `${name}.${n}`, bytes, { flag: 'wx', flush: true });
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
  }
}

export async function removeSegment(dir: string, firstTxid: TxId): Promise<void> {
  await rm(join(dir, segmentFileName(firstTxid)));
  await fsyncDir(dir);
}
