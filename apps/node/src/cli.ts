import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import { compareStorePaths, partitionOf } from '@pfs/filestore';
import { type BootstrapSummary, describeBootstrap } from './bootstrap-progress.ts';
import { encodePath } from './http.ts';
import { userPath } from './invocation-dir.ts';

/**
 * `pfs`: a client of the HTTP API. Talks to any node (`--node`, `PFS_NODE`), follows redirects to
 * the master, prints tables in a terminal and JSON otherwise (or with --json). Exit codes: 0 ok,
 * 1 the operation failed, 2 bad usage.
 */
const USAGE = `usage: pfs [--node URL] [--json] <command>
  put <local-file> <remote-path> [--ack local|one|all]   store a file
  get <remote-path> [local-file]                          fetch a file (to stdout without local-file)
  rm <remote-path>                                        delete a file
  ls [prefix]                                             list files
  status                                                  partitions, masters, replicas, lag
  quarantine ls                                           divergent writes set aside on this node
The node defaults to $PFS_NODE or http://127.0.0.1:12001.`;

class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

type Out = { json: boolean; print: (value: unknown, table?: () => string) => void };

/** How long `pfs status` waits for the node it was pointed at, and for each other live node. */
const ASKED_NODE_TIMEOUT_MS = 10_000;
const OTHER_NODE_TIMEOUT_MS = 3_000;

async function request(
  node: string,
  method: string,
  path: string,
  init: {
    body?: () => RequestInit['body'];
    /** The local file `body` reads, named when reading it fails. */
    local?: string;
    headers?: Record<string, string>;
    signal?: AbortSignal;
  } = {},
): Promise<Response> {
  let url = `${node}${path}`;
  for (let hop = 0; hop < 4; hop++) {
    let response: Response;
    try {
      response = await fetch(url, {
        method,
        redirect: 'manual',
        ...(init.headers ? { headers: init.headers } : {}),
        ...(init.body ? { body: init.body(), duplex: 'half' } : {}),
        ...(init.signal ? { signal: init.signal } : {}),
      } as RequestInit);
    } catch (error) {
      throw new CliError(describeFetchFailure(error, url, method, init.local));
    }
    const location = response.headers.get('location');
    if (response.status === 307 && location) {
      await response.body?.cancel();
      url = location;
      continue;
    }
    return response;
  }
  throw new CliError(`too many redirects for ${path}`);
}

/** Errors of a connection that was made and then broke, as undici (fetch) and the kernel name them. */
const BROKEN_CONNECTION = new Set(['UND_ERR_SOCKET', 'UND_ERR_CLOSED', 'ECONNRESET', 'EPIPE']);

/**
 * What a failed fetch means for the user, in one line (pure). A node that cannot be reached asks
 * for --node; a local file that cannot be read names the file; a connection that broke after the
 * request went out says that a write may have been stored, since only its answer was lost.
 */
function describeFetchFailure(error: unknown, url: string, method: string, local?: string): string {
  const origin = new URL(url).origin;
  const cause = (error as { cause?: unknown }).cause;
  const detail = cause instanceof Error ? cause : error instanceof Error ? error : new Error(String(error));
  const { code, syscall } = detail as { code?: string; syscall?: string };
  const what =
    code !== undefined && !detail.message.includes(code) ? `${code}: ${detail.message}` : detail.message;
  // A socket's errors carry syscall 'read' too: the connection is judged first.
  if (code !== undefined && BROKEN_CONNECTION.has(code)) {
    return method === 'GET'
      ? `the connection to ${origin} broke before the answer came (${what}): run it again`
      : `the connection to ${origin} broke before the answer came (${what}): the ${method === 'DELETE' ? 'delete' : 'write'} may or may not have been done; run it again (repeating it is harmless)`;
  }
  if (local !== undefined && (syscall === 'open' || syscall === 'read')) {
    return `cannot read ${local} (${what}): nothing was stored`;
  }
  if (detail.name === 'TimeoutError')
    return `${origin} did not answer in time: is the node overloaded or frozen?`;
  return `cannot reach ${origin} (${what}): is the node running? Pass --node`;
}

/**
 * Writes a download to `local` whole or not at all: into a temp file beside it, checked against
 * the node's ETag (the content's sha-256), then renamed over it. A transfer cut short or a
 * content that does not match leaves `local` as it was.
 */
