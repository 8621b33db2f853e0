/**
 * Splits a byte stream into lines as chunks arrive. Works on bytes, not strings, so that a
 * multi-byte character cut between two chunks is reassembled before decoding. A line longer
 * than maxLineBytes is cut, which bounds memory whatever the child prints.
 */
export class LineSplitter {
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  constructor(
    private readonly onLine: (line: Buffer) => void,
    private readonly separators: readonly number[] = [0x0a],
    private readonly maxLineBytes = 64 * 1024,
  ) {}

  push(chunk: Buffer): void {
    // Where each separator next occurs, found with the native indexOf and kept until passed:
    // a bulk copy prints two lines per file, and a byte-by-byte loop in JS cost more than
    // anything else done with them.
    const next = this.separators.map(() => -2);
    let start = 0;
    for (;;) {
      let end = -1;
      for (let s = 0; s < next.length; s++) {
        if (next[s] !== -1 && next[s]! < start) next[s] = chunk.indexOf(this.separators[s]!, start);
        const at = next[s]!;
        if (at !== -1 && (end === -1 || at < end)) end = at;
      }
      if (end === -1) break;
      this.append(chunk.subarray(start, end));
      this.emit();
      start = end + 1;
    }
    this.append(chunk.subarray(start));
  }

  /** Emits what is left after the last separator (call once, when the stream ends). */
  end(): void {
    if (this.pendingBytes > 0) this.emit();
  }

  private append(part: Buffer): void {
    const room = this.maxLineBytes - this.pendingBytes;
    if (part.length === 0 || room <= 0) return;
    const kept = part.length > room ? part.subarray(0, room) : part;
    this.pending.push(kept);
    this.pendingBytes += kept.length;
  }

  private emit(): void {
    const line = Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    this.onLine(line);
  }
}
