/**
 * The gateway's write-back cache against an in-memory volume that enforces the API's batch
 * rules (at most 4 MiB of data, at most 96 pages, aligned, non-overlapping). The real API is
 * exercised by test/integration/nbd.test.ts; here the point is ordering under controlled
 * timing, which only a backend whose reads and writes can be held back makes deterministic.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ExtentMap, WriteBackCache, WriteBackError, planBatches, toBatchPieces, type CacheBackend, type CacheExtent } from '#gateway/cache.ts';
import { API_MAX_IO_BYTES, API_MAX_PAGES_PER_BATCH, API_MAX_PLAN_BYTES, type BatchPiece } from '#gateway/volume-client.ts';
import { CleanCache, LINE_BYTES } from '#gateway/read-cache.ts';
import { MAX_PAGES_PER_COMMIT } from '#shared/core/records.ts';
import { MAX_PLAN_BYTES } from '#shared/data/read-plan.ts';
import { MAX_IO_BYTES } from '#shared/data/volume-rules.ts';
import { seeded } from './seed.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const BS = 4096;

/** A volume in memory with the API's batch rules. */
class MemoryVolume implements CacheBackend {
  readonly bytes: Buffer;
  readonly batches: BatchPiece[][] = [];
  /** When set, batches wait for it before they are applied. */
  writeGate: Promise<void> | null = null;
  /** When set, reads take their bytes at once but answer only after it (a read served "before" a commit). */
  readGate: Promise<void> | null = null;
  failures = 0;
  reads = 0;

  constructor(
    sizeBytes: number,
    readonly pageBytes: number,
  ) {
    this.bytes = Buffer.alloc(sizeBytes);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.reads++;
    expect(length).toBeLessThanOrEqual(API_MAX_IO_BYTES);
    const copy = Buffer.from(this.bytes.subarray(offset, offset + length));
    if (this.readGate) await this.readGate;
    return copy;
  }

  async writeBatch(pieces: readonly BatchPiece[]): Promise<void> {
    if (this.writeGate) await this.writeGate;
    if (this.failures > 0) {
      this.failures--;
      throw new Error('injected: HTTP 503 after every retry');
    }
    let data = 0;
    const pages = new Set<number>();
    let prevEnd = -1;
    for (const p of pieces) {
      const length = p.length;
      expect(p.offset % BS, 'aligned offset').toBe(0);
      expect(length % BS, 'aligned length').toBe(0);
      expect(p.offset, 'sorted, non-overlapping').toBeGreaterThanOrEqual(prevEnd);
      prevEnd = p.offset + length;
      if (!('zero' in p)) data += length;
      for (let pg = Math.floor(p.offset / this.pageBytes); pg <= Math.floor((p.offset + length - 1) / this.pageBytes); pg++) pages.add(pg);
    }
    expect(data).toBeLessThanOrEqual(API_MAX_IO_BYTES);
    expect(pages.size).toBeLessThanOrEqual(API_MAX_PAGES_PER_BATCH);
    for (const p of pieces) {
      if ('zero' in p) this.bytes.fill(0, p.offset, p.offset + p.length);
      else Buffer.concat(p.parts).copy(this.bytes, p.offset);
    }
    this.batches.push([...pieces]);
  }
}

function release(): { gate: Promise<void>; open: () => void } {
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  return { gate, open };
}

describe('gateway limits', () => {
  it('match the API (the gateway keeps its own copy to stay free of AWS modules)', () => {
    expect(API_MAX_IO_BYTES).toBe(MAX_IO_BYTES);
    expect(API_MAX_PAGES_PER_BATCH).toBe(MAX_PAGES_PER_COMMIT);
    expect(API_MAX_PLAN_BYTES).toBe(MAX_PLAN_BYTES);
  });
});

