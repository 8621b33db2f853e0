import {
  appendFile,
  type FileHandle,
  mkdir,
  open,
  readdir,
  readFile,
  rm,
  stat,
  writeFile,
} from 'node:fs/promises';
import { join } from 'node:path';
import {
  formatTxId,
  fsyncDir,
  makeTxId,
  readCheckpoint,
  scanFrames,
  TxLog,
  type TxlogError,
  writeCheckpoint,
} from '@pfs/txlog';
import { describe, expect, it, vi } from 'vitest';
import { put, tempDir } from './helpers.ts';

async function collect(log: TxLog, after = 0n) {
  const out = [];
  for await (const record of log.readFrom(after)) out.push(record);
  return out;
}

/** The FileHandle prototype, to make its calls fail in a test (restore the spies after). */
async function fileHandlePrototype(dir: string): Promise<FileHandle> {
  const probe = await open(join(dir, 'probe'), 'w');
  const prototype = Object.getPrototypeOf(probe) as FileHandle;
  await probe.close();
  await rm(join(dir, 'probe'));
  return prototype;
}

const eio = (call: string) => Object.assign(new Error(`EIO: i/o error, ${call}`), { code: 'EIO' });

describe('TxLog', () => {
  it('assigns increasing ids in the started generation and reads them back after reopen', async () => {
    const dir = await tempDir();
    const log = await TxLog.open(dir);
    await expect(log.appendChange(put('a'))).rejects.toMatchObject({ code: 'TXLOG_NO_GENERATION' });
    const marker = await log.startGeneration(1n);
    expect(marker).toMatchObject({ kind: 'end-of-generation', txid: makeTxId(1, 0), previousTxid: 0n });
    const results = await Promise.all(
      Array.from({ length: 50 }, (_, i) => log.appendChange(put(`f${i}`, i))),
    );
    expect(results.map((r) => formatTxId(r.txid))).toEqual(
      Array.from({ length: 50 }, (_, i) => `1:${i + 1}`),
    );
    expect(log.lastTxid).toBe(makeTxId(1, 50));
    await log.close();

    const reopened = await TxLog.open(dir);
    expect(reopened.openReport.tornTail).toBeUndefined();
    expect(reopened.lastTxid).toBe(makeTxId(1, 50));
    const records = await collect(reopened);
    expect(records).toHaveLength(51);
    expect(records[5]).toMatchObject({ path: 'f4', size: 4n });
    const gen2 = await reopened.startGeneration(2n);
    expect(gen2).toMatchObject({ txid: makeTxId(2, 0), previousTxid: makeTxId(1, 50) });
    expect((await reopened.appendChange(put('g'))).txid).toBe(makeTxId(2, 1));
    await reopened.close();
  });

  it('is open in one TxLog at a time, by whatever path its directory is named, until that one is closed', async () => {
    const dir = await tempDir();
    const log = await TxLog.open(join(dir, 'changelog'));
    await expect(TxLog.open(join(dir, 'changelog'))).rejects.toMatchObject({
      code: 'TXLOG_IN_USE',
      message: `log ${join(dir, 'changelog')} is open in another TxLog on this machine (another process, or this one): close that one first, or give this one a directory of its own`,
    });
    await expect(TxLog.open(join(dir, '.', 'changelog', '..', 'changelog'))).rejects.toMatchObject({
      code: 'TXLOG_IN_USE',
    });
    await log.startGeneration(1n);
    await log.close();
    const again = await TxLog.open(join(dir, 'changelog'));
    expect(again.lastTxid).toBe(makeTxId(1, 0));
    await again.close();
  });

  it('keeps the master ids on the replica path and refuses ids that do not increase', async () => {
    const log = await TxLog.open(await tempDir());
    await log.appendRecord({ ...put('a'), txid: makeTxId(3, 7), previousTxid: 0n });
    await expect(
      log.appendRecord({ ...put('b'), txid: makeTxId(3, 7), previousTxid: 0n }),
    ).rejects.toMatchObject({
      code: 'TXLOG_NOT_INCREASING',
    });
    await expect(log.appendChange(put('c'))).rejects.toMatchObject({ code: 'TXLOG_NO_GENERATION' });
    await log.appendRecord({ ...put('b'), txid: makeTxId(4, 1), previousTxid: 0n });
    expect((await collect(log)).map((r) => r.path)).toEqual(['a', 'b']);
    await log.close();
  });

  it('cuts segments by size and reads across them from any txid', async () => {
    const dir = await tempDir();
    const log = await TxLog.open(dir, { segmentSizeBytes: 1024, tailCacheRecords: 4 });
    await log.startGeneration(1n);
    for (let i = 0; i < 200; i++) await log.appendChange(put(`file-${i}`, i));
    await log.close();
    const segments = (await readdir(dir)).filter((n) => n.endsWith('.log'));
    expect(segments.length).toBeGreaterThan(10);
    expect(segments[0]).toBe('0000000100000000.log');
    for (const name of segments) expect((await stat(join(dir, name))).size).toBeLessThanOrEqual(1024);

    const reopened = await TxLog.open(dir, { segmentSizeBytes: 1024, tailCacheRecords: 4 });
    for (const after of [0, 1, 37, 99, 150, 199, 200]) {
      const records = await collect(reopened, makeTxId(1, after));
      expect(records.map((r) => r.txid)).toEqual(
        Array.from({ length: 200 - after }, (_, i) => makeTxId(1, after + i + 1)),
      );
    }
    const page = await reopened.readAfter(makeTxId(1, 10), 5);
    expect(page.map((r) => r.path)).toEqual(['file-10', 'file-11', 'file-12', 'file-13', 'file-14']);
    await reopened.close();
  });

  it('truncates a torn tail at every byte offset of the last record and keeps the rest', async () => {
    const dir = await tempDir();
    const log = await TxLog.open(dir);
    await log.startGeneration(1n);
    for (let i = 0; i < 3; i++) await log.appendChange(put(`keep-${i}`, i));
    const sizeBefore = (await stat(join(dir, '0000000100000000.log'))).size;
    await log.appendChange(put('torn-record', 9));
    await log.close();
    const file = join(dir, '0000000100000000.log');
    const full = await readFile(file);
    for (let cut = sizeBefore; cut < full.length; cut++) {
      await writeFile(file, full.subarray(0, cut));
      const reopened = await TxLog.open(dir);
      if (cut === sizeBefore) {
        expect(reopened.openReport.tornTail).toBeUndefined();
      } else {
        expect(reopened.openReport.tornTail).toMatchObject({
          offset: sizeBefore,
          bytesRemoved: cut - sizeBefore,
        });
      }
      expect(reopened.lastTxid).toBe(makeTxId(1, 3));
      expect((await collect(reopened)).map((r) => r.path)).toEqual(['', 'keep-0', 'keep-1', 'keep-2']);
      await reopened.close();
      expect((await stat(file)).size).toBe(sizeBefore);
    }
    // The cut bytes are kept beside the segment, never thrown away.
    expect((await readdir(dir)).some((n) => n.startsWith('0000000100000000.log.torn-'))).toBe(true);
  });

  it('treats a zero-filled tail as torn and appends after it', async () => {
    const dir = await tempDir();
    const log = await TxLog.open(dir);
    await log.startGeneration(1n);
    await log.appendChange(put('a'));
    await log.close();
    await appendFile(join(dir, '0000000100000000.log'), Buffer.alloc(4096));
    const reopened = await TxLog.open(dir);
    expect(reopened.openReport.tornTail?.reason).toBe('zero-filled tail');
    expect((await reopened.appendRecord({ ...put('b'), txid: makeTxId(1, 2), previousTxid: 0n })).path).toBe(
      'b',
    );
    await reopened.close();
    const again = await TxLog.open(dir);
    expect((await collect(again)).map((r) => r.path)).toEqual(['', 'a', 'b']);
    await again.close();
  });

  it('cuts an append whose fdatasync never completed, whichever of its pages reached the disk', async () => {
    const dir = await tempDir();
    const file = join(dir, '0000000100000000.log');
    const log = await TxLog.open(dir);
    await log.startGeneration(1n);
    for (let i = 0; i < 3; i++) await log.appendChange(put(`keep-${i}`, i));
    await log.close();
    const kept = await readFile(file);
    // One append of 40 records, as a group commit writes them: 2-3 KiB over several sectors.
    const batch = await TxLog.open(dir);
    await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        batch.appendRecord({ ...put(`lost-${i}`, i), txid: makeTxId(1, 4 + i), previousTxid: 0n }),
      ),
    );
    await batch.close();
    const whole = await readFile(file);
    const appended = whole.subarray(kept.length);
    const sectorAfter = (offset: number) => Math.ceil(offset / 512) * 512;
    const variants: [string, Buffer][] = [
      // The first frame's length reached the disk, its checksums and the rest did not.
      ['length only', Buffer.concat([kept, appended.subarray(0, 4), Buffer.alloc(appended.length - 4)])],
      // A page in the middle never did, the pages after it did.
      [
        'a lost sector mid-append',
        (() => {
          const b = Buffer.from(whole);
          const from = sectorAfter(kept.length + 100);
          b.fill(0, from, from + 512);
          return b;
        })(),
      ],
      // The page holding the append's first bytes never did.
      [
        'a lost first sector',
        (() => {
          const b = Buffer.from(whole);
          b.fill(0, kept.length, sectorAfter(kept.length) + 512);
          return b;
        })(),
      ],
    ];
    const frames = scanFrames(whole, 8).records;
    for (const [what, content] of variants) {
      await writeFile(file, content);
      const reopened = await TxLog.open(dir);
      expect({ what, torn: reopened.openReport.tornTail?.segment }).toEqual({
        what,
        torn: '0000000100000000.log',
      });
      // The frames wholly before the first lost byte survive (they reached the disk); the one it
      // falls in and every frame after it are cut, good ones included.
      const paths = (await collect(reopened)).map((r) => r.path);
      expect(paths.slice(0, 4)).toEqual(['', 'keep-0', 'keep-1', 'keep-2']);
      const lost = paths.slice(4);
      const firstLostByte = content.findIndex((byte, i) => byte !== whole[i]);
      const survivors = frames.filter((f) => f.end <= firstLostByte).length - 4;
      expect({ what, lost }).toEqual({
        what,
        lost: Array.from({ length: survivors }, (_, i) => `lost-${i}`),
      });
      expect(lost.length).toBeLessThan(40);
      expect(reopened.lastTxid).toBe(makeTxId(1, 3 + lost.length));
      await reopened.close();
      await writeFile(file, whole);
    }
  });

  it('refuses a read that meets damage before the durable end of the last segment', async () => {
    const dir = await tempDir();
    const file = join(dir, '0000000100000000.log');
    const log = await TxLog.open(dir, { tailCacheRecords: 2 });
    await log.startGeneration(1n);
    for (let i = 0; i < 100; i++) await log.appendChange(put(`r${i}`, i));
    // Damage after open, in the durable records (a disk losing a sector): not an append in progress.
    const bytes = await readFile(file);
    bytes.fill(0, 1024, 1536);
    await writeFile(file, bytes);
    await expect(log.readAfter(0n, 1000)).rejects.toMatchObject({ code: 'TXLOG_CORRUPT' });
    await log.close();
  });

  it('reports corruption before the tail with segment and offset instead of truncating', async () => {
    const dir = await tempDir();
    const log = await TxLog.open(dir);
    await log.startGeneration(1n);
    const offsets: number[] = [];
    for (let i = 0; i < 5; i++) {
      offsets.push((await stat(join(dir, '0000000100000000.log'))).size);
      await log.appendChange(put(`r${i}`, i));
    }
    await log.close();
    const file = join(dir, '0000000100000000.log');
    const good = await readFile(file);
    // Flip a payload byte, a length byte and a CRC byte of the third record in turn.
    for (const delta of [20, 0, 9]) {
      const bad = Buffer.from(good);
      bad[offsets[2]! + delta]! ^= 0x40;
      await writeFile(file, bad);
      const error = (await TxLog.open(dir).catch((e) => e)) as TxlogError;
      expect(error.code).toBe('TXLOG_CORRUPT');
      expect(error.segment).toBe('0000000100000000.log');
      expect(error.offset).toBe(offsets[2]);
      expect(error.message).toContain(`offset ${offsets[2]}`);
      expect(await readFile(file)).toEqual(bad);
    }
  });

  it('reports corruption in an earlier segment when it is read', async () => {
    const dir = await tempDir();
    const log = await TxLog.open(dir, { segmentSizeBytes: 512, tailCacheRecords: 2 });
    await log.startGeneration(1n);
    for (let i = 0; i < 40; i++) await log.appendChange(put(`r${i}`, i));
    await log.close();
    const first = join(dir, '0000000100000000.log');
    const bytes = await readFile(first);
    bytes[40]! ^= 0xff;
    await writeFile(first, bytes);
    const reopened = await TxLog.open(dir, { segmentSizeBytes: 512, tailCacheRecords: 2 });
    await expect(collect(reopened)).rejects.toMatchObject({
      code: 'TXLOG_CORRUPT',
      segment: '0000000100000000.log',
    });
    await reopened.close();
  });

  it('fails an append whose write fails, stays usable, and reuses no durable id', async () => {
    const dir = await tempDir();
    const log = await TxLog.open(dir, { segmentSizeBytes: 200 });
    await log.startGeneration(1n);
    await log.appendChange(put('a'));
    // The next append needs a new segment; a directory in the way of its temp file makes that fail.
    const blocker = join(dir, '0000000100000002.log.tmp');
    await mkdir(blocker);
    await expect(log.appendChange(put('b'))).rejects.toMatchObject({ code: 'TXLOG_WRITE_FAILED' });
    expect(log.lastTxid).toBe(makeTxId(1, 1));
    await rm(blocker, { recursive: true });
    expect((await log.appendChange(put('b'))).txid).toBe(makeTxId(1, 2));
    await log.close();
    const reopened = await TxLog.open(dir, { segmentSizeBytes: 200 });
    expect((await collect(reopened)).map((r) => `${formatTxId(r.txid)} ${r.path}`)).toEqual([
      '1:0 ',
      '1:1 a',
      '1:2 b',
    ]);
    await reopened.close();
  });

  it('refuses appends once a failed write could not be taken back, and reopens cleanly', async () => {
    const dir = await tempDir();
    const log = await TxLog.open(dir);
    await log.startGeneration(1n);
    await log.appendChange(put('a'));
    const fileHandle = await fileHandlePrototype(dir);
    const datasync = vi.spyOn(fileHandle, 'datasync').mockRejectedValueOnce(eio('fdatasync'));
    const truncate = vi.spyOn(fileHandle, 'truncate').mockRejectedValueOnce(eio('ftruncate'));
    try {
      // Its frame is written whole, then the fdatasync fails, and so does cutting it off again.
      await expect(log.appendChange(put('b'))).rejects.toMatchObject({ code: 'TXLOG_WRITE_FAILED' });
      expect(truncate).toHaveBeenCalled();
    } finally {
      datasync.mockRestore();
      truncate.mockRestore();
    }
    // Another frame after it would repeat its txid (or follow a partial frame).
    await expect(log.appendChange(put('c'))).rejects.toThrow(
      /cannot be appended to since a failed write could not be taken back \(EIO: i\/o error, ftruncate\): fix the disk and restart the node/,
    );
    await log.close();
    const reopened = await TxLog.open(dir);
    const txids = (await collect(reopened)).map((r) => r.txid);
    expect(txids).toEqual([...txids].sort((x, y) => (x < y ? -1 : 1)));
    expect(new Set(txids).size).toBe(txids.length);
    await reopened.startGeneration(2n);
    expect((await reopened.appendChange(put('d'))).txid).toBe(makeTxId(2, 1));
    await reopened.close();
  });

  it('makes the cut of a failed append durable before it hands out its ids again', async () => {
    const dir = await tempDir();
    const log = await TxLog.open(dir);
    await log.startGeneration(1n);
    await log.appendChange(put('a'));
    const fileHandle = await fileHandlePrototype(dir);
    const datasync = vi.spyOn(fileHandle, 'datasync');
    const truncate = vi.spyOn(fileHandle, 'truncate');
    try {
      datasync.mockRejectedValueOnce(eio('fdatasync'));
      await expect(log.appendChange(put('b'))).rejects.toMatchObject({ code: 'TXLOG_WRITE_FAILED' });
      // The append's fdatasync, then the cut's.
      expect(datasync).toHaveBeenCalledTimes(2);
      expect(truncate.mock.invocationCallOrder[0]).toBeLessThan(datasync.mock.invocationCallOrder[1]!);
      expect((await log.appendChange(put('b'))).txid).toBe(makeTxId(1, 2));
      // A cut that cannot be made durable leaves the log refusing appends.
      datasync.mockRejectedValueOnce(eio('fdatasync')).mockRejectedValueOnce(eio('fdatasync of the cut'));
      await expect(log.appendChange(put('c'))).rejects.toMatchObject({ code: 'TXLOG_WRITE_FAILED' });
    } finally {
      datasync.mockRestore();
      truncate.mockRestore();
    }
    await expect(log.appendChange(put('c'))).rejects.toThrow(
      /could not be taken back \(EIO: i\/o error, fdatasync of the cut\)/,
    );
    await log.close();
  });

  it('wakes a waiter when a record after its txid becomes durable, and times out otherwise', async () => {
    const log = await TxLog.open(await tempDir());
    await log.startGeneration(1n);
    expect(await log.waitForRecordsAfter(log.lastTxid, 20)).toBe(false);
    const waiting = log.waitForRecordsAfter(log.lastTxid, 10_000);
    await log.appendChange(put('x'));
    expect(await waiting).toBe(true);
    const controller = new AbortController();
    const aborted = log.waitForRecordsAfter(log.lastTxid, 10_000, controller.signal);
    controller.abort();
    expect(await aborted).toBe(false);
    await log.close();
  });
});

