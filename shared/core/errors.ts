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

/**
 * The base class of one error kind: its name (the `error` of the answer's body), status and
 * whether a retry may succeed. Each kind below is one line on top of it.
 */
function errorKind(name: string, status: number, retryable: boolean) {
  return class extends SledgeError {
    override name = name;
    readonly status = status;
    readonly retryable = retryable;
  };
}

/** The request is malformed or out of range. Fix it; do not retry. */
export class InvalidInputError extends errorKind('InvalidInputError', 400, false) {}

/**
 * The caller may not do this: the request is not signed (or not by a principal Sledge knows), or
 * the route is for operators and the caller is not one. Another tenant's volume is not a 403
 * but a 404 (NotFoundError), so that its existence is not revealed (docs/security.md).
 */
export class ForbiddenError extends errorKind('ForbiddenError', 403, false) {}

/** The volume (or other named thing) does not exist. */
export class NotFoundError extends errorKind('NotFoundError', 404, false) {}

/** The request conflicts with the current state (for example the volume is being deleted). */
export class ConflictError extends errorKind('ConflictError', 409, false) {}

/**
 * The request's reservation key does not allow it: not registered (never, or preempted), or
 * another key holds a reservation that excludes it. Retrying the same request will not help;
 * the caller must re-register or stop, since someone else now owns the volume.
 */
export class FencedError extends errorKind('FencedError', 409, false) {}

/** The body is larger than the API accepts. */
export class PayloadTooLargeError extends errorKind('PayloadTooLargeError', 413, false) {}

/** The media type of the body is not one this route accepts. */
export class UnsupportedMediaTypeError extends errorKind('UnsupportedMediaTypeError', 415, false) {}

/** Temporarily unable to serve (contention, throttling, chunks unreachable). Retry after a pause. */
export class UnavailableError extends errorKind('UnavailableError', 503, true) {
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
export class DataUnavailableError extends errorKind('DataUnavailableError', 503, true) {
  override readonly retryAfterSeconds = 5;
}

/** A subclass of Error whose `name` is `name`, for errors that are not one of the kinds above. */
export function namedError(name: string) {
  return class extends Error {
    override name = name;
  };
}

/** A broken internal invariant. Always a bug; the message says which invariant. */
export class InvariantError extends namedError('InvariantError') {}

/** Throws an InvariantError when `condition` is false. */
export function invariant(condition: unknown, message: string | (() => string)): asserts condition {
  if (!condition) throw new InvariantError(typeof message === 'function' ? message() : message);
}
