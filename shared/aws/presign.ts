/**
 * Presigned chunk requests: where the S3 client would send a chunk GET or PUT, signed with the
 * head's credentials into a URL that is good for exactly that request. The gateway gets them
 * in read plans and write grants (docs/nbd-gateway.md); the head sends its own chunk requests
 * with them (shared/aws/s3-direct.ts).
 */
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { SignatureV4 } from '@smithy/signature-v4';
import { invariant } from '../core/errors.ts';
import { crc32cBase64 } from '../data/crc32c.ts';
import type { ChunkLocation } from '../data/sleds.ts';
import { s3 } from './clients.ts';

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
