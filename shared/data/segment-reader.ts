/**
 * Verified reads of segment payload bytes.
 *
 * A healthy read fetches only the granules (64 KiB, the checksum unit) of the data chunks that
 * hold the requested bytes, one ranged GET per contiguous run, and checks every granule's
 * CRC32C. A granule that is missing, unreadable or fails its checksum is rebuilt from the same
 * granule of other chunks (data or parity), fetched as needed until k good ones are in hand.
 * Fewer than k good copies is a DataUnavailableError: never wrong bytes.
 *
 * Copies: a ranged GET whose granules all fall inside one requested range is read straight
 * into the caller's output (`targets`), and checked there; rebuilt granules are written there
 * by the codec's copy-out. Otherwise (a range that cuts a granule) the granules are fetched
 * into their own buffer and the requested bytes copied out.
 *
 * Spares at once: when a fetch comes back without some of its granules (404, error, checksum),
 * the chunks to rebuild them from are asked right then, not after the read's other GETs are
 * done, so a degraded read waits for one GET more than the failed one, not for a second round
 * after the slowest. A granule is never asked of more chunks than k good copies need.
 *
 * Lost chunks: a chunk answered 404 is remembered (by location) for LOST_CHUNK_MEMORY_MS, and
 * reads meanwhile ask the other chunks instead, in the read's first round: a degraded segment
 * then costs the same number of GETs as a healthy one (k), in one round, instead of k + (lost)
 * GETs in two rounds plus a fresh read of the segment record each time. Chunk keys are written
 * once and never reused (a moved chunk gets a new location), so a 404 does not heal by itself;
 * the memory is bounded in time and size anyway, and it only orders what is asked: every chunk,
 * remembered or not, is still asked before a read gives up, and one read that finds it drops it
 * from the memory.
 */
import { BufferPool, type Lease } from './buffer-pool.ts';
import { crc32c } from './crc32c.ts';
import { codec } from './erasure.ts';
import { DataUnavailableError, invariant } from '../core/errors.ts';
import type { SegmentRecord } from '../core/records.ts';
import { formatLocation } from './sleds.ts';
import { askRepair, LocationMemory } from './repair-requests.ts';
import { chunkStore } from '../ports.ts';

/** A byte range `[start, end)` of a segment's payload. */
export interface PayloadRange {
  start: number;
  end: number;
}

/** Reads observed by the reader, for tests and logs. */
export interface ReadReport {
  rangedGets: number;
  badGranules: number;
  rebuiltGranules: number;
  /** Chunk reads answered 404: the chunk moved (evacuation) or is lost. */
  missingChunks?: number;
  /** GETs one after another on the read's longest path: 1 when no fetch had to wait for another. */
  getRounds?: number;
}

/** chunk -> granule -> verified bytes, and the (chunk, granule) pairs already asked for. */
interface GranuleStore {
  good: Map<number, Map<number, Buffer>>;
  asked: Set<string>;
  /** (chunk, granule) pairs asked whose answer was not a good granule. */
  failed: Set<string>;
  /**
   * Where a data chunk's granules go in the caller's output, when they fall inside one
   * requested range: `dest(chunk, a, b)` is the output view for bytes `[a, b)` of the chunk,
   * or null.
   */
  dest?: (chunk: number, a: number, b: number) => Buffer | null;
  /** Called when a chunk answers 404 (the caller may start reading the segment record again). */
  onMissingChunk?: () => void;
  /** Pooled buffers granules were fetched into; released once every byte was copied out. */
  leases: Lease[];
}

/**
 * Buffers for fetched granules that have no place in the caller's output (parity read for a
 * rebuild, granules cut by a range): reused, so that a degraded read does not leave megabytes
 * of garbage per request. Released only after a read succeeded and copied its bytes out (on a
 * failure they are left to the garbage collector, which is always safe).
 */
const fetchBuffers = new BufferPool({ minBytes: 256 * 1024, maxBytes: 1024 * 1024, classBytes: 256 * 1024, keepPerClass: 8 });

function releaseAll(store: GranuleStore): void {
  for (const lease of store.leases.splice(0)) lease.release();
}

/** Chunks answered 404 (docs/evacuation.md, "Read repair"). */
const lostChunks = new LocationMemory();

/** Whether the chunk at `loc` was answered 404 within LOST_CHUNK_MEMORY_MS. */
export function isRememberedLost(loc: { bucket: string; key: string }): boolean {
  return lostChunks.has(loc);
}

