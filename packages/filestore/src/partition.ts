import { createHash } from 'node:crypto';

/**
 * The partition of a path (pure, stable across versions and languages):
 * the first 4 bytes of sha-256(UTF-8 path), read as a big-endian unsigned 32-bit integer, mod P.
 */
export function partitionOf(path: string, partitionCount: number): number {
  if (!Number.isInteger(partitionCount) || partitionCount < 1) {
    throw new RangeError(`partition count must be a positive integer, got ${partitionCount}`);
  }
  return createHash('sha256').update(path, 'utf8').digest().readUInt32BE(0) % partitionCount;
}
