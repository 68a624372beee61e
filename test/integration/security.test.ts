/**
 * Secure by default (docs/security.md), through the local API Gateway stand-in and the head:
 * SigV4 on every request, volumes that belong to the principal that created them (another
 * tenant's volume is 404, exactly like a missing one, and nothing changes), operator routes
 * closed to tenants, the CLI and the NBD gateway signing with a profile, the audit log, Lambda's
 * payload limit, and throttling as a 503 with Retry-After.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LOCAL_AUDIT_LOG_ENV, PROFILES } from '#local/principals.ts';
import { Api, cliEnv, http, principal, testApi, type HttpResult } from './helpers.ts';
import { describeRun, run, SLEDGE_BIN, startGateway, TOOLS_ENV } from './nbd-tools.ts';

const { tenantA, tenantB, operator } = PROFILES;
const json = { 'content-type': 'application/json' };
const octets = { 'content-type': 'application/octet-stream' };
const BLOCK = 4096;

const { apiUrl: url } = testApi({ sledgeEnv: true });
const a = new Api(url, { as: tenantA });
const b = new Api(url, { as: tenantB });
const ops = new Api(url, { as: operator });
/** Tenant A's volume, with a first block written. */
let volumeId: string;
let firstBlock: Buffer;

beforeAll(async () => {
  volumeId = (await a.createVolume({ sizeBytes: 4 * 1024 * 1024, name: 'tenant-a-secure' })).volumeId;
  firstBlock = randomBytes(BLOCK);
  await a.write(volumeId, 0, firstBlock);
});

const message = (r: HttpResult) => (r.json as { message?: string } | undefined)?.message ?? r.body.toString();

describe('signatures (API Gateway IAM authorization, checked by the stand-in)', () => {
  it('refuses unsigned, wrongly keyed, stale and tampered requests with 403, and changes nothing', async () => {
    const target = `${url}/volumes/${volumeId}/data?offset=0`;
    const unsigned = await http(target, { method: 'PUT', body: randomBytes(BLOCK), headers: octets, as: 'unsigned' });
    expect([unsigned.status, message(unsigned)]).toEqual([403, 'Forbidden']);

    const keys = principal(tenantA);
    const wrongSecret = await http(target, { method: 'PUT', body: randomBytes(BLOCK), headers: octets, as: { credentials: { accessKeyId: keys.accessKeyId, secretAccessKey: `${keys.secretAccessKey}x` } } });
    expect(wrongSecret.status).toBe(403);
    expect(message(wrongSecret)).toMatch(/signature we calculated does not match/);

    const unknownKey = await http(`${url}/volumes`, { as: { credentials: { accessKeyId: 'AKIAUNKNOWN000000000', secretAccessKey: keys.secretAccessKey } } });
    expect([unknownKey.status, message(unknownKey)]).toEqual([403, 'The security token included in the request is invalid.']);

    const stale = await http(target, {
      method: 'PUT',
      body: randomBytes(BLOCK),
      headers: octets,
      as: { credentials: { accessKeyId: keys.accessKeyId, secretAccessKey: keys.secretAccessKey }, now: () => new Date(Date.now() - 16 * 60_000) },
    });
    expect(stale.status).toBe(403);
    expect(message(stale)).toMatch(/^Signature expired/);

    // A body changed after signing: the signature covers its hash.
    const { requestSigner } = await import('#shared/api/signing.ts');
    const sign = await requestSigner({ apiUrl: url, credentials: { accessKeyId: keys.accessKeyId, secretAccessKey: keys.secretAccessKey } });
    const signedFor = randomBytes(BLOCK);
    const headers = await sign({ method: 'PUT', url: target, headers: octets, body: signedFor });
    const tampered = await fetch(target, { method: 'PUT', headers, body: new Uint8Array(randomBytes(BLOCK)) });
    expect(tampered.status).toBe(403);

    expect((await a.read(volumeId, 0, BLOCK)).equals(firstBlock)).toBe(true);
  });

  it('gives a request Lambda could not carry 413 from the stand-in, before the head', async () => {
    const r = await a.http(`${url}/volumes/${volumeId}/data?offset=0`, { method: 'PUT', body: Buffer.alloc(4.6 * 1024 * 1024), headers: octets });
    expect([r.status, message(r)]).toEqual([413, 'Request Entity Too Large']);
  });
});

