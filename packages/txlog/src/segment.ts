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

export async function scanSegment(
  dir: string,
  firstTxid: TxId,
  fromOffset?: number,
  maxRecords?: number,
): Promise<SegmentScan> {
  const name = segmentFileName(firstTxid);
  const buf = await readFile(join(dir, name));
  if (buf.length < SEGMENT_MAGIC.length || !buf.subarray(0, SEGMENT_MAGIC.length).equals(SEGMENT_MAGIC)) {
    throw new TxlogError('TXLOG_CORRUPT', `segment ${name} in ${dir} does not start with the PFS log magic`, {
      segment: name,
      offset: 0,
    });
  }
  const { records, end } = scanFrames(buf, fromOffset ?? SEGMENT_MAGIC.length, maxRecords);
  return { name, size: buf.length, records, end };
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
  await writeFile(`${file}.${label}-${offset}`, tail, { flush: true });
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

export async function removeSegment(dir: string, firstTxid: TxId): Promise<void> {
  await rm(join(dir, segmentFileName(firstTxid)));
  await fsyncDir(dir);
}