describe('ExtentMap', () => {
  it('replaces what a write covers, keeps the rest, and counts data bytes', () => {
    const m = new ExtentMap();
    m.set(0, 16 * KiB, Buffer.alloc(16 * KiB, 1));
    m.set(4 * KiB, 8 * KiB, null);
    m.set(12 * KiB, 20 * KiB, Buffer.alloc(8 * KiB, 2));
    expect(m.extents().map((e) => [e.start, e.end, e.data ? e.data[0] : null])).toEqual([
      [0, 4096, 1],
      [4096, 8192, null],
      [8192, 12288, 1],
      [12288, 20480, 2],
    ]);
    expect(m.dataBytes).toBe(16 * KiB);
    expect(m.pieces(6 * KiB, 14 * KiB).map((e) => [e.start, e.end, e.data?.length ?? null])).toEqual([
      [6144, 8192, null],
      [8192, 12288, 4096],
      [12288, 14336, 2048],
    ]);
    m.set(0, 20 * KiB, null);
    expect(m.count).toBe(1);
    expect(m.dataBytes).toBe(0);
  });
});

describe('planBatches', () => {
  const limits = { pageBytes: MiB, dataMaxBytes: 4 * MiB, pagesMax: 96 };

  it('merges a sequential run into one extent per 4 MiB batch', () => {
    const extents: CacheExtent[] = Array.from({ length: 10 }, (_, i) => ({ start: i * MiB, end: (i + 1) * MiB, data: Buffer.alloc(MiB, i) }));
    const batches = planBatches(extents, limits);
    expect(batches.map((b) => b.map((p) => [p.offset, p.length]))).toEqual([[[0, 4 * MiB]], [[4 * MiB, 4 * MiB]], [[8 * MiB, 2 * MiB]]]);
    const pieces = toBatchPieces(batches[1]!);
    // The run's bytes, in its writes' own buffers (not joined: the request is sent piece by piece).
    expect('parts' in pieces[0]! && pieces[0].parts.length === 4 && Buffer.concat(pieces[0].parts).equals(Buffer.concat([4, 5, 6, 7].map((i) => Buffer.alloc(MiB, i))))).toBe(true);
  });

  it('cuts zero extents at 96 pages and scattered writes at 96 pages', () => {
    const zeros = planBatches([{ start: 0, end: 200 * MiB, data: null }], limits);
    expect(zeros.map((b) => b.map((p) => [p.offset / MiB, p.length / MiB]))).toEqual([[[0, 96]], [[96, 96]], [[192, 8]]]);
    // One block on each of 200 pages: 96 pages per batch even though the data is tiny.
    const scattered = planBatches(Array.from({ length: 200 }, (_, i) => ({ start: i * MiB, end: i * MiB + BS, data: Buffer.alloc(BS) })), limits);
    expect(scattered.map((b) => b.length)).toEqual([96, 96, 8]);
  });

  it('keeps every batch within the limits and loses no byte (randomized)', () => {
    const rng = seeded('planBatches');
    const small = { pageBytes: 64 * KiB, dataMaxBytes: 256 * KiB, pagesMax: 5 };
    for (let round = 0; round < 50; round++) {
      const m = new ExtentMap();
      const size = 4 * MiB;
      for (let i = 0; i < 40; i++) {
        const start = rng.int(size / BS) * BS;
        const end = Math.min(size, start + (1 + rng.int(96)) * BS);
        m.set(start, end, rng.int(3) === 0 ? null : randomBytes(end - start));
      }
      const expected = Buffer.alloc(size, 0xee);
      for (const e of m.extents()) (e.data ?? Buffer.alloc(e.end - e.start)).copy(expected, e.start);
      const got = Buffer.alloc(size, 0xee);
      for (const batch of planBatches(m.extents(), small)) {
        let data = 0;
        const pages = new Set<number>();
        for (const p of toBatchPieces(batch)) {
          const length = p.length;
          if (!('zero' in p)) {
            data += length;
            Buffer.concat(p.parts).copy(got, p.offset);
          } else {
            got.fill(0, p.offset, p.offset + length);
          }
          for (let pg = Math.floor(p.offset / small.pageBytes); pg <= Math.floor((p.offset + length - 1) / small.pageBytes); pg++) pages.add(pg);
        }
        expect(data).toBeLessThanOrEqual(small.dataMaxBytes);
        expect(pages.size).toBeLessThanOrEqual(small.pagesMax);
      }
      expect(got.equals(expected), `round ${round}`).toBe(true);
    }
  });
});

