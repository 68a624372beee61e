/**
 * Chunk uploads of the write path and of checkpoints: bounded retries, `If-None-Match`, and the
 * replacement of a failing drive by a free sled (docs/evacuation.md, section 1).
 */
import { config } from '../core/config.ts';
import { UnavailableError, invariant } from '../core/errors.ts';
import { sleep } from '../core/async.ts';
import { formatLocation, type ChunkLocation } from './sleds.ts';
import { noteWriteError } from '../maintenance/evacuation.ts';
import { replacementLocation, sledsDistinct, type WritableDrives } from './placement.ts';
import { chunkStore } from '../ports.ts';

const UPLOAD_ATTEMPT_MAX = 3;

/** Replacement drives tried for one chunk whose PUT keeps failing (docs/evacuation.md, section 1). */
const REPLACEMENT_MAX = 3;

/**
 * One chunk PUT with bounded retries on top of the SDK's own. A 412 means the key exists: it is
 * never overwritten, and counts as written only if the stored object is exactly this chunk (an
 * earlier attempt whose response was lost, retried by the SDK or by this loop).
 */
async function putWithRetries(loc: ChunkLocation, chunk: Buffer, crc: number): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await chunkStore().putChunk(loc, chunk, crc);
      return;
    } catch (err) {
      if (chunkStore().isPreconditionFailed(err)) {
        if (await chunkStore().storedChunkEquals(loc, chunk, crc)) return;
        throw err;
      }
      if (attempt >= UPLOAD_ATTEMPT_MAX) throw err;
      await sleep(50 * 2 ** attempt);
    }
  }
}

/**
 * Uploads chunks to exactly the given locations (checkpoints place their own stripes), all or
 * nothing: on any failure the chunks written are deleted and the upload fails with 503.
 */
export async function uploadChunksAt(locations: ChunkLocation[], chunks: Buffer[], crcs: number[], chunkSizeBytes: number): Promise<void> {
  invariant(locations.length === chunks.length, 'one location per chunk');
  invariant(
    chunks.every((c) => c.length >= chunkSizeBytes),
    'every chunk has its data',
  );
  const results = await Promise.allSettled(chunks.map((chunk, i) => putWithRetries(locations[i]!, chunk, crcs[i]!)));
  const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed.length > 0) {
    await deleteChunksQuietly(locations);
    throw new UnavailableError(`${failed.length} of ${chunks.length} chunk uploads failed: ${String(failed[0]!.reason?.message ?? failed[0]!.reason)}`, {
      cause: failed[0]!.reason,
    });
  }
}

/**
 * Uploads the k+m chunks of a segment, each to its planned location; a chunk whose drive keeps
 * failing is written again, from memory, to a drive on a sled the stripe does not use (seed
 * 000; docs/evacuation.md, section 1). Returns the final locations, which the commit records.
 * Without a free sled the write fails with 503 rather than put two chunks on one sled.
 */
export async function uploadChunks(
  volumeId: string,
  segmentId: string,
  planned: ChunkLocation[],
  chunks: Buffer[],
  crcs: number[],
  chunkSizeBytes: number,
  writable: WritableDrives,
): Promise<ChunkLocation[]> {
  invariant(planned.length === chunks.length, 'one location per chunk');
  invariant(
    chunks.every((c) => c.length > chunkSizeBytes),
    'every chunk has data and a trailer',
  );
  // The stripe as it stands: a replacement is chosen and recorded here synchronously, so two
  // chunks failing at once cannot pick the same free sled.
  const stripe = [...planned];
  const failed: Array<{ loc: ChunkLocation; err: unknown }> = [];
  const results = await Promise.allSettled(
    chunks.map(async (chunk, i) => {
      const tried = new Set<string>();
      for (let replacement = 0; ; replacement++) {
        const loc = stripe[i]!;
        try {
          await putWithRetries(loc, chunk, crcs[i]!);
          return;
        } catch (err) {
          if (chunkStore().isPreconditionFailed(err)) throw err;
          failed.push({ loc, err });
          tried.add(loc.bucket);
          if (replacement >= REPLACEMENT_MAX) throw err;
          const next = replacementLocation(volumeId, segmentId, i, stripe, tried, config().sledBuckets, writable);
          if (!next) {
            throw new UnavailableError(
              `chunk ${i} of segment ${segmentId} could not be written to ${formatLocation(loc)}, ` +
                'and no other sled with an active drive is free for it; two chunks of a stripe never share a sled',
              { cause: err, retryAfterSeconds: 5 },
            );
          }
          console.warn(
            `chunk ${i} of ${volumeId}/${segmentId}: ${formatLocation(loc)} failed (${(err as Error).message}); writing it to ${formatLocation(next)}`,
          );
          stripe[i] = next;
        }
      }
    }),
  );
  // Count the failures against their drives before answering (each may retire its drive).
  const drivesFailed = new Map<string, { loc: ChunkLocation; err: unknown }>();
  for (const f of failed) drivesFailed.set(`${f.loc.bucket}/${f.loc.key.split('/')[0]}`, f);
  await Promise.all([...drivesFailed.values()].map((f) => noteWriteError(f.loc, f.err)));
  const rejected = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (rejected.length > 0) {
    await deleteChunksQuietly([...stripe, ...failed.map((f) => f.loc)]);
    const first = rejected[0]!.reason;
    if (first instanceof UnavailableError) throw first;
    throw new UnavailableError(`${rejected.length} of ${chunks.length} chunk uploads failed: ${String(first?.message ?? first)}`, { cause: first });
  }
  // A PUT that failed may still have stored its object (a lost response): it is unreferenced.
  if (failed.length > 0) void deleteChunksQuietly(failed.map((f) => f.loc));
  invariant(sledsDistinct(stripe), () => `stripe of ${segmentId} lost distinct sleds after replacements`);
  return stripe;
}

export async function deleteChunksQuietly(locations: ChunkLocation[]): Promise<void> {
  // Best effort: an orphan chunk left behind is unreferenced and reclaimed by GC.
  await Promise.allSettled(locations.map((l) => chunkStore().deleteChunk(l)));
}
