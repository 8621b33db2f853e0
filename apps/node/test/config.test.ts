import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.ts';

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
    expect(loadConfig([], {})).toMatchObject({ watch: true, ackMode: 'local', ackTimeoutMs: 5000 });
  });

  it.each([
    [['--http-port', '70000'], /^bad config value for httpPort: /],
    [['--partitions', '0'], /^bad config value for partitions: /],
    [['--etcd', 'not a url'], /^bad config value for etcd/],
    [['--node-id', '../x'], /^bad config value for nodeId: letters, digits/],
    [['--bogus'], /Unknown option '--bogus'.*: see --help$/],
    [['--ack', 'most'], /^bad config value for ackMode: /],
    [['--watch', 'maybe'], /^bad config value for watch: /],
  ])('names the field and the reason for %j', (argv, message) => {
    expect(() => loadConfig(argv, {})).toThrow(message);
  });
});
