/**
 * The chunk store on S3: the only place that knows S3 request shapes for chunks and other
 * objects on the sleds (dumps). Chunks are written once, with `If-None-Match: *` and a CRC32C
 * that S3 verifies; reads are ranged; a missing object reads as null.
 */
import { DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import type { ChunkStore } from '../core/ports.ts';
import { invariant } from '../core/errors.ts';
import { crc32cBase64 } from '../data/crc32c.ts';
import { DRIVES_PER_SLED, driveName, type ChunkLocation, type ListedChunk, type VolumeChunk } from '../data/sleds.ts';
import { s3 } from './clients.ts';
import { presignChunkPut, presignChunkRange } from './presign.ts';
import { getChunkRangeDirect, putChunkDirect } from './s3-direct.ts';

/**
 * Writes a chunk that must not exist yet (`If-None-Match: *`): chunks are never overwritten.
 * S3 recomputes the CRC32C and refuses the PUT if the bytes it received differ. Sent without
 * the SDK's pipeline (shared/aws/s3-direct.ts).
 */
export async function putChunk(loc: ChunkLocation, body: Buffer, crc32c: number): Promise<void> {
  await putChunkDirect(loc, body, crc32c);
}

/**
 * Whether the object at `loc` is exactly `body` (CRC32C `crc32c`). A chunk PUT answered 412 is
 * an earlier attempt of the same PUT whose response was lost (chunk keys are fresh per
 * segment), and counts as written only when this says so. The stored checksum is compared
 * when the endpoint returns one; otherwise (or when it differs in kind) the bytes themselves.
 */
export async function storedChunkEquals(loc: ChunkLocation, body: Buffer, crc32c: number): Promise<boolean> {
  try {
    const head = await s3().send(new HeadObjectCommand({ Bucket: loc.bucket, Key: loc.key, ChecksumMode: 'ENABLED' }));
    if (head.ContentLength !== undefined && head.ContentLength !== body.length) return false;
    // A whole-object CRC32C (not a multipart composite, which ends in -N) decides on its own.
    if (head.ChecksumCRC32C && !head.ChecksumCRC32C.includes('-')) return head.ChecksumCRC32C === crc32cBase64(crc32c);
  } catch (err) {
    if (isMissing(err)) return false;
    throw err;
  }
  const stored = await getChunk(loc);
  return stored !== null && stored.equals(body);
}

function isMissing(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e?.name === 'NoSuchKey' || e?.name === 'NotFound' || e?.$metadata?.httpStatusCode === 404;
}

/**
 * Bytes `[start, end)` of a chunk object, or null if the object does not exist.
 * Other errors propagate; callers treat them as an unreadable chunk.
 *
 * The body lands in `into` (exactly `end - start` bytes, returned) when given, else in a new
 * buffer, read there by the kernel (shared/aws/s3-direct.ts, shared/net/http.ts `rawExchange`).
 * A body shorter than asked is returned as the shorter view; the reader's checksums catch it.
 */
export async function getChunkRange(loc: ChunkLocation, start: number, end: number, into?: Buffer): Promise<Buffer | null> {
  invariant(end > start && start >= 0, () => `bad range [${start}, ${end})`);
  invariant(!into || into.length === end - start, () => `a buffer of ${end - start} bytes for the range, got ${into!.length}`);
  return getChunkRangeDirect(loc, start, end, into);
}

/**
 * The length and stored whole-object CRC32C (base64, as S3 reports it; absent when the object
 * was stored without one) of a chunk object, or null if it does not exist. No body is read.
 */
export async function statChunk(loc: ChunkLocation): Promise<{ bytes: number; crc32c?: string } | null> {
  try {
    const head = await s3().send(new HeadObjectCommand({ Bucket: loc.bucket, Key: loc.key, ChecksumMode: 'ENABLED' }));
    return { bytes: head.ContentLength ?? -1, ...(head.ChecksumCRC32C ? { crc32c: head.ChecksumCRC32C } : {}) };
  } catch (err) {
    if (isMissing(err)) return null;
    throw err;
  }
}

/** The last `bytes` bytes of a chunk object (all of it if shorter), or null if it does not exist. */
export async function getChunkTail(loc: ChunkLocation, bytes: number): Promise<Buffer | null> {
  invariant(bytes > 0, 'a tail of at least one byte');
  try {
    const out = await s3().send(new GetObjectCommand({ Bucket: loc.bucket, Key: loc.key, Range: `bytes=-${bytes}` }));
    return Buffer.from(await out.Body!.transformToByteArray());
  } catch (err) {
    if (isMissing(err)) return null;
    throw err;
  }
}

/** Deletes a chunk; deleting a missing chunk succeeds (idempotent). */
export async function deleteChunk(loc: ChunkLocation): Promise<void> {
  await s3().send(new DeleteObjectCommand({ Bucket: loc.bucket, Key: loc.key }));
}

/** Deletes a chunk if it exists; true if it did (so a repeated delete is not counted twice). */
export async function deleteChunkIfPresent(loc: ChunkLocation): Promise<boolean> {
  try {
    await s3().send(new HeadObjectCommand({ Bucket: loc.bucket, Key: loc.key }));
  } catch (err) {
    if (isMissing(err)) return false;
    throw err;
  }
  await deleteChunk(loc);
  return true;
}

/** Every chunk key of a volume on every sled and drive (bounded pages of 1,000 keys). */
export async function* listVolumeChunks(volumeId: string, buckets: readonly string[]): AsyncGenerator<ListedChunk> {
  for (const bucket of buckets) {
    for (let d = 0; d < DRIVES_PER_SLED; d++) {
      let token: string | undefined;
      do {
        const out = await s3().send(
          new ListObjectsV2Command({ Bucket: bucket, Prefix: `${driveName(d)}/${volumeId}/`, ContinuationToken: token, MaxKeys: 1000 }),
        );
        for (const o of out.Contents ?? []) {
          if (o.Key) yield { bucket, key: o.Key, sizeBytes: o.Size ?? 0, lastModifiedMs: o.LastModified?.getTime() ?? 0 };
        }
        token = out.IsTruncated ? out.NextContinuationToken : undefined;
      } while (token);
    }
  }
}

/**
 * One page of the objects on a drive, after `startAfter` (a key), at most `maxKeys`.
 * `next` is the key to continue after, absent at the end of the drive.
 */
export async function listDrivePage(bucket: string, drive: string, startAfter: string, maxKeys: number): Promise<{ objects: ListedChunk[]; next?: string }> {
  invariant(maxKeys >= 1 && maxKeys <= 1000, () => `maxKeys ${maxKeys} is not from 1 to 1000`);
  const out = await s3().send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `${drive}/`, StartAfter: startAfter || undefined, MaxKeys: maxKeys }));
  const objects = (out.Contents ?? [])
    .filter((o) => o.Key)
    .map((o) => ({ bucket, key: o.Key!, sizeBytes: o.Size ?? 0, lastModifiedMs: o.LastModified?.getTime() ?? 0 }));
  const last = objects[objects.length - 1];
  return out.IsTruncated && last ? { objects, next: last.key } : { objects };
}

