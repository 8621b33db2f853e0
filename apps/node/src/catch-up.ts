import type { RecordSource } from '@pfs/replicator';
import type { TxLog } from '@pfs/txlog';

/**
 * Waits, up to `timeoutMs`, until `log` (a replica's) holds everything `master`'s log holds now:
 * asks the master for its last durable txid, then waits for this log to reach it. False if the
 * master cannot be asked or names no last txid, or the log is still behind at the deadline.
 */
export async function catchUpWith(
  master: RecordSource,
  log: TxLog,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  const bounded = AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]);
  try {
    const { lastTxid } = await master.fetch(log.lastTxid, { waitMs: 0, maxRecords: 1, signal: bounded });
    if (lastTxid === undefined) return false;
    return (
      log.lastTxid >= lastTxid ||
      (await log.waitForRecordsAfter(lastTxid - 1n, deadline - performance.now(), bounded))
    );
  } catch {
    return false;
  }
}