describe('TxLog.truncateAfter', () => {
  it('cuts the suffix across segments, keeps the bytes, and appends after the cut', async () => {
    const dir = await tempDir();
    const log = await TxLog.open(dir, { segmentSizeBytes: 400, tailCacheRecords: 3 });
    await log.startGeneration(1n);
    for (let i = 0; i < 20; i++) await log.appendChange(put(`p${i}`, i));
    const removed = await log.truncateAfter(makeTxId(1, 7));
    expect(removed.map((r) => r.path)).toEqual(Array.from({ length: 13 }, (_, i) => `p${i + 7}`));
    expect(log.lastTxid).toBe(makeTxId(1, 7));
    expect(await log.truncateAfter(makeTxId(1, 9))).toEqual([]);
    await expect(log.appendChange(put('x'))).rejects.toMatchObject({ code: 'TXLOG_NO_GENERATION' });
    await log.appendRecord({ ...put('from-new-master'), txid: makeTxId(2, 0), previousTxid: makeTxId(1, 7) });
    await log.appendRecord({ ...put('from-new-master'), txid: makeTxId(2, 1), previousTxid: 0n });
    await log.close();
    expect((await readdir(dir)).some((n) => n.includes('.log.cut-'))).toBe(true);
    const reopened = await TxLog.open(dir, { segmentSizeBytes: 400, tailCacheRecords: 3 });
    const paths = (await collect(reopened)).map((r) => `${formatTxId(r.txid)} ${r.path}`);
    expect(paths.slice(-3)).toEqual(['1:7 p6', '2:0 from-new-master', '2:1 from-new-master']);
    expect(paths).toHaveLength(10);
    await reopened.close();
  });

  it('refuses appends while it cuts', async () => {
    const log = await TxLog.open(await tempDir());
    await log.startGeneration(1n);
    for (let i = 0; i < 5; i++) await log.appendChange(put(`a${i}`));
    const cutting = log.truncateAfter(makeTxId(1, 2));
    await expect(
      log.appendRecord({ ...put('late'), txid: makeTxId(2, 1), previousTxid: 0n }),
    ).rejects.toMatchObject({
      code: 'TXLOG_WRITE_FAILED',
    });
    expect(await cutting).toHaveLength(3);
    expect((await log.appendRecord({ ...put('after'), txid: makeTxId(2, 1), previousTxid: 0n })).path).toBe(
      'after',
    );
    await log.close();
  });

  it('cuts past a segment that a failed append left without records', async () => {
    const dir = await tempDir();
    const log = await TxLog.open(dir, { segmentSizeBytes: 200 });
    await log.startGeneration(1n);
    for (let i = 0; i < 3; i++) await log.appendChange(put(`a${i}`));
    const segmentsBefore = (await readdir(dir)).filter((n) => n.endsWith('.log')).length;
    const fileHandle = await fileHandlePrototype(dir);
    // The next append starts a segment, and its write into it fails.
    const write = vi.spyOn(fileHandle, 'write').mockRejectedValueOnce(eio('write'));
    try {
      await expect(log.appendChange(put('b'))).rejects.toMatchObject({ code: 'TXLOG_WRITE_FAILED' });
    } finally {
      write.mockRestore();
    }
    expect((await readdir(dir)).filter((n) => n.endsWith('.log')).length).toBe(segmentsBefore + 1);
    const removed = await log.truncateAfter(makeTxId(1, 1));
    expect(removed.map((r) => r.path)).toEqual(['a1', 'a2']);
    expect(log.lastTxid).toBe(makeTxId(1, 1));
    await log.close();
  });

  it('keeps the bytes of each cut made at the same offset', async () => {
    const dir = await tempDir();
    const log = await TxLog.open(dir);
    await log.startGeneration(1n);
    await log.appendChange(put('a'));
    await log.appendChange(put('first-cut'));
    await log.truncateAfter(makeTxId(1, 1));
    await log.appendRecord({ ...put('second-cut'), txid: makeTxId(1, 2), previousTxid: 0n });
    await log.truncateAfter(makeTxId(1, 1));
    await log.close();
    const kept = (await readdir(dir)).filter((n) => n.includes('.log.cut-')).sort();
    expect(kept).toHaveLength(2);
    const contents = await Promise.all(kept.map((n) => readFile(join(dir, n), 'latin1')));
    expect(contents[0]).toContain('first-cut');
    expect(contents[1]).toContain('second-cut');
  });

  it('can cut everything', async () => {
    const log = await TxLog.open(await tempDir());
    await log.startGeneration(1n);
    await log.appendChange(put('a'));
    expect(await log.truncateAfter(0n)).toHaveLength(2);
    expect(log.lastTxid).toBe(0n);
    expect(await collect(log)).toEqual([]);
    await log.close();
  });
});

