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
import { SignatureV4 } from '@smithy/signature-v4';

/** Writes a chunk that must not exist yet (`If-None-Match: *`): chunks are never overwritten. */
export async function putChunk(loc: ChunkLocation, body: Buffer, crc32c: number): Promise<void> {
  await s3().send(
    new PutObjectCommand({
      Bucket: loc.bucket,
      Key: loc.key,
      Body: body,
      ContentLength: body.length,
      ContentType: 'application/octet-stream',
      IfNoneMatch: '*',
      // S3 recomputes this and refuses the PUT if the bytes it received differ.
      ChecksumCRC32C: crc32cBase64(crc32c),
    }),
  );
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
 * The body is copied once, from the socket's pieces into one buffer: `into` (exactly
 * `end - start` bytes, returned) when given, else a new one. (The SDK's
 * `transformToByteArray` plus `Buffer.from` copied every byte twice and left two large
 * garbage buffers per GET.) A body shorter than asked is returned as the shorter view; the
 * reader's checksums catch it.
 */
export async function getChunkRange(loc: ChunkLocation, start: number, end: number, into?: Buffer): Promise<Buffer | null> {
  invariant(end > start && start >= 0, () => `bad range [${start}, ${end})`);
  invariant(!into || into.length === end - start, () => `a buffer of ${end - start} bytes for the range, got ${into!.length}`);
  try {
    const out = await s3().send(new GetObjectCommand({ Bucket: loc.bucket, Key: loc.key, Range: `bytes=${start}-${end - 1}` }));
    return await readBodyInto(out.Body as AsyncIterable<Uint8Array>, into ?? Buffer.allocUnsafe(end - start));
  } catch (err) {
    if (isMissing(err)) return null;
    throw err;
  }
}

/** Reads a response body into `target`; a body longer than `target` is an error. Returns the bytes read. */
async function readBodyInto(body: AsyncIterable<Uint8Array>, target: Buffer): Promise<Buffer> {
  let at = 0;
  for await (const piece of body) {
    if (at + piece.length > target.length) throw new Error(`a ranged GET returned more than the ${target.length} bytes asked for`);
    target.set(piece, at);
    at += piece.length;
  }
  return at === target.length ? target : target.subarray(0, at);
}

/** The parts of an HTTP request the SDK's serializer resolved (endpoint, path, query). */
export interface ResolvedRequest {
  protocol: string;
  hostname: string;
  port?: number;
  path: string;
  query: Record<string, string | string[] | null>;
}

/** The longest a presigned chunk URL may live: the longest a gateway should hold a read plan. */
export const PRESIGN_MAX_SECONDS = 3600;

/**
 * A presigned URL (SigV4 query-string signature, the head's credentials) for one GET of bytes
 * `[start, end)` of a chunk, valid `expiresSeconds`. The `Range` header is signed in: the URL is
 * good for exactly that range, sent with exactly `Range: bytes=<start>-<end - 1>`. No request is
 * sent; the endpoint and path are the ones the S3 client would use (the SDK resolves them, then
 * the request is taken before signing and sending).
 */
export async function presignChunkRange(loc: ChunkLocation, start: number, end: number, expiresSeconds: number): Promise<string> {
  invariant(end > start && start >= 0, () => `bad range [${start}, ${end})`);
  const range = `bytes=${start}-${end - 1}`;
  // S3 takes presigned GETs with an unsigned payload; the range header becomes a query parameter.
  return presign('GetObject', loc, { range }, expiresSeconds);
}

/**
 * A presigned URL for one PUT of a whole chunk object (docs/nbd-gateway.md, "Direct writes"):
 * `If-None-Match: *`, its length and its CRC32C are signed in, so the URL writes nothing but a
 * new object of exactly those bytes, for `expiresSeconds`. Returns the URL and the headers the
 * holder must send. No request is sent.
 */
export async function presignChunkPut(
  loc: ChunkLocation,
  bytes: number,
  crc32c: number,
  expiresSeconds: number,
): Promise<{ url: string; headers: Record<string, string> }> {
  invariant(Number.isSafeInteger(bytes) && bytes > 0, () => `bad object length ${bytes}`);
  // Sent as headers and signed (unhoistable: `If-None-Match` and the checksum must reach S3 as headers).
  const headers: Record<string, string> = {
    'content-length': String(bytes),
    'content-type': 'application/octet-stream',
    'if-none-match': '*',
    'x-amz-checksum-crc32c': crc32cBase64(crc32c),
    'x-amz-sdk-checksum-algorithm': 'CRC32C',
  };
  const unhoistable = new Set(Object.keys(headers).filter((h) => h.startsWith('x-amz-')));
  const url = await presign('PutObject', loc, headers, expiresSeconds, unhoistable);
  return { url, headers };
}

/**
 * Presigns a request for `loc` with `headers` (plus host and an unsigned payload) for
 * `expiresSeconds`. Where the request goes (endpoint, path style, query) is what the S3 client
 * would send (`resolveTarget`); it is signed here. No request is sent.
 */
