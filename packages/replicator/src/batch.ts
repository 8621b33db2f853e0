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

/**
 * Checks that records continue the log after `after` in strictly increasing order, and that each
 * end-of-generation record names, as the last txid before it, the one before it here. A source
 * whose log was cut back past records this log holds (a fenced master's, never agreed) would
 * otherwise have its next generation appended after them: every later txid is larger, so the
 * order alone cannot tell, and the records would stay for good, their files served (pure).
 */
export function checkContinues(
  after: TxId,
  records: readonly LogRecord[],
  /** Markers the source was found to follow itself (see DivergedError): not checked again. */
  confirmed: ReadonlySet<TxId> = new Set(),
): void {
  let previous = after;
  for (const record of records) {
    if (record.txid <= previous) {
      throw new ReplicatorError(
        'NOT_INCREASING',
        `source sent ${formatTxId(record.txid)} after ${formatTxId(previous)}: its log diverges from ours`,
      );
    }
    if (
      record.kind === 'end-of-generation' &&
      record.previousTxid !== previous &&
      !confirmed.has(record.txid)
    ) {
      throw new DivergedError(record.txid, previous, record.previousTxid);
    }
    previous = record.txid;
  }
}

/**
 * An end-of-generation record that does not name the txid before it (see checkContinues). The
 * caller asks the source whether it holds `previous` itself: a log written before this check
 * may hold such a splice of its own, and a copy of it is no divergence of this one.
 */
export class DivergedError extends ReplicatorError {
  constructor(
    readonly marker: TxId,
    readonly previous: TxId,
    named: TxId,
  ) {
    super(
      'DIVERGED',
      `source's ${formatTxId(marker)} follows ${formatTxId(named)} in its log, but ${formatTxId(previous)} here: this log holds records the source's does not; they are cut when this node next follows a master`,
    );
  }
}
