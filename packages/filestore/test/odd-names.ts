import { readFileSync } from 'node:fs';

interface OddNames {
  accept: string[];
  reject: { path: string; why: string }[];
}

export const oddNames: OddNames = JSON.parse(
  readFileSync(new URL('../../../testdata/odd-names.json', import.meta.url), 'utf8'),
);
