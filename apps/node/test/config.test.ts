import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ConfigSchema, FLAGS, loadConfig, USAGE } from '../src/config.ts';

const APP_DIR = fileURLToPath(new URL('..', import.meta.url));

/** Runs `test` with a new temp dir, removed after it however it ends. */
async function inTempDir(test: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'pfs-config-'));
  try {
    await test(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

describe('node config', () => {
  it('defaults like the seed: id from the port, data dir under /tmp', () => {
    const config = loadConfig([], {});
    expect(config).toMatchObject({
      nodeId: 'localhost_12001',
      httpPort: 12001,
      rsyncPort: 22001,
      dataDir: '/tmp/localhost_12001',
      etcd: ['http://127.0.0.1:2379'],
      partitions: 1,
      leaseTtlSeconds: 2,
    });
  });

  it('takes flags over environment', () => {
    const config = loadConfig(['--http-port', '12002', '--etcd', 'http://a:1,http://b:2'], {
      PFS_HTTP_PORT: '13000',
      PFS_PARTITIONS: '4',
    });
    expect(config).toMatchObject({ httpPort: 12002, partitions: 4, etcd: ['http://a:1', 'http://b:2'] });
  });

  it('reads booleans and ack modes', () => {
    expect(loadConfig(['--watch', 'false', '--ack', 'one'], {})).toMatchObject({
      watch: false,
      ackMode: 'one',
    });
    expect(loadConfig([], { PFS_WATCH: '0' })).toMatchObject({ watch: false });
    // Bare, as a switch is written: on, without taking the next flag for its value.
    expect(loadConfig(['--revoke-refusing-master', '--watch=false'], {})).toMatchObject({
      revokeRefusingMaster: true,
      watch: false,
    });
    expect(loadConfig(['--watch', '--http-port', '12005'], { PFS_WATCH: 'false' })).toMatchObject({
      watch: true,
      httpPort: 12005,
    });
    expect(loadConfig(['--revoke-refusing-master'], {})).toMatchObject({ revokeRefusingMaster: true });
    expect(loadConfig([], {})).toMatchObject({ watch: true, ackMode: 'local', ackTimeoutMs: 5000 });
  });

  it.each([
    [['--http-port', '70000'], /^bad config value for httpPort \(--http-port\): /],
    [['--partitions', '0'], /^bad config value for partitions \(--partitions\): /],
    [['--etcd', 'not a url'], /^bad config value for etcd.0 \(--etcd\): /],
    [['--node-id', '../x'], /^bad config value for nodeId \(--node-id\): letters, digits/],
    [['--bogus'], /Unknown option '--bogus'.*: see --help$/],
    [['--ack', 'most'], /^bad config value for ackMode \(--ack\): /],
    [['--watch', 'maybe'], /^bad config value for watch \(--watch\): true or false \(or 1 or 0\)$/],
    [
      ['--etcd', 'localhost:2379'],
      /^bad config value for etcd.*: an http:\/\/ or https:\/\/ URL, as http:\/\/127\.0\.0\.1:2379$/,
    ],
    [['--etcd', '127.0.0.1:2379'], /^bad config value for etcd.*: an http:\/\/ or https:\/\/ URL/],
    [
      ['--host', '::1'],
      /^bad config value for host \(--host\): IPv6 addresses are not supported: give an IPv4 address or a host name its peers can reach$/,
    ],
    [
      ['--host', '0.0.0.0'],
      /^bad config value for host \(--host\): peers reach this node at this address, and 0\.0\.0\.0 reaches no one: give the address of this machine$/,
    ],
    [['--host', 'a b'], /^bad config value for host \(--host\): an IPv4 address or a host name/],
    [['--max-file-bytes', '0'], /^bad config value for maxFileBytes \(--max-file-bytes\): /],
    [
      ['--data-dir', `/${'d'.repeat(250)}`.repeat(9)],
      /^bad config value for dataDir \(--data-dir\): it is 2259 bytes long; with store paths of up to 1024 bytes under it, file names would pass Linux's 4095-byte limit: use a data dir of at most 2048 bytes$/,
    ],
    [
      ['--data-dir', '/srv/pfs/50%HOME%'],
      /^bad config value for dataDir \(--data-dir\): it holds "%", which the node's rsync daemon config cannot hold \(rsync reads a control character as a line end and expands "%NAME%"\): use a data dir without control characters or "%"$/,
    ],
    [
      ['--data-dir', '/srv/pfs\nnode'],
      /^bad config value for dataDir \(--data-dir\): it holds "\\n", which /,
    ],
    [
      ['--http-port', '12001', '--rsync-port', '12001'],
      /^bad config value for rsyncPort \(--rsync-port\): it is the http port too \(12001\): give --rsync-port another port$/,
    ],
    [
      ['--http-port', '60000'],
      /^bad config value for rsyncPort: the default, http port \+ 10000 = 70000, is above 65535: set rsyncPort \(--rsync-port\)$/,
    ],
  ])('names the field and the reason for %j', (argv, message) => {
    expect(() => loadConfig(argv, {})).toThrow(message);
  });

  it('takes a high http port with an rsync port of its own', () => {
    expect(loadConfig(['--http-port', '60000', '--rsync-port', '60001'], {})).toMatchObject({
      httpPort: 60000,
      rsyncPort: 60001,
    });
  });

  it('reads a config file of the schema fields, and stops at a field it does not know', async () => {
    await inTempDir(async (dir) => {
      const file = join(dir, 'node.json');
      await writeFile(file, JSON.stringify({ leaseTtlSeconds: 5, ackMode: 'all', httpPort: 12005 }));
      expect(loadConfig(['--config', file], {})).toMatchObject({
        leaseTtlSeconds: 5,
        ackMode: 'all',
        httpPort: 12005,
      });
      // The flags' camelCase is not always the field's: --lease-ttl sets leaseTtlSeconds.
      await writeFile(file, JSON.stringify({ leaseTtl: 5, ackMode: 'all' }));
      expect(() => loadConfig(['--config', file], {})).toThrow(
        new RegExp(`^config file ${file} has unknown field "leaseTtl": use nodeId, host, .*leaseTtlSeconds`),
      );
    });
  });

  it('refuses a config file that is not a JSON object, naming the file', async () => {
    await inTempDir(async (dir) => {
      const file = join(dir, 'node.json');
      for (const text of ['null', '[]', '42']) {
        await writeFile(file, text);
        expect(() => loadConfig(['--config', file], {})).toThrow(
          new RegExp(
            `^config file ${file} holds ${text.replace('[', '\\[').replace(']', '\\]')}, not a JSON object of fields`,
          ),
        );
      }
    });
  });

  it('takes a relative data dir and config file from where the user ran `pnpm --filter node start`', async () => {
    await inTempDir(async (dir) => {
      await writeFile(join(dir, 'node.json'), JSON.stringify({ httpPort: 12007 }));
      // pnpm runs the script in apps/node (where these tests run) and names the user's
      // directory in INIT_CWD.
      const ownPackage = join(APP_DIR, 'package.json');
      const env = { INIT_CWD: dir, npm_package_json: ownPackage, npm_lifecycle_event: 'start' };
      expect(loadConfig(['--config', 'node.json', '--data-dir', 'data'], env)).toMatchObject({
        httpPort: 12007,
        dataDir: join(dir, 'data'),
      });
      // Inherited by what another package's script starts, or left in a shell: the working
      // directory counts.
      const elsewhere = {
        INIT_CWD: dir,
        npm_package_json: join(dir, 'package.json'),
        npm_lifecycle_event: 'fetch',
      };
      for (const inherited of [elsewhere, { INIT_CWD: dir }]) {
        expect(loadConfig(['--data-dir', 'data'], inherited).dataDir).toBe(join(process.cwd(), 'data'));
      }
      // A data dir that was taken from apps/node before, and holds a node's data there: named.
      const old = await mkdtemp(join(APP_DIR, '.pfs-old-data-'));
      try {
        await mkdir(join(old, 'changelog'));
        const given = basename(old);
        expect(() => loadConfig(['--data-dir', given], env)).toThrow(
          `--data-dir ${given} is taken from where the command was typed, ${join(dir, given)}, which holds no PFS data, while ${old} (from apps/node, as before) does: pass ${old} to keep using it`,
        );
      } finally {
        await rm(old, { recursive: true, force: true });
      }
    });
  });

  it('takes numbers as numbers or decimal digits only, and names where a bad one came from', async () => {
    await inTempDir(async (dir) => {
      const file = join(dir, 'node.json');
      // z.coerce would have read these as 1, 0 and 16.
      for (const [value, field] of [
        [true, 'partitions'],
        [null, 'replicationFactor'],
        ['0x10', 'partitions'],
      ] as const) {
        await writeFile(file, JSON.stringify({ [field]: value }));
        expect(() => loadConfig(['--config', file], {})).toThrow(
          `bad config value for ${field} (config file ${file}): a whole number (decimal digits)`,
        );
      }
      // Past setTimeout's limit a delay would run after 1 ms: a reconcile walk without pause.
      await writeFile(file, JSON.stringify({ reconcileIntervalMs: 2 ** 31 }));
      expect(() => loadConfig(['--config', file], {})).toThrow(
        /^bad config value for reconcileIntervalMs \(config file .*\): Too big/,
      );
      expect(() => loadConfig([], { PFS_LEASE_TTL: '0' })).toThrow(
        /^bad config value for leaseTtlSeconds \(PFS_LEASE_TTL\): Too small/,
      );
      await writeFile(file, JSON.stringify({ partitions: 8, leaseTtlSeconds: 5 }));
      expect(loadConfig(['--config', file, '--http-port', ' 12009 '], { PFS_PARTITIONS: '4' })).toMatchObject(
        {
          partitions: 4,
          leaseTtlSeconds: 5,
          httpPort: 12009,
        },
      );
    });
  });

  it('gives its help however wrong the other settings are', () => {
    expect(
      loadConfig(['--help', '--http-port', 'x'], { PFS_PARTITIONS: 'many', PFS_CONFIG: '/nonexistent' }).help,
    ).toBe(true);
  });

  it('lists every flag and its environment variable in its usage', () => {
    for (const flag of Object.keys(FLAGS)) {
      expect(USAGE).toContain(`--${flag}`);
      if (flag !== 'help') expect(USAGE).toContain(`PFS_${flag.toUpperCase().replaceAll('-', '_')}`);
    }
  });

  it('lists every config file field in its usage', () => {
    for (const field of Object.keys(ConfigSchema.in.shape)) expect(USAGE).toContain(field);
  });
});