describe('TxLog.clear', () => {
  it('removes every segment without keeping the bytes, and takes records from zero again', async () => {
    const dir = await tempDir();
    const log = await TxLog.open(dir, { segmentSizeBytes: 400, tailCacheRecords: 3 });
    await log.startGeneration(1n);
    for (let i = 0; i < 20; i++) await log.appendChange(put(`p${i}`, i));
    expect((await readdir(dir)).length).toBeGreaterThan(1);
    await log.clear();
    expect(log.lastTxid).toBe(0n);
    expect(await collect(log)).toEqual([]);
    expect(await readdir(dir)).toEqual([]);
    await log.appendRecord({ ...put('again'), txid: makeTxId(3, 1), previousTxid: 0n });
    await log.close();
    const reopened = await TxLog.open(dir, { segmentSizeBytes: 400, tailCacheRecords: 3 });
    expect((await collect(reopened)).map((r) => r.path)).toEqual(['again']);
    await reopened.close();
  });
});

describe('fsyncDir', () => {
  it('refuses a path that is a file rather than sync it', async () => {
    const dir = await tempDir();
    await writeFile(join(dir, 'file'), 'x');
    await expect(fsyncDir(join(dir, 'file'))).rejects.toMatchObject({ code: 'ENOTDIR' });
    await fsyncDir(dir);
  });
});

