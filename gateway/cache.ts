/**
 * The gateway's volatile write cache: writes are acknowledged once they are in memory, and
 * made durable as batch writes (one segment each) on FLUSH, on FUA, when a segment's worth has
 * gathered, when dirty data grows old, and on shutdown. See docs/nbd-gateway.md.
 *
 * The cache is a stack of layers. Writes go into the *open* layer; sealing it pushes it onto
 * the FIFO of *sealed* layers, which one flusher writes to the API oldest first, one batch at
 * a time. Inside a layer extents never overlap (a later write replaces the bytes it covers),
 * and a newer write to the same blocks lands in a newer layer, so it is committed after the
 * older one: the later write wins, on the API exactly as in the cache. A layer leaves the stack
 * only once every batch of it has been acknowledged by the API, so a read that snapshots the
 * stack before asking the API can never miss a write (see `readAligned`).
 */
import { invariant } from '#shared/core/errors.ts';
import { CleanCache, LINE_BYTES, StreamDetector, slice } from './read-cache.ts';
import { API_MAX_ALLOCATION_BYTES, API_MAX_IO_BYTES, API_MAX_PAGES_PER_BATCH, type AllocationRun, type BatchPiece } from './volume-client.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

/** What the cache needs from the volume API. `VolumeClient` is one. */
export interface CacheBackend {
  read(offset: number, length: number): Promise<Buffer>;
  writeBatch(pieces: readonly BatchPiece[]): Promise<void>;
  /** Runs of data and of zeros over a block-aligned range (at most API_MAX_ALLOCATION_BYTES), covering it exactly. */
  allocation?(offset: number, length: number): Promise<AllocationRun[]>;
}

/** A run of dirty bytes: `data` (exactly `end - start` bytes), or zeros when `data` is null. */
export interface CacheExtent {
  start: number;
  end: number;
  data: Buffer | null;
}

/** Memory charged per extent on top of its data, so that zero extents count too. */
const EXTENT_OVERHEAD_BYTES = 64;
/** Remainders of a split extent up to this size are copied, so they do not pin a large buffer. */
const REMAINDER_COPY_MAX_BYTES = 64 * KiB;

function cut(e: CacheExtent, start: number, end: number): CacheExtent {
  if (!e.data) return { start, end, data: null };
  let data = e.data.subarray(start - e.start, end - e.start);
  // A small piece of a big write would keep the whole write's memory alive until it is flushed;
  // copying small remainders bounds what the cache holds to what it counts.
  if (data.length <= REMAINDER_COPY_MAX_BYTES && data.length * 4 <= data.buffer.byteLength) data = Buffer.from(data);
  return { start, end, data };
}

/** Sorted, non-overlapping extents; `set` replaces whatever it covers. */
export class ExtentMap {
  private list: CacheExtent[] = [];
  /** Bytes of data (zero extents excluded). */
  dataBytes = 0;

  get count(): number {
    return this.list.length;
  }

  /** Memory charged to this map. */
  get weightBytes(): number {
    return this.dataBytes + this.list.length * EXTENT_OVERHEAD_BYTES;
  }

  extents(): readonly CacheExtent[] {
    return this.list;
  }

  /** Index of the first extent ending after `pos`. */
  private firstEndingAfter(pos: number): number {
    let lo = 0;
    let hi = this.list.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.list[mid]!.end <= pos) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Makes [start, end) hold `data` (or zeros), replacing what was there. */
  set(start: number, end: number, data: Buffer | null): void {
    invariant(end > start, () => `empty extent [${start}, ${end})`);
    invariant(data === null || data.length === end - start, () => `extent [${start}, ${end}) has ${data!.length} bytes of data`);
    const i = this.firstEndingAfter(start);
    let j = i;
    const replacement: CacheExtent[] = [];
    let tail: CacheExtent | undefined;
    for (; j < this.list.length && this.list[j]!.start < end; j++) {
      const e = this.list[j]!;
      if (e.data) this.dataBytes -= e.end - e.start;
      if (e.start < start) replacement.push(cut(e, e.start, start));
      if (e.end > end) tail = cut(e, end, e.end);
    }
    replacement.push({ start, end, data });
    if (tail) replacement.push(tail);
    for (const r of replacement) if (r.data) this.dataBytes += r.end - r.start;
    this.list.splice(i, j - i, ...replacement);
  }

  /** The parts of extents inside [start, end), clipped to it, in address order. */
  pieces(start: number, end: number): CacheExtent[] {
    const out: CacheExtent[] = [];
    for (let i = this.firstEndingAfter(start); i < this.list.length && this.list[i]!.start < end; i++) {
      const e = this.list[i]!;
      const s = Math.max(start, e.start);
      const t = Math.min(end, e.end);
      out.push({ start: s, end: t, data: e.data ? e.data.subarray(s - e.start, t - e.start) : null });
    }
    return out;
  }
}

export interface BatchLimits {
  /** Bytes of address space per page-map item (the API's page). */
  pageBytes: number;
  /** Data bytes per batch (the API's 4 MiB). */
  dataMaxBytes: number;
  /** Pages one batch may touch (the API's 96). */
  pagesMax: number;
}

/** One extent of a planned batch: data in `parts` (concatenated in order) or zeros. */
export interface PlannedPiece {
  offset: number;
  length: number;
  parts: Buffer[] | null;
}