async function saveChecked(
  body: Readable,
  local: string,
  etag: string | null,
  remote: string,
): Promise<void> {
  const temp = join(dirname(local), `.${basename(local)}.pfs-get-${randomBytes(4).toString('hex')}`);
  const hash = createHash('sha256');
  try {
    await pipeline(
      body,
      async function* (chunks: AsyncIterable<Buffer>) {
        for await (const chunk of chunks) {
          hash.update(chunk);
          yield chunk;
        }
      },
      createWriteStream(temp, { flags: 'wx' }),
    );
    const sha256 = hash.digest('hex');
    if (etag !== null && etag !== `"${sha256}"`) {
      throw new CliError(
        `${shown(remote)} arrived with sha-256 ${sha256}, not the ${etag} the node announced: ${local} was left as it was; fetch it again`,
      );
    }
    await rename(temp, local);
  } catch (error) {
    await rm(temp, { force: true });
    if (error instanceof CliError) throw error;
    throw new CliError(
      `cannot save ${shown(remote)} to ${local} (${(error as Error).message}): ${local} was left as it was`,
    );
  }
}

async function failure(response: Response): Promise<CliError> {
  const text = await response.text();
  try {
    const body = JSON.parse(text) as { code?: string; message?: string };
    return new CliError(`${response.status} ${body.code ?? ''}: ${body.message ?? text}`.trim());
  } catch {
    return new CliError(`${response.status}: ${text.slice(0, 200)}`);
  }
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows
    .map((r) =>
      r
        .map((cell, i) => cell.padEnd(widths[i]!))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

type ListEntry = { path: string; size: string; mtime: string };

/**
 * Every page of one node's listing, and the partitions it covered. (All the partitions it
 * serves: naming the ones wanted in the query would pass an HTTP header's size with thousands.)
 */
async function listNode(
  node: string,
  prefix: string,
): Promise<{ entries: ListEntry[]; covered: number[]; partitionCount: number }> {
  const entries: ListEntry[] = [];
  let covered: number[] | undefined;
  let partitionCount = 0;
  let after: string | null = null;
  do {
    const query = new URLSearchParams({
      prefix,
      limit: '1000',
      ...(after === null ? {} : { after }),
    });
    const response = await request(node, 'GET', `/v1/files?${query}`);
    if (response.status !== 200) throw await failure(response);
    const page = (await response.json()) as {
      entries: ListEntry[];
      next: string | null;
      partitions: number[];
      partitionCount: number;
    };
    entries.push(...page.entries);
    // Pages answered while the node's holdings changed: only what every page covered counts.
    covered = covered === undefined ? page.partitions : covered.filter((p) => page.partitions.includes(p));
    partitionCount = page.partitionCount;
    after = page.next;
  } while (after !== null);
  const kept = new Set(covered);
  return {
    entries: entries.filter((e) => kept.has(partitionOf(e.path, partitionCount))),
    covered: [...kept],
    partitionCount,
  };
}

const allPartitions = (count: number) => Array.from({ length: count }, (_, p) => p);

const shown = (path: string) => (/[\x00-\x1f\x7f]/.test(path) ? JSON.stringify(path) : path);

async function run(argv: string[], out: Out, node: string): Promise<void> {
  const [command, ...rest] = argv;
  let parsed: { values: { ack?: string | undefined }; positionals: string[] };
  try {
    parsed = parseArgs({ args: rest, options: { ack: { type: 'string' } }, allowPositionals: true });
  } catch (error) {
    throw new CliError(`pfs: ${(error as Error).message}\n${USAGE}`, 2);
  }
  const { values, positionals } = parsed;
  switch (command) {
    case 'put': {
      const [given, remote] = positionals;
      if (!given || !remote) throw new CliError(USAGE, 2);
      const local = userPath(given, process.env);
      const info = await stat(local).catch(() => undefined);
      if (!info?.isFile()) throw new CliError(`${local} is not a readable file`);
      const response = await request(node, 'PUT', `/v1/files/${encodePath(remote)}`, {
        body: () => Readable.toWeb(createReadStream(local)) as ReadableStream,
        local,
        headers: { 'content-length': String(info.size), ...(values.ack ? { 'x-pfs-ack': values.ack } : {}) },
      });
      if (response.status !== 201) throw await failure(response);
      const result = (await response.json()) as { txidText: string; size: string; partition: number };
      out.print(
        result,
        () =>
          `stored ${shown(remote)}: ${result.size} bytes, txid ${result.txidText}, partition ${result.partition}`,
      );
      return;
    }
    case 'get': {
      const [remote, local] = positionals;
      if (!remote) throw new CliError(USAGE, 2);
      const response = await request(node, 'GET', `/v1/files/${encodePath(remote)}`);
      if (response.status !== 200 || response.body === null) throw await failure(response);
      const body = Readable.fromWeb(response.body as never);
      if (!local) {
        await pipeline(body, process.stdout);
        return;
      }
      await saveChecked(body, userPath(local, process.env), response.headers.get('etag'), remote);
      return;
    }
    case 'rm': {
      const [remote] = positionals;
      if (!remote) throw new CliError(USAGE, 2);
      const response = await request(node, 'DELETE', `/v1/files/${encodePath(remote)}`);
      if (response.status !== 200) throw await failure(response);
      const result = (await response.json()) as { txidText: string };
      out.print(result, () => `deleted ${shown(remote)}: txid ${result.txidText}`);
      return;
    }
    case 'ls': {
      const prefix = positionals[0] ?? '';
      // A node lists the partitions whose reads it answers; with a replication factor below the
      // node count the others are asked for the rest, and the lists merged in path order.
      const first = await listNode(node, prefix);
      const entries = first.entries;
      let missing = allPartitions(first.partitionCount).filter((p) => !first.covered.includes(p));
      if (missing.length > 0) {
        const status = (await (await request(node, 'GET', '/v1/status')).json()) as {
          nodeId: string;
          nodes: { id: string; url: string }[];
        };
        for (const other of status.nodes) {
          if (missing.length === 0) break;
          if (other.id === status.nodeId) continue;
          const listed = await listNode(other.url, prefix).catch(() => undefined);
          if (listed === undefined) continue;
          const taken = missing.filter((p) => listed.covered.includes(p));
          entries.push(
            ...listed.entries.filter((e) => taken.includes(partitionOf(e.path, listed.partitionCount))),
          );
          missing = missing.filter((p) => !taken.includes(p));
        }
        if (missing.length > 0) {
          throw new CliError(
            `no live node answers reads of partition(s) ${missing.join(', ')} right now (no master, or its nodes are catching up): retry shortly`,
          );
        }
        entries.sort((a, b) => compareStorePaths(a.path, b.path));
      }
      out.print({ entries }, () =>
        entries.length === 0
          ? '(no files)'
          : table([['SIZE', 'MODIFIED', 'PATH'], ...entries.map((e) => [e.size, e.mtime, shown(e.path)])]),
      );
      return;
    }
    case 'status': {
      type Status = {
        nodeId: string;
        partitions: {
          partition: number;
          master: string | null;
          generation: string;
          lastTxid: string;
          reported: Record<string, string>;
          replicaLagMs?: Record<string, number | null>;
          bootstrap?: BootstrapSummary | null;
        }[];
        nodes: { id: string; url: string }[];
      };
      const fetchStatus = async (url: string, timeoutMs: number) => {
        const response = await request(url, 'GET', '/v1/status', { signal: AbortSignal.timeout(timeoutMs) });
        if (response.status !== 200) throw await failure(response);
        return (await response.json()) as Status;
      };
      const status = await fetchStatus(node, ASKED_NODE_TIMEOUT_MS);
      // Lag in milliseconds is known only to each partition's master, and a new replica's bulk
      // copy only to that node: every other live node is asked too, once and all at once, each
      // for a short while (a frozen node may still hold its lease, and would hold this up).
      const answers = new Map<string, Status | undefined>(
        await Promise.all(
          status.nodes.map(
            async (n) =>
              [
                n.id,
                n.id === status.nodeId
                  ? status
                  : await fetchStatus(n.url, OTHER_NODE_TIMEOUT_MS).catch(() => undefined),
              ] as const,
          ),
        ),
      );
      const unanswered = [...answers].filter(([, answer]) => answer === undefined).map(([id]) => id);
      const masters = new Map<string, Status>();
      for (const p of status.partitions) {
        const answer = p.master === null ? undefined : answers.get(p.master);
        if (answer !== undefined) masters.set(p.master!, answer);
      }
      const copying = [...answers].flatMap(([id, answer]) =>
        (answer?.partitions ?? []).flatMap((p) =>
          p.bootstrap ? [{ node: id, partition: p.partition, progress: p.bootstrap }] : [],
        ),
      );
      const lagMsOf = (partition: number, master: string | null, id: string) =>
        masters.get(master ?? '')?.partitions.find((q) => q.partition === partition)?.replicaLagMs?.[id];
      out.print({ ...status, masters: Object.fromEntries(masters), copying, unanswered }, () => {
        const rows = [['PARTITION', 'GEN', 'MASTER', 'NODE', 'APPLIED', 'LAG (records)', 'LAG (ms)']];
        for (const p of status.partitions) {
          const masterApplied = BigInt(p.reported[p.master ?? ''] ?? p.lastTxid);
          for (const [id, applied] of Object.entries(p.reported).sort()) {
            const txid = BigInt(applied);
            const lag =
              txid >> 32n === masterApplied >> 32n
                ? (masterApplied & 0xffffffffn) - (txid & 0xffffffffn)
                : undefined;
            const ms = lagMsOf(p.partition, p.master, id);
            rows.push([
              String(p.partition),
              p.generation,
              p.master ?? '(none)',
              id === p.master ? `${id} *` : id,
              `${txid >> 32n}:${txid & 0xffffffffn}`,
              id === p.master ? '-' : lag === undefined ? 'other generation' : String(lag < 0n ? 0n : lag),
              id === p.master ? '-' : ms === undefined || ms === null ? '?' : String(Math.round(ms)),
            ]);
          }
        }
        const copies = copying.map(
          (c) =>
            `\n${c.node} is copying partition ${c.partition} from its master: ${describeBootstrap(c.progress)}`,
        );
        const silent = unanswered.map(
          (id) =>
            `\n${id} did not answer within ${OTHER_NODE_TIMEOUT_MS / 1000} s: its lag and copies are unknown`,
        );
        return `${table(rows)}\n\n${status.nodes.length} live node(s): ${status.nodes.map((n) => `${n.id} ${n.url}`).join(', ')}${copies.join('')}${silent.join('')}`;
      });
      return;
    }
    case 'quarantine': {
      if (positionals[0] !== 'ls') throw new CliError(USAGE, 2);
      const response = await request(node, 'GET', '/v1/quarantine');
      if (response.status !== 200) throw await failure(response);
      const body = (await response.json()) as {
        entries: {
          generation: string;
          txidText: string;
          kind: string;
          path: string;
          quarantinedAs: string | null;
        }[];
      };
      out.print(body, () =>
        body.entries.length === 0
          ? '(nothing in quarantine)'
          : table([
              ['GEN', 'TXID', 'OP', 'PATH', 'NOW AT'],
              ...body.entries.map((e) => [
                e.generation,
                e.txidText,
                e.kind,
                shown(e.path),
                e.quarantinedAs ?? '(deleted on the old master)',
              ]),
            ]),
      );
      return;
    }
    default:
      throw new CliError(USAGE, 2);
  }
}

async function main(): Promise<number> {
  let parsed: ReturnType<typeof parseArgs>;
  // `pnpm --filter node pfs -- put …` hands the script its `--` too.
  const args = process.argv.slice(2);
  if (args[0] === '--') args.shift();
  try {
    parsed = parseArgs({
      args,
      options: { node: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
      strict: false,
    });
  } catch (error) {
    process.stderr.write(`pfs: ${(error as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const argv = args.filter(
    (a, i, all) => a !== '--json' && a !== '--node' && all[i - 1] !== '--node' && !a.startsWith('--node='),
  );
  if (parsed.values.help || argv.length === 0) {
    process.stdout.write(`${USAGE}\n`);
    return argv.length === 0 && !parsed.values.help ? 2 : 0;
  }
  const json = parsed.values.json === true || !process.stdout.isTTY;
  const node = String(parsed.values.node ?? process.env.PFS_NODE ?? 'http://127.0.0.1:12001').replace(
    /\/$/,
    '',
  );
  if (!URL.canParse(node) || !/^https?:$/.test(new URL(node).protocol)) {
    process.stderr.write(
      `pfs: --node ${JSON.stringify(node)} is not an http:// URL: pass it as http://HOST:PORT\n`,
    );
    return 2;
  }
  const out: Out = {
    json,
    print: (value, render) => process.stdout.write(`${json || !render ? JSON.stringify(value) : render()}\n`),
  };
  try {
    await run(argv, out, node);
    return 0;
  } catch (error) {
    const exitCode = error instanceof CliError ? error.exitCode : 1;
    process.stderr.write(
      exitCode === 2 ? `${(error as Error).message}\n` : `pfs: ${(error as Error).message}\n`,
    );
    return exitCode;
  }
}

process.exitCode = await main();
