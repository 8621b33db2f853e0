/**
 * What a partition's log says each path holds, kept out of the JavaScript heap: a million paths
 * cost their UTF-8 bytes plus ~75 bytes each in a few typed arrays, instead of a Map entry, a
 * string and an object with three bigints and a 64-character hex string each (~250 bytes), and
 * the garbage collector has no million objects to trace.
 *
 * A path maps to a slot number through an open-addressing hash table over its UTF-8 bytes (what the
 * log and the file system know it by, so a lone surrogate is the U+FFFD it is written as); a slot's
 * fields live in typed arrays indexed by it. Slots of deleted paths are reused before the arrays
 * grow. Values are kept exactly: sizes and nanosecond times as 64-bit integers (a nanosecond mtime
 * does not fit a double), the sha-256 as its 32 bytes.
 */
export type PathIndexErrorCode = 'BAD_SHA256' | 'OUT_OF_RANGE';

export class PathIndexError extends Error {
  readonly code: PathIndexErrorCode;
  constructor(code: PathIndexErrorCode, message: string) {
    super(message);
    this.name = 'PathIndexError';
    this.code = code;
  }
}

export interface PathEntry {
  size: bigint;
  mtimeNs: bigint;
  /** Lower-case hex. */
  sha256: string;
  /** Known only for files this process wrote or hashed; undefined when unknown. */
  ctimeNs?: bigint;
}

const LIVE = 1;
const CTIME_KNOWN = 2;
const INITIAL_CAPACITY = 1024;
const SHA256_BYTES = 32;
const HEX_SHA256 = /^[0-9a-f]{64}$/;
/** Table cells: 0 empty, TOMBSTONE a deleted path (probing goes on past it), else slot + 1. */
const TOMBSTONE = -1;
const MAX_KEY_BYTES = 0xffff;

/**
 * Which slots a scan has visited. Slots are reused, so the index clears a slot's mark in every
 * live set when it hands the slot to another path: a mark never outlives the path it was set for.
 */
export class SlotMarks {
  private bits: Uint8Array;

  constructor(capacity: number) {
    this.bits = new Uint8Array(Math.ceil(capacity / 8));
  }

  mark(slot: number): void {
    const byte = slot >>> 3;
    if (byte >= this.bits.length) {
      const grown = new Uint8Array(Math.max(byte + 1, this.bits.length * 2));
      grown.set(this.bits);
      this.bits = grown;
    }
    this.bits[byte]! |= 1 << (slot & 7);
  }

  has(slot: number): boolean {
    return ((this.bits[slot >>> 3] ?? 0) & (1 << (slot & 7))) !== 0;
  }

  clear(slot: number): void {
    const byte = slot >>> 3;
    if (byte < this.bits.length) this.bits[byte]! &= ~(1 << (slot & 7));
  }
}

export class PathIndex {
  private count = 0;
  private readonly free: number[] = [];
  /** Slots handed out so far, in use or free; the next new slot is this one. */
  private used = 0;
  private sizes!: BigUint64Array;
  private mtimes!: BigInt64Array;
  private ctimes!: BigInt64Array;
  private flags!: Uint8Array;
  private hashes!: Buffer;
  /** Path bytes of every slot, back to back; bytes of deleted paths stay until the next compaction. */
  private keys: Buffer;
  private keysEnd = 0;
  private deadKeyBytes = 0;
  private keyStart!: Uint32Array;
  private keyLength!: Uint16Array;
  private keyHash!: Uint32Array;
  private table: Int32Array;
  /** Cells not empty (live or tombstones): what bounds the probe lengths. */
  private tableFilled = 0;
  /** The path being looked up, as UTF-8: one buffer for every lookup instead of one each. */
  private scratch = Buffer.allocUnsafe(4 * 1024);
  private readonly marks = new Set<SlotMarks>();

  constructor(initialCapacity = INITIAL_CAPACITY) {
    const capacity = Math.max(1, initialCapacity);
    this.adopt(slotArrays(capacity));
    this.keys = Buffer.alloc(capacity * 16);
    this.table = new Int32Array(tableSizeFor(capacity));
  }

  get size(): number {
    return this.count;
  }

