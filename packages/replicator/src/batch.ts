import { formatTxId, type LogRecord, type TxId } from '@pfs/txlog';
import { ReplicatorError } from './errors.ts';

/** What a path must look like after a batch: the last record for it wins (pure). */
export type Expected =
  | { kind: 'put'; size: bigint; sha256: string; txid: TxId }
  | { kind: 'delete'; txid: TxId };

export interface BatchPlan {
  /** Paths to transfer, in first-seen order. */
  paths: string[];
  expected: Map<string, Expected>;
}

export function planBatch(records: readonly LogRecord[]): BatchPlan {
  const expected = new Map<string, Expected>();
  for (const record of records) {
    if (record.kind === 'put') {
      expected.delete(record.path);
      expected.set(record.path, { kind: 'put', size: record.size, sha256: record.sha256, txid: record.txid });
    } else if (record.kind === 'delete') {
      expected.delete(record.path);
      expected.set(record.path, { kind: 'delete', txid: record.txid });
    }
  }
  return { paths: [...expected.keys()], expected };
}

/** Checks that records continue the log after `after` in strictly increasing order. */
export function checkContinues(after: TxId, records: readonly LogRecord[]): void {
  let previous = after;
  for (const record of records) {
    if (record.txid <= previous) {
      throw new ReplicatorError(
        'NOT_INCREASING',
        `source sent ${formatTxId(record.txid)} after ${formatTxId(previous)}: its log diverges from ours`,
      );
    }
    previous = record.txid;
  }
}
