import { readdir, readFile, readlink } from 'node:fs/promises';

const TCP_LISTEN = '0A';

/**
 * Whether process `pid` itself holds a listening TCP socket on `port` (Linux /proc).
 *
 * Accepting connections is not enough to call a service ready: when two services race for the
 * same free port, the loser exits on EADDRINUSE while the winner answers its readiness probe.
 * Matching the socket inode to the pid's file descriptors tells them apart. Returns undefined
 * where /proc is not readable, and callers then fall back to a plain connect.
 */
export async function isListeningBy(pid: number, port: number): Promise<boolean | undefined> {
  let inodes: Set<string>;
  try {
    inodes = await listeningInodes(port);
  } catch {
    return undefined;
  }
  if (inodes.size === 0) return false;
  let fds: string[];
  try {
    fds = await readdir(`/proc/${pid}/fd`);
  } catch {
    return false;
  }
  for (const fd of fds) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    const match = /^socket:\[(\d+)\]$/.exec(target);
    if (match && inodes.has(match[1]!)) return true;
  }
  return false;
}

async function listeningInodes(port: number): Promise<Set<string>> {
  const wanted = port.toString(16).toUpperCase().padStart(4, '0');
  const inodes = new Set<string>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    const text = await readFile(table, 'utf8').catch((error: NodeJS.ErrnoException) => {
      // A kernel without IPv6 has no tcp6 table; a missing tcp table means no /proc at all.
      if (table.endsWith('6')) return '';
      throw error;
    });
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols.length < 10 || cols[3] !== TCP_LISTEN) continue;
      if (cols[1]!.split(':')[1] === wanted) inodes.add(cols[9]!);
    }
  }
  return inodes;
}
