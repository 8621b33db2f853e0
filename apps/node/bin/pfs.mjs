#!/usr/bin/env node
// The `pfs` command: runs the TypeScript CLI through tsx, resolved from this package.
import { register } from 'tsx/esm/api';

register();
await import('../src/cli.ts');
