/**
 * Direct writes (docs/nbd-gateway.md, "Direct writes"): the gateway encodes a write-back batch
 * into k+m chunks with the head's own codec and segment format, PUTs them with the presigned
 * URLs of a write plan, and the head commits the segment by reference. Any failure here is a
 * DirectWriteError, and the caller writes the batch through the API instead.
 */
import type { BatchPartsPiece } from '#shared/api/batch.ts';
import { type Stripes, chunkObjectOf, encodeStripes, type SegmentDescriptor } from '#shared/data/segments.ts';
import type { ChunkLocation } from '#shared/data/sleds.ts';
import { crc32cBase64 } from '#shared/data/crc32c.ts';
import { rawExchange } from '#shared/net/http.ts';

/** Something in a direct write could not be done; the batch goes through the API instead. */
export class DirectWriteError extends Error {
  override name = 'DirectWriteError';
}

/** What the head answers to `POST /volumes/{id}/write-plan` (shared/data/direct-write.ts). */
export interface WritePlan {
  descriptor: SegmentDescriptor;
  locations: ChunkLocation[];
  puts: Array<{ url: string; headers: Record<string, string> }>;
  expiresAtMs: number;
}

/** A batch's extent as a plan request names it. */
export interface PlanExtent {
  offset: number;
  length: number;
  zero?: true;
}

/** A batch encoded for a direct write: its extents (in offset order) and its k+m shards with their granule CRCs. */
export interface EncodedBatch {
  extents: PlanExtent[];
  stripes: Stripes;
}

/** Lays the batch's data end to end in offset order (as the head does) and encodes it: k data and m parity shards. */
export async function encodeDirectBatch(pieces: readonly BatchPartsPiece[], k: number, m: number, blockSizeBytes: number): Promise<EncodedBatch> {
  const sorted = [...pieces].sort((a, b) => a.offset - b.offset);
  const extents = sorted.map((p): PlanExtent => ('zero' in p ? { offset: p.offset, length: p.length, zero: true } : { offset: p.offset, length: p.length }));
  const data = sorted.flatMap((p) => ('zero' in p ? [] : p.parts));
  const { chunkSizeBytes, shards, crcs } = await encodeStripes(k, m, blockSizeBytes, data);
  return { extents, stripes: { chunkSizeBytes, shards, crcs } };
}

/** Checks a plan against the batch it answers, so that a wrong plan fails before anything is sent. */
export function checkWritePlan(plan: WritePlan, batch: EncodedBatch): void {
  const d = plan?.descriptor;
  const n = batch.stripes.shards.length;
  const sane =
    d !== undefined &&
    Array.isArray(plan.puts) &&
    plan.puts.length === n &&
    Array.isArray(plan.locations) &&
    plan.locations.length === n &&
    d.chunkSizeBytes === batch.stripes.chunkSizeBytes &&
    JSON.stringify(d.crcs) === JSON.stringify(batch.stripes.crcs);
  if (!sane) throw new DirectWriteError('the write plan does not describe this batch');
}

/**
 * PUTs the k+m chunk objects of a plan at once: each shard followed by its trailer (built from
 * the plan's descriptor), with exactly the signed headers. Throws DirectWriteError unless every
 * PUT answered 200. Returns the number of PUTs sent.
 */
export async function putChunks(plan: WritePlan, batch: EncodedBatch, timeoutMs: number): Promise<number> {
  const failures: string[] = [];
  await Promise.all(
    batch.stripes.shards.map(async (shard, i) => {
      const object = chunkObjectOf(plan.descriptor, i);
      const put = plan.puts[i]!;
      // Pair assertion: the head signed the length and CRC32C of the very object built here.
      if (put.headers['x-amz-checksum-crc32c'] !== crc32cBase64(object.crc) || put.headers['content-length'] !== String(object.bytes)) {
        failures.push(`chunk ${i}: the plan signed another object than the one encoded`);
        return;
      }
      try {
        const answer = await rawExchange(put.url, { method: 'PUT', headers: put.headers, body: [shard, object.trailer], timeoutMs });
        if (answer.status !== 200) failures.push(`chunk ${i}: PUT answered ${answer.status} ${answer.body.toString('utf8').slice(0, 200)}`);
      } catch (err) {
        failures.push(`chunk ${i}: PUT failed: ${(err as Error).message}`);
      }
    }),
  );
  if (failures.length > 0) throw new DirectWriteError(failures[0]!);
  return batch.stripes.shards.length;
}