/**
 * Cuts sorted, non-overlapping extents into batches the API accepts: at most `dataMaxBytes` of
 * data and `pagesMax` distinct pages each. Adjacent extents of the same kind are merged, so a
 * sequential run becomes one extent of one segment. Pure; unit tested.
 */
export function planBatches(extents: readonly CacheExtent[], limits: BatchLimits): PlannedPiece[][] {
  const P = limits.pageBytes;
  const batches: PlannedPiece[][] = [];
  let batch: PlannedPiece[] = [];
  let dataBytes = 0;
  let pages = 0;
  let lastPage = -1;
  const close = () => {
    if (batch.length > 0) batches.push(batch);
    batch = [];
    dataBytes = 0;
    pages = 0;
    lastPage = -1;
  };
  for (const e of extents) {
    // Each pass either consumes at least one page's worth or closes a non-empty batch, so the
    // loop ends after at most 2 * (pages covered + data / dataMaxBytes) + 2 passes.
    for (let s = e.start; s < e.end; ) {
      const firstPage = Math.floor(s / P);
      const shared = firstPage === lastPage;
      let t = Math.min(e.end, (firstPage + (limits.pagesMax - pages) + (shared ? 1 : 0)) * P);
      if (e.data) t = Math.min(t, s + (limits.dataMaxBytes - dataBytes));
      if (t <= s) {
        invariant(batch.length > 0, 'planBatches: a limit left no room in an empty batch');
        close();
        continue;
      }
      const part = e.data ? e.data.subarray(s - e.start, t - e.start) : null;
      const last = batch[batch.length - 1];
      if (last && last.offset + last.length === s && (last.parts === null) === (part === null)) {
        last.length += t - s;
        if (part) last.parts!.push(part);
      } else {
        batch.push({ offset: s, length: t - s, parts: part ? [part] : null });
      }
      if (part) dataBytes += t - s;
      const endPage = Math.floor((t - 1) / P);
      pages += endPage - firstPage + (shared ? 0 : 1);
      lastPage = endPage;
      s = t;
      if (t < e.end) close();
    }
  }
  close();
  return batches;
}

export function toBatchPieces(planned: readonly PlannedPiece[]): BatchPiece[] {
  return planned.map((p) => {
    if (!p.parts) return { offset: p.offset, length: p.length, zero: true as const };
    const bytes = p.parts.reduce((n, b) => n + b.length, 0);
    invariant(bytes === p.length, () => `planned piece at ${p.offset} has ${bytes} bytes, not ${p.length}`);
    return { offset: p.offset, length: p.length, parts: p.parts };
  });
}

/** Writes could not be made durable (the API failed after every retry). Reported on FLUSH and FUA. */
export class WriteBackError extends Error {
  override name = 'WriteBackError';
}

/** A read that the API could not serve. */
export class CacheReadError extends Error {
  override name = 'CacheReadError';
}

interface Deferred {
  promise: Promise<void>;
  resolve: () => void;
  reject: (err: Error) => void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (err: Error) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Nobody may be waiting for a layer when its write-back fails; that must not crash the process.
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

interface Layer {
  map: ExtentMap;
  /** Settles when every byte of this layer (and of every older layer) is durable. */
  durable: Deferred;
  /** When the first write landed in this layer (ms since epoch), 0 while empty. */
  firstWriteAtMs: number;
}

const newLayer = (): Layer => ({ map: new ExtentMap(), durable: deferred(), firstWriteAtMs: 0 });

export interface WriteBackCacheOptions {
  sizeBytes: number;
  blockSizeBytes: number;
  /** The API's page: pageBlocks * blockSizeBytes. */
  pageBytes: number;
  /** Dirty data that seals a layer and starts a write-back. Default 4 MiB (one segment). */
  segmentBytes?: number;
  /** Memory for dirty data; above it the server stops reading requests. Default 64 MiB. */
  capacityBytes?: number;
  /** Dirty data older than this is written back even without FLUSH; 0 never. Default 5000. */
  maxDirtyAgeMs?: number;
  /** Clean data kept for reads (read-cache.ts); 0 keeps none. Default 256 MiB. */
  readCacheBytes?: number;
  /**
   * Largest read-ahead window of a sequential stream. Default 32 MiB: read ahead in steps of half
   * a window, one 16 MiB read plan each; 0 turns read-ahead off.
   */
  readAheadMaxBytes?: number;
  /** Batches of one write-back round in flight at once. Default 4. */
  writeBackConcurrency?: number;
  /** Pages one batch may touch. Default the API's 96; a folding volume's commits take any number (API_FOLDING_PAGES_PER_BATCH). */
  pagesPerBatch?: number;
  /**
   * A reader gateway's read lease (read-lease.ts): the clean cache is used and filled only while
   * it says so; otherwise reads go through the API, uncached. Absent: the cache is always usable.
   */
  coherence?: { cacheUsable(): boolean };
  log?: (message: string) => void;
}

export interface CacheStats {
  batchesWritten: number;
  dataBytesWritten: number;
  zeroBytesWritten: number;
  flushes: number;
  readModifyWrites: number;
  writeBackFailures: number;
  /** API reads sent (demand and read-ahead) and the bytes they asked for. */
  apiReads: number;
  apiReadBytes: number;
  /** API reads sent ahead of demand. */
  readAheads: number;
  /** API reads sent for NBD_CMD_CACHE. */
  prefetches: number;
  /** Reads sent through the API uncached because the read lease did not allow the cache. */
  readsThrough: number;
}

/** Sealed layers taken into one write-back round: they are merged, so concurrent FLUSH/FUA share batches. */
const DRAIN_ROUNDS_MAX = 64;
/** Attempts to write everything back when closing, each with the client's own retries inside. */
const CLOSE_FLUSH_ATTEMPTS = 3;
/** Pause before the timer retries a write-back that failed (an explicit FLUSH retries at once). */
const RETRY_PAUSE_MS = 1000;
/** How often the timer looks for old dirty data and failed write-backs. */
const TICK_MAX_MS = 1000;
/** Extents in one layer before it is sealed, so zero-only layers stay bounded too. */
const LAYER_EXTENTS_MAX = 16 * 1024;

export class WriteBackCache {
  readonly sizeBytes: number;
  readonly blockSizeBytes: number;
  private readonly segmentBytes: number;
  readonly capacityBytes: number;
  private readonly maxDirtyAgeMs: number;
  /** Clean data for reads; see read-cache.ts. */
  readonly clean: CleanCache;
  private readonly streams: StreamDetector;
  private readonly readAheadMaxBytes: number;
  private readonly writeBackConcurrency: number;
  /** API reads in flight, by line: readers of a line join the fetch instead of sending their own. */
  private readonly fetching = new Map<number, Fetch>();
  private readonly limits: BatchLimits;
  private readonly log: (message: string) => void;

