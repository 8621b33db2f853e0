import type { ListedEntry } from '@pfs/rsync-invoker';

/**
 * How a bootstrap splits its bulk copy: the top-level names each rsync copies, or `undefined`
 * for one rsync of the whole tree. One rsync's receiver creates files one at a time, mostly in
 * the kernel, so on a machine with more than one core disjoint parts copied side by side finish
 * sooner. Names are dealt round-robin in sorted order (`d0`, `d1`, … alternate). A listing with
 * fewer than two entries, or with anything but files and directories (symlinks…), is copied
 * whole, exactly as before any split existed.
 */
export function splitCopy(
  entries: readonly ListedEntry[] | undefined,
  copies: number,
): string[][] | undefined {
  if (entries === undefined || copies < 2 || entries.length < 2) return undefined;
  if (entries.some((entry) => entry.kind === 'other')) return undefined;
  const names = entries.map((entry) => entry.name).sort();
  const parts = Array.from({ length: Math.min(copies, names.length) }, () => [] as string[]);
  for (const [i, name] of names.entries()) parts[i % parts.length]!.push(name);
  return parts;
}
