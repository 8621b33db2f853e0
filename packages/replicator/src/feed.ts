import {
  encodeFrame,
  encodeRecord,
  type LogRecord,
  parseTxId,
  scanFrames,
  type TxId,
  type TxLog,
} from '@pfs/txlog';
import { ReplicatorError } from './errors.ts';

/**
 * The change feed a node serves for each partition log it holds (a long poll):
 *   GET <base>/v1/partitions/<p>/records?after=<txid decimal>&waitMs=<ms>&max=<n>&replica=<node id>
 * answers 200 with `application/x-pfs-records`: the log's frames of every record after `after`
 * (up to `max`), back to back, exactly as in a segment file. With none yet it waits up to `waitMs`
 * for one, then answers with an empty body. Headers: `x-pfs-last-txid` (the log's last durable
 * txid) and `x-pfs-generation` (the generation the server writes in; when it is not master, the
 * generation its log ends in, so that a follower still pointed at a fenced old master refuses it).
 * With `replica`, `after` doubles as that replica's acknowledgement of everything up to it; a
 * replica names itself only when `after` is its applied txid (see FetchOptions.acknowledges).
 */
export const FEED_CONTENT_TYPE = 'application/x-pfs-records';
export const MAX_FEED_WAIT_MS = 30_000;
export const MAX_FEED_RECORDS = 10_000;

export function encodeRecords(records: readonly LogRecord[]): Buffer {
  return Buffer.concat(records.map((r) => encodeFrame(encodeRecord(r))));
}

export function decodeRecords(body: Buffer): LogRecord[] {
  const { records, end } = scanFrames(body, 0);
  if (end.kind !== 'clean') {
    throw new ReplicatorError('BAD_FEED', `feed body is ${end.kind} at byte ${end.offset} (${end.reason})`);
  }
  return records.map((r) => r.record);
}

export interface FeedQuery {
  after: TxId;
  waitMs: number;
  max: number;
  replica: string | undefined;
}

/** Parses the query of a feed request; throws BAD_FEED with a one-line reason. */
export function parseFeedQuery(query: Record<string, string | undefined>): FeedQuery {
  let after: TxId;
  try {
    after = parseTxId(query.after ?? '0');
  } catch (error) {
    throw new ReplicatorError('BAD_FEED', (error as Error).message);
  }
  const waitMs = Math.min(Math.max(Number(query.waitMs ?? 0) || 0, 0), MAX_FEED_WAIT_MS);
  const max = Math.min(Math.max(Number(query.max ?? 1000) || 1000, 1), MAX_FEED_RECORDS);
  return { after, waitMs, max, replica: query.replica };
}

/** Answers one feed request from `log`, waiting for new records when there are none. */
export async function readFeed(log: TxLog, query: FeedQuery, signal?: AbortSignal): Promise<LogRecord[]> {
  if (query.after >= log.lastTxid && query.waitMs > 0) {
    await log.waitForRecordsAfter(query.after, query.waitMs, signal);
  }
  return log.readAfter(query.after, query.max);
}