  /** How many slots the arrays have room for. */
  get capacity(): number {
    return this.flags.length;
  }

  slotOf(path: string): number | undefined {
    const length = this.encode(path);
    const cell = this.find(length, hashBytes(this.scratch, length));
    return cell < 0 ? undefined : this.table[cell]! - 1;
  }

  get(path: string): PathEntry | undefined {
    const slot = this.slotOf(path);
    if (slot === undefined) return undefined;
    const entry: PathEntry = {
      size: this.sizes[slot]!,
      mtimeNs: this.mtimes[slot]!,
      sha256: this.sha256Of(slot),
    };
    if (this.flags[slot]! & CTIME_KNOWN) entry.ctimeNs = this.ctimes[slot]!;
    return entry;
  }

  /** Records what `path` holds (ctime unknown unless given); returns its slot. */
  set(path: string, entry: PathEntry): number {
    if (!HEX_SHA256.test(entry.sha256)) {
      throw new PathIndexError(
        'BAD_SHA256',
        `sha-256 of ${JSON.stringify(path)} is not 64 lower-case hex digits`,
      );
    }
    checkRange(entry.size, 'size', 'u64');
    checkRange(entry.mtimeNs, 'mtime', 'i64');
    if (entry.ctimeNs !== undefined) checkRange(entry.ctimeNs, 'ctime', 'i64');
    const length = this.encode(path);
    if (length > MAX_KEY_BYTES) {
      throw new PathIndexError('OUT_OF_RANGE', `path of ${length} bytes is longer than ${MAX_KEY_BYTES}`);
    }
    const hash = hashBytes(this.scratch, length);
    const cell = this.find(length, hash);
    const slot = cell >= 0 ? this.table[cell]! - 1 : this.insert(length, hash);
    this.sizes[slot] = entry.size;
    this.mtimes[slot] = entry.mtimeNs;
    this.hashes.write(entry.sha256, slot * SHA256_BYTES, SHA256_BYTES, 'hex');
    this.setCtime(slot, entry.ctimeNs);
    return slot;
  }

  /** After a re-hash found the same bytes: new times, same content. */
  setTimes(slot: number, mtimeNs: bigint, ctimeNs: bigint | undefined): void {
    checkRange(mtimeNs, 'mtime', 'i64');
    if (ctimeNs !== undefined) checkRange(ctimeNs, 'ctime', 'i64');
    this.mtimes[slot] = mtimeNs;
    this.setCtime(slot, ctimeNs);
  }

  setCtime(slot: number, ctimeNs: bigint | undefined): void {
    if (ctimeNs === undefined) {
      this.flags[slot]! &= ~CTIME_KNOWN;
      this.ctimes[slot] = 0n;
    } else {
      checkRange(ctimeNs, 'ctime', 'i64');
      this.ctimes[slot] = ctimeNs;
      this.flags[slot]! |= CTIME_KNOWN;
    }
  }

  delete(path: string): boolean {
    const length = this.encode(path);
    const cell = this.find(length, hashBytes(this.scratch, length));
    if (cell < 0) return false;
    const slot = this.table[cell]! - 1;
    this.table[cell] = TOMBSTONE;
    this.flags[slot] = 0;
    this.deadKeyBytes += this.keyLength[slot]!;
    this.free.push(slot);
    this.count--;
    return true;
  }

  /**
   * Whether a stat of the file matches the slot without hashing it: same size and mtime, and the
   * same ctime unless the ctime is unknown.
   */
  matchesStat(slot: number, size: bigint, mtimeNs: bigint, ctimeNs: bigint): boolean {
    return (
      this.sizes[slot] === size &&
      this.mtimes[slot] === mtimeNs &&
      (!(this.flags[slot]! & CTIME_KNOWN) || this.ctimes[slot] === ctimeNs)
    );
  }

  /** Whether the slot's ctime is known (set by a hash or a stat since the slot was set). */
  ctimeKnown(slot: number): boolean {
    return (this.flags[slot]! & CTIME_KNOWN) !== 0;
  }

  mtimeOf(slot: number): bigint {
    return this.mtimes[slot]!;
  }

  sizeOf(slot: number): bigint {
    return this.sizes[slot]!;
  }

