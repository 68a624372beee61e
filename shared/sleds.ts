/**
 * The sleds: S3 buckets (failure domains) whose key prefixes are drives. This module is the
 * only place that knows S3 request shapes for chunks.
 */
import { createHash } from 'node:crypto';
import { DeleteObjectCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { s3 } from './aws.ts';
import { InvalidInputError, invariant } from './errors.ts';

/** Drives per sled until the drive registry exists: prefixes `d00`..`d03`. */
export const DRIVES_PER_SLED = 4;

export interface ChunkLocation {
  bucket: string;
  key: string;
}

export function driveName(index: number): string {
  return `d${String(index).padStart(2, '0')}`;
}

export function chunkKey(drive: string, volumeId: string, segmentId: string, chunkIndex: number): string {
  return `${drive}/${volumeId}/${segmentId}.${chunkIndex}`;
}

/**
 * Places the k+m chunks of a segment on k+m distinct sleds, rotating the starting sled by a
 * hash of the segment id so that load spreads over all sleds and drives.
 */
export function placeChunks(volumeId: string, segmentId: string, chunkCount: number, buckets: readonly string[]): ChunkLocation[] {
  if (chunkCount > buckets.length) {
    throw new InvalidInputError(`${chunkCount} chunks per stripe need ${chunkCount} sleds, this deployment has ${buckets.length}`);
  }
  const hash = createHash('sha256').update(`${volumeId}/${segmentId}`).digest();
  const start = hash.readUInt32BE(0) % buckets.length;
  const locations: ChunkLocation[] = [];
  for (let i = 0; i < chunkCount; i++) {
    const bucket = buckets[(start + i) % buckets.length]!;
    const drive = driveName(hash[4 + (i % 28)]! % DRIVES_PER_SLED);
    locations.push({ bucket, key: chunkKey(drive, volumeId, segmentId, i) });
  }
  invariant(new Set(locations.map((l) => l.bucket)).size === chunkCount, 'chunk placement reused a sled');
  return locations;
}

export function formatLocation(loc: ChunkLocation): string {
  return `${loc.bucket}/${loc.key}`;
}

export function parseLocation(text: string): ChunkLocation {
  const slash = text.indexOf('/');
  invariant(slash > 0, () => `bad chunk location ${text}`);
  return { bucket: text.slice(0, slash), key: text.slice(slash + 1) };
}

/** Writes a chunk that must not exist yet (`If-None-Match: *`): chunks are never overwritten. */
export async function putChunk(loc: ChunkLocation, body: Buffer, crc32c: number): Promise<void> {
  const checksum = Buffer.alloc(4);
  checksum.writeUInt32BE(crc32c >>> 0);
  await s3().send(
    new PutObjectCommand({
      Bucket: loc.bucket,
      Key: loc.key,
      Body: body,
      ContentLength: body.length,
      ContentType: 'application/octet-stream',
      IfNoneMatch: '*',
      // S3 recomputes this and refuses the PUT if the bytes it received differ.
      ChecksumCRC32C: checksum.toString('base64'),
    }),
  );
}

function isMissing(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e?.name === 'NoSuchKey' || e?.name === 'NotFound' || e?.$metadata?.httpStatusCode === 404;
}

/**
 * Bytes `[start, end)` of a chunk object, or null if the object does not exist.
 * Other errors propagate; callers treat them as an unreadable chunk.
 */
export async function getChunkRange(loc: ChunkLocation, start: number, end: number): Promise<Buffer | null> {
  invariant(end > start && start >= 0, () => `bad range [${start}, ${end})`);
  try {
    const out = await s3().send(new GetObjectCommand({ Bucket: loc.bucket, Key: loc.key, Range: `bytes=${start}-${end - 1}` }));
    const bytes = Buffer.from(await out.Body!.transformToByteArray());
    return bytes;
  } catch (err) {
    if (isMissing(err)) return null;
    throw err;
  }
}

/** Deletes a chunk; deleting a missing chunk succeeds (idempotent). */
export async function deleteChunk(loc: ChunkLocation): Promise<void> {
  await s3().send(new DeleteObjectCommand({ Bucket: loc.bucket, Key: loc.key }));
}

/** Every chunk key of a volume on every sled and drive (bounded pages of 1,000 keys). */
export async function* listVolumeChunks(volumeId: string, buckets: readonly string[]): AsyncGenerator<ChunkLocation> {
  for (const bucket of buckets) {
    for (let d = 0; d < DRIVES_PER_SLED; d++) {
      let token: string | undefined;
      do {
        const out = await s3().send(
          new ListObjectsV2Command({ Bucket: bucket, Prefix: `${driveName(d)}/${volumeId}/`, ContinuationToken: token, MaxKeys: 1000 }),
        );
        for (const o of out.Contents ?? []) if (o.Key) yield { bucket, key: o.Key };
        token = out.IsTruncated ? out.NextContinuationToken : undefined;
      } while (token);
    }
  }
}

/**
 * The last `bytes` bytes of a chunk object (all of it if it is shorter), or null if it does not
 * exist. Trailers are read this way, without knowing the object's size.
 */
export async function getChunkTail(loc: ChunkLocation, bytes: number): Promise<Buffer | null> {
  invariant(Number.isSafeInteger(bytes) && bytes > 0, () => `bad tail length ${bytes}`);
  try {
    const out = await s3().send(new GetObjectCommand({ Bucket: loc.bucket, Key: loc.key, Range: `bytes=-${bytes}` }));
    return Buffer.from(await out.Body!.transformToByteArray());
  } catch (err) {
    if (isMissing(err)) return null;
    throw err;
  }
}

/** The parts of a chunk key `<drive>/<volumeId>/<objectId>.<chunkIndex>`, or null for other keys. */
export function parseChunkKey(key: string): { drive: string; volumeId: string; objectId: string; chunkIndex: number } | null {
  const m = /^([^/]+)\/([^/]+)\/([^/]+)\.(\d+)$/.exec(key);
  if (!m) return null;
  return { drive: m[1]!, volumeId: m[2]!, objectId: m[3]!, chunkIndex: Number(m[4]) };
}

/** A listed chunk object. */
export interface ListedChunk extends ChunkLocation {
  lastModified: Date | undefined;
}

/** Bounds one listing: 10,000 pages of 1,000 keys per drive. */
const LIST_PAGES_MAX = 10_000;

/**
 * The chunk objects of a volume whose object id (the part after `<drive>/<volumeId>/`) starts
 * with `namePrefix` and sorts after `startAfterName`, on every sled and drive, listed in
 * parallel. Segment ids start with their sequence number, so `startAfterName` selects the
 * segments after a given sequence without listing the older ones.
 */
export async function listChunks(
  volumeId: string,
  buckets: readonly string[],
  opts: { namePrefix?: string; startAfterName?: string } = {},
): Promise<ListedChunk[]> {
  const prefixes = buckets.flatMap((bucket) => Array.from({ length: DRIVES_PER_SLED }, (_, d) => ({ bucket, base: `${driveName(d)}/${volumeId}/` })));
  const lists = await Promise.all(
    prefixes.map(async ({ bucket, base }) => {
      const found: ListedChunk[] = [];
      let token: string | undefined;
      for (let page = 0; ; page++) {
        invariant(page < LIST_PAGES_MAX, () => `listing ${bucket}/${base} did not end after ${LIST_PAGES_MAX} pages`);
        const out = await s3().send(
          new ListObjectsV2Command({
            Bucket: bucket,
            Prefix: base + (opts.namePrefix ?? ''),
            ...(opts.startAfterName !== undefined && token === undefined ? { StartAfter: base + opts.startAfterName } : {}),
            ContinuationToken: token,
            MaxKeys: 1000,
          }),
        );
        for (const o of out.Contents ?? []) if (o.Key) found.push({ bucket, key: o.Key, lastModified: o.LastModified });
        token = out.IsTruncated ? out.NextContinuationToken : undefined;
        if (!token) return found;
      }
    }),
  );
  return lists.flat();
}
