/**
 * The gateway's clean-data read cache: what the volume held, in 64 KiB lines (the API's CRC
 * granule, the smallest unit the head reads from S3), least recently used first out, bounded in
 * bytes. It never holds dirty data: writes live in the write-back layers (cache.ts), which reads
 * lay over whatever this cache or the API returned. A write-back that the API acknowledged
 * patches the lines it covers, so a cached line is never older than a write this gateway made
 * durable. See docs/nbd-gateway.md, "The read path".
 */

const KiB = 1024;

/** Bytes per cache line: the API's checksum granule. */
export const LINE_BYTES = 64 * KiB;

export class CleanCache {
  /** Line index -> bytes (a line at the end of the volume may be short). Map order is LRU order. */
  private readonly lines = new Map<number, Buffer>();
  private bytes = 0;
  /** Counters for logs and the bench. */
  readonly stats = { hits: 0, misses: 0, evictions: 0 };

  constructor(readonly capacityBytes: number) {}

  get usedBytes(): number {
    return this.bytes;
  }

  get size(): number {
    return this.lines.size;
  }

  /** The line's bytes (the caller copies out of them at once), refreshing its place in the LRU order. */
  get(line: number): Buffer | undefined {
    const b = this.lines.get(line);
    if (b) {
      this.stats.hits++;
      this.lines.delete(line);
      this.lines.set(line, b);
    } else this.stats.misses++;
    return b;
  }

  has(line: number): boolean {
    return this.lines.has(line);
  }

  /** Keeps `bytes` (the caller's own copy) as the line's contents, evicting the least recently used lines over capacity. */
  put(line: number, bytes: Buffer): void {
    if (this.capacityBytes < bytes.length) return;
    const old = this.lines.get(line);
    if (old) {
      this.bytes -= old.length;
      this.lines.delete(line);
    }
    this.lines.set(line, bytes);
    this.bytes += bytes.length;
    for (const [victim, b] of this.lines) {
      if (this.bytes <= this.capacityBytes) break;
      this.lines.delete(victim);
      this.bytes -= b.length;
      this.stats.evictions++;
    }
  }

  /** Drops the line (its contents can no longer be vouched for). */
  drop(line: number): void {
    const b = this.lines.get(line);
    if (!b) return;
    this.lines.delete(line);
    this.bytes -= b.length;
  }

  /**
   * A write the API acknowledged: cached lines it overlaps take its bytes (`data`, exactly
   * `end - start` bytes, or zeros when null). Lines not cached stay uncached.
   */
  patch(start: number, end: number, data: Buffer | null): void {
    for (let line = Math.floor(start / LINE_BYTES); line * LINE_BYTES < end; line++) {
      const b = this.lines.get(line);
      if (!b) continue;
      const lineStart = line * LINE_BYTES;
      const s = Math.max(start, lineStart);
      const t = Math.min(end, lineStart + b.length);
      if (t <= s) continue;
      if (data) data.copy(b, s - lineStart, s - start, t - start);
      else b.fill(0, s - lineStart, t - lineStart);
    }
  }

  clear(): void {
    this.lines.clear();
    this.bytes = 0;
  }
}

/**
 * Sequential-read detection across every connection (nbdcopy and qemu spread one sequential
 * copy over several connections and several requests in flight): a read that starts near where
 * a tracked stream ended continues it, and each continuation doubles the stream's read-ahead
 * window, up to `maxWindowBytes`, as the Linux page cache does.
 */
export class StreamDetector {
  private streams: Array<{ next: number; window: number; aheadTo: number }> = [];

  constructor(
    readonly maxWindowBytes: number,
    readonly firstWindowBytes: number,
    private readonly maxStreams = 8,
  ) {}

  /**
   * Records a read of [start, end); returns the range to read ahead when the read continues a
   * stream, and how far an earlier read-ahead of the stream already went.
   */
  observe(start: number, end: number): { start: number; end: number; from: number } | null {
    const i = this.streams.findIndex((s) => start >= s.next - Math.max(s.window, this.firstWindowBytes) && start <= s.next + Math.max(s.window, this.firstWindowBytes));
    if (i < 0) {
      this.streams.push({ next: end, window: 0, aheadTo: 0 });
      if (this.streams.length > this.maxStreams) this.streams.shift();
      return null;
    }
    const s = this.streams[i]!;
    // Most recently used last, so the oldest stream is the one forgotten.
    this.streams.splice(i, 1);
    this.streams.push(s);
    s.next = Math.max(s.next, end);
    s.window = Math.min(this.maxWindowBytes, Math.max(this.firstWindowBytes, s.window * 2));
    // `from`: where the read-ahead of this stream got to last time (what lies before it was
    // already cached or fetched then); the caller need not look at those lines again.
    const from = s.aheadTo;
    s.aheadTo = Math.max(s.aheadTo, s.next + s.window);
    return { start: s.next, end: s.next + s.window, from };
  }
}
