/**
 * Authorization in the router (shared/api/authz.ts, shared/api/http.ts), with no network: who a
 * caller is, the rule each route declares (and the one a route gets when it declares none), the
 * 404 for another tenant's volume, the audit log, and the 413 for a result Lambda could not carry.
 */
import type { APIGatewayProxyEventV2 } from 'aws-lambda';
import { afterEach, describe, expect, it } from 'vitest';
import { ANY_PRINCIPAL, type AuditRecord, OPERATOR, VOLUME_OWNER, authorize, canonicalArn, defaultAccess, principalOf, setAuditSink } from '#shared/api/authz.ts';
import { LAMBDA_PAYLOAD_LIMIT_BYTES, Router } from '#shared/api/http.ts';
import openapi from '#shared/api/openapi.json' with { type: 'json' };
import { ForbiddenError, NotFoundError } from '#shared/core/errors.ts';

const ACCOUNT = '123456789012';
const alice = `arn:aws:iam::${ACCOUNT}:user/alice`;
const bob = `arn:aws:iam::${ACCOUNT}:user/bob`;
const ops = `arn:aws:iam::${ACCOUNT}:role/Ops`;
const settings = { mode: 'iam' as const, operators: [ops] };

function event(method: string, path: string, userArn?: string, body?: string): APIGatewayProxyEventV2 {
  return {
    rawPath: path,
    headers: body ? { 'content-type': 'application/json' } : {},
    ...(body ? { body } : {}),
    isBase64Encoded: false,
    requestContext: {
      http: { method },
      requestId: 'req-1',
      ...(userArn ? { authorizer: { iam: { userArn, accessKey: 'AKIAEXAMPLE', accountId: ACCOUNT } } } : {}),
    },
  } as unknown as APIGatewayProxyEventV2;
}

const audits: AuditRecord[] = [];
afterEach(() => {
  audits.length = 0;
});
setAuditSink((r) => audits.push(r));

describe('principals', () => {
  it('canonicalizes role sessions and role paths to the role, and leaves users alone', () => {
    expect(canonicalArn(`arn:aws:sts::${ACCOUNT}:assumed-role/Ops/alice-session`)).toBe(ops);
    expect(canonicalArn(`arn:aws:iam::${ACCOUNT}:role/team/Ops`)).toBe(ops);
    expect(canonicalArn(alice)).toBe(alice);
  });

  it('refuses an event without an IAM identity unless authorization is off, and knows operators by role', () => {
    expect(() => principalOf({}, settings)).toThrow(ForbiddenError);
    expect(principalOf({}, { mode: 'none', operators: [] })).toEqual({ arn: 'anonymous', operator: true });
    expect(principalOf({ authorizer: { iam: { userArn: `arn:aws:sts::${ACCOUNT}:assumed-role/Ops/s1` } } }, settings).operator).toBe(true);
    expect(principalOf({ authorizer: { iam: { userArn: alice } } }, settings)).toEqual({ arn: alice, operator: false });
  });
});

