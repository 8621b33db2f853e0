import { TxlogError } from './errors.ts';

/**
 * A transaction id: generation in the high 32 bits, sequence in the low 32.
 * Invariant: within a partition ids strictly increase; sequence 0 of a generation
 * is reserved for its end-of-generation marker, real changes start at 1.
 */
export type TxId = bigint;

export const MAX_U32 = 0xffff_ffffn;
/** "Nothing applied yet": smaller than every real id. */
export const ZERO_TXID: TxId = 0n;

function checkU32(value: bigint, what: string): void {
  if (value < 0n || value > MAX_U32) {
    throw new TxlogError(
      what === 'generation' ? 'TXLOG_GENERATION_OVERFLOW' : 'TXLOG_SEQUENCE_OVERFLOW',
      `${what} ${value} is outside 0..${MAX_U32}`,
    );
  }
}

export function makeTxId(generation: bigint | number, sequence: bigint | number): TxId {
  const gen = BigInt(generation);
  const seq = BigInt(sequence);
  checkU32(gen, 'generation');
  checkU32(seq, 'sequence');
  return (gen << 32n) | seq;
}

export function generationOf(txid: TxId): bigint {
  return txid >> 32n;
}

export function sequenceOf(txid: TxId): bigint {
  return txid & MAX_U32;
}

/** The id after `txid` in the same generation; running past 2^32-1 is an error, never a wrap. */
export function nextTxId(txid: TxId): TxId {
  const seq = sequenceOf(txid);
  if (seq >= MAX_U32) {
    throw new TxlogError(
      'TXLOG_SEQUENCE_OVERFLOW',
      `sequence of generation ${generationOf(txid)} is exhausted (${MAX_U32} ids): start a new generation`,
    );
  }
  return txid + 1n;
}

/** The first id a master of `generation` assigns to a change. */
export function firstTxIdOf(generation: bigint | number): TxId {
  return makeTxId(generation, 1);
}

/** The id of the end-of-generation marker that opens `generation` (sequence 0). */
export function generationMarkerTxId(generation: bigint | number): TxId {
  return makeTxId(generation, 0);
}

export function compareTxId(a: TxId, b: TxId): -1 | 0 | 1 {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Human form `gen:seq`. */
export function formatTxId(txid: TxId): string {
  return `${generationOf(txid)}:${sequenceOf(txid)}`;
}

/** Fixed-width form used in file names: 16 lower-case hex digits, so `ls` order is id order. */
export function txIdToHex(txid: TxId): string {
  return txid.toString(16).padStart(16, '0');
}

/** Accepts `gen:seq` or the 64-bit unsigned decimal form. */
export function parseTxId(text: string): TxId {
  const human = /^(\d{1,10}):(\d{1,10})$/.exec(text);
  if (human) return makeTxId(BigInt(human[1]!), BigInt(human[2]!));
  if (/^\d{1,20}$/.test(text)) {
    const value = BigInt(text);
    if (value <= 0xffff_ffff_ffff_ffffn) return value;
  }
  throw new TxlogError(
    'TXLOG_BAD_TXID',
    `"${text}" is not a transaction id: use gen:seq (e.g. 2:17) or a 64-bit unsigned decimal`,
  );
}
