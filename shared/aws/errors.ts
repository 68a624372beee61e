/**
 * AWS SDK errors at the boundary: the one place that decides which of them mean "the service
 * cannot answer now" (throttling, a 5xx after the SDK's retries, a timeout or a dropped
 * connection) and turns them into Sledge's UnavailableError: 503 with Retry-After, retryable.
 * Everything else is left alone: Sledge's own errors, conditional-check refusals (handled where
 * they are sent), and bugs, which stay 500s with a diagnostic dump.
 */
import { SledgeError, UnavailableError } from '../core/errors.ts';

/**
 * An AWS service's error in the shape the SDK gives it: `name` and `Code` are the service's
 * error code, `$metadata.httpStatusCode` its status, `$fault` whose fault it is, `$retryable`
 * set for throttling. The errors Sledge makes itself in that shape (the head's own S3 requests'
 * refusals, injected faults) are these, so that everything here judges them as the SDK's.
 */
export class ServiceShapedError extends Error {
  readonly $metadata: { httpStatusCode: number; attempts?: number };
  readonly $fault: 'client' | 'server';
  readonly $retryable?: { throttling: boolean };
  readonly Code: string;
  constructor(code: string, status: number, message: string, opts: { fault: 'client' | 'server'; throttling?: boolean }) {
    super(message);
    this.name = code;
    this.Code = code;
    this.$metadata = { httpStatusCode: status };
    this.$fault = opts.fault;
    if (opts.throttling) this.$retryable = { throttling: true };
  }
}

/** Error names (codes) the AWS services use when they throttle a request. */
const THROTTLING = new Set([
  'ProvisionedThroughputExceededException',
  'ThrottlingException',
  'Throttling',
  'ThrottledException',
  'RequestLimitExceeded',
  'RequestThrottled',
  'RequestThrottledException',
  'TooManyRequestsException',
  'SlowDown',
  'BandwidthLimitExceeded',
  'LimitExceededException',
  'TransactionInProgressException',
  // Contention between transactions on the same items: retry later, like throttling.
  'TransactionConflictException',
]);

/** Error names of timeouts and lost connections (the SDK's, Node's, and the fault injection's). */
const TRANSIENT_NAMES = new Set(['TimeoutError', 'RequestTimeout', 'RequestTimeoutException', 'NetworkingError']);
const TRANSIENT_CODES = new Set(['ETIMEDOUT', 'ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'EAI_AGAIN', 'ENOTFOUND', 'ECONNABORTED']);

/** Seconds a client waits before retrying when AWS could not serve a request. */
export const SDK_UNAVAILABLE_RETRY_AFTER_SECONDS = 1;

interface SdkErrorShape {
  name?: unknown;
  code?: unknown;
  $fault?: unknown;
  $metadata?: { httpStatusCode?: unknown };
  $retryable?: { throttling?: unknown };
}

/** Why an SDK error means "unavailable now", or null when it does not. */
export function sdkUnavailableReason(err: unknown): 'throttled' | 'server error' | 'timeout' | null {
  if (typeof err !== 'object' || err === null || err instanceof SledgeError) return null;
  const e = err as SdkErrorShape;
  const name = typeof e.name === 'string' ? e.name : '';
  if (THROTTLING.has(name) || e.$retryable?.throttling === true || e.$metadata?.httpStatusCode === 429) return 'throttled';
  if (TRANSIENT_NAMES.has(name) || (typeof e.code === 'string' && TRANSIENT_CODES.has(e.code))) return 'timeout';
  const status = e.$metadata?.httpStatusCode;
  if ((typeof status === 'number' && status >= 500) || e.$fault === 'server') return 'server error';
  return null;
}

/**
 * `err` as Sledge should answer it: an UnavailableError (with the SDK error as its cause) for
 * throttling, 5xx and timeouts; `err` itself otherwise.
 *
 * @example
 * toSledgeError(Object.assign(new Error('rate exceeded'), { name: 'ThrottlingException' })); // UnavailableError, 503
 */
export function toSledgeError(err: unknown): unknown {
  const reason = sdkUnavailableReason(err);
  if (!reason) return err;
  const e = err as { name?: string; message?: string };
  return new UnavailableError(`AWS could not serve the request now (${reason}: ${e.name ?? 'Error'}: ${e.message ?? ''}); retry`, {
    cause: err,
    retryAfterSeconds: SDK_UNAVAILABLE_RETRY_AFTER_SECONDS,
  });
}

/**
 * DynamoDB left items of a BatchGetItem or BatchWriteItem unprocessed through every retry.
 * It does that when it throttles a table or a partition, so it is the same "cannot answer now"
 * as a throttling error: a 503 with Retry-After, retryable, and no diagnostic dump.
 *
 * @example
 * if (attempt >= UNPROCESSED_RETRY_MAX) throw unprocessedAfterRetries('BatchWriteItem', [table], attempt);
 */
export function unprocessedAfterRetries(operation: 'BatchGetItem' | 'BatchWriteItem', tables: readonly string[], attempts: number): UnavailableError {
  return new UnavailableError(
    `AWS could not serve the request now (throttled: ${operation} on ${tables.join(', ')} left items unprocessed after ${attempts} attempts); retry`,
    {
      retryAfterSeconds: SDK_UNAVAILABLE_RETRY_AFTER_SECONDS,
    },
  );
}
