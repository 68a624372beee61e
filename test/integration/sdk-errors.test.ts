/**
 * AWS SDK errors that mean "unavailable now" are 503s with Retry-After, not 500s with a
 * diagnostic dump (shared/aws/errors.ts, applied by the router). The faults are injected in
 * this process, so the API is called in-process through the Lambda handler's entry point.
 */
import type { APIGatewayProxyEventV2 } from 'aws-lambda';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { handleApiEvent } from '#shared/api/routes.ts';
import { clearFaults, faultStats, setFaults } from '#shared/aws/faults.ts';
import { listDumps } from '#shared/control/dumps.ts';
import { createVolume } from '#shared/control/volumes.ts';
import { config } from '#shared/core/config.ts';
import { iamAuthorizer, useSledgeEnv } from './helpers.ts';

beforeAll(() => {
  useSledgeEnv();
});

afterEach(() => clearFaults());

function get(path: string, query: Record<string, string> = {}): Promise<{ statusCode?: number; headers?: Record<string, unknown>; body?: string }> {
  const event = { rawPath: path, headers: {}, queryStringParameters: query, requestContext: { http: { method: 'GET' }, authorizer: iamAuthorizer() } } as unknown as APIGatewayProxyEventV2;
  return handleApiEvent(event) as Promise<{ statusCode?: number; headers?: Record<string, unknown>; body?: string }>;
}

describe('AWS errors on a read', () => {
  it('a DynamoDB GetItem or BatchGetItem that keeps failing answers 503 with Retry-After and writes no dump', async () => {
    const v = await createVolume({ sizeBytes: 4 * 1024 * 1024 });
    const dumpsBefore = (await listDumps()).length;

    // The first read of a volume reads the volume item alone (GetItem).
    setFaults([{ service: 'dynamodb', table: config().volumesTable, ops: ['GetItem'], rate: 1 }]);
    const first = await get(`/volumes/${v.volumeId}/data`, { offset: '0', length: '4096' });
    expect(faultStats().fired).toBeGreaterThan(0);
    expect(first.statusCode, first.body).toBe(503);
    expect(first.headers?.['retry-after']).toBeDefined();
    expect(JSON.parse(first.body!)).toMatchObject({ error: 'UnavailableError', retryable: true });

    // Once the geometry is known, the volume item and the pages come in one BatchGetItem.
    clearFaults();
    expect((await get(`/volumes/${v.volumeId}/data`, { offset: '0', length: '4096' })).statusCode).toBe(200);
    setFaults([{ service: 'dynamodb', table: config().volumesTable, ops: ['BatchGetItem'], rate: 1, status: 503 }]);
    const again = await get(`/volumes/${v.volumeId}/data`, { offset: '0', length: '4096' });
    expect(again.statusCode, again.body).toBe(503);
    expect(again.headers?.['retry-after']).toBeDefined();

    clearFaults();
    expect((await listDumps()).length).toBe(dumpsBefore);
  });
});
