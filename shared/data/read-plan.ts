/**
 * Read plans (docs/nbd-gateway.md, "Direct data reads"): what a read of a volume range would
 * fetch, as presigned ranged GETs of data chunks with the checksums to verify them, so that the
 * gateway fetches the bytes itself and the head never carries them. A plan is a hint: anything
 * wrong with it (a chunk gone, a checksum mismatch, an expired URL) makes the gateway read
 * through the API instead.
 */
import { invariant } from '../core/errors.ts';
import type { SegmentRecord } from '../core/records.ts';
import type { Extent } from './extents.ts';
import { readView, segmentRecordsFor } from './read.ts';
import { chunkStore } from '../ports.ts';

/** How long a plan's URLs are good for: long enough for a slow gateway, short if one leaks. */
export const PLAN_URL_SECONDS = 300;

/**
 * The longest range one plan describes: four reads' worth (16 pages of 1 MiB, one DynamoDB
 * read with the volume item), so that a gateway's read-ahead window is one plan, not four.
 * The answer stays small (a GET per chunk range: 16 for 16 MiB of a sequential writer's data).
 */
export const MAX_PLAN_BYTES = 16 * 1024 * 1024;

/** Where fetched bytes go: `length` bytes from `from` in the GET's body to `at` in the answer. */
export interface PlanPiece {
  at: number;
  from: number;
  length: number;
}

/** One ranged GET of a data chunk: whole granules, each checked against its CRC32C. */
export interface PlannedGet {
  /** Presigned; the Range header `bytes=<start>-<end - 1>` is signed in and must be sent as is. */
  url: string;
  start: number;
  end: number;
  granuleBytes: number;
  /** CRC32C of each granule of `[start, end)`, in order (the last may be shorter than a granule). */
  crcs: number[];
  pieces: PlanPiece[];
}

export interface ReadPlan {
  offset: number;
  length: number;
  /** Wall-clock time (ms) after which the URLs are refused. */
  expiresAtMs: number;
  /** Bytes of the answer that no GET covers read as zeros. */
  gets: PlannedGet[];
}

/** A piece of one data chunk: bytes `[start, end)` of the chunk go to `at` in the answer. */
interface ChunkPiece {
  start: number;
  end: number;
  at: number;
}

/**
 * The GETs that read `extents` (all of one segment, blocks from `first`): each extent's payload
 * bytes split by data chunk, widened to whole granules, contiguous granules of a chunk merged.
 * Pure apart from the signing.
 */
export function planSegment(rec: SegmentRecord, extents: readonly Extent[], first: number, bs: number): Array<Omit<PlannedGet, 'url'> & { chunk: number }> {
  const { k, m, chunkSizeBytes: cs, granuleBytes: gb } = rec;
  invariant(rec.locations.length === k + m && rec.crcs.length === k + m, () => `segment ${rec.segmentId} record has the wrong chunk count`);
  const byChunk = new Map<number, ChunkPiece[]>();
  for (const e of extents) {
    const payloadEnd = (e.segBlock + e.count) * bs;
    invariant(payloadEnd <= rec.payloadBytes, () => `extent beyond segment ${rec.segmentId} payload ${rec.payloadBytes}`);
    for (let pos = e.segBlock * bs; pos < payloadEnd; ) {
      const chunk = Math.floor(pos / cs);
      const stop = Math.min(payloadEnd, (chunk + 1) * cs);
      let list = byChunk.get(chunk);
      if (!list) byChunk.set(chunk, (list = []));
      list.push({ start: pos - chunk * cs, end: stop - chunk * cs, at: (e.first - first) * bs + (pos - e.segBlock * bs) });
      pos = stop;
    }
  }
  const gets: Array<Omit<PlannedGet, 'url'> & { chunk: number }> = [];
  for (const [chunk, pieces] of byChunk) {
    pieces.sort((a, b) => a.start - b.start);
    // Granule runs: a piece's granules join the current run when they touch or overlap it.
    let run: { g0: number; g1: number; pieces: ChunkPiece[] } | undefined;
    const flush = () => {
      if (!run) return;
      const start = run.g0 * gb;
      const end = Math.min(cs, run.g1 * gb);
      const crcs = rec.crcs[chunk]!.slice(run.g0, run.g1);
      gets.push({ chunk, start, end, granuleBytes: gb, crcs, pieces: run.pieces.map((p) => ({ at: p.at, from: p.start - start, length: p.end - p.start })) });
    };
    for (const p of pieces) {
      const g0 = Math.floor(p.start / gb);
      const g1 = Math.ceil(p.end / gb);
      if (run && g0 <= run.g1) {
        run.g1 = Math.max(run.g1, g1);
        run.pieces.push(p);
      } else {
        flush();
        run = { g0, g1, pieces: [p] };
      }
    }
    flush();
  }
  return gets;
}

/**
 * The plan of a read of `length` bytes at `offset` of a live volume: the same checks, page map
 * and view as `readData` (refusals are the same errors), and no chunk read.
 */
export async function planRead(volumeId: string, offset: number, length: number, key?: string): Promise<ReadPlan> {
  const view = await readView(volumeId, offset, length, key, MAX_PLAN_BYTES);
  const bySegment = new Map<string, Extent[]>();
  for (const e of view.extents) {
    if (e.seg === null) continue;
    let list = bySegment.get(e.seg);
    if (!list) bySegment.set(e.seg, (list = []));
    list.push(e);
  }
  const records = await segmentRecordsFor([...bySegment.keys()]);
  const expiresAtMs = Date.now() + PLAN_URL_SECONDS * 1000;
  const planned = [...bySegment].flatMap(([ref, list]) => {
    const rec = records.get(ref)!;
    return planSegment(rec, list, view.first, view.blockSizeBytes).map((g) => ({ rec, g }));
  });
  const gets = await Promise.all(
    planned.map(async ({ rec, g }) => {
      const { chunk, ...rest } = g;
      return { url: await chunkStore().presignChunkRange(rec.locations[chunk]!, g.start, g.end, PLAN_URL_SECONDS), ...rest };
    }),
  );
  return { offset, length, expiresAtMs, gets };
}