  private open: Layer = newLayer();
  private readonly sealed: Layer[] = [];
  private draining: Promise<void> | null = null;
  /** A FLUSH (or FUA, or close) asked for a write-back while one was running. */
  private explicitPending = false;
  private retryNotBeforeMs = 0;
  private lastError: Error | null = null;
  private roomWaiters: Array<() => void> = [];
  /** Writes that need a read first (unaligned) run here in arrival order; see `ordered`. */
  private lane: Promise<void> = Promise.resolve();
  private laneDepth = 0;
  private readonly timer: NodeJS.Timeout;
  private closed = false;
  readonly stats: CacheStats = {
    batchesWritten: 0,
    dataBytesWritten: 0,
    zeroBytesWritten: 0,
    flushes: 0,
    readModifyWrites: 0,
    writeBackFailures: 0,
    apiReads: 0,
    apiReadBytes: 0,
    readAheads: 0,
    prefetches: 0,
    readsThrough: 0,
  };
  private readonly coherence: { cacheUsable(): boolean } | undefined;

  constructor(
    private readonly backend: CacheBackend,
    opts: WriteBackCacheOptions,
  ) {
    this.sizeBytes = opts.sizeBytes;
    this.blockSizeBytes = opts.blockSizeBytes;
    this.segmentBytes = opts.segmentBytes ?? 4 * MiB;
    this.capacityBytes = opts.capacityBytes ?? 64 * MiB;
    this.maxDirtyAgeMs = opts.maxDirtyAgeMs ?? 5000;
    this.writeBackConcurrency = Math.max(1, opts.writeBackConcurrency ?? 4);
    this.coherence = opts.coherence;
    this.clean = new CleanCache(opts.readCacheBytes ?? 256 * MiB);
    // Read-ahead needs room to keep what it read until the reader gets there.
    this.readAheadMaxBytes = Math.min(opts.readAheadMaxBytes ?? 32 * MiB, Math.floor(this.clean.capacityBytes / 4 / API_MAX_IO_BYTES) * API_MAX_IO_BYTES);
    this.streams = new StreamDetector(this.readAheadMaxBytes, Math.min(this.readAheadMaxBytes, API_MAX_IO_BYTES));
    this.log = opts.log ?? (() => undefined);
    this.limits = { pageBytes: opts.pageBytes, dataMaxBytes: API_MAX_IO_BYTES, pagesMax: opts.pagesPerBatch ?? API_MAX_PAGES_PER_BATCH };
    invariant(this.sizeBytes % this.blockSizeBytes === 0, 'volume size is not a multiple of its block size');
    invariant(opts.pageBytes % this.blockSizeBytes === 0 && API_MAX_IO_BYTES % this.blockSizeBytes === 0, 'page and batch sizes must be multiples of the block size');
    invariant(this.segmentBytes > 0 && this.capacityBytes >= this.segmentBytes, `cache capacity ${this.capacityBytes} must hold at least one segment of ${this.segmentBytes}`);
    // The timer also retries a failed write-back, so it runs even when dirty data never ages out.
    this.timer = setInterval(() => this.tick(), this.maxDirtyAgeMs > 0 ? Math.min(TICK_MAX_MS, this.maxDirtyAgeMs) : TICK_MAX_MS);
    this.timer.unref();
  }

  /** Bytes of memory the dirty data takes (data plus a small charge per extent). */
  get usedBytes(): number {
    return this.sealed.reduce((n, l) => n + l.map.weightBytes, this.open.map.weightBytes);
  }

