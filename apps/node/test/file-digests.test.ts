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

describe('FileDigestCache.hashOnce', () => {
  it('shares one hash among the readers of one version, and hashes another version, or a later read, anew', async () => {
    const cache = new FileDigestCache();
    let hashes = 0;
    let finish: (sha: string) => void = () => {};
    const hash = () => {
      hashes++;
      return new Promise<string>((resolve) => {
        finish = resolve;
      });
    };
    const first = cache.hashOnce('video', stat(), hash);
    const second = cache.hashOnce('video', stat(), hash);
    const otherVersion = cache.hashOnce('video', stat({ ino: 8n }), async () => {
      hashes++;
      return 'sha-new';
    });
    expect(hashes).toBe(2);
    finish('sha-video');
    expect(await first).toEqual({ sha256: 'sha-video', shared: false });
    expect(await second).toEqual({ sha256: 'sha-video', shared: true });
    expect(await otherVersion).toEqual({ sha256: 'sha-new', shared: false });
    // Done: the next read of it hashes again (what is kept is remember's business).
    const later = cache.hashOnce('video', stat(), async () => 'sha-video');
    expect(await later).toEqual({ sha256: 'sha-video', shared: false });
  });

  it('lets every reader of a failed hash see the failure, and the next one try again', async () => {
    const cache = new FileDigestCache();
    const failing = () => Promise.reject(new Error('EIO'));
    const results = await Promise.allSettled([
      cache.hashOnce('bad', stat(), failing),
      cache.hashOnce('bad', stat(), failing),
    ]);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    expect(await cache.hashOnce('bad', stat(), async () => 'sha')).toEqual({ sha256: 'sha', shared: false });
  });
});