describe('volumes belong to the principal that created them', () => {
  it('answers another tenant 404 on every volume route, exactly as for a missing volume, and changes nothing', async () => {
    const before = (await a.describe(volumeId)).json;
    expect(before.owner).toBe(principal(tenantA).userArn);
    const missing = await b.http(`${url}/volumes/vol-00000000deadbeef`);
    expect(missing.status).toBe(404);

    const attempts: Array<[string, string, (Buffer | string)?, Record<string, string>?]> = [
      ['GET', ''],
      ['GET', '/data?offset=0&length=4096'],
      ['PUT', '/data?offset=0', randomBytes(BLOCK), octets],
      ['POST', '/trim', JSON.stringify({ offset: 0, length: BLOCK }), json],
      ['PATCH', '', JSON.stringify({ sizeBytes: 8 * 1024 * 1024 }), json],
      ['POST', '/reservations', JSON.stringify({ action: 'register', key: 'tenant-b' }), json],
      ['GET', '/reservations'],
      ['PUT', '/heads', JSON.stringify({ primary: 'b1', reserves: [] }), json],
      ['GET', '/checkpoints'],
      ['POST', '/checkpoints'],
      ['POST', '/snapshots', '{}', json],
      ['GET', '/snapshots'],
      ['POST', '/rollback', JSON.stringify({ snapshotId: 'snap-0000000000000000-000000000001-000000' }), json],
      ['POST', '/flatten'],
      ['DELETE', ''],
    ];
    for (const [method, suffix, body, headers] of attempts) {
      const r = await b.http(`${url}/volumes/${volumeId}${suffix}`, { method, ...(body !== undefined ? { body } : {}), ...(headers ? { headers } : {}) });
      expect([r.status, r.json?.error], `${method} ${suffix}`).toEqual([404, 'NotFoundError']);
      // The same words as for a volume that does not exist.
      expect(r.json.message.replace(volumeId, 'X'), `${method} ${suffix}`).toBe(missing.json.message.replace('vol-00000000deadbeef', 'X'));
    }

    // Tenant A's snapshot: as missing for tenant B on every snapshot route, and not a clone source.
    const snap = await a.http(`${url}/volumes/${volumeId}/snapshots`, { method: 'POST', body: '{}', headers: json });
    expect(snap.status, snap.body.toString()).toBe(201);
    const snapshotId = snap.json.snapshotId as string;
    const ghost = `snap-${volumeId.slice(4, 12)}00000000-000000000009-abcdef`;
    const missingSnap = await b.http(`${url}/snapshots/${ghost}`);
    expect(missingSnap.status).toBe(404);
    for (const [method, suffix] of [
      ['GET', ''],
      ['GET', '/data?length=4096&offset=0'],
      ['GET', '/changed-blocks'],
      ['DELETE', ''],
    ] as const) {
      const r = await b.http(`${url}/snapshots/${snapshotId}${suffix}`, { method });
      expect([r.status, r.json?.error], `${method} snapshot${suffix}`).toEqual([404, 'NotFoundError']);
      expect(r.json.message.replace(snapshotId, 'X'), `${method} snapshot${suffix}`).toBe(missingSnap.json.message.replace(ghost, 'X'));
    }
    const clone = await b.http(`${url}/volumes`, { method: 'POST', body: JSON.stringify({ sourceSnapshotId: snapshotId }), headers: json });
    expect([clone.status, clone.json?.error]).toEqual([404, 'NotFoundError']);
    expect((await a.http(`${url}/snapshots/${snapshotId}`)).json).toMatchObject({ snapshotId, state: 'ready', dependants: [] });
    expect((await a.http(`${url}/snapshots/${snapshotId}`, { method: 'DELETE' })).status).toBe(202);

    const after = (await a.describe(volumeId)).json;
    // The purge of tenant A's deleted snapshot folds the volume's tail up to it (docs/page-map.md,
    // "Snapshots on a tail"): the folded point is the one thing that may move, never past the
    // head; nothing else changed.
    const { foldedSeq: foldedBefore, ...restBefore } = before;
    const { foldedSeq: foldedAfter, ...restAfter } = after;
    expect(restAfter).toEqual(restBefore);
    expect(foldedBefore).toBeLessThanOrEqual(foldedAfter);
    expect(foldedAfter).toBeLessThanOrEqual(after.commitSeq);
    expect((await a.read(volumeId, 0, BLOCK)).equals(firstBlock)).toBe(true);
    expect((await a.http(`${url}/volumes/${volumeId}/reservations`)).json.registrants).toEqual([]);
  });

  it('lists only a tenant\'s own volumes; the operator sees every volume and may act on it', async () => {
    const listAll = async (api: Api) => {
      const ids: string[] = [];
      let next: string | undefined;
      do {
        const r = await api.http(`${url}/volumes?limit=1000${next ? `&next=${next}` : ''}`);
        expect(r.status).toBe(200);
        ids.push(...r.json.volumes.map((v: { volumeId: string }) => v.volumeId));
        next = r.json.next;
      } while (next);
      return ids;
    };
    const mine = (await b.createVolume({ sizeBytes: 1024 * 1024 })).volumeId;
    const seenByB = await listAll(b);
    expect(seenByB).toContain(mine);
    expect(seenByB).not.toContain(volumeId);
    expect(await listAll(a)).toContain(volumeId);
    expect(await listAll(a)).not.toContain(mine);
    expect(await listAll(ops)).toEqual(expect.arrayContaining([volumeId, mine]));
    expect((await ops.describe(volumeId)).status).toBe(200);
    expect((await ops.http(`${url}/volumes/${mine}`, { method: 'DELETE' })).status).toBe(202);
  });
});