  /** Dirty bytes not yet durable. */
  get dirtyDataBytes(): number {
    return this.sealed.reduce((n, l) => n + l.map.dataBytes, this.open.map.dataBytes);
  }

  get dirtyExtents(): number {
    return this.sealed.reduce((n, l) => n + l.map.count, this.open.map.count);
  }

  /** Resolves when the cache is below capacity: the server waits on this before reading a request. */
  waitForRoom(): Promise<void> {
    if (this.usedBytes < this.capacityBytes) return Promise.resolve();
    // Full: make sure write-back is under way, then wait for a round to finish.
    this.seal();
    this.kick(false);
    return new Promise((resolve) => this.roomWaiters.push(resolve));
  }

  private notifyRoom(): void {
    if (this.usedBytes >= this.capacityBytes) return;
    const waiters = this.roomWaiters;
    this.roomWaiters = [];
    for (const w of waiters) w();
  }

  // -------------------------------------------------------------------------------------
  // Writes

  /**
   * Runs `apply` after every earlier write that is still waiting for a read-modify-write, so
   * writes reach the cache in the order they arrived. With no such write pending it runs now.
   */
  private ordered(apply: () => void | Promise<void>): Promise<void> {
    if (this.laneDepth === 0) {
      const result = apply();
      if (!(result instanceof Promise)) return Promise.resolve();
      this.laneDepth++;
      this.lane = result.then(
        () => void this.laneDepth--,
        () => void this.laneDepth--,
      );
      return result;
    }
    this.laneDepth++;
    const run = this.lane.then(apply);
    this.lane = run.then(
      () => void this.laneDepth--,
      () => void this.laneDepth--,
    );
    return run;
  }

  private apply(start: number, end: number, data: Buffer | null): void {
    invariant(start % this.blockSizeBytes === 0 && end % this.blockSizeBytes === 0, () => `unaligned extent [${start}, ${end}) reached the cache`);
    invariant(start >= 0 && end <= this.sizeBytes, () => `extent [${start}, ${end}) is outside the volume`);
    if (this.open.firstWriteAtMs === 0) this.open.firstWriteAtMs = Date.now();
    this.open.map.set(start, end, data);
    if (this.open.map.dataBytes >= this.segmentBytes || this.open.map.count >= LAYER_EXTENTS_MAX) {
      this.seal();
      this.kick(false);
    }
  }

  /** Reads one block through the cache, for read-modify-write. */
  private async block(start: number): Promise<Buffer> {
    this.stats.readModifyWrites++;
    // A copy: the caller changes it, and the parts may be cached lines.
    return Buffer.concat(await this.readAligned(start, this.blockSizeBytes));
  }

  /**
   * Writes `data` at `offset`. Unaligned edges are merged with the current contents of their
   * blocks (read-modify-write), in arrival order with other writes.
   */
  write(offset: number, data: Buffer): Promise<void> {
    const bs = this.blockSizeBytes;
    const end = offset + data.length;
    if (offset % bs === 0 && end % bs === 0) return this.ordered(() => this.apply(offset, end, data));
    return this.ordered(async () => {
      const a0 = Math.floor(offset / bs) * bs;
      const a1 = Math.ceil(end / bs) * bs;
      const buf = Buffer.alloc(a1 - a0);
      if (offset !== a0) (await this.block(a0)).copy(buf, 0);
      if (end !== a1 && (a1 - bs !== a0 || offset === a0)) (await this.block(a1 - bs)).copy(buf, a1 - bs - a0);
      data.copy(buf, offset - a0);
      this.apply(a0, a1, buf);
    });
  }

  /** Zeroes [offset, offset + length) exactly: whole blocks become zero extents, edges are read-modify-written. */
  writeZeroes(offset: number, length: number): Promise<void> {
    const bs = this.blockSizeBytes;
    const end = offset + length;
    const inner0 = Math.ceil(offset / bs) * bs;
    const inner1 = Math.floor(end / bs) * bs;
    if (offset === inner0 && end === inner1) return this.ordered(() => this.apply(offset, end, null));
    return this.ordered(async () => {
      const head = Math.floor(offset / bs) * bs;
      if (offset !== head) {
        const blk = await this.block(head);
        blk.fill(0, offset - head, Math.min(end, head + bs) - head);
        this.apply(head, head + bs, blk);
      }
      const tail = Math.floor(end / bs) * bs;
      if (end !== tail && (tail !== head || offset === head)) {
        const blk = await this.block(tail);
        blk.fill(0, Math.max(offset, tail) - tail, end - tail);
        this.apply(tail, tail + bs, blk);
      }
      if (inner1 > inner0) this.apply(inner0, inner1, null);
    });
  }

  /**
   * Trims: whole blocks inside the range become zero extents (they then read as zeros, as on
   * the API). Partial blocks at the edges are left alone, which TRIM, being advisory, allows.
   */
  trim(offset: number, length: number): Promise<void> {
    const bs = this.blockSizeBytes;
    const inner0 = Math.ceil(offset / bs) * bs;
    const inner1 = Math.floor((offset + length) / bs) * bs;
    if (inner1 <= inner0) return Promise.resolve();
    return this.ordered(() => this.apply(inner0, inner1, null));
  }

  // -------------------------------------------------------------------------------------
  // Reads

