import type { APIGatewayProxyEventV2 } from 'aws-lambda';
import { ConditionalCheckFailedException, ProvisionedThroughputExceededException } from '@aws-sdk/client-dynamodb';
import { describe, expect, it } from 'vitest';
import { Router } from '#shared/api/http.ts';
import { sdkUnavailableReason, toSledgeError, unprocessedAfterRetries } from '#shared/aws/errors.ts';
import { InjectedFaultError, InjectedTimeoutError } from '#shared/aws/faults.ts';
import { FencedError, InvariantError, NotFoundError, UnavailableError } from '#shared/core/errors.ts';

const named = (name: string, extra: Record<string, unknown> = {}) => Object.assign(new Error(`${name} happened`), { name, ...extra });

function event(path: string): APIGatewayProxyEventV2 {
  return { rawPath: path, headers: {}, requestContext: { http: { method: 'GET' } } } as unknown as APIGatewayProxyEventV2;
}

describe('SDK errors mapped once (shared/aws/errors.ts)', () => {
  it('turns throttling into a retryable 503 with Retry-After', () => {
    for (const name of ['ProvisionedThroughputExceededException', 'ThrottlingException', 'RequestLimitExceeded', 'SlowDown', 'TransactionConflictException']) {
      const mapped = toSledgeError(named(name, { $metadata: { httpStatusCode: 400 }, $fault: 'client' }));
      expect(mapped, name).toBeInstanceOf(UnavailableError);
      expect((mapped as UnavailableError).status).toBe(503);
      expect((mapped as UnavailableError).retryable).toBe(true);
      expect((mapped as UnavailableError).retryAfterSeconds).toBeGreaterThan(0);
      expect((mapped as UnavailableError).message).toContain(name);
    }
    const real = new ProvisionedThroughputExceededException({ message: 'slow down', $metadata: { httpStatusCode: 400 } });
    expect(sdkUnavailableReason(real)).toBe('throttled');
  });

  it('turns 5xx after retries and timeouts into 503, including the injected ones', () => {
    expect(sdkUnavailableReason(named('InternalServerError', { $metadata: { httpStatusCode: 500 }, $fault: 'server' }))).toBe('server error');
    expect(sdkUnavailableReason(named('ServiceUnavailable', { $metadata: { httpStatusCode: 503 } }))).toBe('server error');
    expect(sdkUnavailableReason(new InjectedFaultError('InternalServerError', 500, 'injected'))).toBe('server error');
    expect(sdkUnavailableReason(new InjectedTimeoutError('injected hang'))).toBe('timeout');
    expect(sdkUnavailableReason(named('Error', { code: 'ECONNRESET' }))).toBe('timeout');
    const cause = named('TimeoutError');
    const mapped = toSledgeError(cause) as UnavailableError;
    expect(mapped).toBeInstanceOf(UnavailableError);
    expect(mapped.cause).toBe(cause);
  });

  it('answers batch items left unprocessed after every retry with a retryable 503, as throttling', () => {
    const err = unprocessedAfterRetries('BatchWriteItem', ['sledge-pages'], 8);
    expect(err).toBeInstanceOf(UnavailableError);
    expect({ status: err.status, retryable: err.retryable, retryAfterSeconds: err.retryAfterSeconds }).toEqual({ status: 503, retryable: true, retryAfterSeconds: 1 });
    expect(err.message).toContain('BatchWriteItem on sledge-pages left items unprocessed after 8 attempts');
    // Already a Sledge error: the boundary passes it through unchanged.
    expect(toSledgeError(err)).toBe(err);
  });

  it('leaves domain errors, refusals and bugs alone', () => {
    for (const err of [
      new NotFoundError('volume vol-x does not exist'),
      new FencedError('fenced'),
      new UnavailableError('busy', { retryAfterSeconds: 7 }),
      new InvariantError('a bug'),
      new ConditionalCheckFailedException({ message: 'condition', $metadata: { httpStatusCode: 400 } }),
      named('ValidationException', { $metadata: { httpStatusCode: 400 }, $fault: 'client' }),
      'a string',
      undefined,
    ]) {
      expect(toSledgeError(err)).toBe(err);
    }
  });

  it('is applied by the router: 503 with Retry-After and no unexpected-error hook for throttling; 500 and the hook for a bug', async () => {
    const hooked: unknown[] = [];
    const router = new Router()
      .on('GET', '/throttled', async () => {
        throw named('ProvisionedThroughputExceededException', { $metadata: { httpStatusCode: 400 }, $fault: 'client' });
      })
      .on('GET', '/bug', async () => {
        throw new InvariantError('broken');
      })
      .onUnexpectedError(async (err) => void hooked.push(err));
    const throttled = await router.handle(event('/throttled'));
    expect(throttled.statusCode).toBe(503);
    expect(throttled.headers?.['retry-after']).toBe('1');
    expect(JSON.parse(throttled.body as string)).toMatchObject({ error: 'UnavailableError', retryable: true });
    expect(hooked).toEqual([]);
    const bug = await router.handle(event('/bug'));
    expect(bug.statusCode).toBe(500);
    expect(hooked).toHaveLength(1);
  });
});