describe('checkpoint', () => {
  it('starts at zero, round-trips, and survives a crash between write and rename', async () => {
    const dir = await tempDir();
    const file = join(dir, 'checkpoint');
    expect(await readCheckpoint(file)).toBe(0n);
    await writeCheckpoint(file, makeTxId(2, 5));
    expect(await readCheckpoint(file)).toBe(makeTxId(2, 5));
    await expect(
      writeCheckpoint(file, makeTxId(2, 9), {
        beforeRename: () => {
          throw new Error('killed');
        },
      }),
    ).rejects.toThrow('killed');
    expect(await readCheckpoint(file)).toBe(makeTxId(2, 5));
    // A temp file left by a process killed before its rename is ignored and overwritten.
    await writeFile(`${file}.tmp`, 'pfs-checkpoint 1 999');
    expect(await readCheckpoint(file)).toBe(makeTxId(2, 5));
    await writeCheckpoint(file, makeTxId(2, 10));
    expect(await readCheckpoint(file)).toBe(makeTxId(2, 10));
  });

  it('names a damaged checkpoint and how to fix it', async () => {
    const file = join(await tempDir(), 'checkpoint');
    await writeFile(file, 'garbage');
    await expect(readCheckpoint(file)).rejects.toMatchObject({ code: 'TXLOG_CHECKPOINT_CORRUPT' });
  });
});

describe('TxLog sequential disk reads', () => {
  it('pages through records behind the tail cache, across segments, with the same result as one read', async () => {
    const dir = await tempDir();
    const log = await TxLog.open(dir, { segmentSizeBytes: 2048, tailCacheRecords: 2 });
    await log.startGeneration(1n);
    for (let i = 0; i < 300; i++) await log.appendChange(put(`p${i}`, i));
    const whole = await log.readAfter(0n, 10_000);
    const paged = [];
    for (let cursor = 0n; ; ) {
      const page = await log.readAfter(cursor, 7);
      if (page.length === 0) break;
      paged.push(...page);
      cursor = page.at(-1)!.txid;
    }
    expect(paged).toEqual(whole);
    expect(paged).toHaveLength(301);
    // A reader that jumps elsewhere still gets the right records.
    expect((await log.readAfter(makeTxId(1, 150), 3)).map((r) => r.path)).toEqual(['p150', 'p151', 'p152']);
    expect((await log.readAfter(makeTxId(1, 10), 2)).map((r) => r.path)).toEqual(['p10', 'p11']);
    await log.close();
  });
});
