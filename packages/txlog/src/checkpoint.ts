import { readFile } from 'node:fs/promises';
import { writeFileAtomic } from './durable.ts';
import { TxlogError } from './errors.ts';
import { parseTxId, type TxId, ZERO_TXID } from './txid.ts';

/**
 * A checkpoint is the last fully applied txid of a partition, in a small file replaced atomically:
 *   pfs-checkpoint 1 <txid decimal>\n
 * Invariant: it never names a txid whose files and log record are not both fsynced.
 */
const CHECKPOINT_RE = /^pfs-checkpoint 1 (\d{1,20})\n$/;

export async function readCheckpoint(file: string): Promise<TxId> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return ZERO_TXID;
    throw error;
  }
  const match = CHECKPOINT_RE.exec(text);
  if (!match) {
    throw new TxlogError(
      'TXLOG_CHECKPOINT_CORRUPT',
      `checkpoint ${file} is unreadable: delete it to resume from the log's end`,
    );
  }
  return parseTxId(match[1]!);
}

export async function writeCheckpoint(
  file: string,
  txid: TxId,
  hooks: { beforeRename?: () => void | Promise<void> } = {},
): Promise<void> {
  await writeFileAtomic(file, `pfs-checkpoint 1 ${txid}\n`, hooks);
}
