import { buildPullArgs, buildSyncArgs, encodeFileList, sourceKind } from '@pfs/rsync-invoker';
import { describe, expect, it } from 'vitest';

describe('encodeFileList', () => {
  it('writes every entry as ./<path>, NUL-terminated, bytes untouched', () => {
    const paths = ['a.txt', '#hash', ';semi', '-rf', 'new\nline', 'u\u0308nfd', 'dir/with space'];
    const list = encodeFileList(paths);
    expect(list.toString('utf8')).toBe(`${paths.map((p) => `./${p}`).join('\0')}\0`);
    expect(list.includes(Buffer.from('u\u0308nfd', 'utf8'))).toBe(true);
  });

  it.each([
    ['', 'is empty'],
    ['a\0b', 'contains NUL'],
    ['/etc/passwd', 'is absolute'],
    ['../escape', "'..'"],
    ['a/../../b', "'..'"],
  ])('refuses %j (%s)', (path, why) => {
    expect(() => encodeFileList(['ok', path])).toThrow(expect.objectContaining({ code: 'RSYNC_BAD_PATH' }));
    expect(() => encodeFileList([path])).toThrow(why);
  });

  it('accepts names that merely contain dots', () => {
    expect(() => encodeFileList(['..double-dot-prefix', 'a..b', '.hidden'])).not.toThrow();
  });
});

describe('buildPullArgs', () => {
  it('leaves the per-file fsync to a caller that asks to', () => {
    expect(buildPullArgs({ source: '/a', dest: '/b', count: 1, fsync: false })).not.toContain('--fsync');
    expect(buildPullArgs({ source: '/a', dest: '/b', count: 1, fsync: true })).toContain('--fsync');
  });

  it('writes temp files into the temp dir it is given, before the paths', () => {
    const args = buildPullArgs({ source: '/a', dest: '/b', count: 1, tempDir: '/b/.pfs/rsync-tmp/0' });
    expect(args.indexOf('--temp-dir=/b/.pfs/rsync-tmp/0')).toBeLessThan(args.indexOf('--'));
    expect(
      buildPullArgs({ source: '/a', dest: '/b', count: 1 }).some((a) => a.startsWith('--temp-dir')),
    ).toBe(false);
  });

  it('has the batch flags, max-delete = list length, and ends with -- source dest', () => {
    const args = buildPullArgs({ source: '/srv/a', dest: '/srv/b', count: 7 });
    expect(args).toEqual([
      '--files-from=-',
      '--from0',
      '--delete-missing-args',
      '--force',
      '--ignore-times',
      '--whole-file',
      '--times',
      '--perms',
      '--max-delete=7',
      '--timeout=10',
      '--fsync',
      '--itemize-changes',
      '--out-format=%i %b %n',
      '--',
      '/srv/a/',
      '/srv/b/',
    ]);
    expect(args).not.toContain('--links');
    expect(args).not.toContain('--inplace');
  });

  it('adds socket flags only for daemon sources and --rsh only for ssh', () => {
    const daemon = buildPullArgs({
      source: 'rsync://127.0.0.1:873/m',
      dest: 'd',
      count: 1,
      ioTimeoutSeconds: 4,
    });
    expect(daemon).toEqual(
      expect.arrayContaining(['--contimeout=3', '--sockopts=TCP_NODELAY', '--timeout=4']),
    );
    expect(daemon.at(-2)).toBe('rsync://127.0.0.1:873/m/');
    // Whole files, never the delta algorithm against an old copy.
    expect(daemon).toContain('--whole-file');
    const ssh = buildPullArgs({ source: 'pfs@host:/srv/store', dest: 'd', count: 1 });
    expect(ssh).toContain('--rsh=ssh');
    expect(ssh).not.toContain('--sockopts=TCP_NODELAY');
    const local = buildPullArgs({ source: '/x', dest: 'd', count: 1, maxDelete: 0, extraArgs: ['-v'] });
    expect(local.filter((a) => a.startsWith('--contimeout') || a.startsWith('--rsh'))).toEqual([]);
    expect(local).toContain('--max-delete=0');
    expect(local.indexOf('-v')).toBe(local.indexOf('--') - 1);
  });

  it('makes local paths absolute, so names with a colon or a dash stay local paths', () => {
    const args = buildPullArgs({ source: './a:b', dest: '-dest', count: 1 });
    expect(args.at(-2)).toBe(`${process.cwd()}/a:b/`);
    expect(args.at(-1)).toBe(`${process.cwd()}/-dest/`);
  });
});

describe('buildSyncArgs', () => {
  it('archives with delete, progress2 and excludes', () => {
    const args = buildSyncArgs({ source: 'host::mod', dest: '/d', exclude: ['*.tmp', '.pfs/'] });
    expect(args.slice(0, 8)).toEqual([
      '--archive',
      '--no-links',
      '--no-specials',
      '--no-devices',
      '--delete',
      '--numeric-ids',
      '--info=progress2',
      '--no-inc-recursive',
    ]);
    expect(args).toEqual(
      expect.arrayContaining(['--fsync', '--timeout=10', '--exclude=*.tmp', '--exclude=.pfs/']),
    );
    expect(args).toContain('--sockopts=TCP_NODELAY');
    expect(args.slice(-2)).toEqual(['host::mod/', '/d/']);
  });
});

describe('sourceKind', () => {
  it.each([
    ['rsync://h:1/m/', 'daemon'],
    ['h::m', 'daemon'],
    ['user@h:/srv', 'ssh'],
    ['h:srv', 'ssh'],
    ['/srv/a:b', 'local'],
    ['./a:b', 'local'],
    ['rel/dir', 'local'],
  ] as const)('%s is %s', (source, kind) => {
    expect(sourceKind(source)).toBe(kind);
  });
});
