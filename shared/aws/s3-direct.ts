/**
 * The head's chunk PUTs and ranged chunk GETs, sent without the SDK's request pipeline
 * (docs/page-map.md, "The head's chunk requests").
 *
 * Why: a chunk request through the S3 client ran some forty middleware steps (endpoint rules,
 * schema serialization, checksum and retry wrappers, header signing) and node:http's parser
 * and streams; for six 1 MiB PUTs that was 11 ms of CPU where the bytes alone cost 5, and for
 * four 1 MiB GETs 9 to 12 ms where 2 to 3 do. Every write and read of the head pays it.
 *
 * What stays the S3 client's: where requests go and the credentials (each request is
 * presigned by chunk-store.ts `presignChunkPut` / `presignChunkRange`, from the client's own
 * endpoint resolution, region and credential provider). What this module does itself, as the
 * SDK did: one count per attempt (`countRequest`, so the benches' request counts are exact),
 * the fault rules per attempt (`underFaults`), up to `S3_DIRECT_MAX_ATTEMPTS` attempts with the
 * SDK's standard backoff for throttling, 5xx, timeouts and dropped connections, and errors
 * shaped like the SDK's (`name` is S3's error code, `$metadata.httpStatusCode`, `$fault`,
 * `$retryable`), so that shared/aws/errors.ts and the callers judge them as before.
 */
import { rawExchange, type HttpAnswer, type HttpRequest } from '../net/http.ts';
import type { ChunkLocation } from '../data/sleds.ts';
import { presignChunkPut, presignChunkRange } from './presign.ts';
import { countRequest } from './clients.ts';
import { sdkUnavailableReason, ServiceShapedError } from './errors.ts';
import { S3_REQUEST_TIMEOUT_MS, underFaults } from './faults.ts';

/** Attempts per request, as the S3 client is built with (shared/aws/clients.ts). */
export const S3_DIRECT_MAX_ATTEMPTS = 3;
/** How long each attempt's presigned URL is good for: it is sent at once; this covers clock skew and a slow send. */
const SIGNED_SECONDS = 300;
/** The SDK's standard backoff: a random wait up to base x 2^(attempt - 1), at most 20 s. */
const BACKOFF_BASE_MS = 100;
const THROTTLED_BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 20_000;

/** S3 refused or failed a request: shaped like the SDK's service errors. */
export class S3RequestError extends ServiceShapedError {
  constructor(code: string, status: number, message: string) {
    // S3 throttles with 503 SlowDown; the SDK marks it (and any 429) as throttling.
    super(code, status, message, { fault: status >= 500 ? 'server' : 'client', throttling: code === 'SlowDown' || status === 429 });
  }
}

/** A request that got no answer: the connection failed or the answer did not come in time. */
class S3NetworkError extends Error {
  constructor(operation: string, loc: ChunkLocation, cause: Error) {
    super(`S3 ${operation} s3://${loc.bucket}/${loc.key}: ${cause.message}`, { cause });
    // The names shared/aws/errors.ts knows as "unavailable now" (timeout), as the SDK's.
    this.name = /^no answer within/.test(cause.message) ? 'TimeoutError' : 'NetworkingError';
  }
}

/** Writes a chunk that must not exist yet (`If-None-Match: *`), its CRC32C checked by S3. */
export async function putChunkDirect(loc: ChunkLocation, body: Buffer, crc32c: number): Promise<void> {
  await send(
    'PutObject',
    loc,
    async () => {
      const { url, headers } = await presignChunkPut(loc, body.length, crc32c, SIGNED_SECONDS);
      return { url, request: { method: 'PUT', headers, body, timeoutMs: S3_REQUEST_TIMEOUT_MS } };
    },
    (answer) => {
      if (answer.status !== 200) throw refusal('PutObject', loc, answer);
    },
  );
}

/**
 * Bytes `[start, end)` of a chunk object into `into` (exactly `end - start` bytes) or a new
 * buffer, or null if the object does not exist. A body shorter than asked is returned as the
 * shorter view (the reader's checksums catch it); a longer one is an error.
 */
export async function getChunkRangeDirect(loc: ChunkLocation, start: number, end: number, into?: Buffer): Promise<Buffer | null> {
  const target = into ?? Buffer.allocUnsafe(end - start);
  const range = `bytes=${start}-${end - 1}`;
  return send(
    'GetObject',
    loc,
    async () => ({
      url: await presignChunkRange(loc, start, end, SIGNED_SECONDS),
      request: { method: 'GET', headers: { range }, timeoutMs: S3_REQUEST_TIMEOUT_MS, into: { status: 206, target } },
    }),
    (answer) => {
      if (answer.status === 404) return null;
      if (answer.status !== 206 && answer.status !== 200) throw refusal('GetObject', loc, answer);
      if (answer.body.length > target.length)
        throw new Error(`a ranged GET of s3://${loc.bucket}/${loc.key} returned ${answer.body.length} bytes, more than the ${target.length} asked for`);
      if (answer.body !== target) answer.body.copy(target);
      return answer.body.length === target.length ? target : target.subarray(0, answer.body.length);
    },
  );
}

/**
 * Sends one request, each attempt signed afresh by `prepare`, counted, under the fault rules,
 * and its answer judged by `accept` (which throws to refuse it, or returns the result).
 * Retries what the SDK would.
 */
async function send<T>(
  operation: 'PutObject' | 'GetObject',
  loc: ChunkLocation,
  prepare: () => Promise<{ url: string; request: HttpRequest }>,
  accept: (answer: HttpAnswer) => T,
): Promise<T> {
  const input = { Bucket: loc.bucket, Key: loc.key };
  for (let attempt = 1; ; attempt++) {
    const started = performance.now();
    try {
      const answer = await underFaults('s3', operation, input, async () => {
        const { url, request } = await prepare();
        try {
          return await rawExchange(url, request);
        } catch (err) {
          throw new S3NetworkError(operation, loc, err as Error);
        }
      });
      return accept(answer);
    } catch (err) {
      const reason = sdkUnavailableReason(err);
      if (!reason || attempt >= S3_DIRECT_MAX_ATTEMPTS) {
        const e = err as { $metadata?: { attempts?: number } };
        if (e && typeof e === 'object' && e.$metadata) e.$metadata.attempts = attempt;
        throw err;
      }
      const base = reason === 'throttled' ? THROTTLED_BACKOFF_BASE_MS : BACKOFF_BASE_MS;
      await new Promise((resolve) => setTimeout(resolve, Math.random() * Math.min(BACKOFF_MAX_MS, base * 2 ** (attempt - 1))));
    } finally {
      countRequest(`S3:${operation}`, performance.now() - started);
    }
  }
}

/** The error for an answer that refused the request: S3's code from its XML body, else the status. */
function refusal(operation: string, loc: ChunkLocation, answer: HttpAnswer): S3RequestError {
  const text = answer.body.length <= 64 * 1024 ? answer.body.toString('utf8') : '';
  const code =
    /<Code>([^<]{1,128})<\/Code>/.exec(text)?.[1] ??
    (answer.status === 404 ? 'NotFound' : answer.status === 412 ? 'PreconditionFailed' : `Http${answer.status}`);
  const message = /<Message>([^<]{0,512})<\/Message>/.exec(text)?.[1] ?? '';
  return new S3RequestError(code, answer.status, `S3 ${operation} s3://${loc.bucket}/${loc.key}: ${answer.status} ${code}${message ? `: ${message}` : ''}`);
}
