import { lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { hashFile } from '@pfs/filestore';
import type { Expected } from './batch.ts';

/** How often the files are looked at while rsync is still running. */
const POLL_MS = 2;
/**
 * Only batches this small are checked early: they are the ones whose time is mostly rsync's end
 * (lag at low rates); a large batch would be hashed twice for nothing.
 */
const MAX_EARLY_PUTS = 64;
const MAX_EARLY_BYTES = 8n * 1024n * 1024n;

/**
 * Resolves true as soon as every listed path is on disk as `expected` says while the rsync that
 * brings them may still be ending; false if `ended` (rsync's exit, success or not) comes first.
 *
 * Why: rsync's end costs 0–40 ms after its last rename (its receiver and client wait for each
 * other in 20 ms sleeps), and the next batch would wait for it. A put is checked once rsync has
 * printed its late-logged line (`received`, from pullBatch's onFileReceived, i.e. its data has
 * arrived) and counts when its size and sha-256 are the record's; a delete counts when its path
 * is gone. Every listed put differed from its record before the pull (pathsToPull), and rsync
 * writes a path at most twice (a transfer whose checksum fails is discarded, not renamed, and
 * redone once), so a put found with the record's bytes is one rsync will not write again.
 */
export async function waitInPlace(options: {
  root: string;
  paths: readonly string[];
  expected: ReadonlyMap<string, Expected>;
  received: readonly string[];
  ended: Promise<void>;
}): Promise<boolean> {
  const puts: [string, Extract<Expected, { kind: 'put' }>][] = [];
  const deletes: string[] = [];
  let bytes = 0n;
  for (const path of options.paths) {
    const want = options.expected.get(path);
    if (want?.kind === 'put') {
      puts.push([path, want]);
      bytes += want.size;
    } else if (want?.kind === 'delete') deletes.push(path);
    else return false;
  }
  if (puts.length > MAX_EARLY_PUTS || bytes > MAX_EARLY_BYTES) return false;
  let ended = false;
  void options.ended.then(() => {
    ended = true;
  });
  // path → the version (inode, size, mtime) that was hashed and had the record's bytes.
  const matched = new Map<string, string>();
  while (!ended) {
    const received = new Set(options.received);
    if (puts.every(([path]) => received.has(path)) && (await allMatch(options.root, puts, matched))) {
      if (await allGone(options.root, deletes)) return true;
    }
    await Promise.race([new Promise((resolve) => setTimeout(resolve, POLL_MS)), options.ended]);
  }
  return false;
}

async function allMatch(
  root: string,
  puts: readonly [string, Extract<Expected, { kind: 'put' }>][],
  matched: Map<string, string>,
): Promise<boolean> {
  for (const [path, want] of puts) {
    const info = await lstat(join(root, path), { bigint: true }).catch(() => undefined);
    if (!info?.isFile() || info.size !== want.size) return false;
    const version = `${info.ino}:${info.size}:${info.mtimeNs}`;
    if (matched.get(path) === version) continue;
    // Taken before hashing: if the file is replaced meanwhile, the next look sees another
    // version and hashes again.
    const got = await hashFile(root, path);
    if (got?.size !== want.size || got.sha256 !== want.sha256) return false;
    matched.set(path, version);
  }
  return true;
}

async function allGone(root: string, paths: readonly string[]): Promise<boolean> {
  for (const path of paths) {
    if ((await lstat(join(root, path)).catch(() => undefined)) !== undefined) return false;
  }
  return true;
}
