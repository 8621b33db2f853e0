#!/usr/bin/env node
// Bundles the agent (src/main.ts, the @pfs/* packages it uses and their third-party packages but
// pino) into dist/pfs-node.mjs, so that a running agent neither loads tsx nor compiles
// TypeScript, and does not resolve and read some 400 modules one by one: it starts in ~0.25 s
// instead of ~0.4 s (~0.7 s with tsx), and holds ~40 MiB less than with tsx.
//
// Cheap when nothing changed: the workspace inputs of the last build are kept next to the bundle,
// and the build is skipped while none of them (nor the lockfile, for third-party packages) is
// newer than it. `--force` rebuilds anyway.
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
  const lockfile = join(appDir, '..', '..', 'pnpm-lock.yaml');
  for (const input of [self, join(appDir, 'package.json'), lockfile, ...inputs]) {
    const changed = await mtimeMs(resolve(appDir, input));
    if (changed === undefined || changed > built) return false;
  }
  return true;
}

/** Bundled files whose `__dirname` and `__filename` become their paths (see commonjs-own-paths). */
const OWN_PATH_FILES = [
  '/etcd3/lib/connection-pool.js',
  '/@grpc/grpc-js/build/src/channelz.js',
  '/@grpc/grpc-js/build/src/orca.js',
];

/** Files the bundle reads at run time by their absolute path. */
const namedByPath = [];

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
    // Bundled CommonJS packages require Node's built-ins: give the module a require of its own.
    banner: {
      js: "import { createRequire as __pfsCreateRequire } from 'node:module'; const require = __pfsCreateRequire(import.meta.url);",
    },
    plugins: [
      {
        // pino starts its transports (pino-pretty in a terminal) in worker threads that load
        // pino's own files by path: it stays in node_modules, imported at run time.
        name: 'pino-external',
        setup(b) {
          b.onResolve({ filter: /^pino(-pretty)?$/ }, (args) => ({ path: args.path, external: true }));
        },
      },
      {
        // CommonJS packages that find files beside their own by `__dirname` or `__filename`
        // (etcd3 reads its gRPC definitions at load time; grpc-js would, for channelz and ORCA),
        // which an ES module bundle lacks: the bundle names those places by their paths. Only
        // in the files checked to use them as plain references (in template literals); any
        // other file that mentions them stops the build, to be checked and listed here.
        name: 'commonjs-own-paths',
        setup(b) {
          b.onLoad({ filter: /[\\/]node_modules[\\/].*\.c?js$/ }, async (args) => {
            const text = await readFile(args.path, 'utf8');
            if (!/\b__(dirname|filename)\b/.test(text)) return undefined;
            const path = args.path.split('\\').join('/');
            if (!OWN_PATH_FILES.some((known) => path.endsWith(known))) {
              throw new Error(
                `${args.path} refers to __dirname or __filename, which the bundle lacks: check how, and list it in OWN_PATH_FILES of scripts/build.mjs (or keep its package external)`,
              );
            }
            // Listed with the inputs: a checkout moved elsewhere builds again.
            namedByPath.push(args.path);
            return {
              contents: text
                .replace(/\b__dirname\b/g, () => JSON.stringify(dirname(args.path)))
                .replace(/\b__filename\b/g, () => JSON.stringify(args.path)),
              loader: 'js',
            };
          });
        },
      },
    ],
  });
  await mkdir(dirname(bundle), { recursive: true });
  // Written aside and renamed: two builds at once (parallel test workers) never leave a torn file.
  const suffix = `.${process.pid}.tmp`;
  const workspaceInputs = [
    ...Object.keys(result.metafile.inputs).filter((input) => !input.includes('node_modules/')),
    ...namedByPath,
  ];
  await writeFile(inputsFile + suffix, JSON.stringify(workspaceInputs));
  await writeFile(bundle + suffix, result.outputFiles[0].contents);
  await rename(inputsFile + suffix, inputsFile);
  await rename(bundle + suffix, bundle);
}
