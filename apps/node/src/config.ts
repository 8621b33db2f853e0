import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { MAX_NEW_PATH_BYTES } from '@pfs/filestore';
import { z } from 'zod';
import { userPath } from './invocation-dir.ts';

/**
 * Node configuration: one zod schema; a config file (--config FILE, JSON), then PFS_* environment
 * variables, then command-line flags, each overriding the one before. A bad value stops the node
 * at start with the field name and the reason.
 */
/** A true/false flag, as a JSON boolean or as the strings a command line or environment gives. */
const booleanFlag = z
  .union([z.boolean(), z.enum(['true', 'false', '1', '0'])], { error: 'true or false (or 1 or 0)' })
  .transform((v) => v === true || v === 'true' || v === '1');

/**
 * Longest data dir: `<dataDir>/filestore/.pfs/bulk-copy/`, a store path of MAX_NEW_PATH_BYTES and a
 * temp name beside its last component all have to fit in Linux's 4095-byte path.
 */
export const MAX_DATA_DIR_BYTES = 2048;

/**
 * A whole number, as a JSON number or as decimal digits (a flag or an environment variable).
 * Not z.coerce.number, which takes `true` for 1, `null` for 0 and "0x10" for 16: a partition
 * count, once recorded in etcd, is the cluster's for good.
 */
/** The longest delay setTimeout takes; a longer one runs after 1 ms. */
const MAX_TIMER_MS = 2_147_483_647;

function wholeNumber(min: number, max = Number.MAX_SAFE_INTEGER) {
  return z
    .union([z.number(), z.string().trim().regex(/^\d+$/).transform(Number)], {
      error: 'a whole number (decimal digits)',
    })
    .pipe(z.number().int().min(min).max(max));
}

export const ConfigSchema = z
  .object({
    nodeId: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/, 'letters, digits, ".", "_" and "-" only')
      .optional(),
    // Both where the node listens and where its peers reach it (redirects, feeds, rsync URLs).
    host: z
      .string()
      .min(1)
      .refine((h) => !h.includes(':'), {
        error: 'IPv6 addresses are not supported: give an IPv4 address or a host name its peers can reach',
      })
      .refine((h) => h !== '0.0.0.0', {
        error:
          'peers reach this node at this address, and 0.0.0.0 reaches no one: give the address of this machine',
      })
      .refine((h) => /^[A-Za-z0-9.-]+$/.test(h), {
        error: 'an IPv4 address or a host name (letters, digits, ".", "-")',
      })
      .default('127.0.0.1'),
    httpPort: wholeNumber(1, 65535).default(12001),
    rsyncPort: wholeNumber(1, 65535).optional(),
    dataDir: z.string().min(1).optional(),
    etcd: z
      .union([z.string(), z.array(z.string())])
      .transform((v) => (Array.isArray(v) ? v : v.split(',')).map((s) => s.trim()).filter(Boolean))
      .pipe(
        z
          .array(
            z.url({ protocol: /^https?$/, error: 'an http:// or https:// URL, as http://127.0.0.1:2379' }),
          )
          .min(1),
      )
      .default(['http://127.0.0.1:2379']),
    cluster: z
      .string()
      .regex(/^[A-Za-z0-9._-]+$/)
      .default('pfs'),
    partitions: wholeNumber(1, 4096).default(1),
    replicationFactor: wholeNumber(0, 1024).default(0),
    placementGraceMs: wholeNumber(0, 86_400_000).default(30_000),
    leaseTtlSeconds: wholeNumber(1, 300).default(2),
    rsyncBin: z.string().default('rsync'),
    maxFileBytes: wholeNumber(1).default(1024 * 1024 * 1024),
    ackMode: z.enum(['local', 'one', 'all']).default('local'),
    ackTimeoutMs: wholeNumber(0, 600_000).default(5000),
    bodyIdleTimeoutMs: wholeNumber(100, 3_600_000).default(30_000),
    bodyMinBytesPerSecond: wholeNumber(1).default(240),
    watch: booleanFlag.default(true),
    // setTimeout's limit: a longer delay runs after 1 ms.
    watchSettleMs: wholeNumber(0, MAX_TIMER_MS).default(100),
    revokeRefusingMaster: booleanFlag.default(false),
    reconcileIntervalMs: wholeNumber(0, MAX_TIMER_MS).default(60_000),
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  })
  .transform((c, ctx) => {
    const nodeId = c.nodeId ?? `${c.host === '127.0.0.1' ? 'localhost' : c.host}_${c.httpPort}`;
    const rsyncPort = c.rsyncPort ?? c.httpPort + 10_000;
    if (rsyncPort > 65535) {
      ctx.issues.push({
        code: 'custom',
        input: c.httpPort,
        path: ['rsyncPort'],
        message: `the default, http port + 10000 = ${rsyncPort}, is above 65535: set rsyncPort (--rsync-port)`,
      });
      return z.NEVER;
    }
    // Else the rsync daemon, started first, takes the port and the HTTP server's start reports
    // it held by something that is gone once the start is undone.
    if (rsyncPort === c.httpPort) {
      ctx.issues.push({
        code: 'custom',
        input: rsyncPort,
        path: ['rsyncPort'],
        message: `it is the http port too (${rsyncPort}): give --rsync-port another port`,
      });
      return z.NEVER;
    }
    const dataDir = resolve(c.dataDir ?? `/tmp/${nodeId}`);
    if (Buffer.byteLength(dataDir) > MAX_DATA_DIR_BYTES) {
      ctx.issues.push({
        code: 'custom',
        input: dataDir,
        path: ['dataDir'],
        message: `it is ${Buffer.byteLength(dataDir)} bytes long; with store paths of up to ${MAX_NEW_PATH_BYTES} bytes under it, file names would pass Linux's 4095-byte limit: use a data dir of at most ${MAX_DATA_DIR_BYTES} bytes`,
      });
      return z.NEVER;
    }
    // The node's rsyncd.conf names the data dir in `path = …` lines: rsync reads a line break as
    // the end of the value and expands `%NAME%` as an environment variable, so the daemon would
    // start and then refuse every pull ("chdir failed") while replicas retried for ever.
    const unsafe = /[\u0000-\u001f\u007f%]/.exec(dataDir);
    if (unsafe !== null) {
      ctx.issues.push({
        code: 'custom',
        input: dataDir,
        path: ['dataDir'],
        message: `it holds ${JSON.stringify(unsafe[0])}, which the node's rsync daemon config cannot hold (rsync reads a control character as a line end and expands "%NAME%"): use a data dir without control characters or "%"`,
      });
      return z.NEVER;
    }
    return { ...c, nodeId, rsyncPort, dataDir };
  });

