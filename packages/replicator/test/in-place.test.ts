import { createHash } from 'node:crypto';
import { lstat, mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { Expected } from '../src/batch.ts';
import { checkPut, versionOf, waitInPlace } from '../src/in-place.ts';
import { tempDir } from './harness.ts';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) await cleanup();
});

async function store() {
  const { dir, remove } = await tempDir('pfs-in-place-');
  cleanups.push(remove);
  return dir;
}

const put = (content: string): Extract<Expected, { kind: 'put' }> => ({
  kind: 'put',
  size: BigInt(Buffer.byteLength(content)),
  sha256: createHash('sha256').update(content).digest('hex'),
  txid: 1n,
});

/** A rsync exit that the test triggers by hand. */
function exitLater() {
  let exit!: () => void;
  const ended = new Promise<void>((resolve) => {
    exit = resolve;
  });
  return { ended, exit };
}

describe('waitInPlace', () => {
  it('resolves true before rsync exits once every put has its line and its bytes', async () => {
    const root = await store();
    const expected = new Map([
      ['a', put('A')],
      ['d/b', put('B')],
    ]);
    await writeFile(join(root, 'a'), 'A');
    await mkdir(join(root, 'd'));
    const received = ['a'];
    const { ended, exit } = exitLater();
    const waiting = waitInPlace({ root, paths: ['a', 'd/b'], expected, received, ended });
    // The last file's line has arrived but rsync has not renamed it yet.
    received.push('d/b');
    await new Promise((resolve) => setTimeout(resolve, 20));
    await writeFile(join(root, 'd/b'), 'B');
    const versions = await waiting;
    // The versions it hashed, for verify to trust without reading again.
    expect([...(versions?.keys() ?? [])].sort()).toEqual(['a', 'd/b']);
    const info = await lstat(join(root, 'd/b'), { bigint: true });
    expect(versions?.get('d/b')).toBe(versionOf(info));
    exit();
  });

  it('keeps waiting while the last file has other bytes, and gives up when rsync exits', async () => {
    const root = await store();
    await writeFile(join(root, 'x'), 'old');
    const { ended, exit } = exitLater();
    let settled = false;
    const waiting = waitInPlace({
      root,
      paths: ['x'],
      expected: new Map([['x', put('new')]]),
      received: ['x'],
      ended,
    }).then((v) => {
      settled = true;
      return v;
    });
    // Still waiting after several looks at the wrong bytes, and over only once rsync exits.
    await new Promise((resolve) => setTimeout(resolve, 30));
    expect(settled).toBe(false);
    exit();
    expect(await waiting).toBeUndefined();
  });

  it('does not trust the line order: a put whose bytes are not there yet holds it back', async () => {
    const root = await store();
    const expected = new Map([
      ['a', put('A')],
      ['b', put('B')],
    ]);
    // Both lines have arrived, but "a" (its transfer discarded and redone, say) is not in place.
    await writeFile(join(root, 'b'), 'B');
    const { ended, exit } = exitLater();
    let settled = false;
    const waiting = waitInPlace({ root, paths: ['a', 'b'], expected, received: ['a', 'b'], ended }).then(
      (v) => {
        settled = true;
        return v;
      },
    );
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(settled).toBe(false);
    await writeFile(join(root, 'a'), 'A');
    expect(await waiting).not.toBeUndefined();
    exit();
  });

  it("leaves large batches to rsync's exit", async () => {
    const root = await store();
    const paths = Array.from({ length: 65 }, (_, i) => `f${i}`);
    for (const path of paths) await writeFile(join(root, path), 'x');
    const expected = new Map(paths.map((p) => [p, put('x')]));
    const { ended, exit } = exitLater();
    setTimeout(exit, 30);
    expect(await waitInPlace({ root, paths, expected, received: paths, ended })).toBeUndefined();
  });

  it('waits for deletes to be done and for every put to have its line', async () => {
    const root = await store();
    await writeFile(join(root, 'gone'), 'still here');
    await writeFile(join(root, 'p'), 'P');
    const received: string[] = [];
    const expected = new Map<string, Expected>([
      ['p', put('P')],
      ['gone', { kind: 'delete', txid: 2n }],
    ]);
    const { ended, exit } = exitLater();
    let settled = false;
    const waiting = waitInPlace({ root, paths: ['p', 'gone'], expected, received, ended }).then((v) => {
      settled = true;
      return v;
    });
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(settled).toBe(false); // no line for p yet, even though its bytes are there
    received.push('p');
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(settled).toBe(false); // "gone" is not gone
    await rm(join(root, 'gone'));
    expect(await waiting).not.toBeUndefined();
    exit();
  });
});

describe('checkPut', () => {
  it('trusts the version waitInPlace hashed, and hashes any other version of the path', async () => {
    const root = await store();
    await writeFile(join(root, 'f'), 'A');
    const want = put('A');
    const hashed = versionOf(await lstat(join(root, 'f'), { bigint: true }));
    expect(await checkPut(root, 'f', want, { datasync: true, knownVersion: hashed })).toEqual({
      size: want.size,
      sha256: want.sha256,
    });
    // Replaced by another file (another inode): read and hashed again, so the change is seen.
    await writeFile(join(root, 'f.new'), 'Z');
    await rename(join(root, 'f.new'), join(root, 'f'));
    const got = await checkPut(root, 'f', want, { datasync: true, knownVersion: hashed });
    expect(got?.sha256).toBe(put('Z').sha256);
    expect(await checkPut(root, 'missing', want, { datasync: false })).toBeUndefined();
  });
});