describe('route rules', () => {
  it('gives a route without a rule the owner rule under {volumeId}, and operators only elsewhere', () => {
    expect(defaultAccess('/volumes/{volumeId}/snapshots')).toEqual(VOLUME_OWNER);
    expect(defaultAccess('/snapshots/{snapshotId}')).toEqual(OPERATOR);
  });

  it('answers another tenant\'s volume exactly as a missing one, lets operators through, and keeps tenants off operator routes', async () => {
    const owners = new Map([['volume', async (id: string) => (id === 'vol-a' ? alice : null)]]);
    const as = (arn: string) => ({ arn, operator: arn === ops });
    const params = (volumeId: string) => ({ volumeId });
    await expect(authorize(VOLUME_OWNER, as(alice), params('vol-a'), 'GET /volumes/{volumeId}', owners)).resolves.toBeUndefined();
    const theirs = await authorize(VOLUME_OWNER, as(bob), params('vol-a'), 'GET /volumes/{volumeId}', owners).catch((e: unknown) => e);
    const missing = await authorize(VOLUME_OWNER, as(bob), params('vol-a'.replace('a', 'z')), 'GET /volumes/{volumeId}', owners).catch((e: unknown) => e);
    expect(theirs).toBeInstanceOf(NotFoundError);
    expect(missing).toBeInstanceOf(NotFoundError);
    expect((theirs as Error).message.replace('vol-a', 'X')).toBe((missing as Error).message.replace('vol-z', 'X'));
    await expect(authorize(VOLUME_OWNER, as(ops), params('vol-a'), 'GET /volumes/{volumeId}', owners)).resolves.toBeUndefined();
    await expect(authorize(OPERATOR, as(alice), {}, 'GET /drives', owners)).rejects.toBeInstanceOf(ForbiddenError);
    await expect(authorize(ANY_PRINCIPAL, as(alice), {}, 'GET /volumes', owners)).resolves.toBeUndefined();
    // A rule naming a resource kind with no resolver is for operators only.
    await expect(authorize({ kind: 'owner', resource: 'snapshot', param: 'snapshotId' }, as(alice), { snapshotId: 's' }, 'GET /snapshots/{snapshotId}', owners)).rejects.toBeInstanceOf(
      ForbiddenError,
    );
  });

  it('documents in openapi.json who may call each route, as the router applies it', async () => {
    const { router } = await import('#shared/api/routes.ts');
    const label = (a: { kind: string }) => (a.kind === 'owner' ? 'owner' : a.kind);
    const paths = (openapi as unknown as { paths: Record<string, Record<string, { 'x-sledge-access'?: string }>> }).paths;
    const mismatched: string[] = [];
    for (const [route, access] of router.accessRules()) {
      const [method, path] = route.split(' ') as [string, string];
      const documented = paths[path]?.[method.toLowerCase()]?.['x-sledge-access'];
      if (documented !== label(access)) mismatched.push(`${route}: router ${label(access)}, openapi.json ${documented}`);
    }
    expect(mismatched).toEqual([]);
    expect((openapi as { info: { description: string } }).info.description).toMatch(/\b403\b/);
  });
});

describe('the router', () => {
  const owners = new Map<string, string>([['vol-a', alice]]);
  const router = new Router()
    .resource('volume', async (id) => owners.get(id) ?? null)
    .on('GET', '/volumes/{volumeId}', async (req) => ({ status: 200, json: { volumeId: req.params.volumeId } }))
    .on('POST', '/volumes/{volumeId}/touch', async () => ({ status: 200, json: {} }))
    .on('GET', '/drives', async () => ({ status: 200, json: [] }))
    .on('GET', '/big', ANY_PRINCIPAL, async () => ({ status: 200, bytes: Buffer.alloc(LAMBDA_PAYLOAD_LIMIT_BYTES) }));
  const handle = (e: APIGatewayProxyEventV2) => router.handle(e, { auth: settings });

  it('applies each route\'s rule before its handler, and audits changes and refusals', async () => {
    expect((await handle(event('GET', '/volumes/vol-a', alice))).statusCode).toBe(200);
    expect((await handle(event('GET', '/volumes/vol-a', bob))).statusCode).toBe(404);
    expect((await handle(event('GET', '/volumes/vol-a'))).statusCode).toBe(403);
    expect((await handle(event('GET', '/drives', alice))).statusCode).toBe(403);
    expect((await handle(event('GET', '/drives', `arn:aws:sts::${ACCOUNT}:assumed-role/Ops/x`))).statusCode).toBe(200);
    expect((await handle(event('POST', '/volumes/vol-a/touch', alice))).statusCode).toBe(200);
    expect(audits.map((a) => [a.principal, a.action, a.result, a.status])).toEqual([
      [bob, 'GET /volumes/{volumeId}', 'denied', 404],
      ['unsigned', 'GET /volumes/vol-a', 'denied', 403],
      [alice, 'GET /drives', 'denied', 403],
      [alice, 'POST /volumes/{volumeId}/touch', 'allowed', 200],
    ]);
    expect(audits[3]).toMatchObject({ audit: 'sledge', resource: { volumeId: 'vol-a' }, accessKey: 'AKIAEXAMPLE', requestId: 'req-1' });
  });

  it('answers 413 rather than return a result over Lambda\'s 6 MiB', async () => {
    const r = await handle(event('GET', '/big', alice));
    expect(r.statusCode).toBe(413);
    expect(JSON.parse(r.body!)).toMatchObject({ error: 'PayloadTooLargeError', retryable: false });
  });
});