/** The fields a config file may set: the schema's, which are not always the flags' camelCase. */
const CONFIG_FIELDS = Object.keys(ConfigSchema.in.shape);

export type NodeConfig = z.output<typeof ConfigSchema>;

export class ConfigError extends Error {
  readonly code = 'BAD_CONFIG';
}

export const FLAGS = {
  config: { type: 'string' },
  'node-id': { type: 'string' },
  host: { type: 'string' },
  'http-port': { type: 'string' },
  'rsync-port': { type: 'string' },
  'data-dir': { type: 'string' },
  etcd: { type: 'string' },
  cluster: { type: 'string' },
  partitions: { type: 'string' },
  'replication-factor': { type: 'string' },
  'placement-grace-ms': { type: 'string' },
  'lease-ttl': { type: 'string' },
  'rsync-bin': { type: 'string' },
  'max-file-bytes': { type: 'string' },
  'log-level': { type: 'string' },
  ack: { type: 'string' },
  watch: { type: 'string' },
  'revoke-refusing-master': { type: 'string' },
  'ack-timeout-ms': { type: 'string' },
  'body-idle-timeout-ms': { type: 'string' },
  'body-min-bytes-per-second': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

const FIELD_OF_FLAG: Record<string, string> = {
  'node-id': 'nodeId',
  host: 'host',
  'http-port': 'httpPort',
  'rsync-port': 'rsyncPort',
  'data-dir': 'dataDir',
  etcd: 'etcd',
  cluster: 'cluster',
  partitions: 'partitions',
  'replication-factor': 'replicationFactor',
  'placement-grace-ms': 'placementGraceMs',
  'lease-ttl': 'leaseTtlSeconds',
  'rsync-bin': 'rsyncBin',
  'max-file-bytes': 'maxFileBytes',
  'log-level': 'logLevel',
  ack: 'ackMode',
  watch: 'watch',
  'revoke-refusing-master': 'revokeRefusingMaster',
  'ack-timeout-ms': 'ackTimeoutMs',
  'body-idle-timeout-ms': 'bodyIdleTimeoutMs',
  'body-min-bytes-per-second': 'bodyMinBytesPerSecond',
};

export const USAGE = `usage: pnpm --filter node start -- [options]
  --node-id ID          default <host>_<http-port> (localhost_<http-port> on 127.0.0.1)
  --host HOST           address to bind and advertise (default 127.0.0.1)
  --http-port N         file server and feed (default 12001)
  --rsync-port N        rsync daemon (default http-port + 10000)
  --data-dir DIR        filestore/, changelog/, checkpoint/, quarantine/ (default /tmp/<node-id>)
  --etcd URLS           comma-separated etcd endpoints (default http://127.0.0.1:2379)
  --cluster NAME        key prefix /pfs/<name>/ (default pfs)
  --partitions N        partition count, fixed per cluster (default 1)
  --replication-factor N
                        how many nodes hold each partition, fixed per cluster (default 0: every
                        node; below the node count, adding nodes adds capacity)
  --placement-grace-ms N
                        how long a node that left still counts for the placement, so that one
                        restarting finds its partitions in place (default 30000)
  --lease-ttl SECONDS   etcd lease TTL (default 2)
  --rsync-bin PATH      the rsync to run (default rsync, from PATH)
  --max-file-bytes N    largest file a PUT may store; larger ones get 413 (default 1 GiB)
  --log-level LEVEL     fatal, error, warn, info, debug, trace or silent (default info)
  --ack MODE            default ack of writes: local (fsynced here), one (and on a replica), all
  --ack-timeout-ms N    how long a write waits for its ack before answering 504 (default 5000)
  --body-idle-timeout-ms N
                        drop a PUT whose body sends nothing for this long, and a GET whose
                        reader takes nothing for this long (default 30000)
  --body-min-bytes-per-second N
                        drop a PUT whose body, after that first allowance, comes slower than
                        this on average (default 240)
  --watch [true|false]  watch filestore/ for files dropped in by hand (default true; false leaves
                        them to the periodic reconcile scan and saves CPU under heavy API writes)
  --revoke-refusing-master [true|false]
                        when the master's HTTP address refuses connections (its process is gone),
                        revoke its etcd lease at once instead of waiting out the TTL (default false:
                        see docs/operations.md for what it trades)
  --help, -h            this text
  --config FILE         JSON file of fields nodeId, host, httpPort, rsyncPort, dataDir, etcd,
                        cluster, partitions, replicationFactor, placementGraceMs,
                        leaseTtlSeconds, rsyncBin,
                        maxFileBytes, ackMode, ackTimeoutMs, bodyIdleTimeoutMs,
                        bodyMinBytesPerSecond, watch,
                        watchSettleMs, revokeRefusingMaster, reconcileIntervalMs, logLevel (an
                        unknown field stops the node; watchSettleMs: ms a dropped-in file must
                        be quiet before it is logged, default 100; reconcileIntervalMs: ms between
                        a master's walks of its store, default 60000, 0 only at promotion)
Environment: PFS_NODE_ID, PFS_HOST, PFS_HTTP_PORT, PFS_RSYNC_PORT, PFS_DATA_DIR, PFS_ETCD,
PFS_CLUSTER, PFS_PARTITIONS, PFS_REPLICATION_FACTOR, PFS_PLACEMENT_GRACE_MS, PFS_LEASE_TTL,
PFS_RSYNC_BIN, PFS_MAX_FILE_BYTES, PFS_LOG_LEVEL, PFS_ACK, PFS_ACK_TIMEOUT_MS,
PFS_BODY_IDLE_TIMEOUT_MS, PFS_BODY_MIN_BYTES_PER_SECOND, PFS_WATCH, PFS_REVOKE_REFUSING_MASTER,
PFS_CONFIG (file < environment < flags).`;

/** The on/off flags, which also take a value (`--watch=false`, `--watch false`). */
const SWITCHES = new Set(['--watch', '--revoke-refusing-master']);

/**
 * `argv` with an on/off flag given bare (`--revoke-refusing-master`, last or before another
 * flag, as one writes a switch) read as `=true` (pure): parsed as taking a value, it would take
 * the next flag for it, or stop the node for lack of one.
 */
export function withBareSwitches(argv: readonly string[]): string[] {
  return argv.map((arg, i) =>
    SWITCHES.has(arg) && (argv[i + 1] === undefined || argv[i + 1]!.startsWith('-')) ? `${arg}=true` : arg,
  );
}

/** Whether `dir` is a data dir a node has used (it has partition logs). */
function holdsData(dir: string): boolean {
  return existsSync(join(dir, 'changelog'));
}

/** Builds the config from argv, env and an optional file; throws ConfigError with a one-line reason. */
export function loadConfig(argv: string[], env: NodeJS.ProcessEnv): NodeConfig & { help: boolean } {
  let parsed: ReturnType<typeof parseArgs<{ options: typeof FLAGS }>>;
  try {
    parsed = parseArgs({
      args: withBareSwitches(argv),
      options: FLAGS,
      allowPositionals: false,
      strict: true,
    });
  } catch (error) {
    throw new ConfigError(`${(error as Error).message}: see --help`);
  }
  const values = parsed.values as Record<string, string | boolean | undefined>;
  // Help is what one asks for when a setting is wrong: printed whatever the rest says.
  if (values.help === true) return { ...loadConfig([], {}), help: true };
  let fromFile: Record<string, unknown> = {};
  const given = (values.config as string | undefined) ?? env.PFS_CONFIG;
  const file = given === undefined ? undefined : userPath(given, env);
  if (file !== undefined) {
    try {
      fromFile = JSON.parse(readFileSync(file, 'utf8'));
    } catch (error) {
      throw new ConfigError(
        `config file ${file} is unreadable (${(error as Error).message}): fix or remove it`,
      );
    }
    if (typeof fromFile !== 'object' || fromFile === null || Array.isArray(fromFile)) {
      throw new ConfigError(
        `config file ${file} holds ${JSON.stringify(fromFile)}, not a JSON object of fields: write it as {"httpPort": 12001, …}`,
      );
    }
  }
  const unknown = Object.keys(fromFile).filter((key) => !CONFIG_FIELDS.includes(key));
  if (unknown.length > 0) {
    throw new ConfigError(
      `config file ${file} has unknown field ${JSON.stringify(unknown[0])}: use ${CONFIG_FIELDS.join(', ')}`,
    );
  }
  // Where each field's value came from, for the error: the field name alone does not say
  // which of a flag, a variable or a file to fix.
  const origin = new Map<string, string>(
    Object.keys(fromFile).map((field) => [field, `config file ${file}`]),
  );
  const fromEnv: Record<string, unknown> = {};
  for (const [flag, field] of Object.entries(FIELD_OF_FLAG)) {
    const name = `PFS_${flag.toUpperCase().replaceAll('-', '_')}`;
    if (env[name] !== undefined && env[name] !== '') {
      fromEnv[field] = env[name];
      origin.set(field, name);
    }
  }
  const fromFlags: Record<string, unknown> = {};
  for (const [flag, field] of Object.entries(FIELD_OF_FLAG)) {
    if (values[flag] !== undefined) {
      fromFlags[field] = values[flag];
      origin.set(field, `--${flag}`);
    }
  }
  const merged: Record<string, unknown> = { ...fromFile, ...fromEnv, ...fromFlags };
  // A relative data dir is the user's, wherever the agent runs (see invocationDirectory).
  if (typeof merged.dataDir === 'string' && merged.dataDir !== '') {
    const given = merged.dataDir;
    const now = userPath(given, env);
    merged.dataDir = now;
    // Before, it was taken from apps/node, where pnpm runs the script: a node started as it was
    // would come up on an empty data dir, copy everything again, or, with the whole cluster
    // restarted so, leave every partition without a node that may stand.
    const before = resolve(given);
    if (before !== now && holdsData(before) && !holdsData(now)) {
      throw new ConfigError(
        `--data-dir ${given} is taken from where the command was typed, ${now}, which holds no PFS data, while ${before} (from apps/node, as before) does: pass ${before} to keep using it`,
      );
    }
  }
  const result = ConfigSchema.safeParse(merged);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    const field = String(issue.path[0] ?? '');
    const from = origin.get(field);
    throw new ConfigError(
      `bad config value for ${issue.path.join('.') || 'config'}${from === undefined ? '' : ` (${from})`}: ${issue.message}`,
    );
  }
  return { ...result.data, help: false };
}