  sha256Of(slot: number): string {
    return this.hashes.toString('hex', slot * SHA256_BYTES, (slot + 1) * SHA256_BYTES);
  }

  pathOf(slot: number): string {
    const start = this.keyStart[slot]!;
    return this.keys.toString('utf8', start, start + this.keyLength[slot]!);
  }

  /** The latest mtime of any path, or undefined when there is none. */
  newestMtime(): bigint | undefined {
    let newest: bigint | undefined;
    for (let slot = 0; slot < this.used; slot++) {
      if (this.flags[slot]! & LIVE && (newest === undefined || this.mtimes[slot]! > newest))
        newest = this.mtimes[slot]!;
    }
    return newest;
  }

  /** Paths whose slots `marks` has not marked (all of them without marks), as of now. */
  unmarkedPaths(marks: SlotMarks | undefined): string[] {
    const paths: string[] = [];
    for (let slot = 0; slot < this.used; slot++) {
      if (this.flags[slot]! & LIVE && marks?.has(slot) !== true) paths.push(this.pathOf(slot));
    }
    return paths;
  }

  /** A set of visited slots that stays correct while slots are reused; `endMarks` when done. */
  startMarks(): SlotMarks {
    const marks = new SlotMarks(this.used);
    this.marks.add(marks);
    return marks;
  }

  endMarks(marks: SlotMarks): void {
    this.marks.delete(marks);
  }

  /** Puts `path` as UTF-8 in the scratch buffer; returns its length. */
  private encode(path: string): number {
    // Three bytes per UTF-16 unit at most (a surrogate pair is two units and four bytes).
    if (path.length * 3 > this.scratch.length) this.scratch = Buffer.allocUnsafe(path.length * 3);
    return this.scratch.write(path, 0, 'utf8');
  }

  /** The table cell holding the scratch key, or -1. */
  private find(length: number, hash: number): number {
    const mask = this.table.length - 1;
    for (let cell = hash & mask; ; cell = (cell + 1) & mask) {
      const value = this.table[cell]!;
      if (value === 0) return -1;
      if (value !== TOMBSTONE && this.keyMatches(value - 1, length, hash)) return cell;
    }
  }

  private keyMatches(slot: number, length: number, hash: number): boolean {
    if (this.keyHash[slot] !== hash || this.keyLength[slot] !== length) return false;
    const start = this.keyStart[slot]!;
    for (let i = 0; i < length; i++) if (this.keys[start + i] !== this.scratch[i]) return false;
    return true;
  }

  /** Adds the scratch key (known to be absent) under a new slot. */
  private insert(length: number, hash: number): number {
    if ((this.tableFilled + 1) * 2 > this.table.length) {
      // Same size only when tombstones are at least half the filled cells (the rebuild then
      // frees a quarter of the table); otherwise double, or a table held at exactly half full
      // by deletes and inserts would be rebuilt on every insert.
      const tombstones = this.tableFilled - this.count;
      this.rehash(tombstones * 2 >= this.tableFilled ? tableSizeFor(this.count + 1) : this.table.length * 2);
    }
    const slot = this.free.pop() ?? this.used++;
    if (slot >= this.capacity) this.grow();
    for (const marks of this.marks) marks.clear(slot);
    if (this.keysEnd + length > this.keys.length) this.makeKeyRoom(length);
    this.scratch.copy(this.keys, this.keysEnd, 0, length);
    this.keyStart[slot] = this.keysEnd;
    this.keyLength[slot] = length;
    this.keyHash[slot] = hash;
    this.keysEnd += length;
    this.flags[slot] = LIVE;
    const mask = this.table.length - 1;
    let cell = hash & mask;
    while (this.table[cell]! > 0) cell = (cell + 1) & mask;
    if (this.table[cell] === 0) this.tableFilled++;
    this.table[cell] = slot + 1;
    this.count++;
    return slot;
  }

  /** Rebuilds the table at `size` cells, dropping tombstones. */
  private rehash(size: number): void {
    const table = new Int32Array(size);
    const mask = size - 1;
    for (let slot = 0; slot < this.used; slot++) {
      if (!(this.flags[slot]! & LIVE)) continue;
      let cell = this.keyHash[slot]! & mask;
      while (table[cell] !== 0) cell = (cell + 1) & mask;
      table[cell] = slot + 1;
    }
    this.table = table;
    this.tableFilled = this.count;
  }

