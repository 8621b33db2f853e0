import { isAbsolute, relative, resolve } from 'node:path';
import { z } from 'zod';
import { ReplicatorError } from './errors.ts';

/** The feed path a node serves (docs/protocol.md): the partition is in it. */
const FEED_PATH = /\/v1\/partitions\/(\d+)\/records\/?$/;

const absolutePath = (what: string) =>
  z
    .string()
    .min(1, { error: `${what} is empty` })
    .refine((path) => isAbsolute(path), {
      error: (issue) =>
        `${what} ${JSON.stringify(issue.input)} is relative, and would mean another directory from wherever the process runs: pass path.resolve() of it`,
    });

const FeedSchema = z.object({
  feedUrl: z.url({
    protocol: /^https?$/,
    error: (issue) =>
      `source.feedUrl ${JSON.stringify(issue.input)} is not an http:// URL: give the master's feed, as http://HOST:PORT/v1/partitions/<p>/records`,
  }),
  filesSource: z.string().refine((source) => source.startsWith('rsync://') || isAbsolute(source), {
    error: (issue) =>
      `source.filesSource ${JSON.stringify(issue.input)} is neither an rsync:// URL nor an absolute path: give the master's rsync module, as rsync://HOST:PORT/filestore/`,
  }),
});

const NOT_A_PARTITION = { error: 'partition must be a whole number ≥ 0' };

const OptionsSchema = z.object({
  fileStoreDir: absolutePath('fileStoreDir'),
  changeLogDir: absolutePath('changeLogDir').optional(),
  checkpointDir: absolutePath('checkpointDir'),
  partition: z.number(NOT_A_PARTITION).int(NOT_A_PARTITION).min(0, NOT_A_PARTITION).optional(),
});

/**
 * Checks what createReplicator is given, naming the option and the fix in one line
 * (`BAD_OPTIONS`); resolves the partition, which a feed URL names: it decides the checkpoint's
 * and the unsettled paths' files, which partitions sharing a checkpoint dir must not share.
 */
export function checkOptions(options: {
  source: object;
  fileStoreDir: string;
  changeLogDir?: string | undefined;
  log?: unknown;
  checkpointDir: string;
  partition?: number | undefined;
}): { partition: number } {
  const bad = (message: string) => new ReplicatorError('BAD_OPTIONS', message);
  const parsed = OptionsSchema.safeParse(options);
  if (!parsed.success) throw bad(parsed.error.issues[0]!.message);
  if ((options.log === undefined) === (options.changeLogDir === undefined)) {
    throw bad('give the log as either `log` (an open TxLog) or `changeLogDir`, one of them');
  }
  let partition = options.partition;
  if (!('fetch' in options.source)) {
    const feed = FeedSchema.safeParse(options.source);
    if (!feed.success) throw bad(feed.error.issues[0]!.message);
    const named = FEED_PATH.exec(new URL(feed.data.feedUrl).pathname)?.[1];
    if (named !== undefined && partition !== undefined && Number(named) !== partition) {
      throw bad(
        `source.feedUrl is partition ${named}'s feed, and partition is ${partition}: make them the same partition`,
      );
    }
    if (partition === undefined && named !== undefined) partition = Number(named);
  }
  // The store holds whatever the master's store does: a log or checkpoint inside it would be
  // overwritten by a record of that path, and a store with them in it never counts as empty.
  const dirs: [string, string | undefined][] = [
    ['changeLogDir', options.changeLogDir],
    ['checkpointDir', options.checkpointDir],
  ];
  for (const [name, dir] of dirs) {
    if (dir !== undefined && within(resolve(options.fileStoreDir), resolve(dir))) {
      throw bad(
        `${name} ${dir} is inside fileStoreDir ${options.fileStoreDir}, which the master's files fill: put it beside the store`,
      );
    }
  }
  if (
    options.changeLogDir !== undefined &&
    resolve(options.changeLogDir) === resolve(options.checkpointDir)
  ) {
    throw bad(
      `changeLogDir and checkpointDir are both ${options.checkpointDir}: give each its own directory`,
    );
  }
  return { partition: partition ?? 0 };
}

/** Whether `path` is `dir` or inside it. */
function within(dir: string, path: string): boolean {
  const rel = relative(dir, path);
  return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel));
}
