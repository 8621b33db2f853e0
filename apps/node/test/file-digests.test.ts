import { describe, expect, it } from 'vitest';
import { FileDigestCache } from '../src/file-digests.ts';

const SECOND = 1_000_000_000n;
const stat = (over: Partial<{ ino: bigint; size: bigint; mtimeNs: bigint; ctimeNs: bigint }> = {}) => ({
  ino: 7n,
  size: 100n,
  mtimeNs: 10n * SECOND,
  ctimeNs: 10n * SECOND,
  ...over,
});

describe('FileDigestCache', () => {
  it('gives back a digest only while inode, size, mtime and ctime are all unchanged', () => {
    const cache = new FileDigestCache();
    cache.remember('a', stat(), stat(), 'sha-a', 20n * SECOND);
    expect(cache.get('a', stat())).toBe('sha-a');
    for (const changed of [
      { ino: 8n },
      { size: 101n },
      { mtimeNs: 11n * SECOND },
      { ctimeNs: 12n * SECOND },
    ]) {
      cache.remember('a', stat(), stat(), 'sha-a', 20n * SECOND);
      expect(cache.get('a', stat(changed))).toBeUndefined();
      // A mismatch forgets the entry: the old digest never comes back.
      expect(cache.get('a', stat())).toBeUndefined();
    }
  });

  it('does not remember a file that changed while it was hashed, or that was written just now', () => {
    const cache = new FileDigestCache();
    cache.remember('moving', stat(), stat({ ctimeNs: 11n * SECOND }), 'sha', 20n * SECOND);
    expect(cache.get('moving', stat())).toBeUndefined();
    // Written 1 s before the hash: a same-size rewrite within the same clock tick could go unseen.
    cache.remember('fresh', stat(), stat(), 'sha', 11n * SECOND);
    expect(cache.get('fresh', stat())).toBeUndefined();
    cache.remember('settled', stat(), stat(), 'sha', 12n * SECOND);
    expect(cache.get('settled', stat())).toBe('sha');
  });

  it('evicts the least recently used entry past its size', () => {
    const cache = new FileDigestCache(2);
    cache.remember('a', stat(), stat(), 'sha-a', 20n * SECOND);
    cache.remember('b', stat(), stat(), 'sha-b', 20n * SECOND);
    expect(cache.get('a', stat())).toBe('sha-a');
    cache.remember('c', stat(), stat(), 'sha-c', 20n * SECOND);
    expect(cache.size).toBe(2);
    expect(cache.get('b', stat())).toBeUndefined();
    expect(cache.get('a', stat())).toBe('sha-a');
    expect(cache.get('c', stat())).toBe('sha-c');
  });
});