/** Forgets every remembered lost chunk (tests; a process that knows the sleds changed). */
export function forgetLostChunks(): void {
  lostChunks.clear();
}

function granuleBounds(rec: SegmentRecord, g: number): [number, number] {
  return [g * rec.granuleBytes, Math.min(rec.chunkSizeBytes, (g + 1) * rec.granuleBytes)];
}

/** Contiguous runs of sorted granule indexes. */
function runs(granules: readonly number[]): Array<[number, number]> {
  const sorted = [...granules].sort((a, b) => a - b);
  const out: Array<[number, number]> = [];
  for (const g of sorted) {
    const last = out[out.length - 1];
    if (last && last[1] === g) last[1] = g + 1;
    else out.push([g, g + 1]);
  }
  return out;
}

/**
 * Fetches granules of one chunk, keeping those whose checksum matches. A missing object or a
 * failed request leaves the granules absent; the caller rebuilds them.
 */
async function fetchGranules(rec: SegmentRecord, chunk: number, granules: readonly number[], store: GranuleStore, report: ReadReport): Promise<void> {
  const loc = rec.locations[chunk]!;
  const crcs = rec.crcs[chunk]!;
  let good = store.good.get(chunk);
  if (!good) store.good.set(chunk, (good = new Map()));
  for (const g of granules) store.asked.add(`${chunk}:${g}`);
  await Promise.all(
    runs(granules).map(async ([g0, g1]) => {
      const start = granuleBounds(rec, g0)[0];
      const end = granuleBounds(rec, g1 - 1)[1];
      let bytes: Buffer | null = null;
      report.rangedGets++;
      try {
        let into = store.dest?.(chunk, start, end) ?? undefined;
        if (!into) {
          const lease = fetchBuffers.take(end - start);
          store.leases.push(lease);
          into = lease.buffer;
        }
        bytes = await chunkStore().getChunkRange(loc, start, end, into);
        if (bytes === null) {
          report.missingChunks = (report.missingChunks ?? 0) + 1;
          lostChunks.note(loc);
          askRepair(rec, chunk);
          store.onMissingChunk?.();
        } else lostChunks.forget(loc);
      } catch (err) {
        console.warn(`chunk ${formatLocation(loc)} unreadable: ${(err as Error).message}`);
      }
      for (let g = g0; g < g1; g++) {
        const [a, b] = granuleBounds(rec, g);
        const piece = bytes && bytes.length >= b - start ? bytes.subarray(a - start, b - start) : null;
        if (piece && crc32c(piece) === crcs[g]) {
          good.set(g, piece);
          continue;
        }
        store.failed.add(`${chunk}:${g}`);
        if (piece) {
          report.badGranules++;
          console.warn(`chunk ${formatLocation(loc)} granule ${g}: checksum mismatch, rebuilding from parity`);
          askRepair(rec, chunk);
        }
      }
    }),
  );
}

/**
 * Returns the payload bytes of each range, verified. With up to m chunks missing or corrupt
 * the bytes are rebuilt; beyond that, DataUnavailableError. With `targets` (one buffer of each
 * range's length) the bytes are read into those, which are returned; `onMissingChunk` is called
 * on each 404.
 */
