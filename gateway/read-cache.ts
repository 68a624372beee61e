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

/**
 * The lines that are views of one larger buffer (a fetch's bytes), and how many of its bytes
 * they still hold: a line kept alive pins the whole buffer, so when few are left they are copied
 * out (see `release`).
 */
interface Shared {
  lines: Set<number>;
  liveBytes: number;
}

export class CleanCache {
  /**
   * Line index -> bytes (a line at the end of the volume may be short). Map order is LRU order.
   * Lines are never changed in place: a patch replaces the line with a patched copy. So a line
   * may be handed out without a copy (an NBD reply written straight from it), and may be a view
   * of a larger buffer (a fetch's bytes, put here without a copy).
   */
  private readonly lines = new Map<number, Buffer>();
  private bytes = 0;
  /** Lines that are views of a larger buffer, by that buffer. */
  private readonly shared = new Map<ArrayBufferLike, Shared>();
  /** Counters for logs and the bench. */
  readonly stats = { hits: 0, misses: 0, evictions: 0, compactions: 0 };

  constructor(readonly capacityBytes: number) {}

  get usedBytes(): number {
    return this.bytes;
  }

  get size(): number {
    return this.lines.size;
  }

  /** The line's bytes (never changed later: the caller may keep them), refreshing its place in the LRU order. */
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

  /**
   * Keeps `bytes` as the line's contents, evicting the least recently used lines over capacity.
   * The caller must never change `bytes` afterwards; they may be a view of a larger buffer.
   */
  put(line: number, bytes: Buffer): void {
    if (this.capacityBytes < bytes.length) return;
    this.remove(line);
    this.lines.set(line, bytes);
    this.bytes += bytes.length;
    if (bytes.byteLength < bytes.buffer.byteLength) {
      let s = this.shared.get(bytes.buffer);
      if (!s) this.shared.set(bytes.buffer, (s = { lines: new Set(), liveBytes: 0 }));
      s.lines.add(line);
      s.liveBytes += bytes.length;
    }
    for (const [victim] of this.lines) {
      if (this.bytes <= this.capacityBytes) break;
      this.remove(victim);
      this.stats.evictions++;
    }
  }

  /** Drops the line (its contents can no longer be vouched for). */
  drop(line: number): void {
    this.remove(line);
  }

  private remove(line: number): void {
    const b = this.lines.get(line);
    if (!b) return;
    this.lines.delete(line);
    this.bytes -= b.length;
    this.release(line, b);
  }

  /**
   * Line `line` no longer holds `b`. When the lines still viewing b's buffer hold less than a
   * quarter of it, they are copied into buffers of their own, so that the cache never pins
   * more than about four times the bytes it counts.
   */
  private release(line: number, b: Buffer): void {
    const s = this.shared.get(b.buffer);
    if (!s || !s.lines.delete(line)) return;
    s.liveBytes -= b.length;
    if (s.lines.size === 0) {
      this.shared.delete(b.buffer);
      return;
    }
    if (s.liveBytes * 4 >= b.buffer.byteLength) return;
    this.shared.delete(b.buffer);
    this.stats.compactions++;
    for (const l of s.lines) {
      const view = this.lines.get(l)!;
      const own = Buffer.allocUnsafeSlow(view.length);
      view.copy(own);
      // Map.set on a present key keeps its place in the LRU order.
      this.lines.set(l, own);
    }
  }

  /**
   * A write the API acknowledged: cached lines it overlaps take its bytes (`data`: pieces laid
   * end to end, exactly `end - start` bytes, or zeros when null), as patched copies, one per
   * line. Lines not cached stay uncached.
   */
  patch(start: number, end: number, data: readonly Buffer[] | null): void {
    for (let line = Math.floor(start / LINE_BYTES); line * LINE_BYTES < end; line++) {
      const b = this.lines.get(line);
      if (!b) continue;
      const lineStart = line * LINE_BYTES;
      const s = Math.max(start, lineStart);
      const t = Math.min(end, lineStart + b.length);
      if (t <= s) continue;
      const copy = Buffer.allocUnsafeSlow(b.length);
      b.copy(copy);
      if (data) {
        let at = s - lineStart;
        for (const piece of slice(data, s - start, t - s)) at += piece.copy(copy, at);
      } else copy.fill(0, s - lineStart, t - lineStart);
      this.release(line, b);
      this.lines.set(line, copy);
    }
  }

  clear(): void {
    this.lines.clear();
    this.shared.clear();
    this.bytes = 0;
  }
}

/** Bytes [from, from + length) of the concatenation of `parts`, as views. */
export function slice(parts: readonly Buffer[], from: number, length: number): Buffer[] {
  const out: Buffer[] = [];
  let pos = 0;
  for (const p of parts) {
    const s = Math.max(from, pos);
    const t = Math.min(from + length, pos + p.length);
    if (t > s) out.push(p.subarray(s - pos, t - pos));
    pos += p.length;
  }
  return out;
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
   * stream whose read-ahead is less than half a window ahead of it, and how far an earlier
   * read-ahead of the stream already went.
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
    // More than half a window already read ahead: wait, so that the next read-ahead asks for
    // half a window or more at once (one read plan for several 4 MiB windows), not a sliver.
    if (s.aheadTo - s.next > s.window / 2) return null;
    // `from`: where the read-ahead of this stream got to last time (what lies before it was
    // already cached or fetched then); the caller need not look at those lines again.
    const from = s.aheadTo;
    s.aheadTo = Math.max(s.aheadTo, s.next + s.window);
    return { start: s.next, end: s.next + s.window, from };
  }
}
