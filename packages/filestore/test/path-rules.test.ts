import {
  FilestoreError,
  isInternalPath,
  partitionOf,
  validateNewStorePath,
  validateStorePath,
} from '@pfs/filestore';
import { describe, expect, it } from 'vitest';
import { oddNames } from './odd-names.ts';

const moreBad: [string, string][] = [
  ['a/..', 'PATH_TRAVERSAL'],
  ['a/../b', 'PATH_TRAVERSAL'],
  ['./a', 'PATH_NOT_NORMALIZED'],
  ['a/.', 'PATH_NOT_NORMALIZED'],
  ['/', 'PATH_ABSOLUTE'],
  ['//double', 'PATH_ABSOLUTE'],
  ['dir/', 'PATH_NOT_NORMALIZED'],
  ['x\0', 'PATH_NUL'],
  ['\ud800', 'PATH_INVALID_UTF8'],
  ['.pfs/sentinel', 'PATH_RESERVED'],
  ['.pfs', 'PATH_RESERVED'],
  ['dir/.pfs-tmp.abc', 'PATH_RESERVED'],
  ['.pfs-tmp.x', 'PATH_RESERVED'],
];

describe('validateStorePath', () => {
  it.each(oddNames.accept.map((p) => [JSON.stringify(p).slice(0, 60), p]))('accepts %s', (_, path) => {
    expect(validateStorePath(path)).toBe(path);
  });

  it.each(oddNames.reject.map((r) => [r.why, r.path]))('rejects %s', (_, path) => {
    expect(() => validateStorePath(path)).toThrow(/^bad path /);
  });

  it.each(moreBad)('rejects %j with %s', (path, code) => {
    const error = thrownBy(() => validateStorePath(path));
    expect(error).toBeInstanceOf(FilestoreError);
    expect((error as FilestoreError).code).toBe(code);
  });

  it('takes new paths of up to 1024 bytes, which fit under any data dir a node accepts', () => {
    const path = (bytes: number) => `${'d'.repeat(200)}/`.repeat(4) + 'f'.repeat(bytes - 804);
    expect(validateNewStorePath(path(1024))).toBe(path(1024));
    expect(() => validateNewStorePath(path(1025))).toThrow(
      /^bad path ".*": it is over 1024 bytes: use a shorter path$/,
    );
    // Longer ones stored before (up to 4096 bytes) are still read, deleted and replicated.
    const stored = `${'d'.repeat(200)}/`.repeat(20) + 'f'.repeat(76);
    expect(validateStorePath(stored)).toBe(stored);
  });

  it('refuses a new name with a backslash right before a wildcard, which rsync will not replicate', () => {
    for (const path of ['a\\*b', 'e\\?', 'g\\]', 'x\\[y', 'p\\\\*q', 'x[\\]y', 'dir\\*/f']) {
      expect(() => validateNewStorePath(path), path).toThrow(
        /^bad path ".*": a backslash right before "\*", "\?", "\[" or "\]" is a name rsync will not replicate \(it reads it as an escaped wildcard\): drop the backslash or put another character between$/,
      );
      // Already stored ones are still read and deleted.
      expect(validateStorePath(path)).toBe(path);
    }
    for (const path of ['back\\slash', 'two\\\\backslashes', 'tail\\', 'star*\\', 'q?\\\\', 'br[1]\\']) {
      expect(validateNewStorePath(path)).toBe(path);
    }
  });

  it('gives a one-line message naming the cause and the fix', () => {
    for (const { path } of oddNames.reject) {
      const error = thrownBy(() => validateStorePath(path));
      expect(error, JSON.stringify(path)).toBeInstanceOf(FilestoreError);
      const message = (error as Error).message;
      expect(message.split('\n')).toHaveLength(1);
      expect(message).toMatch(/: .+/);
    }
  });

  it('keeps the rejected table at 20 names or more', () => {
    expect(oddNames.reject.length + moreBad.length).toBeGreaterThanOrEqual(20);
  });

  it('marks only store-internal names as internal', () => {
    expect(isInternalPath('.pfs/sentinel')).toBe(true);
    expect(isInternalPath('a/.pfs-tmp.0a1b2c')).toBe(true);
    expect(isInternalPath('.name.XXXXXX')).toBe(false);
    expect(isInternalPath('name.tmp')).toBe(false);
    expect(isInternalPath('a/.pfs/x')).toBe(false);
  });
});

describe('partitionOf', () => {
  it('is the documented sha-256 prefix mod P, stable across runs', () => {
    // sha256("a.txt") starts with 18b7cb09 = 414698249; these vectors are in docs/protocol.md.
    expect(partitionOf('a.txt', 1)).toBe(0);
    expect([
      partitionOf('a.txt', 1000),
      partitionOf('b.txt', 1000),
      partitionOf('日本語/ファイル.txt', 1000),
    ]).toEqual(VECTORS);
  });

  it('spreads names evenly enough', () => {
    const counts = new Array(8).fill(0);
    for (let i = 0; i < 8000; i++) counts[partitionOf(`file-${i}.jpg`, 8)]++;
    for (const count of counts) expect(count).toBeGreaterThan(850);
  });

  it('refuses a bad partition count', () => {
    expect(() => partitionOf('a', 0)).toThrow(RangeError);
  });
});

const VECTORS = [249, 741, 232];

/** What `run` threw, or undefined: an assertion inside a catch block would catch its own failure. */
function thrownBy(run: () => unknown): unknown {
  try {
    run();
  } catch (error) {
    return error;
  }
  return undefined;
}