/** A whole chunk object, or null if it does not exist. Other errors propagate. */
export async function getChunk(loc: ChunkLocation): Promise<Buffer | null> {
  try {
    const out = await s3().send(new GetObjectCommand({ Bucket: loc.bucket, Key: loc.key }));
    return Buffer.from(await out.Body!.transformToByteArray());
  } catch (err) {
    if (isMissing(err)) return null;
    throw err;
  }
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
): Promise<VolumeChunk[]> {
  const prefixes = buckets.flatMap((bucket) => Array.from({ length: DRIVES_PER_SLED }, (_, d) => ({ bucket, base: `${driveName(d)}/${volumeId}/` })));
  const lists = await Promise.all(
    prefixes.map(async ({ bucket, base }) => {
      const found: VolumeChunk[] = [];
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

/** Whether an error is S3's "the object already exists" answer to `If-None-Match: *`. */
export function isPreconditionFailed(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e?.$metadata?.httpStatusCode === 412 || e?.name === 'PreconditionFailed';
}

/**
 * Writes any object on a sled (a dump, a dump area's marker), optionally only if it does not
 * exist yet. Chunks go through `putChunk`.
 */
export async function putObject(loc: ChunkLocation, body: Buffer, opts: { contentType?: string; ifAbsent?: boolean } = {}): Promise<void> {
  await s3().send(
    new PutObjectCommand({
      Bucket: loc.bucket,
      Key: loc.key,
      Body: body,
      ...(opts.contentType !== undefined ? { ContentType: opts.contentType } : {}),
      ...(opts.ifAbsent ? { IfNoneMatch: '*' } : {}),
    }),
  );
}

/** A whole object; unlike `getChunk`, a missing object is an error (the S3 one), not null. */
export async function readObject(loc: ChunkLocation): Promise<Buffer> {
  const out = await s3().send(new GetObjectCommand({ Bucket: loc.bucket, Key: loc.key }));
  return Buffer.from(await out.Body!.transformToByteArray());
}

/** The chunk store port (shared/core/ports.ts) on S3. */
export const s3ChunkStore: ChunkStore = {
  putChunk,
  storedChunkEquals,
  getChunkRange,
  presignChunkRange,
  presignChunkPut,
  statChunk,
  getChunkTail,
  getChunk,
  deleteChunk,
  deleteChunkIfPresent,
  listVolumeChunks,
  listDrivePage,
  listChunks,
  isPreconditionFailed,
  putObject,
  readObject,
};