describe('operator routes', () => {
  it('are 403 for tenants, even on their own volume, and open to the operator', async () => {
    const routes: Array<[string, string, string?]> = [
      ['GET', '/drives'],
      ['GET', '/drives/any/d00'],
      ['POST', '/drives/any/d00/retire', '{}'],
      ['POST', '/drives/any/d00/reactivate'],
      ['GET', '/dumps'],
      ['GET', '/dumps/any'],
      ['GET', '/queues/dead-letters'],
      ['POST', '/queues/dead-letters/redrive', '{}'],
      ['POST', `/volumes/${volumeId}/gc`],
      ['POST', `/volumes/${volumeId}/rebuild`],
      ['POST', `/volumes/${volumeId}/heads/fail`, JSON.stringify({ head: 'h1', reason: 'tenant' })],
    ];
    for (const [method, path, body] of routes) {
      const r = await a.http(`${url}${path}`, { method, ...(body ? { body, headers: json } : {}) });
      expect([r.status, r.json?.error], `${method} ${path}`).toEqual([403, 'ForbiddenError']);
    }
    expect((await ops.http(`${url}/drives`)).status).toBe(200);
    expect((await ops.http(`${url}/queues/dead-letters`)).status).toBe(200);
    // Nothing happened to the volume.
    expect((await a.describe(volumeId)).json.state).toBe('active');
  });

  it('writes an audit line for each control-plane change and each refusal', async () => {
    const file = process.env[LOCAL_AUDIT_LOG_ENV];
    expect(file, 'the control plane names its audit log').toBeTruthy();
    const lines = readFileSync(file!, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { principal: string; action: string; result: string; status: number; resource: Record<string, string> });
    expect(lines).toContainEqual(expect.objectContaining({ principal: principal(tenantA).userArn, action: 'POST /volumes', result: 'allowed', status: 201 }));
    expect(lines).toContainEqual(
      expect.objectContaining({ principal: principal(tenantB).userArn, action: 'DELETE /volumes/{volumeId}', result: 'denied', status: 404, resource: { volumeId } }),
    );
    expect(lines).toContainEqual(expect.objectContaining({ principal: principal(tenantA).userArn, action: 'GET /drives', result: 'denied', status: 403 }));
  });
});