  /** Reads any byte range inside the volume: the API's bytes with every cached write laid over them. */
  async read(offset: number, length: number): Promise<Buffer> {
    // A copy the caller owns (the parts may be cached lines, which must not change).
    return Buffer.concat(await this.readv(offset, length));
  }

  /**
   * `read`, as buffers that together hold the bytes in order: for an NBD reply written without
   * a copy. They may be cached lines or a fetch's bytes: the caller must not change them.
   */
  async readv(offset: number, length: number): Promise<Buffer[]> {
    const bs = this.blockSizeBytes;
    const a0 = Math.floor(offset / bs) * bs;
    const a1 = Math.ceil((offset + length) / bs) * bs;
    const parts = await this.readAligned(a0, a1 - a0);
    return a0 === offset && a1 === offset + length ? parts : slice(parts, offset - a0, length);
  }

  private async readAligned(start: number, length: number): Promise<Buffer[]> {
    const end = start + length;
    // Snapshot the overlay *before* asking the API. A layer leaves the stack only after the API
    // acknowledged it, so anything missing from this snapshot was durable before the API read
    // began, and a consistent API read returns it. Taking the overlay after the API read would
    // miss a layer that was written back (and dropped) while the read was in flight, if the API
    // had served the read from before that commit.
    const overlay = [...this.sealed, this.open].map((l) => l.map.pieces(start, end));
    const dirty = overlay.some((pieces) => pieces.length > 0);
    let durable: Buffer[] = [];
    if (!dirty || !coversAll(overlay, start, end)) {
      if (this.cacheUsable()) {
        durable = await this.readClean(start, end);
        this.readAhead(start, end);
      } else {
        const out = Buffer.allocUnsafe(length);
        await this.readThrough(start, end, out);
        durable = [out];
      }
    }
    // Nothing dirty here: the durable bytes as they are (cached lines, fetched bytes), no copy.
    if (!dirty) return durable;
    // Every byte is written below: by the durable parts (which cover the whole range), or by
    // the overlay when it covers the range.
    const out = Buffer.allocUnsafe(length);
    let at = 0;
    for (const part of durable) at += part.copy(out, at);
    for (const pieces of overlay) {
      for (const p of pieces) {
        if (p.data) p.data.copy(out, p.start - start);
        else out.fill(0, p.start - start, p.end - start);
      }
    }
    return [out];
  }

  /**
   * The volume's durable bytes of [start, end), as buffers in order: cached lines at once
   * (before any await, so they are as recent as the overlay snapshot the caller took; lines are
   * never changed in place, so holding them is as good as copying them), the rest from fetches
   * in flight or new ones.
   */
  private async readClean(start: number, end: number): Promise<Buffer[]> {
    const firstLine = Math.floor(start / LINE_BYTES);
    const parts: Buffer[] = [];
    const missing: number[] = [];
    for (let line = firstLine; line * LINE_BYTES < end; line++) {
      const b = this.clean.get(line);
      if (b) parts[line - firstLine] = lineView(b, line * LINE_BYTES, start, end);
      else missing.push(line);
    }
    if (missing.length > 0) {
      // Join fetches already in flight; send one API read per run of the other lines.
      const joined = new Map<number, Fetch>();
      const runs: number[][] = [];
      for (const line of missing) {
        const f = this.fetching.get(line);
        if (f) {
          joined.set(line, f);
          continue;
        }
        const run = runs[runs.length - 1];
        if (run && run[run.length - 1] === line - 1 && !crossesWindow(run[0]!, line)) run.push(line);
        else runs.push([line]);
      }
      const own = runs.map((run) => this.fetch(run[0]!, run[run.length - 1]! + 1, false));
      const fill = (bytes: Buffer, f: Fetch, line: number) => {
        const at = (line - f.first) * LINE_BYTES;
        parts[line - firstLine] = lineView(bytes.subarray(at, at + LINE_BYTES), line * LINE_BYTES, start, end);
      };
      await Promise.all([
        ...own.map(async (f) => {
          const bytes = await f.promise;
          for (let line = Math.max(f.first, firstLine); line < f.last && line * LINE_BYTES < end; line++) fill(bytes, f, line);
        }),
        ...[...joined].map(async ([line, f]) => {
          let bytes: Buffer | null = null;
          try {
            bytes = await f.promise;
          } catch {
            // A failed read-ahead: read the line again, as this reader's own request.
          }
          // A fetch that a write-back overtook may predate that write, which this reader's overlay
          // no longer holds (its layer may be gone): only the reader that started a fetch may use
          // a stale one (its overlay was taken before the fetch began).
          if (!bytes || f.stale) {
            const again = this.fetch(line, line + 1, false);
            fill(await again.promise, again, line);
          } else fill(bytes, f, line);
        }),
      ]);
    }
    return joinViews(parts);
  }

  /** Whether the clean cache may answer and be filled now (always, but on a reader whose lease says otherwise). */
  private cacheUsable(): boolean {
    return this.coherence === undefined || this.coherence.cacheUsable();
  }