export async function readPayload(
  rec: SegmentRecord,
  ranges: readonly PayloadRange[],
  report: ReadReport = { rangedGets: 0, badGranules: 0, rebuiltGranules: 0 },
  targets?: readonly Buffer[],
  onMissingChunk?: () => void,
): Promise<Buffer[]> {
  const { k, m, chunkSizeBytes: cs } = rec;
  invariant(rec.locations.length === k + m && rec.crcs.length === k + m, () => `segment ${rec.segmentId} record has the wrong chunk count`);
  // Which granules of which data chunk hold the requested bytes.
  const wanted = new Map<number, Set<number>>();
  for (const r of ranges) {
    invariant(r.start >= 0 && r.end <= rec.payloadBytes && r.end > r.start, () => `range [${r.start}, ${r.end}) outside segment payload ${rec.payloadBytes}`);
    for (let pos = r.start; pos < r.end; ) {
      const chunk = Math.floor(pos / cs);
      const inChunk = pos - chunk * cs;
      const g = Math.floor(inChunk / rec.granuleBytes);
      let set = wanted.get(chunk);
      if (!set) wanted.set(chunk, (set = new Set()));
      set.add(g);
      pos = chunk * cs + granuleBounds(rec, g)[1];
    }
  }
  invariant(
    !targets || (targets.length === ranges.length && targets.every((t, i) => t.length === ranges[i]!.end - ranges[i]!.start)),
    'one target of each range length',
  );
  const dest = (chunk: number, a: number, b: number): Buffer | null => {
    // Only data chunks hold payload bytes; parity has no place in the output.
    if (!targets || chunk >= k) return null;
    const start = chunk * cs + a;
    const end = chunk * cs + b;
    const i = ranges.findIndex((r) => r.start <= start && end <= r.end);
    return i < 0 ? null : targets[i]!.subarray(start - ranges[i]!.start, end - ranges[i]!.start);
  };
  const store: GranuleStore = {
    good: new Map([...wanted.keys()].map((chunk) => [chunk, new Map()])),
    asked: new Set(),
    failed: new Set(),
    dest,
    onMissingChunk,
    leases: [],
  };
  const { order, lost } = askOrder(rec);
  // Chunks answered 404 lately are not asked: their granules are rebuilt from others, asked in
  // the same round.
  const known = [...wanted].filter(([chunk]) => !lost.has(chunk));
  const first = known.map(([chunk, gs]) => fetchWithSpares(rec, chunk, [...gs], store, report, order, 1));
  const lostGranules = new Set([...wanted].filter(([chunk]) => lost.has(chunk)).flatMap(([, gs]) => [...gs]));
  await Promise.all([...first, ...askSpares(rec, [...lostGranules], store, report, order, 1)]);

  // Granules that could not be read or verified: rebuilt from the spares fetched for them.
  const broken = new Set<number>();
  for (const [chunk, gs] of wanted) for (const g of gs) if (!store.good.get(chunk)?.has(g)) broken.add(g);
  if (broken.size > 0) await rebuild(rec, [...broken], wanted, store, report);

  const outputs = ranges.map((r, i) => {
    const out = targets ? targets[i]! : Buffer.allocUnsafe(r.end - r.start);
    for (let pos = r.start; pos < r.end; ) {
      const chunk = Math.floor(pos / cs);
      const inChunk = pos - chunk * cs;
      const g = Math.floor(inChunk / rec.granuleBytes);
      const [ga, gb] = granuleBounds(rec, g);
      const bytes = store.good.get(chunk)?.get(g);
      invariant(bytes, `granule ${g} of chunk ${chunk} missing after rebuild`);
      const take = Math.min(r.end - pos, gb - inChunk);
      const at = pos - r.start;
      // Granules read or rebuilt straight into the output are already in place.
      if (!(bytes.buffer === out.buffer && bytes.byteOffset + (inChunk - ga) === out.byteOffset + at)) bytes.copy(out, at, inChunk - ga, inChunk - ga + take);
      pos += take;
    }
    return out;
  });
  releaseAll(store);
  return outputs;
}

/**
 * The chunks remembered lost (each looked up once per read), and the order chunks are asked in
 * for a rebuild: data first, then parity; chunks remembered lost last.
 */
function askOrder(rec: SegmentRecord): { order: number[]; lost: Set<number> } {
  const order = Array.from({ length: rec.k + rec.m }, (_, i) => i);
  const lost = new Set(order.filter((i) => isRememberedLost(rec.locations[i]!)));
  return { order: order.sort((a, b) => Number(lost.has(a)) - Number(lost.has(b))), lost };
}

/** Fetches granules of one chunk; those it could not give are asked of spares at once. */
async function fetchWithSpares(
  rec: SegmentRecord,
  chunk: number,
  granules: readonly number[],
  store: GranuleStore,
  report: ReadReport,
  order: readonly number[],
  round: number,
): Promise<void> {
  report.getRounds = Math.max(report.getRounds ?? 0, round);
  await fetchGranules(rec, chunk, granules, store, report);
  const missing = granules.filter((g) => !store.good.get(chunk)?.has(g));
  if (missing.length > 0) await Promise.all(askSpares(rec, missing, store, report, order, round + 1));
}

/**
 * Asks more chunks (in `order`) for each granule that has fewer than k copies good or still
 * in flight, just enough of them. Each fetch started asks its own spares if it fails, so the
 * returned promises settle once every granule has k good copies or every chunk was asked.
 * Marks the granules asked before it returns (fetchGranules does so before its first await).
 */
