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
    let start = 0;
    for (let i = 0; i < chunk.length; i++) {
      if (!this.separators.includes(chunk[i]!)) continue;
      this.append(chunk.subarray(start, i));
      this.emit();
      start = i + 1;
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