  /** Reads [start, end) from the API into `out`, at most 4 MiB per request, past the clean cache and filling nothing. */
  private async readThrough(start: number, end: number, out: Buffer): Promise<void> {
    const reads: Array<Promise<void>> = [];
    for (let pos = start; pos < end; pos += API_MAX_IO_BYTES) {
      const t = Math.min(end, pos + API_MAX_IO_BYTES);
      this.stats.readsThrough++;
      this.stats.apiReads++;
      this.stats.apiReadBytes += t - pos;
      reads.push(this.checkedRead(pos, t - pos).then((bytes) => void bytes.copy(out, pos - start)));
    }
    await Promise.all(reads);
  }

  /**
   * Drops every clean line and makes every API read in flight fill nothing (readers that joined
   * one read again): a reader's lease found that lines may be older than a commit.
   */
  invalidate(): void {
    this.clean.clear();
    for (const f of this.fetching.values()) f.stale = true;
    this.fetching.clear();
  }

  /** Sends one API read of lines [first, last) (inside one 4 MiB window) and registers it for joiners. */
  private fetch(first: number, last: number, ahead: boolean): Fetch {
    const start = first * LINE_BYTES;
    const end = Math.min(this.sizeBytes, last * LINE_BYTES);
    const f: Fetch = { first, last, stale: false, promise: undefined as unknown as Promise<Buffer> };
    this.stats.apiReads++;
    this.stats.apiReadBytes += end - start;
    if (ahead) this.stats.readAheads++;
    f.promise = this.checkedRead(start, end - start).then(
      (bytes) => {
        this.unregister(f);
        // A reader whose lease lapsed (or that dropped its cache) meanwhile keeps nothing of it.
        // Lines are views of the fetched bytes, which nobody changes (readers only copy from them).
        if (!f.stale && this.cacheUsable()) for (let line = first; line < last; line++) this.clean.put(line, bytes.subarray((line - first) * LINE_BYTES, (line - first + 1) * LINE_BYTES));
        return bytes;
      },
      (err: unknown) => {
        this.unregister(f);
        throw err;
      },
    );
    if (ahead) f.promise.catch((err: Error) => this.log(`read-ahead of [${start}, ${end}) failed: ${err.message}`));
    for (let line = first; line < last; line++) this.fetching.set(line, f);
    return f;
  }

  private unregister(f: Fetch): void {
    for (let line = f.first; line < f.last; line++) if (this.fetching.get(line) === f) this.fetching.delete(line);
  }

  /**
   * NBD_CMD_CACHE: reads the durable bytes of [offset, offset + length) into the clean cache, the
   * lines neither cached nor being read, in runs inside 4 MiB windows, and resolves once they
   * are there. At most half the clean cache is prefetched by one request (more would evict its
   * own first lines); returns how many bytes were asked of the API.
   */
  async prefetch(offset: number, length: number): Promise<number> {
    if (!this.cacheUsable()) return 0; // a reader without a usable lease caches nothing
    const end = Math.min(this.sizeBytes, offset + Math.min(length, Math.floor(this.clean.capacityBytes / 2)));
    const pending: Array<Promise<Buffer>> = [];
    let asked = 0;
    let line = Math.floor(offset / LINE_BYTES);
    const lastLine = Math.ceil(end / LINE_BYTES);
    while (line < lastLine) {
      const inFlight = this.fetching.get(line);
      if (this.clean.has(line) || inFlight) {
        if (inFlight) pending.push(inFlight.promise);
        line++;
        continue;
      }
      let runEnd = line + 1;
      while (runEnd < lastLine && !crossesWindow(line, runEnd) && !this.clean.has(runEnd) && !this.fetching.has(runEnd)) runEnd++;
      const f = this.fetch(line, runEnd, false);
      this.stats.prefetches++;
      asked += Math.min(this.sizeBytes, runEnd * LINE_BYTES) - line * LINE_BYTES;
      pending.push(f.promise);
      line = runEnd;
    }
    await Promise.all(pending);
    return asked;
  }

  /**
   * A read of [start, end) that continues a sequential stream starts API reads of the window
   * ahead of it: whole 4 MiB windows (whole chunks of the segments a sequential writer made), of
   * the lines neither cached nor being read.
   */
  private readAhead(start: number, end: number): void {
    if (this.readAheadMaxBytes === 0 || !this.cacheUsable()) return;
    const ahead = this.streams.observe(start, end);
    if (!ahead) return;
    const W = API_MAX_IO_BYTES;
    const aheadEnd = Math.min(this.sizeBytes, Math.ceil(ahead.end / W) * W);
    // Lines up to `ahead.from` were looked at by an earlier read of this stream.
    let line = Math.floor(Math.max(ahead.start, ahead.from) / LINE_BYTES);
    const lastLine = Math.ceil(aheadEnd / LINE_BYTES);
    while (line < lastLine) {
      if (this.clean.has(line) || this.fetching.has(line)) {
        line++;
        continue;
      }
      let runEnd = line + 1;
      while (runEnd < lastLine && !crossesWindow(line, runEnd) && !this.clean.has(runEnd) && !this.fetching.has(runEnd)) runEnd++;
      this.fetch(line, runEnd, true);
      line = runEnd;
    }
  }

  private async checkedRead(start: number, length: number): Promise<Buffer> {
    try {
      return await this.backend.read(start, length);
    } catch (err) {
      throw new CacheReadError(`read [${start}, ${start + length}) failed: ${(err as Error).message}`, { cause: err });
    }
  }