function askSpares(
  rec: SegmentRecord,
  granules: readonly number[],
  store: GranuleStore,
  report: ReadReport,
  order: readonly number[],
  round: number,
): Array<Promise<void>> {
  const live = (g: number) => order.filter((i) => store.asked.has(`${i}:${g}`) && !store.failed.has(`${i}:${g}`)).length;
  const started: Array<Promise<void>> = [];
  for (const chunk of order) {
    const gs = granules.filter((g) => !store.asked.has(`${chunk}:${g}`) && live(g) < rec.k);
    if (gs.length > 0) started.push(fetchWithSpares(rec, chunk, gs, store, report, order, round));
  }
  return started;
}

/** Rebuilds `granules` of the wanted chunks from the good copies in `store` (at least k each, or DataUnavailableError). */
async function rebuild(rec: SegmentRecord, granules: number[], wanted: Map<number, Set<number>>, store: GranuleStore, report: ReadReport): Promise<void> {
  const { k, m } = rec;
  for (const g of granules) {
    const present = Array.from({ length: k + m }, (_, i) => i).filter((i) => store.good.get(i)?.has(g)).length;
    if (present < k) {
      throw new DataUnavailableError(
        `segment ${rec.volumeId}/${rec.segmentId}: only ${present} of ${k + m} chunks readable with a good checksum at granule ${g}, ` +
          `need ${k}; the data cannot be returned`,
      );
    }
  }
  // Every stripe at once: the native codec spreads them over libuv's threads. A rebuilt granule
  // of a wanted chunk goes straight to the caller's output when it has a place there.
  await Promise.all(
    granules.map(async (g) => {
      const shards = Array.from({ length: k + m }, (_, i) => store.good.get(i)?.get(g) ?? null);
      const [a, b] = granuleBounds(rec, g);
      const into = shards.map((s, chunk) => (s === null && wanted.get(chunk)?.has(g) ? (store.dest?.(chunk, a, b) ?? null) : null));
      const full = await codec().reconstruct(k, m, shards, into);
      for (const [chunk, gs] of wanted) {
        if (!gs.has(g) || store.good.get(chunk)?.has(g)) continue;
        const bytes = full[chunk]!;
        // Pair assertion: the rebuilt granule must match the checksum written with the segment.
        if (crc32c(bytes) !== rec.crcs[chunk]![g]) {
          throw new DataUnavailableError(`segment ${rec.volumeId}/${rec.segmentId}: rebuilt granule ${g} of chunk ${chunk} fails its checksum`);
        }
        store.good.get(chunk)!.set(g, bytes);
        report.rebuiltGranules++;
      }
    }),
  );
}

/**
 * The whole data region (`chunkSizeBytes`) of chunk `chunkIndex`, verified granule by granule
 * against the record. With `fromOthers` the chunk itself is not read: every granule is rebuilt
 * from k other chunks (evacuation of an unreadable or failed drive). Throws
 * DataUnavailableError when fewer than k good copies of a granule exist.
 */
export async function readChunkData(
  rec: SegmentRecord,
  chunkIndex: number,
  fromOthers: boolean,
  report: ReadReport = { rangedGets: 0, badGranules: 0, rebuiltGranules: 0 },
): Promise<Buffer> {
  const { k, m } = rec;
  invariant(chunkIndex >= 0 && chunkIndex < k + m, () => `chunk ${chunkIndex} outside a stripe of ${k + m}`);
  const granuleCount = Math.ceil(rec.chunkSizeBytes / rec.granuleBytes);
  const all = Array.from({ length: granuleCount }, (_, g) => g);
  const wanted = new Map([[chunkIndex, new Set(all)]]);
  const store: GranuleStore = { good: new Map([[chunkIndex, new Map()]]), asked: new Set(), failed: new Set(), leases: [] };
  const { order } = askOrder(rec);
  if (fromOthers) {
    for (const g of all) {
      store.asked.add(`${chunkIndex}:${g}`);
      store.failed.add(`${chunkIndex}:${g}`);
    }
    await Promise.all(askSpares(rec, all, store, report, order, 1));
  } else await fetchWithSpares(rec, chunkIndex, all, store, report, order, 1);
  const broken = all.filter((g) => !store.good.get(chunkIndex)!.has(g));
  if (broken.length > 0) await rebuild(rec, broken, wanted, store, report);
  const out = Buffer.alloc(rec.chunkSizeBytes);
  for (const g of all) {
    const bytes = store.good.get(chunkIndex)!.get(g);
    invariant(bytes, `granule ${g} of chunk ${chunkIndex} missing after rebuild`);
    bytes.copy(out, granuleBounds(rec, g)[0]);
  }
  releaseAll(store);
  return out;
}
