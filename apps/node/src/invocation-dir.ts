import { resolve } from 'node:path';

/**
 * The directory the user typed the command in. pnpm runs a package's scripts (`pnpm --filter
 * node start`, `… pfs`) in the package's own directory and says where it was called from in
 * INIT_CWD; a relative `--data-dir`, `--config` or file to put would otherwise be taken as
 * relative to apps/node. Only trusted when a package script is running (npm_lifecycle_event),
 * not when left in the environment of a shell started from one.
 */
export function invocationDirectory(env: NodeJS.ProcessEnv): string {
  return env.npm_lifecycle_event !== undefined && env.INIT_CWD ? env.INIT_CWD : process.cwd();
}

/** `path` as the user meant it: absolute, relative paths taken from invocationDirectory. */
export function userPath(path: string, env: NodeJS.ProcessEnv): string {
  return resolve(invocationDirectory(env), path);
}