describe('the sledge CLI and the NBD gateway sign with a profile', () => {
  const sledge = (args: string[], env: NodeJS.ProcessEnv) => run(process.execPath, [SLEDGE_BIN, ...args], { env });

  it('runs operator commands as the operator, and says why a tenant or a missing credential is refused', async () => {
    const asOperator = await sledge(['drives', '--api', url, '--profile', operator], cliEnv(tenantB));
    expect(asOperator.code, describeRun('sledge drives --profile sledge-operator', asOperator)).toBe(0);
    expect(asOperator.stdout).toMatch(/d00/);

    const asTenant = await sledge(['drives', '--api', url], cliEnv(tenantA));
    expect(asTenant.code).toBe(1);
    expect(asTenant.stderr).toMatch(/403/);
    expect(asTenant.stderr.trim().split('\n')).toHaveLength(1);

    const rebuild = await sledge(['rebuild', volumeId, '--api', url, '--profile', tenantA], cliEnv(tenantA));
    expect(rebuild.code).toBe(1);
    expect(rebuild.stderr).toMatch(/403/);

    const empty = mkdtempSync(join(tmpdir(), 'sledge-nocreds-'));
    try {
      const env: NodeJS.ProcessEnv = { ...TOOLS_ENV, AWS_SHARED_CREDENTIALS_FILE: join(empty, 'none'), AWS_CONFIG_FILE: join(empty, 'none'), AWS_EC2_METADATA_DISABLED: 'true' };
      for (const k of ['AWS_PROFILE', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN']) delete env[k];
      const none = await sledge(['drives', '--api', url], env);
      expect(none.code).toBe(1);
      expect(none.stderr).toMatch(/no AWS credentials to sign requests with/);
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });

  it('serves a tenant\'s volume over NBD as that tenant, and not as another', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sledge-nbd-sec-'));
    try {
      const gateway = await startGateway(url, volumeId, ['--socket', join(dir, 'a.sock')], ['--profile', tenantA]);
      try {
        const io = await run('qemu-io', ['-f', 'raw', `nbd+unix:///?socket=${join(dir, 'a.sock')}`, '-c', 'write -P 0x5a 65536 65536', '-c', 'read -P 0x5a 65536 65536', '-c', 'flush']);
        expect(io.code, describeRun('qemu-io', io)).toBe(0);
        expect(io.stdout).not.toMatch(/Pattern verification failed/);
      } finally {
        expect(await gateway.stop()).toBe(0);
      }
      expect((await a.read(volumeId, 65536, 65536)).equals(Buffer.alloc(65536, 0x5a))).toBe(true);

      const asB = await run(process.execPath, [SLEDGE_BIN, 'nbd', volumeId, '--api', url, '--socket', join(dir, 'b.sock'), '--profile', tenantB], { env: cliEnv(tenantB) });
      expect(asB.code).toBe(1);
      expect(asB.stderr).toMatch(/does not exist/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('throttling', () => {
  let api: { url: string; close(): Promise<void> } | undefined;
  afterAll(async () => {
    const { clearFaults } = await import('#shared/aws/faults.ts');
    clearFaults();
    await api?.close();
  });

  it('answers a request DynamoDB throttles with 503, Retry-After and retryable, through the stand-in, with no dump', async () => {
    // Faults are injected in this process, so the head runs here, behind a stand-in of its own
    // that knows the same principals.
    const { startLocalApi } = await import('#local/http-adapter.ts');
    const { handler } = await import('#lambdas/api.ts');
    const { clearFaults, faultStats, setFaults } = await import('#shared/aws/faults.ts');
    const { config } = await import('#shared/core/config.ts');
    const { listDumps } = await import('#shared/control/dumps.ts');
    api = await startLocalApi({ handler, port: 0, iam: { principals: [principal(operator), principal(tenantA), principal(tenantB)] } });
    const here = new Api(api.url, { as: tenantA });
    const dumpsBefore = (await listDumps()).length;

    setFaults([{ service: 'dynamodb', table: config().volumesTable, ops: ['GetItem'], mode: 'throttle' }]);
    try {
      const fired = faultStats().fired;
      // A tenant's request is throttled where the head looks up the volume's owner; the
      // operator's where the route reads the volume.
      for (const client of [here, new Api(api.url, { as: operator })]) {
        const r = await client.http(`${api.url}/volumes/${volumeId}`);
        expect(r.status, r.body.toString()).toBe(503);
        expect(r.headers.get('retry-after')).toMatch(/^\d+$/);
        expect(r.json).toMatchObject({ error: 'UnavailableError', retryable: true });
        expect(r.json.message).toMatch(/throttled: ThrottlingException/);
      }
      expect(faultStats().fired).toBeGreaterThan(fired);
    } finally {
      clearFaults();
    }
    expect((await here.http(`${api.url}/volumes/${volumeId}`)).status).toBe(200);
    expect((await listDumps()).length).toBe(dumpsBefore);
  });
});
