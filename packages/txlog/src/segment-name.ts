import { type TxId, txIdToHex } from './txid.ts';

/** Segment files are named by the txid of their first record: 16 hex digits + `.log`. */
const SEGMENT_RE = /^([0-9a-f]{16})\.log$/;

export function segmentFileName(firstTxid: TxId): string {
  return `${txIdToHex(firstTxid)}.log`;
}

export function parseSegmentFileName(name: string): TxId | undefined {
  const match = SEGMENT_RE.exec(name);
  return match ? BigInt(`0x${match[1]}`) : undefined;
}

/** Segment first-txids in log order from a directory listing; other files are ignored. */
export function sortedSegments(names: readonly string[]): TxId[] {
  const ids: TxId[] = [];
  for (const name of names) {
    const id = parseSegmentFileName(name);
    if (id !== undefined) ids.push(id);
  }
  return ids.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

/** Index of the segment that may hold the first record after `after`: the last one starting at or before it. */
export function segmentIndexFor(segments: readonly TxId[], after: TxId): number {
  let lo = 0;
  let hi = segments.length - 1;
  let found = 0;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (segments[mid]! <= after) {
      found = mid;
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  return found;
}