function newCache(vol: MemoryVolume, opts: Partial<ConstructorParameters<typeof WriteBackCache>[1]> = {}) {
  return new WriteBackCache(vol, { sizeBytes: vol.bytes.length, blockSizeBytes: BS, pageBytes: vol.pageBytes, maxDirtyAgeMs: 0, ...opts });
}

describe('WriteBackCache', () => {
  it('acknowledges writes from memory and writes nothing back until FLUSH', async () => {
    const vol = new MemoryVolume(MiB, 64 * KiB);
    const cache = newCache(vol);
    const a = randomBytes(8 * KiB);
    await cache.write(4096, a);
    expect(vol.batches.length).toBe(0);
    expect((await cache.read(4096, a.length)).equals(a)).toBe(true);
    expect(vol.reads, 'a read wholly in the cache does not reach the API').toBe(0);
    await cache.flush();
    expect(vol.batches.length).toBe(1);
    expect(vol.bytes.subarray(4096, 4096 + a.length).equals(a)).toBe(true);
    await cache.close();
  });

  it('writes back a segment as soon as one has gathered', async () => {
    const vol = new MemoryVolume(8 * MiB, MiB);
    const cache = newCache(vol, { segmentBytes: 256 * KiB });
    for (let i = 0; i < 64; i++) await cache.write(i * BS, Buffer.alloc(BS, i)); // exactly 256 KiB
    await new Promise((r) => setImmediate(r));
    expect(vol.batches.length).toBe(1);
    expect(vol.batches[0]!.length, 'one merged extent').toBe(1);
    await cache.close();
  });

  it('lets a later write to the same blocks win while an older one is being written back', async () => {
    const vol = new MemoryVolume(MiB, 64 * KiB);
    const cache = newCache(vol);
    const { gate, open } = release();
    vol.writeGate = gate;
    await cache.write(0, Buffer.alloc(BS, 1));
    const first = cache.flush(); // held at the gate
    await cache.write(0, Buffer.alloc(BS, 2));
    expect((await cache.read(0, BS))[0]).toBe(2);
    const second = cache.flush();
    open();
    await Promise.all([first, second]);
    expect(vol.bytes[0]).toBe(2);
    expect(vol.batches.length).toBe(2);
    await cache.close();
  });

  it('never returns stale data when a write-back completes during a read', async () => {
    // The API read is served from before the commit, but answers after the layer left the
    // cache: the overlay must have been taken before the API read began.
    const vol = new MemoryVolume(MiB, 64 * KiB);
    const cache = newCache(vol);
    await cache.write(0, Buffer.alloc(BS, 7));
    const writeHold = release();
    vol.writeGate = writeHold.gate;
    const flushing = cache.flush();
    const readHold = release();
    vol.readGate = readHold.gate;
    const reading = cache.read(0, 2 * BS); // half cached, so it goes to the API
    writeHold.open();
    await flushing;
    readHold.open();
    const got = await reading;
    expect(got[0]).toBe(7);
    expect(got[BS]).toBe(0);
    await cache.close();
  });

  it('reports a failed write-back on FLUSH, keeps the data readable, and succeeds on a later FLUSH', async () => {
    const vol = new MemoryVolume(MiB, 64 * KiB);
    const cache = newCache(vol);
    const a = randomBytes(BS);
    await cache.write(0, a);
    vol.failures = 1;
    await expect(cache.flush()).rejects.toBeInstanceOf(WriteBackError);
    expect(cache.dirtyDataBytes).toBe(BS);
    expect((await cache.read(0, BS)).equals(a)).toBe(true);
    await cache.flush();
    expect(cache.dirtyDataBytes).toBe(0);
    expect(vol.bytes.subarray(0, BS).equals(a)).toBe(true);
    await cache.close();
  });

  it('gives up on close with WriteBackError when the API keeps failing, instead of hanging', async () => {
    const vol = new MemoryVolume(MiB, 64 * KiB);
    const cache = newCache(vol);
    await cache.write(0, randomBytes(BS));
    vol.failures = 100;
    await expect(cache.flush()).rejects.toBeInstanceOf(WriteBackError);
    // A FLUSH issued right after a failure must start another round, not wait for the timer.
    await expect(cache.flush()).rejects.toBeInstanceOf(WriteBackError);
    await expect(cache.close()).rejects.toThrow(/4096 dirty bytes in 1 extents could not be written back/);
  });

  it('holds requests back when full and lets them go once a write-back frees room', async () => {
    const vol = new MemoryVolume(4 * MiB, 64 * KiB);
    const cache = newCache(vol, { segmentBytes: MiB, capacityBytes: MiB });
    const { gate, open } = release();
    vol.writeGate = gate;
    await cache.write(0, Buffer.alloc(MiB, 1));
    let roomy = false;
    const room = cache.waitForRoom().then(() => (roomy = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(roomy).toBe(false);
    open();
    await room;
    expect(roomy).toBe(true);
    await cache.close();
  });

  it('read-modify-writes unaligned writes and zeroes, in arrival order', async () => {
    const vol = new MemoryVolume(MiB, 64 * KiB);
    vol.bytes.fill(0x55, 0, 3 * BS);
    const cache = newCache(vol);
    const w1 = cache.write(100, Buffer.alloc(10, 1));
    const w2 = cache.write(0, Buffer.alloc(BS, 2)); // aligned, queued behind the unaligned one
    const z = cache.writeZeroes(BS + 10, BS); // spans a block edge
    await Promise.all([w1, w2, z]);
    const expected = Buffer.alloc(3 * BS, 0x55);
    expected.fill(2, 0, BS);
    expected.fill(0, BS + 10, 2 * BS + 10);
    expect((await cache.read(0, 3 * BS)).equals(expected)).toBe(true);
    await cache.flush();
    expect(vol.bytes.subarray(0, 3 * BS).equals(expected)).toBe(true);
    await cache.close();
  });

  it('matches a byte model under random writes, zeroes, trims, flushes and reads', async () => {
    const rng = seeded('write-back cache model');
    const size = 8 * MiB;
    // Small pages and segments so that page and data limits cut batches often.
    const vol = new MemoryVolume(size, 16 * KiB);
    const cache = newCache(vol, { segmentBytes: 256 * KiB, capacityBytes: MiB });
    const model = Buffer.alloc(size);
    for (let step = 0; step < 300; step++) {
      const pending: Array<Promise<void>> = [];
      for (let k = 0; k < 1 + rng.int(6); k++) {
        await cache.waitForRoom();
        const aligned = rng.int(2) === 0;
        const offset = aligned ? rng.int(size / BS) * BS : rng.int(size);
        const length = Math.min(size - offset, aligned ? (1 + rng.int(80)) * BS : 1 + rng.int(300 * KiB));
        if (length <= 0) continue;
        const op = rng.int(10);
        if (op < 6) {
          const data = randomBytes(length);
          data.copy(model, offset);
          pending.push(cache.write(offset, data));
        } else if (op < 8) {
          model.fill(0, offset, offset + length);
          pending.push(cache.writeZeroes(offset, length));
        } else if (op < 9) {
          // Trim zeroes whole blocks only.
          const s = Math.ceil(offset / BS) * BS;
          const e = Math.floor((offset + length) / BS) * BS;
          if (e > s) model.fill(0, s, e);
          pending.push(cache.trim(offset, length));
        } else {
          pending.push(cache.flush());
        }
      }
      await Promise.all(pending);
      const offset = rng.int(size);
      const length = Math.min(size - offset, 1 + rng.int(600 * KiB));
      expect((await cache.read(offset, length)).equals(model.subarray(offset, offset + length)), `step ${step}: read @${offset}+${length}`).toBe(true);
    }
    await cache.close();
    expect(cache.dirtyDataBytes).toBe(0);
    expect(vol.bytes.equals(model), 'the volume equals the model after close').toBe(true);
  });
});

describe('WriteBackCache read path: clean cache, joined reads, read-ahead', () => {
  it('serves a re-read from the clean cache, and a write-back patches the cached lines', async () => {
    const vol = new MemoryVolume(8 * MiB, MiB);
    randomBytes(MiB).copy(vol.bytes, 0);
    const cache = newCache(vol, { readAheadMaxBytes: 0 });
    expect((await cache.read(0, MiB)).equals(vol.bytes.subarray(0, MiB))).toBe(true);
    const reads = vol.reads;
    expect((await cache.read(4096, 8192)).equals(vol.bytes.subarray(4096, 4096 + 8192))).toBe(true);
    expect(vol.reads, 'a re-read is served from the clean cache').toBe(reads);
    await cache.write(8192, Buffer.alloc(BS, 9));
    await cache.flush();
    const got = await cache.read(0, 3 * BS);
    expect(got[2 * BS]).toBe(9);
    expect(got.subarray(0, 2 * BS).equals(vol.bytes.subarray(0, 2 * BS))).toBe(true);
    expect(vol.reads, 'the write-back patched the line; no API read').toBe(reads);
    await cache.close();
  });

  it('patches a cached line with a write-back extent made of several writes, each in its place', async () => {
    const vol = new MemoryVolume(8 * MiB, MiB);
    randomBytes(MiB).copy(vol.bytes, 0);
    const cache = newCache(vol, { readAheadMaxBytes: 0 });
    await cache.read(0, MiB);
    const reads = vol.reads;
    // Three adjacent writes, one extent of three pieces, inside the first 64 KiB line and across into the second.
    const a = Buffer.alloc(BS, 1);
    const b = Buffer.alloc(BS, 2);
    const c = randomBytes(16 * BS);
    await cache.write(4 * BS, a);
    await cache.write(5 * BS, b);
    await cache.write(6 * BS, c);
    await cache.flush();
    const expected = Buffer.from(vol.bytes.subarray(0, 32 * BS));
    expect(expected.subarray(4 * BS, 22 * BS).equals(Buffer.concat([a, b, c]))).toBe(true);
    expect((await cache.read(0, 32 * BS)).equals(expected)).toBe(true);
    expect(vol.reads, 'the write-back patched the lines; no API read').toBe(reads);
    await cache.close();
  });

  it('does not cache a read that a write-back overtook, and a reader that joined it reads again', async () => {
    const vol = new MemoryVolume(MiB, 64 * KiB);
    const cache = newCache(vol, { readAheadMaxBytes: 0 });
    // R0's API read takes the old bytes (zeros), then waits.
    const readHold = release();
    vol.readGate = readHold.gate;
    const r0 = cache.read(0, BS);
    // A write made durable while R0 waits: its layer leaves the cache.
    vol.readGate = null;
    await cache.write(0, Buffer.alloc(BS, 5));
    await cache.flush();
    // R1 starts after the write-back: it may not take R0's old bytes.
    const r1 = cache.read(0, BS);
    readHold.open();
    expect((await r0)[0], 'R0 began before the write was durable; either answer is allowed, it took the old one').toBe(0);
    expect((await r1)[0], 'R1 began after the write was durable').toBe(5);
    expect((await cache.read(0, BS))[0], 'the overtaken read did not fill the cache with old bytes').toBe(5);
    await cache.close();
  });

  it('reads a sequential stream in whole 4 MiB windows ahead of the reader', async () => {
    const vol = new MemoryVolume(64 * MiB, MiB);
    randomBytes(32 * MiB).copy(vol.bytes, 0);
    const cache = newCache(vol, { readAheadMaxBytes: 16 * MiB });
    const sizes: number[] = [];
    const read = vol.read.bind(vol);
    vol.read = (offset: number, length: number) => {
      sizes.push(length);
      return read(offset, length);
    };
    for (let pos = 0; pos < 32 * MiB; pos += 256 * KiB) {
      expect((await cache.read(pos, 256 * KiB)).equals(vol.bytes.subarray(pos, pos + 256 * KiB))).toBe(true);
    }
    // Two demand reads start the stream; everything after comes in 4 MiB windows read ahead.
    expect(sizes.filter((n) => n === 4 * MiB).length).toBeGreaterThanOrEqual(7);
    expect(cache.stats.apiReadBytes, 'read-ahead stops near the reader: at most one window of 16 MiB beyond').toBeLessThanOrEqual(32 * MiB + 20 * MiB);
    expect(sizes.length, 'about one API read per 4 MiB, not one per request').toBeLessThanOrEqual(16);
    await cache.close();
  });

  it('answers from the cached lines themselves, and a write-back replaces a line instead of changing it', async () => {
    const vol = new MemoryVolume(8 * MiB, MiB);
    randomBytes(MiB).copy(vol.bytes, 0);
    const old = Buffer.from(vol.bytes.subarray(0, 128 * KiB));
    const cache = newCache(vol, { readAheadMaxBytes: 0 });
    await cache.read(0, MiB);
    const reads = vol.reads;
    // Two lines of one fetch: one view of the fetched bytes, no copy.
    const held = await cache.readv(0, 128 * KiB);
    expect(held.length, 'adjacent lines of one fetch are one view').toBe(1);
    expect(Buffer.concat(held).equals(old)).toBe(true);
    await cache.write(4096, Buffer.alloc(BS, 7));
    await cache.flush();
    expect(Buffer.concat(held).equals(old), 'a reply already holding the line keeps the bytes it read').toBe(true);
    const now = await cache.read(0, 128 * KiB);
    expect(now[4096]).toBe(7);
    expect(now.subarray(0, 4096).equals(old.subarray(0, 4096))).toBe(true);
    expect(now.subarray(8192).equals(old.subarray(8192))).toBe(true);
    expect(vol.reads, 'served from the patched line').toBe(reads);
    // Dirty data over the range: one buffer of the cache's own, the overlay laid on the lines.
    await cache.write(0, Buffer.alloc(BS, 8));
    const dirty = await cache.readv(0, 2 * BS);
    expect(dirty.length).toBe(1);
    expect(dirty[0]![0]).toBe(8);
    expect(dirty[0]![BS]).toBe(7);
    await cache.close();
  });

  it('copies out the last lines of a fetch once most of it was evicted, so few lines cannot pin a whole fetch', () => {
    const clean = new CleanCache(4 * MiB);
    const fetched = randomBytes(4 * MiB);
    for (let line = 0; line < 64; line++) clean.put(line, fetched.subarray(line * LINE_BYTES, (line + 1) * LINE_BYTES));
    expect(clean.get(5)!.buffer, 'a line is a view of the fetched bytes').toBe(fetched.buffer);
    // Another 4 MiB: every line but the recently used one is evicted.
    const other = randomBytes(4 * MiB - LINE_BYTES);
    for (let line = 0; line < 63; line++) clean.put(100 + line, other.subarray(line * LINE_BYTES, (line + 1) * LINE_BYTES));
    expect(clean.usedBytes).toBeLessThanOrEqual(4 * MiB);
    expect(clean.stats.compactions).toBe(1);
    const kept = clean.get(5)!;
    expect(kept.buffer, 'copied into a buffer of its own').not.toBe(fetched.buffer);
    expect(kept.equals(fetched.subarray(5 * LINE_BYTES, 6 * LINE_BYTES))).toBe(true);
    expect(clean.has(4)).toBe(false);
  });

  it('keeps the clean cache within its bound', async () => {
    const vol = new MemoryVolume(16 * MiB, MiB);
    const cache = newCache(vol, { readCacheBytes: 2 * MiB, readAheadMaxBytes: 0 });
    for (let pos = 0; pos < 16 * MiB; pos += MiB) await cache.read(pos, MiB);
    expect(cache.clean.usedBytes).toBeLessThanOrEqual(2 * MiB);
    expect(cache.clean.stats.evictions).toBeGreaterThan(0);
    await cache.close();
  });
});

describe('WriteBackCache write-back pipeline', () => {
  it('sends the batches of a round several at a time, and ends a failed round only when every batch has settled', async () => {
    const vol = new MemoryVolume(64 * MiB, MiB);
    const cache = newCache(vol, { capacityBytes: 64 * MiB, segmentBytes: 4 * MiB, writeBackConcurrency: 3 });
    let inFlight = 0;
    let most = 0;
    const write = vol.writeBatch.bind(vol);
    const holds: Array<() => void> = [];
    let failNext = false;
    vol.writeBatch = async (pieces) => {
      inFlight++;
      most = Math.max(most, inFlight);
      await new Promise<void>((resolve) => holds.push(resolve));
      inFlight--;
      if (failNext) {
        failNext = false;
        throw new Error('injected failure');
      }
      return write(pieces);
    };
    // 4 MiB, then 12 MiB in one write (one layer): a round of one batch, then a round of three.
    const big = randomBytes(16 * MiB);
    await cache.write(0, big.subarray(0, 4 * MiB));
    const flushing = cache.flush();
    await cache.write(4 * MiB, big.subarray(4 * MiB));
    const flushing2 = cache.flush();
    for (let i = 0; i < 50 && holds.length < 1; i++) await new Promise((r) => setImmediate(r));
    // First round: one layer of 4 MiB. Release it; the second round has three batches.
    holds.shift()!();
    await flushing;
    for (let i = 0; i < 50 && holds.length < 3; i++) await new Promise((r) => setImmediate(r));
    expect(holds.length, 'three batches of the second round in flight at once').toBe(3);
    // One fails; the round ends only after the other two settled.
    failNext = true;
    holds.shift()!();
    let ended = false;
    const f2 = flushing2.then(
      () => (ended = true),
      () => (ended = true),
    );
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    expect(ended, 'the FLUSH waits for the batches still in flight').toBe(false);
    while (holds.length > 0) holds.shift()!();
    await f2;
    await expect(flushing2).rejects.toThrow(/injected failure/);
    expect(most).toBe(3);
    // A later FLUSH writes everything back.
    const done = cache.flush();
    for (let i = 0; i < 100; i++) {
      while (holds.length > 0) holds.shift()!();
      await new Promise((r) => setImmediate(r));
    }
    await done;
    expect(vol.bytes.subarray(0, 16 * MiB).equals(big)).toBe(true);
    const closing = cache.close();
    for (let i = 0; i < 20; i++) {
      while (holds.length > 0) holds.shift()!();
      await new Promise((r) => setImmediate(r));
    }
    await closing;
  });
});

describe('WriteBackCache block status', () => {
  it('lays cached writes (data) and trims (holes) over the allocation the API reports', async () => {
    const vol = new MemoryVolume(16 * MiB, MiB);
    const cache = newCache(vol);
    const backend = vol as MemoryVolume & { allocation: (o: number, l: number) => Promise<Array<{ offset: number; length: number; zero: boolean }>> };
    // The API: data in [1 MiB, 3 MiB), zeros elsewhere.
    backend.allocation = async (o, l) => {
      const runs = [
        { offset: 0, length: MiB, zero: true },
        { offset: MiB, length: 2 * MiB, zero: false },
        { offset: 3 * MiB, length: 13 * MiB, zero: true },
      ];
      return runs
        .map((r) => ({ offset: Math.max(o, r.offset), length: Math.min(o + l, r.offset + r.length) - Math.max(o, r.offset), zero: r.zero }))
        .filter((r) => r.length > 0);
    };
    await cache.write(8 * MiB, Buffer.alloc(64 * KiB, 1));
    await cache.trim(2 * MiB, 64 * KiB);
    expect(await cache.allocation(0, 16 * MiB)).toEqual([
      { offset: 0, length: MiB, zero: true },
      { offset: MiB, length: MiB, zero: false },
      { offset: 2 * MiB, length: 64 * KiB, zero: true },
      { offset: 2 * MiB + 64 * KiB, length: MiB - 64 * KiB, zero: false },
      { offset: 3 * MiB, length: 5 * MiB, zero: true },
      { offset: 8 * MiB, length: 64 * KiB, zero: false },
      { offset: 8 * MiB + 64 * KiB, length: 8 * MiB - 64 * KiB, zero: true },
    ]);
    // From an unaligned offset, no further than asked.
    expect(await cache.allocation(MiB + 100, 1000)).toEqual([{ offset: MiB + 100, length: 1000, zero: false }]);
    await cache.close();
  });
});
