import { describe, expect, it } from 'vitest';
import { BootstrapDigests } from '../src/bootstrap-digests.ts';

const SHA_A = 'a'.repeat(64);
const SHA_B = 'b'.repeat(64);

describe('BootstrapDigests', () => {
  it('matches only the exact size and hash recorded', () => {
    const digests = new BootstrapDigests();
    digests.record('x', 3n, SHA_A);
    expect(digests.matches('x', 3n, SHA_A)).toBe(true);
    expect(digests.matches('x', 4n, SHA_A)).toBe(false);
    expect(digests.matches('x', 3n, SHA_B)).toBe(false);
    expect(digests.matches('y', 3n, SHA_A)).toBe(false);
  });

  it('forgets touched paths and everything below them, nothing else', () => {
    const digests = new BootstrapDigests();
    for (const path of ['a', 'a/b', 'a/b/c', 'ab', 'ab/c', 'x/a/b', 'x/y']) digests.record(path, 1n, SHA_A);
    digests.forgetTouched(['a', 'x/y']);
    const left = ['a', 'a/b', 'a/b/c', 'ab', 'ab/c', 'x/a/b', 'x/y'].filter((p) =>
      digests.matches(p, 1n, SHA_A),
    );
    expect(left).toEqual(['ab', 'ab/c', 'x/a/b']);
    expect(digests.size).toBe(3);
  });

  it('forgets the parents of a touched path (rsync removes a file where a directory must go)', () => {
    const digests = new BootstrapDigests();
    for (const path of ['p', 'p/q', 'p/q/r', 'pq']) digests.record(path, 1n, SHA_A);
    digests.forgetTouched(['p/q/r']);
    expect(['p', 'p/q', 'p/q/r', 'pq'].filter((p) => digests.matches(p, 1n, SHA_A))).toEqual(['pq']);
  });
});
