import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** apps/node: this file is in src/, the agent's bundle in dist/, one level below it either way. */
const PACKAGE_DIR = fileURLToPath(new URL('..', import.meta.url));

/**
 * The directory the user typed the command in. pnpm runs this package's scripts (`pnpm --filter
 * node start`, `… pfs`) in apps/node and says where it was called from in INIT_CWD; a relative
 * `--data-dir`, `--config` or file to put would otherwise be taken as relative to apps/node.
 * Only for this package's own scripts, run where pnpm runs them: pnpm's variables are inherited
 * by everything a script starts, and another package's script (or one that changed directory)
 * means its paths from where it runs.
 */
export function invocationDirectory(env: NodeJS.ProcessEnv): string {
  const ownScript =
    env.INIT_CWD !== undefined &&
    env.INIT_CWD !== '' &&
    env.npm_package_json !== undefined &&
    resolve(dirname(env.npm_package_json)) === resolve(PACKAGE_DIR) &&
    resolve(process.cwd()) === resolve(PACKAGE_DIR);
  return ownScript ? env.INIT_CWD! : process.cwd();
}

/** `path` as the user meant it: absolute, relative paths taken from invocationDirectory. */
export function userPath(path: string, env: NodeJS.ProcessEnv): string {
  return resolve(invocationDirectory(env), path);
}
