import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { PathIndex, PathIndexError } from '../src/path-index.ts';

const sha = (text: string) => createHash('sha256').update(text).digest('hex');
// Past 2^53: a double would round these, the index must not.
const MTIME = 1_764_000_000_123_456_789n;
const CTIME = 1_764_000_001_987_654_321n;

describe('PathIndex', () => {
  it('gets back exactly what was set, with ctime unknown unless given', () => {
    const index = new PathIndex();
    index.set('a', { size: 5n, mtimeNs: MTIME, sha256: sha('a') });
    index.set('b', { size: 2n ** 64n - 1n, mtimeNs: -(2n ** 63n), sha256: sha('b'), ctimeNs: CTIME });
    expect(index.get('a')).toEqual({ size: 5n, mtimeNs: MTIME, sha256: sha('a') });
    expect(index.get('a')).not.toHaveProperty('ctimeNs');
    expect(index.get('b')).toEqual({
      size: 2n ** 64n - 1n,
      mtimeNs: -(2n ** 63n),
      sha256: sha('b'),
      ctimeNs: CTIME,
    });
    expect(index.get('c')).toBeUndefined();
    expect(index.slotOf('c')).toBeUndefined();
    expect(index.size).toBe(2);
  });

  it('round-trips every sha-256 byte, including leading zeros and ff', () => {
    const index = new PathIndex(1);
    const hashes = ['00'.repeat(32), 'ff'.repeat(32), `00${'a5'.repeat(30)}01`, sha('x')];
    for (const [i, hash] of hashes.entries()) index.set(`p${i}`, { size: 1n, mtimeNs: 1n, sha256: hash });
    for (const [i, hash] of hashes.entries()) expect(index.sha256Of(index.slotOf(`p${i}`)!)).toBe(hash);
  });

  it('compares a stat exactly, ignoring ctime only while it is unknown', () => {
    const index = new PathIndex();
    const slot = index.set('f', { size: 3n, mtimeNs: MTIME, sha256: sha('f') });
    expect(index.matchesStat(slot, 3n, MTIME, 1n)).toBe(true);
    expect(index.matchesStat(slot, 3n, MTIME + 1n, 1n)).toBe(false);
    expect(index.matchesStat(slot, 4n, MTIME, 1n)).toBe(false);
    index.setCtime(slot, CTIME);
    expect(index.matchesStat(slot, 3n, MTIME, CTIME)).toBe(true);
    expect(index.matchesStat(slot, 3n, MTIME, CTIME + 1n)).toBe(false);
    index.setTimes(slot, MTIME + 7n, undefined);
    expect(index.get('f')).toEqual({ size: 3n, mtimeNs: MTIME + 7n, sha256: sha('f') });
    expect(index.matchesStat(slot, 3n, MTIME + 7n, 0n)).toBe(true);
    // A ctime of 0 is a value, not "unknown".
    index.setCtime(slot, 0n);
    expect(index.matchesStat(slot, 3n, MTIME + 7n, 5n)).toBe(false);
    expect(index.get('f')?.ctimeNs).toBe(0n);
  });

  it('overwriting a path keeps its slot and forgets a ctime the new entry does not have', () => {
    const index = new PathIndex();
    const slot = index.set('f', { size: 1n, mtimeNs: 1n, sha256: sha('1'), ctimeNs: CTIME });
    expect(index.set('f', { size: 2n, mtimeNs: 2n, sha256: sha('2') })).toBe(slot);
    expect(index.get('f')).toEqual({ size: 2n, mtimeNs: 2n, sha256: sha('2') });
    expect(index.size).toBe(1);
  });

  it('reuses the slots of deleted paths before taking new ones, with nothing left of the old entry', () => {
    const index = new PathIndex(4);
    const slots = ['a', 'b', 'c'].map((p) =>
      index.set(p, { size: 1n, mtimeNs: 1n, sha256: sha(p), ctimeNs: 9n }),
    );
    expect(new Set(slots).size).toBe(3);
    expect(index.delete('b')).toBe(true);
    expect(index.delete('b')).toBe(false);
    expect(index.get('b')).toBeUndefined();
    const reused = index.set('d', { size: 4n, mtimeNs: 4n, sha256: sha('d') });
    expect(reused).toBe(slots[1]);
    expect(index.get('d')).toEqual({ size: 4n, mtimeNs: 4n, sha256: sha('d') });
    expect(index.get('a')).toEqual({ size: 1n, mtimeNs: 1n, sha256: sha('a'), ctimeNs: 9n });
    expect(index.size).toBe(3);
    expect(index.capacity).toBe(4);
  });

  it('grows by doubling and keeps every entry across growth', () => {
    const index = new PathIndex(2);
    const n = 5000;
    for (let i = 0; i < n; i++) {
      index.set(`dir/${i}`, {
        size: BigInt(i),
        mtimeNs: MTIME + BigInt(i),
        sha256: sha(String(i)),
        ...(i % 3 === 0 ? { ctimeNs: CTIME + BigInt(i) } : {}),
      });
    }
    expect(index.size).toBe(n);
    expect(index.capacity).toBe(8192);
    for (let i = 0; i < n; i++) {
      expect(index.get(`dir/${i}`)).toEqual({
        size: BigInt(i),
        mtimeNs: MTIME + BigInt(i),
        sha256: sha(String(i)),
        ...(i % 3 === 0 ? { ctimeNs: CTIME + BigInt(i) } : {}),
      });
    }
  });

  it('keeps paths that differ only in normalisation, case or odd characters apart', () => {
    const index = new PathIndex();
    const paths = ['caf\u00e9', 'cafe\u0301', 'Caf\u00e9', 'new\nline', 'emoji \u{1f600}', 'a/b', 'a\\b'];
    for (const [i, p] of paths.entries()) index.set(p, { size: BigInt(i), mtimeNs: 1n, sha256: sha(p) });
    expect(index.size).toBe(paths.length);
    for (const [i, p] of paths.entries()) expect(index.get(p)?.size).toBe(BigInt(i));
    expect(index.unmarkedPaths(undefined).sort()).toEqual([...paths].sort());
  });

  it('refuses values it could not store exactly', () => {
    const index = new PathIndex();
    const set = (entry: Partial<Parameters<PathIndex['set']>[1]>) =>
      index.set('x', { size: 1n, mtimeNs: 1n, sha256: sha('x'), ...entry });
    expect(() => set({ sha256: 'ab' })).toThrow(PathIndexError);
    expect(() => set({ sha256: sha('x').toUpperCase() })).toThrow(
      expect.objectContaining({ code: 'BAD_SHA256' }),
    );
    expect(() => set({ size: -1n })).toThrow(expect.objectContaining({ code: 'OUT_OF_RANGE' }));
    expect(() => set({ mtimeNs: 2n ** 63n })).toThrow(expect.objectContaining({ code: 'OUT_OF_RANGE' }));
    expect(() => set({ ctimeNs: 2n ** 64n })).toThrow(expect.objectContaining({ code: 'OUT_OF_RANGE' }));
    expect(index.get('x')).toBeUndefined();
  });

  it('marks slots, growing the marks, and clears a mark when its slot goes to another path', () => {
    const index = new PathIndex(2);
    const a = index.set('a', { size: 1n, mtimeNs: 1n, sha256: sha('a') });
    const b = index.set('b', { size: 1n, mtimeNs: 1n, sha256: sha('b') });
    const marks = index.startMarks();
    const other = index.startMarks();
    marks.mark(a);
    marks.mark(b);
    other.mark(b);
    expect(marks.has(a) && marks.has(b)).toBe(true);
    index.delete('b');
    const c = index.set('c', { size: 1n, mtimeNs: 1n, sha256: sha('c') });
    expect(c).toBe(b);
    expect(marks.has(c)).toBe(false);
    expect(other.has(c)).toBe(false);
    expect(marks.has(a)).toBe(true);
    // Slots past the size the marks started with: unmarked until marked.
    const slots = Array.from({ length: 40 }, (_, i) =>
      index.set(`n${i}`, { size: 1n, mtimeNs: 1n, sha256: sha('n') }),
    );
    expect(slots.some((s) => marks.has(s))).toBe(false);
    marks.mark(slots.at(-1)!);
    expect(marks.has(slots.at(-1)!)).toBe(true);
    expect(marks.has(slots.at(-2)!)).toBe(false);
    // Ended marks are no longer kept up to date.
    index.endMarks(other);
    other.mark(a);
    index.delete('a');
    index.set('z', { size: 1n, mtimeNs: 1n, sha256: sha('z') });
    expect(other.has(a)).toBe(true);
    expect(marks.has(a)).toBe(false);
  });

  it('lists the paths a scan did not mark, and all paths without marks', () => {
    const index = new PathIndex();
    for (const p of ['a', 'b', 'c', 'd']) index.set(p, { size: 1n, mtimeNs: 1n, sha256: sha(p) });
    const marks = index.startMarks();
    marks.mark(index.slotOf('b')!);
    marks.mark(index.slotOf('d')!);
    index.delete('c');
    expect(index.unmarkedPaths(marks)).toEqual(['a']);
    expect(index.unmarkedPaths(undefined).sort()).toEqual(['a', 'b', 'd']);
  });

  it('takes paths up to the store limit, and knows a path by its UTF-8 like the log does', () => {
    const index = new PathIndex();
    const long = `${'\u00e9'.repeat(127)}/`.repeat(16).slice(0, -1);
    index.set(long, { size: 7n, mtimeNs: 1n, sha256: sha(long) });
    expect(index.get(long)?.size).toBe(7n);
    expect(index.unmarkedPaths(undefined)).toEqual([long]);
    // A lone surrogate is written (to the log and the file system) as U+FFFD.
    index.set('x\ufffd', { size: 1n, mtimeNs: 1n, sha256: sha('r') });
    expect(index.get('x\ud800')?.sha256).toBe(sha('r'));
    expect(index.delete('x\udc00')).toBe(true);
    expect(index.size).toBe(1);
  });

  it('agrees with a Map through a long run of sets and deletes (tombstones, rehashes, key compaction)', () => {
    const index = new PathIndex(4);
    const model = new Map<string, { size: bigint; mtimeNs: bigint; sha256: string; ctimeNs?: bigint }>();
    // mulberry32: deterministic, and its low bits are as random as its high ones.
    let seed = 42;
    const random = (n: number) => {
      seed = (seed + 0x6d2b79f5) | 0;
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) % n;
    };
    for (let step = 0; step < 60_000; step++) {
      const path = `p/${random(1500)}${'/x'.repeat(random(4))}`;
      // Deletes as often as sets, so that deleted keys' bytes pile up and get compacted away.
      if (random(2) === 0) {
        expect(index.delete(path)).toBe(model.delete(path));
      } else {
        const entry = {
          size: BigInt(random(1000)),
          mtimeNs: MTIME + BigInt(step),
          sha256: sha(String(step)),
          ...(random(2) === 0 ? { ctimeNs: CTIME + BigInt(step) } : {}),
        };
        index.set(path, entry);
        model.set(path, entry);
      }
      if (step % 5000 === 0) expect(index.size).toBe(model.size);
    }
    expect(index.size).toBe(model.size);
    for (const [path, entry] of model) expect(index.get(path)).toEqual(entry);
    expect(new Set(index.unmarkedPaths(undefined))).toEqual(new Set(model.keys()));
    // Slots are reused: 6000 distinct paths, about half alive at a time, fit in 4096 slots.
    expect(index.capacity).toBeLessThanOrEqual(4096);
  });
});
