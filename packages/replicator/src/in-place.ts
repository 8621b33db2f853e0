import { lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { type FileStat, hashFile, hashHandle, openStoreFile } from '@pfs/filestore';
import type { Expected } from './batch.ts';
import { removeOnFailure } from './durability.ts';

/** How often the files are looked at while rsync is still running. */
const POLL_MS = 2;
/**
 * Only batches this small are checked early: they are the ones whose time is mostly rsync's end
 * (lag at low rates); a large batch would be hashed twice for nothing.
 */
const MAX_EARLY_PUTS = 64;
const MAX_EARLY_BYTES = 8n * 1024n * 1024n;

/** Which version of a file a stat describes: a rename, a rewrite or a touch changes it. */
export function versionOf(stat: FileStat): string {
  return `${stat.ino}:${stat.size}:${stat.mtimeNs}:${stat.ctimeNs}`;
}

/**
 * Checks a put's path against its record and, with `datasync`, makes its bytes durable, in one
 * open of the file. A file still at `knownVersion` (the one waitInPlace hashed and fdatasynced
 * moments ago) is neither read nor synced again, one lstat shows it: only this replicator writes
 * the store, and rsync never rewrites a file it has renamed into place.
 */
export async function checkPut(
  root: string,
  path: string,
  want: Extract<Expected, { kind: 'put' }>,
  options: { datasync: boolean; knownVersion?: string | undefined },
): Promise<{ size: bigint; sha256: string } | undefined> {
  if (options.knownVersion !== undefined) {
    const info = await lstat(join(root, path), { bigint: true }).catch(() => undefined);
    if (info?.isFile() && versionOf(info) === options.knownVersion) {
      return { size: want.size, sha256: want.sha256 };
    }
  }
  return hashFile(root, path, { datasync: options.datasync });
}

/**
 * Resolves, as soon as every listed path is on disk as `expected` says while the rsync that brings
 * them may still be ending, with the version of each put it hashed and fdatasynced (see
 * checkPut); undefined if `ended` (rsync's exit, success or not) comes first.
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
}): Promise<Map<string, string> | undefined> {
  const puts: [string, Extract<Expected, { kind: 'put' }>][] = [];
  const deletes: string[] = [];
  let bytes = 0n;
  for (const path of options.paths) {
    const want = options.expected.get(path);
    if (want?.kind === 'put') {
      puts.push([path, want]);
      bytes += want.size;
    } else if (want?.kind === 'delete') deletes.push(path);
    else return undefined;
  }
  if (puts.length > MAX_EARLY_PUTS || bytes > MAX_EARLY_BYTES) return undefined;
  let ended = false;
  void options.ended.then(() => {
    ended = true;
  });
  // path → the version (inode, size, mtime) that was hashed and had the record's bytes.
  const matched = new Map<string, string>();
  while (!ended) {
    const received = new Set(options.received);
    if (puts.every(([path]) => received.has(path)) && (await allMatch(options.root, puts, matched))) {
      if (await allGone(options.root, deletes)) return matched;
    }
    await Promise.race([new Promise((resolve) => setTimeout(resolve, POLL_MS)), options.ended]);
  }
  return undefined;
}

/**
 * Whether every put is in place, looked at concurrently. A file with the record's bytes is also
 * fdatasynced before it counts: verify would do it next anyway, and here it overlaps with the
 * wait for the batch's other files.
 */
async function allMatch(
  root: string,
  puts: readonly [string, Extract<Expected, { kind: 'put' }>][],
  matched: Map<string, string>,
): Promise<boolean> {
  const found = await Promise.all(
    puts.map(async ([path, want]) => {
      const info = await lstat(join(root, path), { bigint: true }).catch(() => undefined);
      if (!info?.isFile() || info.size !== want.size) return false;
      if (matched.get(path) === versionOf(info)) return true;
      // The version comes from the open file that is hashed: if the path is replaced meanwhile,
      // the next look sees another version and hashes again.
      const opened = await openStoreFile(root, path);
      if (opened === undefined) return false;
      try {
        const got = await hashHandle(opened.handle, Number(opened.stat.size));
        if (got.size !== want.size || got.sha256 !== want.sha256) return false;
        await removeOnFailure(join(root, path), () => opened.handle.datasync());
        matched.set(path, versionOf(opened.stat));
        return true;
      } finally {
        await opened.handle.close();
      }
    }),
  );
  return found.every(Boolean);
}

async function allGone(root: string, paths: readonly string[]): Promise<boolean> {
  for (const path of paths) {
    if ((await lstat(join(root, path)).catch(() => undefined)) !== undefined) return false;
  }
  return true;
}
