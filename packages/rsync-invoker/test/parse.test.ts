import {
  parseItemizeLine,
  parseListLine,
  parseProgressLine,
  parseRsyncVersion,
  unescapeRsyncName,
} from '@pfs/rsync-invoker';
import { describe, expect, it } from 'vitest';
import { classifyPullMessage } from '../src/itemize.ts';

const line = (text: string) => Buffer.from(text, 'latin1');

describe('parseProgressLine', () => {
  it('parses a full progress2 line', () => {
    expect(parseProgressLine('      1,234,567  45%    1.23MB/s    0:00:01 (xfr#12, to-chk=3/20)')).toEqual({
      bytes: 1234567,
      percent: 45,
      rate: '1.23MB/s',
      elapsed: '0:00:01',
      transferredFiles: 12,
      toCheck: 3,
      total: 20,
    });
  });

  it('parses the early form without the parenthesis, and ir-chk', () => {
    expect(parseProgressLine('          5,000   0%    0.00kB/s    0:00:00  ')).toEqual({
      bytes: 5000,
      percent: 0,
      rate: '0.00kB/s',
      elapsed: '0:00:00',
    });
    expect(parseProgressLine('  0 100%  0.00kB/s  0:00:00 (xfr#0, ir-chk=1000/1234)')).toMatchObject({
      bytes: 0,
      percent: 100,
      toCheck: 1000,
      total: 1234,
    });
    expect(parseProgressLine('   10.000.000  99%  128.75MB/s  123:04:05 (xfr#7, to-chk=0/9)')).toMatchObject({
      bytes: 10_000_000,
      elapsed: '123:04:05',
    });
  });

  it('ignores everything else', () => {
    for (const text of ['', 'sending incremental file list', 'rsync error: x (code 23)', '  45% 1MB/s']) {
      expect(parseProgressLine(text)).toBeUndefined();
    }
  });
});

describe('itemize output', () => {
  it('undoes \\#ooo escapes byte-wise and decodes UTF-8', () => {
    expect(unescapeRsyncName(line('new\\#012line'))).toBe('new\nline');
    expect(unescapeRsyncName(line('back\\#134#012slash'))).toBe('back\\#012slash');
    expect(unescapeRsyncName(line('\\#303\\#274n'))).toBe('\u00fcn');
    expect(unescapeRsyncName(Buffer.from('u\u0308nfd', 'utf8'))).toBe('u\u0308nfd');
  });

  it('classifies received files, deletions and the rest', () => {
    expect(parseItemizeLine(line('>f+++++++++ dir/a b'))).toEqual({ kind: 'transferred', path: 'dir/a b' });
    expect(parseItemizeLine(line('>f..t...... -rf'))).toEqual({ kind: 'transferred', path: '-rf' });
    expect(parseItemizeLine(line('*deleting   dir/sub/'))).toEqual({ kind: 'deleted', path: 'dir/sub' });
    expect(parseItemizeLine(line('cd+++++++++ dir/'))).toEqual({ kind: 'other', path: 'dir' });
    expect(parseItemizeLine(line('.d..t...... ./'))).toEqual({ kind: 'other', path: '.' });
    expect(parseItemizeLine(line('skipping non-regular file "x"'))).toBeUndefined();
    expect(parseItemizeLine(line(''))).toBeUndefined();
  });

  it('reads lines with a byte count before the name (late logging)', () => {
    const late = (text: string) => parseItemizeLine(line(text), { withBytes: true });
    expect(late('>f+++++++++ 45 12 monkeys.txt')).toEqual({ kind: 'transferred', path: '12 monkeys.txt' });
    expect(late('*deleting   0 dir/sub/')).toEqual({ kind: 'deleted', path: 'dir/sub' });
    expect(late('cd+++++++++ 0 dir/')).toEqual({ kind: 'other', path: 'dir' });
    expect(late('>f+++++++++ name-without-count')).toBeUndefined();
  });
});

describe('parseListLine', () => {
  it('reads names, odd ones included, and what kind of entry each is', () => {
    const listed = (text: string) => parseListLine(line(text));
    expect(listed('drwxr-xr-x          4,096 2026/11/26 00:55:17 .')).toBeUndefined();
    for (const [text, name, kind] of [
      ['drwxr-xr-x         20,480 2026/11/26 00:37:31 d0', 'd0', 'directory'],
      ['-rw-r--r--              0 2026/11/26 00:55:17 #hash', '#hash', 'file'],
      ['-rw-r--r--      1.234.567 2026/11/26 00:55:17  two  spaces ', ' two  spaces ', 'file'],
      ['-rw-r--r--              0 2026/11/26 00:55:17 new\\#012line \\#303\\#274', 'new\nline ü', 'file'],
      ['lrwxrwxrwx              6 2026/11/26 00:55:17 link', 'link', 'other'],
    ])
      expect(listed(text!)).toEqual({ name, kind });
    // Not UTF-8: it could not be listed back to rsync byte for byte.
    expect(listed('drwxr-xr-x          4,096 2026/11/26 00:55:17 bad\\#377')?.kind).toBe('other');
    expect(listed('receiving file list ... done')).toBeUndefined();
  });
});

describe('parseRsyncVersion', () => {
  it('reads the first line of rsync --version', () => {
    expect(parseRsyncVersion('rsync  version 3.5.0  protocol version 32\nCopyright')).toBe('3.5.0');
    expect(parseRsyncVersion('rsync  version v3.2.7  protocol version 31')).toBe('3.2.7');
    expect(parseRsyncVersion('openrsync: protocol version 29')).toBeUndefined();
  });
});

describe('classifyPullMessage', () => {
  const prefixes = ['/', ''];
  it('names the listed paths rsync could not stat for a file in their way, and nothing else as harmless', () => {
    expect(
      classifyPullMessage(
        line('rsync: [sender] link_stat "w4/t4/u2/v0" (in filestore) failed: Not a directory (20)'),
        prefixes,
      ),
    ).toEqual({ kind: 'not-a-directory', path: 'w4/t4/u2/v0' });
    // The errno, not its text, which follows the daemon's locale.
    expect(
      classifyPullMessage(
        line('rsync: [sender] link_stat "/a/b" (in m) failed: Kein Verzeichnis (20)'),
        prefixes,
      ),
    ).toEqual({ kind: 'not-a-directory', path: 'a/b' });
    expect(classifyPullMessage(line('file has vanished: "/x/y" (in m)'), prefixes)).toEqual({
      kind: 'vanished',
      path: 'x/y',
    });
    expect(
      classifyPullMessage(
        line(
          'rsync error: some files/attrs were not transferred (see previous errors) (code 23) at main.c(1956) [generator=3.5.0]',
        ),
      ),
    ).toEqual({ kind: 'partial-summary' });
    expect(classifyPullMessage(line(''))).toEqual({ kind: 'blank' });
    // Errors of other files, with or without rsync's prefix, and other errnos of link_stat.
    for (const other of [
      'rsync: [sender] link_stat "/a/b" (in m) failed: No such file or directory (2)',
      'rsync: [sender] link_stat "/a/b" (in m) failed: Permission denied (13)',
      'ERROR: a/b failed verification -- update discarded.',
      'recv_files: a/b is a directory',
      'could not make way for new regular file: a/b',
      'rsync: [receiver] mkstemp "/d/.b.XXXXXX" failed: No space left on device (28)',
      'rsync error: some files/attrs were not transferred (see previous errors) (code 24) at main.c(1956)',
    ])
      expect(classifyPullMessage(line(other), prefixes)).toEqual({ kind: 'other' });
  });
});
