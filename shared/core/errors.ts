/**
 * The public error kinds. Each has one HTTP status and answers "may I retry?".
 * Details go in the message, not in more types.
 */
export abstract class SledgeError extends Error {
  abstract readonly status: number;
  /** Whether the same request may succeed if sent again unchanged. */
  abstract readonly retryable: boolean;
  /** Seconds a client should wait before retrying, for 503s. */
  readonly retryAfterSeconds?: number;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** The request is malformed or out of range. Fix it; do not retry. */
export class InvalidInputError extends SledgeError {
  override name = 'InvalidInputError';
  readonly status = 400;
  readonly retryable = false;
}

/**
 * The caller may not do this: the request is not signed (or not by a principal Sledge knows), or
 * the route is for operators and the caller is not one. Another tenant's volume is not a 403
 * but a 404 (NotFoundError), so that its existence is not revealed (docs/security.md).
 */
export class ForbiddenError extends SledgeError {
  override name = 'ForbiddenError';
  readonly status = 403;
  readonly retryable = false;
}

/** The volume (or other named thing) does not exist. */
export class NotFoundError extends SledgeError {
  override name = 'NotFoundError';
  readonly status = 404;
  readonly retryable = false;
}

/** The request conflicts with the current state (for example the volume is being deleted). */
export class ConflictError extends SledgeError {
  override name = 'ConflictError';
  readonly status = 409;
  readonly retryable = false;
}

/**
 * The request's reservation key does not allow it: not registered (never, or preempted), or
 * another key holds a reservation that excludes it. Retrying the same request will not help;
 * the caller must re-register or stop, since someone else now owns the volume.
 */
export class FencedError extends SledgeError {
  override name = 'FencedError';
  readonly status = 409;
  readonly retryable = false;
}

/** The body is larger than the API accepts. */
export class PayloadTooLargeError extends SledgeError {
  override name = 'PayloadTooLargeError';
  readonly status = 413;
  readonly retryable = false;
}

/** The media type of the body is not one this route accepts. */
export class UnsupportedMediaTypeError extends SledgeError {
  override name = 'UnsupportedMediaTypeError';
  readonly status = 415;
  readonly retryable = false;
}

/** Temporarily unable to serve (contention, throttling, chunks unreachable). Retry after a pause. */
export class UnavailableError extends SledgeError {
  override name = 'UnavailableError';
  readonly status = 503;
  readonly retryable = true;
  override readonly retryAfterSeconds: number;
  constructor(message: string, options?: { cause?: unknown; retryAfterSeconds?: number }) {
    super(message, options);
    this.retryAfterSeconds = options?.retryAfterSeconds ?? 1;
  }
}

/**
 * Fewer than k chunks of a segment could be read with a good checksum. The bytes cannot be
 * produced; returning anything else would be wrong data. Retrying helps only if the missing
 * chunks were transiently unreachable.
 */
export class DataUnavailableError extends SledgeError {
  override name = 'DataUnavailableError';
  readonly status = 503;
  readonly retryable = true;
  override readonly retryAfterSeconds = 5;
}

/** A broken internal invariant. Always a bug; the message says which invariant. */
export class InvariantError extends Error {
  override name = 'InvariantError';
}

/** Throws an InvariantError when `condition` is false. */
export function invariant(condition: unknown, message: string | (() => string)): asserts condition {
  if (!condition) throw new InvariantError(typeof message === 'function' ? message() : message);
}
