#!/usr/bin/env node
// Bundles the agent (src/main.ts and the @pfs/* packages it uses) into dist/pfs-node.mjs, so that
// a running agent neither loads tsx nor compiles TypeScript: it starts faster and holds ~40 MiB
// less. Third-party packages stay external and load from node_modules as they are.
//
// Cheap when nothing changed: the inputs of the last build are kept next to the bundle, and the
// build is skipped while none of them is newer than it. `--force` rebuilds anyway.
import { mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const appDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const bundle = join(appDir, 'dist', 'pfs-node.mjs');
const inputsFile = join(appDir, 'dist', 'pfs-node.inputs.json');
const self = fileURLToPath(import.meta.url);

async function mtimeMs(path) {
  return (await stat(path).catch(() => undefined))?.mtimeMs;
}

async function upToDate() {
  const built = await mtimeMs(bundle);
  if (built === undefined) return false;
  let inputs;
  try {
    inputs = JSON.parse(await readFile(inputsFile, 'utf8'));
  } catch {
    return false;
  }
  for (const input of [self, join(appDir, 'package.json'), ...inputs]) {
    const changed = await mtimeMs(resolve(appDir, input));
    if (changed === undefined || changed > built) return false;
  }
  return true;
}

if (process.argv.includes('--force') || !(await upToDate())) {
  const result = await build({
    absWorkingDir: appDir,
    entryPoints: ['src/main.ts'],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    write: false,
    outfile: bundle,
    metafile: true,
    logLevel: 'warning',
    plugins: [
      {
        // Workspace packages are compiled in; everything else is imported at run time.
        name: 'third-party-external',
        setup(b) {
          b.onResolve({ filter: /^[^./]/ }, (args) =>
            args.path.startsWith('@pfs/') ? undefined : { path: args.path, external: true },
          );
        },
      },
    ],
  });
  await mkdir(dirname(bundle), { recursive: true });
  // Written aside and renamed: two builds at once (parallel test workers) never leave a torn file.
  const suffix = `.${process.pid}.tmp`;
  await writeFile(inputsFile + suffix, JSON.stringify(Object.keys(result.metafile.inputs)));
  await writeFile(bundle + suffix, result.outputFiles[0].contents);
  await rename(inputsFile + suffix, inputsFile);
  await rename(bundle + suffix, bundle);
}