async function presign(
  kind: 'GetObject' | 'PutObject',
  loc: ChunkLocation,
  headers: Record<string, string>,
  expiresSeconds: number,
  unhoistableHeaders?: Set<string>,
): Promise<string> {
  invariant(expiresSeconds > 0 && expiresSeconds <= PRESIGN_MAX_SECONDS, () => `bad expiry ${expiresSeconds} s`);
  const client = s3();
  const request = await resolveTarget(kind, loc);
  let presigner = presigners.get(client);
  if (!presigner) {
    presigner = new SignatureV4({
      credentials: client.config.credentials,
      region: client.config.region,
      service: 's3',
      sha256: client.config.sha256,
      uriEscapePath: false,
    });
    presigners.set(client, presigner);
  }
  const host = request.port ? `${request.hostname}:${request.port}` : request.hostname;
  const signed = await presigner.presign(
    {
      method: kind === 'GetObject' ? 'GET' : 'PUT',
      protocol: request.protocol,
      hostname: request.hostname,
      ...(request.port ? { port: request.port } : {}),
      path: request.path,
      // resolveTarget's query is this request's own copy.
      query: request.query,
      headers: { host, ...headers, 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' },
    },
    { expiresIn: expiresSeconds, ...(unhoistableHeaders ? { unhoistableHeaders } : {}) },
  );
  const query = Object.entries(signed.query ?? {})
    .flatMap(([k, v]) =>
      v === null ? [encodeURIComponent(k)] : (Array.isArray(v) ? v : [v]).map((one) => `${encodeURIComponent(k)}=${encodeURIComponent(one)}`),
    )
    .join('&');
  return `${request.protocol}//${host}${request.path}?${query}`;
}

/** One signer per S3 client (its credentials and region). */
const presigners = new WeakMap<object, SignatureV4>();

/** Per S3 client, `${kind} ${bucket}` -> where its requests go, with the probe key's path; null when the path does not end in the probe key. */
const targets = new WeakMap<object, Map<string, Promise<{ request: ResolvedRequest; prefix: string } | null>>>();

/** A key made only of characters the S3 client never escapes in a path (chunk and dump keys are). */
const PLAIN_KEY = /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/;
const PROBE_KEY = 'sledge-presign-probe';

/**
 * Where the S3 client would send a `kind` request for `loc`: the SDK's own resolution (its
 * middleware up to the end of the build step; signing, retries, counting, fault injection and
 * the network never run). The SDK resolves the endpoint again for every command, which cost a
 * read plan about 1 ms per presigned URL; so it is done once per client, bucket and kind, for a
 * probe key, and a plain key's path is the probe's path with the key in its place. Any other
 * key, or a client whose path does not end in the key, is resolved by the SDK each time.
 */
export async function resolveTarget(kind: 'GetObject' | 'PutObject', loc: ChunkLocation): Promise<ResolvedRequest> {
  if (!PLAIN_KEY.test(loc.key)) return resolveWithSdk(kind, loc);
  const client = s3();
  let perClient = targets.get(client);
  if (!perClient) targets.set(client, (perClient = new Map()));
  const id = `${kind} ${loc.bucket}`;
  let target = perClient.get(id);
  if (!target) {
    target = resolveWithSdk(kind, { bucket: loc.bucket, key: PROBE_KEY }).then((request) =>
      request.path.endsWith(`/${PROBE_KEY}`) ? { request, prefix: request.path.slice(0, -PROBE_KEY.length) } : null,
    );
    // A failed resolution is not kept: the next presign tries again.
    target.catch(() => perClient.delete(id));
    perClient.set(id, target);
  }
  const t = await target;
  if (!t) return resolveWithSdk(kind, loc);
  return { ...t.request, path: t.prefix + loc.key, query: { ...t.request.query } };
}

let sdkResolutions = 0;

/** How many requests the SDK resolved for presigning in this process (each costs about 1 ms). */
export function presignSdkResolutions(): number {
  return sdkResolutions;
}

/** `resolveTarget` without the cache: the SDK resolves this one request. */
export async function resolveWithSdk(kind: 'GetObject' | 'PutObject', loc: ChunkLocation): Promise<ResolvedRequest> {
  sdkResolutions++;
  const command =
    kind === 'GetObject' ? new GetObjectCommand({ Bucket: loc.bucket, Key: loc.key }) : new PutObjectCommand({ Bucket: loc.bucket, Key: loc.key });
  // Last in the build step: the request is resolved, and nothing after (signing, retries, the
  // request counter, fault injection, the network) runs.
  (command.middlewareStack as unknown as { add(mw: unknown, opts: { step: 'build'; name: string; priority: 'low' }): void }).add(
    () => async (args: { request: ResolvedRequest }) => ({ output: { request: args.request }, response: {} }),
    { step: 'build', name: 'sledgeTakeRequest', priority: 'low' },
  );
  const { request } = (await (s3().send as (c: unknown) => Promise<unknown>)(command)) as { request: ResolvedRequest };
  return {
    protocol: request.protocol,
    hostname: request.hostname,
    ...(request.port ? { port: request.port } : {}),
    path: request.path,
    query: { ...request.query },
  };
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