  /** A batch the API acknowledged: cached lines take its bytes, and reads in flight over it may not fill the cache. */
  private committed(pieces: readonly BatchPiece[]): void {
    for (const p of pieces) {
      const end = p.offset + p.length;
      this.clean.patch(p.offset, end, 'zero' in p ? null : p.parts);
      for (let line = Math.floor(p.offset / LINE_BYTES); line * LINE_BYTES < end; line++) {
        const f = this.fetching.get(line);
        if (f) f.stale = true;
      }
    }
  }

  /**
   * Block status: runs of data and of zeros from `offset`, covering at least the first block
   * and at most `length` bytes (a client asks again for the rest). The volume's allocation as
   * the API reports it, with the dirty layers laid over it (data where a write is cached, zeros
   * where a trim or WRITE_ZEROES is): snapshot first, as for reads.
   */
  async allocation(offset: number, length: number): Promise<AllocationRun[]> {
    const bs = this.blockSizeBytes;
    const a0 = Math.floor(offset / bs) * bs;
    const a1 = Math.min(this.sizeBytes, Math.ceil((offset + length) / bs) * bs, a0 + API_MAX_ALLOCATION_BYTES);
    const overlay = [...this.sealed, this.open].flatMap((l) => l.map.pieces(a0, a1));
    let runs: AllocationRun[];
    if (this.backend.allocation) {
      try {
        runs = await this.backend.allocation(a0, a1 - a0);
      } catch (err) {
        throw new CacheReadError(`allocation of [${a0}, ${a1}) failed: ${(err as Error).message}`, { cause: err });
      }
    } else runs = [{ offset: a0, length: a1 - a0, zero: false }];
    for (const p of overlay) runs = setRun(runs, p.start, p.end, p.data === null);
    // From `offset` exactly, and no further than the request.
    const end = Math.min(offset + length, a1);
    const out: AllocationRun[] = [];
    for (const r of runs) {
      const s = Math.max(offset, r.offset);
      const t = Math.min(end, r.offset + r.length);
      if (t <= s) continue;
      const last = out[out.length - 1];
      if (last && last.zero === r.zero && last.offset + last.length === s) last.length += t - s;
      else out.push({ offset: s, length: t - s, zero: r.zero });
    }
    return out;
  }

  // -------------------------------------------------------------------------------------
  // Write-back

  private seal(): void {
    if (this.open.map.count === 0) return;
    this.sealed.push(this.open);
    this.open = newLayer();
  }

  /** Starts the flusher unless it runs. `explicit` (FLUSH, FUA, close) ignores the pause after a failure. */
  private kick(explicit: boolean): void {
    if (this.sealed.length === 0) return;
    if (this.draining) {
      // The running round may not include the caller's layers, or may be failing; run again after it.
      if (explicit) this.explicitPending = true;
      return;
    }
    if (!explicit && Date.now() < this.retryNotBeforeMs) return;
    this.draining = this.drain()
      .catch((err: Error) => {
        // drain() handles API failures itself; this is a bug, and must not take the process down.
        this.lastError = err;
        this.log(`write-back stopped by an unexpected error: ${err.stack ?? err.message}`);
      })
      .finally(() => {
      this.draining = null;
        // Layers sealed while the last round ran (the round bound in drain() ends a drain, not
        // the work), or a FLUSH that arrived while a failing round was unwinding.
        const explicit = this.explicitPending;
        this.explicitPending = false;
        if (this.sealed.length > 0 && (this.lastError === null || explicit)) setImmediate(() => this.kick(explicit));
      });
  }

  private async drain(): Promise<void> {
    this.lastError = null;
    for (let round = 0; round < DRAIN_ROUNDS_MAX && this.sealed.length > 0; round++) {
      // Every layer sealed so far goes in this round, merged oldest first so later writes win:
      // concurrent FLUSH and FUA requests then share segments (group commit).
      const group = [...this.sealed];
      const merged = new ExtentMap();
      try {
        for (const layer of group) for (const e of layer.map.extents()) merged.set(e.start, e.end, e.data);
        // The batches of one round never overlap (they are cut from one merged map), so several
        // may be in flight: the API commits one writer's concurrent batches one after another
        // without re-uploading (docs/page-map.md, "Pipelined writes"). Rounds do not overlap,
        // so a newer write to a block is always committed after an older one.
        const planned = planBatches(merged.extents(), this.limits);
        let next = 0;
        let failed = false;
        // Every batch sent settles before the round ends, failed or not: a batch of this round
        // still in flight must never race one of the next round over the same blocks.
        const settled = await Promise.allSettled(
          Array.from({ length: Math.min(this.writeBackConcurrency, planned.length) }, async () => {
            while (next < planned.length && !failed) {
              const pieces = toBatchPieces(planned[next++]!);
              try {
                await this.backend.writeBatch(pieces);
              } catch (err) {
                failed = true;
                throw err;
              }
              this.committed(pieces);
              this.stats.batchesWritten++;
              for (const p of pieces) {
                if ('zero' in p) this.stats.zeroBytesWritten += p.length;
                else this.stats.dataBytesWritten += p.length;
              }
            }
          }),
        );
        const failure = settled.find((r) => r.status === 'rejected');
        if (failure) throw failure.reason;
      } catch (err) {
        const error = new WriteBackError(`write-back of ${merged.dataBytes} dirty bytes failed: ${(err as Error).message}`, { cause: err });
        this.lastError = error;
        this.stats.writeBackFailures++;
        this.retryNotBeforeMs = Date.now() + RETRY_PAUSE_MS;
        this.log(error.message);
        // Everyone waiting on these layers learns of the failure; the layers stay (still readable,
        // still dirty) with fresh promises, and are retried by the next FLUSH or timer tick.
        for (const layer of group) {
          const failed = layer.durable;
          layer.durable = deferred();
          failed.reject(error);
        }
        this.notifyRoom();
        return;
      }
      invariant(this.sealed[0] === group[0], 'sealed layers changed order during write-back');
      this.sealed.splice(0, group.length);
      for (const layer of group) layer.durable.resolve();
      this.notifyRoom();
    }
  }

