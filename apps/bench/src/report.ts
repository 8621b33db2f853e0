import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * `pnpm bench:report`: rewrites the results table of docs/benchmarks.md (between its
 * `<!-- results:start -->` and `<!-- results:end -->` markers) from bench-results/*.json, with
 * the machine, the command of each scenario and the date it ran. A scenario with no result here
 * (bench-results/ is not committed: a checkout holds only the runs made in it) keeps its row.
 */
const RESULTS_DIR = fileURLToPath(new URL('../../../bench-results/', import.meta.url));
const DOC = fileURLToPath(new URL('../../../docs/benchmarks.md', import.meta.url));
const START = '<!-- results:start -->';
const END = '<!-- results:end -->';

type Json = Record<string, unknown>;

function isStats(
  value: unknown,
): value is { count: number; p50: number; p95?: number; p97_5?: number; p99: number; max: number } {
  return typeof value === 'object' && value !== null && 'p50' in value && 'count' in value;
}

/** One readable line per measured value; parameters and bookkeeping are left out. */
export function summarizeResult(result: Json, prefix = ''): string[] {
  const parts: string[] = [];
  for (const [key, value] of Object.entries(result)) {
    if (['scenario', 'params', 'machine', 'date'].includes(key)) continue;
    const name = prefix === '' ? key : `${prefix} ${key}`;
    if (isStats(value)) {
      parts.push(
        `${name}: p50 ${value.p50}, ${value.p97_5 === undefined ? `p95 ${value.p95}` : `p97.5 ${value.p97_5}`}, p99 ${value.p99}, max ${value.max} (n=${value.count})`,
      );
    } else if (typeof value === 'number' || typeof value === 'boolean') {
      parts.push(`${name}: ${value}`);
    } else if (typeof value === 'string') {
      // A part of the run that did not happen says why (e.g. lsyncd skipped: not installed).
      parts.push(`${name}: ${value}`);
    } else if (typeof value === 'object' && value !== null) {
      parts.push(...summarizeResult(value as Json, name));
    }
  }
  return parts;
}

/** The rows of a results table, by scenario (its first cell), header and separator left out. */
export function previousRows(table: string): Map<string, string> {
  const rows = new Map<string, string>();
  for (const line of table.split('\n')) {
    const scenario = /^\| ([a-z0-9-]+) \| `pnpm bench /.exec(line)?.[1];
    if (scenario !== undefined) rows.set(scenario, line);
  }
  return rows;
}

async function main(): Promise<void> {
  const files = (await readdir(RESULTS_DIR).catch(() => [] as string[]))
    .filter((f) => f.endsWith('.json'))
    .sort();
  if (files.length === 0) {
    process.stderr.write(`bench:report: no results in ${RESULTS_DIR}: run pnpm bench first\n`);
    process.exit(1);
  }
  const doc = await readFile(DOC, 'utf8');
  const start = doc.indexOf(START);
  const end = doc.indexOf(END);
  if (start === -1 || end === -1) {
    process.stderr.write(
      `bench:report: ${DOC} lacks the ${START} / ${END} markers: add them where the table goes\n`,
    );
    process.exit(1);
  }
  const byScenario = previousRows(doc.slice(start + START.length, end));
  let machine: Json | undefined;
  for (const file of files) {
    const result = JSON.parse(await readFile(join(RESULTS_DIR, file), 'utf8')) as Json;
    machine ??= result.machine as Json | undefined;
    const name = file.replace(/\.json$/, '');
    byScenario.set(
      name,
      `| ${name} | \`pnpm bench ${name}\` | ${summarizeResult(result).join('<br>')} | ${JSON.stringify(result.params ?? {}).replaceAll('|', '\\|')} | ${String(result.date ?? '').slice(0, 10)} |`,
    );
  }
  const rows = [
    '| scenario | command | measured (ms unless named) | params | date |',
    '| --- | --- | --- | --- | --- |',
    // In the order of their result files' names, as ever.
    ...[...byScenario.keys()]
      .sort((a, b) => (`${a}.json` < `${b}.json` ? -1 : 1))
      .map((name) => byScenario.get(name)!),
  ];
  const header = machine
    ? `Machine: ${machine.cpus} × ${machine.cpuModel}, ${machine.memoryGiB} GiB, Node ${machine.node}; everything on loopback.`
    : '';
  const table = `${START}\n${header}\n\n${rows.join('\n')}\n${END}`;
  await writeFile(DOC, doc.slice(0, start) + table + doc.slice(end + END.length));
  process.stdout.write(`wrote ${rows.length - 2} results into ${DOC}\n`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) void main();