  /** Compacts away the bytes of deleted paths when they are most of the arena, else doubles it. */
  private makeKeyRoom(length: number): void {
    const live = this.keysEnd - this.deadKeyBytes;
    let size = this.keys.length;
    while (live + length > size / 2) size *= 2;
    const keys = Buffer.alloc(size);
    let end = 0;
    for (let slot = 0; slot < this.used; slot++) {
      if (!(this.flags[slot]! & LIVE)) continue;
      const start = this.keyStart[slot]!;
      const n = this.keyLength[slot]!;
      this.keys.copy(keys, end, start, start + n);
      this.keyStart[slot] = end;
      end += n;
    }
    this.keys = keys;
    this.keysEnd = end;
    this.deadKeyBytes = 0;
  }

  private grow(): void {
    const slots = slotArrays(this.capacity * 2);
    slots.sizes.set(this.sizes);
    slots.mtimes.set(this.mtimes);
    slots.ctimes.set(this.ctimes);
    slots.flags.set(this.flags);
    slots.hashes.set(this.hashes);
    slots.keyStart.set(this.keyStart);
    slots.keyLength.set(this.keyLength);
    slots.keyHash.set(this.keyHash);
    this.adopt(slots);
  }

  private adopt(slots: ReturnType<typeof slotArrays>): void {
    this.sizes = slots.sizes;
    this.mtimes = slots.mtimes;
    this.ctimes = slots.ctimes;
    this.flags = slots.flags;
    this.hashes = slots.hashes;
    this.keyStart = slots.keyStart;
    this.keyLength = slots.keyLength;
    this.keyHash = slots.keyHash;
  }
}

/**
 * Every per-slot array for `capacity` slots, as views of one buffer: growing then frees one large
 * block (which malloc unmaps) instead of eight mid-sized ones (which it keeps as holes in its heap,
 * measured at ~40 MiB of resident memory after a million-path replay).
 */
function slotArrays(capacity: number) {
  const buffer = new ArrayBuffer(capacity * (3 * 8 + 2 * 4 + 2 + 1 + SHA256_BYTES));
  // Widest elements first, so that every view starts aligned to its element size.
  let offset = 0;
  const take = <T>(make: (buffer: ArrayBuffer, offset: number, length: number) => T, bytes: number): T => {
    const view = make(buffer, offset, capacity);
    offset += capacity * bytes;
    return view;
  };
  return {
    sizes: take((b, o, n) => new BigUint64Array(b, o, n), 8),
    mtimes: take((b, o, n) => new BigInt64Array(b, o, n), 8),
    ctimes: take((b, o, n) => new BigInt64Array(b, o, n), 8),
    keyStart: take((b, o, n) => new Uint32Array(b, o, n), 4),
    keyHash: take((b, o, n) => new Uint32Array(b, o, n), 4),
    keyLength: take((b, o, n) => new Uint16Array(b, o, n), 2),
    flags: take((b, o, n) => new Uint8Array(b, o, n), 1),
    // A Buffer, to write and read hex in place.
    hashes: Buffer.from(buffer, offset, capacity * SHA256_BYTES),
  };
}

/** A power of two with at least twice `entries` cells: probes stay short at half load. */
function tableSizeFor(entries: number): number {
  let size = 16;
  while (size < entries * 2) size *= 2;
  return size;
}

/** FNV-1a over the first `length` bytes. */
function hashBytes(bytes: Uint8Array, length: number): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < length; i++) hash = Math.imul(hash ^ bytes[i]!, 0x01000193);
  return hash >>> 0;
}

/** Typed arrays wrap out-of-range bigints silently; refuse them instead of storing another value. */
function checkRange(value: bigint, what: string, kind: 'u64' | 'i64'): void {
  const fits = kind === 'u64' ? BigInt.asUintN(64, value) === value : BigInt.asIntN(64, value) === value;
  if (!fits) throw new PathIndexError('OUT_OF_RANGE', `${what} ${value} does not fit ${kind}`);
}