  /**
   * Makes every write that was applied before this call durable. This is NBD FLUSH (and FUA:
   * writing back everything older too is allowed and keeps the ordering simple).
   */
  async flush(): Promise<void> {
    this.stats.flushes++;
    this.seal();
    const target = this.sealed[this.sealed.length - 1];
    if (!target) return;
    this.kick(true);
    await target.durable.promise;
  }

  private tick(): void {
    if (this.closed) return;
    if (this.maxDirtyAgeMs > 0 && this.open.firstWriteAtMs > 0 && Date.now() - this.open.firstWriteAtMs >= this.maxDirtyAgeMs) this.seal();
    this.kick(false);
  }

  /**
   * Stops the timer and writes everything back, trying a few times. Throws when dirty data
   * could not be made durable (the caller reports how much is lost).
   */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    let lastErr: unknown;
    for (let attempt = 0; attempt < CLOSE_FLUSH_ATTEMPTS; attempt++) {
      try {
        await this.flush();
        if (this.draining) await this.draining;
        if (this.dirtyExtents === 0) return;
      } catch (err) {
        lastErr = err;
      }
    }
    throw new WriteBackError(`${this.dirtyDataBytes} dirty bytes in ${this.dirtyExtents} extents could not be written back: ${(lastErr as Error | undefined)?.message ?? 'unknown'}`, { cause: lastErr });
  }
}

/** An API read in flight: lines [first, last). `stale` once a write-back over it was acknowledged. */
interface Fetch {
  first: number;
  last: number;
  stale: boolean;
  promise: Promise<Buffer>;
}

/** Lines a and b lie in different 4 MiB windows (API reads stay inside one, as segments of a sequential writer do). */
function crossesWindow(a: number, b: number): boolean {
  const perWindow = API_MAX_IO_BYTES / LINE_BYTES;
  return Math.floor(a / perWindow) !== Math.floor(b / perWindow);
}

/** The part of a line (whose bytes `bytes` start at volume offset `lineStart`) inside [start, end). */
function lineView(bytes: Buffer, lineStart: number, start: number, end: number): Buffer {
  const s = Math.max(start, lineStart);
  const t = Math.min(end, lineStart + bytes.length);
  return s === lineStart && t === lineStart + bytes.length ? bytes : bytes.subarray(s - lineStart, Math.max(s, t) - lineStart);
}

/** Joins views that continue one another in the same memory into one view, so a reply is written in few pieces. */
function joinViews(parts: readonly Buffer[]): Buffer[] {
  const out: Buffer[] = [];
  for (const p of parts) {
    if (p.length === 0) continue;
    const last = out[out.length - 1];
    if (last && last.buffer === p.buffer && last.byteOffset + last.length === p.byteOffset) {
      out[out.length - 1] = Buffer.from(last.buffer, last.byteOffset, last.length + p.length);
    } else out.push(p);
  }
  return out;
}

/** Runs with [start, end) set to `zero`; sorted, covering what `runs` covered. */
function setRun(runs: readonly AllocationRun[], start: number, end: number, zero: boolean): AllocationRun[] {
  const out: AllocationRun[] = [];
  const push = (offset: number, length: number, z: boolean) => {
    if (length <= 0) return;
    const last = out[out.length - 1];
    if (last && last.zero === z && last.offset + last.length === offset) last.length += length;
    else out.push({ offset, length, zero: z });
  };
  let placed = false;
  for (const r of runs) {
    const rEnd = r.offset + r.length;
    if (rEnd <= start || r.offset >= end) {
      if (r.offset >= end && !placed) {
        placed = true;
        push(start, end - start, zero);
      }
      push(r.offset, r.length, r.zero);
      continue;
    }
    push(r.offset, Math.max(0, start - r.offset), r.zero);
    if (!placed) {
      placed = true;
      push(start, end - start, zero);
    }
    push(end, rEnd - end, r.zero);
  }
  if (!placed) push(start, end - start, zero);
  return out;
}

/** True when the pieces (from all layers) cover every byte of [start, end). */
function coversAll(overlay: CacheExtent[][], start: number, end: number): boolean {
  const all = overlay.flat().sort((a, b) => a.start - b.start);
  let pos = start;
  for (const p of all) {
    if (p.start > pos) return false;
    pos = Math.max(pos, p.end);
    if (pos >= end) return true;
  }
  return pos >= end;
}
