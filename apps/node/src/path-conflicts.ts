import { firstParentNotADirectory, walkStore } from '@pfs/filestore';

/** Files under a directory in a put's way looked at, beyond which the conflict counts as real. */
const MAX_FILES_IN_THE_WAY = 1000;

/**
 * The files of this node's store in the way of a put of `path` that was refused: for
 * `PATH_CONFLICT`, the first of its directories that is a file; for `PATH_IS_DIRECTORY`, the
 * files under the directory at `path`. Empty when nothing is in the way any more; undefined when
 * there are too many to look at, or something other than a file or directory is in the way.
 *
 * Partitions share the store, so these may be files of other partitions, which this node holds
 * as a replica: the put was judged against their state here, which may lag their masters'.
 */
export async function filesInTheWayOfPut(
  fileStore: string,
  code: 'PATH_CONFLICT' | 'PATH_IS_DIRECTORY',
  path: string,
): Promise<string[] | undefined> {
  if (code === 'PATH_CONFLICT') {
    const found = await firstParentNotADirectory(fileStore, path);
    if (found === undefined) return [];
    return found.info.isFile() ? [found.parent] : undefined;
  }
  const files: string[] = [];
  for await (const entry of walkStore(fileStore, path)) {
    if (files.length === MAX_FILES_IN_THE_WAY) return undefined;
    files.push(entry.path);
  }
  return files;
}
