/**
 * Helpers for integration tests: an HTTP client for the local API, the environment (table,
 * bucket, queue names) so tests can inspect or damage what is stored, and the module-scope setup
 * test files share (testApi, testTempDir).
 *
 * Every request is signed (AWS SigV4, service execute-api), as the API requires: by the local
 * operator unless a test says otherwise (`as: PROFILES.tenantA`, or `as: 'unsigned'`). The keys
 * are the control plane's local principals, read from its shared credentials file
 * (local/principals.ts). Importing this module also points this process's AWS credential chain at
 * that file with the operator's profile, so the `sledge` CLI and gateways the tests start sign
 * as the operator too.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, request as httpRequest, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, inject } from 'vitest';
import type { IamIdentity, LocalPrincipal } from '#local/iam-auth.ts';
import { LOCAL_ACCOUNT_ID, LOCAL_CREDENTIALS_ENV, PROFILES, parseCredentialsFile, type ProfileName } from '#local/principals.ts';
import { requestSigner, type RequestSigner, type SigningCredentials } from '#shared/api/signing.ts';
import { listDrives, reactivateDrive } from '#shared/maintenance/drives.ts';

export { PROFILES, type ProfileName };

/** The control plane's credentials file: the one this process was told of, else the plane's. */
function findCredentialsFile(): string | undefined {
  if (process.env[LOCAL_CREDENTIALS_ENV]) return process.env[LOCAL_CREDENTIALS_ENV];
  try {
    return inject('sledgeEnv')?.[LOCAL_CREDENTIALS_ENV];
  } catch {
    return undefined;
  }
}

const credentialsFile = findCredentialsFile();
if (credentialsFile) {
  // A control plane this process starts (lost-responses.test.ts) uses the same keys.
  process.env[LOCAL_CREDENTIALS_ENV] = credentialsFile;
  process.env.AWS_SHARED_CREDENTIALS_FILE = credentialsFile;
  process.env.AWS_PROFILE ??= PROFILES.operator;
  // The local endpoint's placeholder keys would only make the SDK warn that two sources are set.
  if (process.env.AWS_ACCESS_KEY_ID === 'test') delete process.env.AWS_ACCESS_KEY_ID;
  if (process.env.AWS_SECRET_ACCESS_KEY === 'test') delete process.env.AWS_SECRET_ACCESS_KEY;
}

/** Puts the control plane's environment into this worker so shared modules can be used. */
export function useSledgeEnv(): { apiUrl: string } {
  const env = inject('sledgeEnv');
  // A tail bound a test file set for the volumes it creates itself wins over the control plane's
  // default, as it does for a control plane (local/control-plane.ts; docs/page-map.md, "Folding").
  const foldTailMax = process.env.SLEDGE_FOLD_TAIL_MAX;
  Object.assign(process.env, env, { AWS_ENDPOINT_URL: inject('endpointUrl') });
  if (foldTailMax) process.env.SLEDGE_FOLD_TAIL_MAX = foldTailMax;
  if (!process.env.AWS_PROFILE) {
    process.env.AWS_ACCESS_KEY_ID ??= 'test';
    process.env.AWS_SECRET_ACCESS_KEY ??= 'test';
  }
  process.env.AWS_REGION ??= 'us-east-1';
  return { apiUrl: inject('apiUrl') };
}

/**
 * The API's URL and a client of it (signed as the operator), for a test file's module scope.
 * With `sledgeEnv`, the control plane's environment is also put into this process before the
 * file's tests (useSledgeEnv), for files that use shared modules directly.
 */
export function testApi(opts: { sledgeEnv?: boolean } = {}): { api: Api; apiUrl: string } {
  if (opts.sledgeEnv) {
    beforeAll(() => {
      useSledgeEnv();
    });
  }
  const apiUrl = inject('apiUrl');
  return { api: new Api(apiUrl), apiUrl };
}

/** A temporary directory (`prefix` and a random suffix) for a test file, removed after its tests. */
export function testTempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

/** A local principal: its keys (from the credentials file) and identity. */
export function principal(profile: ProfileName): LocalPrincipal {
  const file = findCredentialsFile();
  if (!file) throw new Error(`no local credentials file: ${LOCAL_CREDENTIALS_ENV} is not set and the control plane provided none`);
  const keys = parseCredentialsFile(readFileSync(file, 'utf8'))[profile];
  if (!keys?.accessKeyId || !keys.secretAccessKey) throw new Error(`${file} has no keys for profile ${profile}`);
  const userArn = `arn:aws:iam::${LOCAL_ACCOUNT_ID}:user/${profile}`;
  return { accessKeyId: keys.accessKeyId, secretAccessKey: keys.secretAccessKey, userArn, userId: `AIDA-${profile}`, accountId: LOCAL_ACCOUNT_ID };
}

/** `requestContext.authorizer` as API Gateway fills it for `profile`, for events built in-process. */
export function iamAuthorizer(profile: ProfileName = PROFILES.operator): { iam: IamIdentity } {
  const p = principal(profile);
  return {
    iam: {
      accessKey: p.accessKeyId,
      accountId: p.accountId,
      callerId: p.userId,
      cognitoIdentity: null,
      principalOrgId: null as unknown as string,
      userArn: p.userArn,
      userId: p.userId,
    },
  };
}

/** The environment for a `sledge` process that signs as `profile`. */
export function cliEnv(profile: ProfileName = PROFILES.operator, base: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const file = findCredentialsFile();
  const env: NodeJS.ProcessEnv = { ...base, AWS_PROFILE: profile, ...(file ? { AWS_SHARED_CREDENTIALS_FILE: file } : {}) };
  delete env.AWS_ACCESS_KEY_ID;
  delete env.AWS_SECRET_ACCESS_KEY;
  delete env.AWS_SESSION_TOKEN;
  return env;
}

/** Who signs a request: a local profile, explicit credentials, or nobody. */
export type Signer = ProfileName | 'unsigned' | { credentials: SigningCredentials; now?: () => Date };

const signers = new Map<string, Promise<RequestSigner>>();

function signerFor(as: Signer, url: string): Promise<RequestSigner> | undefined {
  if (as === 'unsigned') return undefined;
  if (typeof as === 'object') return requestSigner({ apiUrl: url, credentials: as.credentials, ...(as.now ? { now: as.now } : {}) });
  const key = `${as} ${findCredentialsFile()}`;
  let signer = signers.get(key);
  if (!signer) {
    const p = principal(as);
    signer = requestSigner({ apiUrl: url, credentials: { accessKeyId: p.accessKeyId, secretAccessKey: p.secretAccessKey } });
    signers.set(key, signer);
  }
  return signer;
}

export interface HttpResult {
  status: number;
  headers: Headers;
  body: Buffer;
  json: any;
}

export interface HttpInit {
  method?: string;
  body?: Buffer | string;
  headers?: Record<string, string>;
  /** Who signs it; default the local operator. */
  as?: Signer;
}

/** One request to the API, signed (see the file comment). */
export async function http(url: string, init: HttpInit = {}): Promise<HttpResult> {
  const body = typeof init.body === 'string' || init.body === undefined ? init.body : new Uint8Array(init.body);
  const method = init.method ?? 'GET';
  const signer = signerFor(init.as ?? PROFILES.operator, url);
  const headers = signer ? await (await signer)({ method, url, ...(init.headers ? { headers: init.headers } : {}), ...(body !== undefined ? { body } : {}) }) : init.headers;
  const res = await fetch(url, { method, body, headers });
  const bytes = Buffer.from(await res.arrayBuffer());
  let json: any;
  if ((res.headers.get('content-type') ?? '').includes('json')) json = JSON.parse(bytes.toString('utf8'));
  return { status: res.status, headers: res.headers, body: bytes, json };
}

export class Api {
  /** Who signs this client's requests; default the local operator. */
  readonly as: Signer;
  constructor(
    readonly url: string,
    opts: { as?: Signer } = {},
  ) {
    this.as = opts.as ?? PROFILES.operator;
  }

  /** One request signed as this client's principal. */
  http(url: string, init: HttpInit = {}): Promise<HttpResult> {
    return http(url, { as: this.as, ...init });
  }

  async createVolume(body: Record<string, unknown>): Promise<any> {
    const r = await this.http(`${this.url}/volumes`, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
    if (r.status !== 201) throw new Error(`create volume: ${r.status} ${r.body.toString()}`);
    return r.json;
  }

  async write(volumeId: string, offset: number, data: Buffer): Promise<any> {
    const r = await this.http(`${this.url}/volumes/${volumeId}/data?offset=${offset}`, {
      method: 'PUT',
      body: data,
      headers: { 'content-type': 'application/octet-stream' },
    });
    if (r.status !== 200) throw new Error(`write ${volumeId} @${offset}+${data.length}: ${r.status} ${r.body.toString()}`);
    return r.json;
  }

  async read(volumeId: string, offset: number, length: number): Promise<Buffer> {
    const r = await this.readRaw(volumeId, offset, length);
    if (r.status !== 200) throw new Error(`read ${volumeId} @${offset}+${length}: ${r.status} ${r.body.toString()}`);
    return r.body;
  }

  readRaw(volumeId: string, offset: number, length: number): Promise<HttpResult> {
    return this.http(`${this.url}/volumes/${volumeId}/data?offset=${offset}&length=${length}`);
  }

  async trim(volumeId: string, offset: number, length: number): Promise<any> {
    const r = await this.http(`${this.url}/volumes/${volumeId}/trim`, { method: 'POST', body: JSON.stringify({ offset, length }), headers: { 'content-type': 'application/json' } });
    if (r.status !== 200) throw new Error(`trim ${volumeId} @${offset}+${length}: ${r.status} ${r.body.toString()}`);
    return r.json;
  }

  async batch(volumeId: string, body: Buffer): Promise<any> {
    const r = await this.http(`${this.url}/volumes/${volumeId}/batch`, { method: 'POST', body, headers: { 'content-type': 'application/vnd.sledge.batch' } });
    if (r.status !== 200) throw new Error(`batch ${volumeId}: ${r.status} ${r.body.toString()}`);
    return r.json;
  }

  async describe(volumeId: string): Promise<HttpResult> {
    return this.http(`${this.url}/volumes/${volumeId}`);
  }
}

/**
 * A proxy over real HTTP in front of the API at `apiUrl`, for tests that change what a client
 * sees of it: `intercept` may answer a request itself (true), or return false to forward it, or
 * `'drop-answer'` to forward it and cut the connection instead of passing the answer back (a
 * lost response). The host header is forwarded as signed (the endpoint checks the signature
 * against it). Returns the proxy's URL and how to close it.
 */
export async function apiProxy(
  apiUrl: string,
  intercept: (req: IncomingMessage, res: ServerResponse) => boolean | 'drop-answer',
): Promise<{ url: string; close: () => Promise<void> }> {
  const proxy = createServer((req, res) => {
    const handled = intercept(req, res);
    if (handled === true) return;
    const fwd = httpRequest(new URL(req.url ?? '/', apiUrl), { method: req.method, headers: req.headers }, (up) => {
      if (handled === 'drop-answer') {
        up.resume();
        up.on('end', () => res.socket?.destroy());
        return;
      }
      res.writeHead(up.statusCode ?? 502, up.headers);
      up.pipe(res);
    });
    req.pipe(fwd);
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`,
    close: () => new Promise<void>((resolve) => proxy.close(() => resolve())),
  };
}

/** A list endpoint walked page by page (`walkList`). */
export interface ListWalk {
  ids: string[];
  /** How many entries each page held. */
  pages: number[];
  /** Each page's `next`, in order (the last page has none). */
  nexts: string[];
}

/**
 * Reads the list at `apiUrl` + `path` (which may hold a filter in its query) page by page with
 * `limit` (and `start` as the first `next`), passing each answer's `next` on, until an answer has
 * none; `key` names the answer's array, `idKey` each entry's id. Every answer must be a 200 with
 * at most `limit` entries (100 without one) and a `next` that moved on.
 */
export async function walkList(
  apiUrl: string,
  path: string,
  key: string,
  idKey: string,
  limit: number | undefined,
  as: ProfileName = PROFILES.operator,
  start?: string,
): Promise<ListWalk> {
  const out: ListWalk = { ids: [], pages: [], nexts: [] };
  const [base, filter] = path.includes('?') ? [path.slice(0, path.indexOf('?')), path.slice(path.indexOf('?') + 1)] : [path, ''];
  let next = start;
  do {
    const q = new URLSearchParams(filter);
    if (limit !== undefined) q.set('limit', String(limit));
    if (next !== undefined) q.set('next', next);
    const query = q.toString();
    const r = await http(`${apiUrl}${base}${query === '' ? '' : `?${query}`}`, { as });
    expect(r.status, `${path} after ${next}: ${r.body.toString()}`).toBe(200);
    const entries = r.json[key] as Array<Record<string, string>>;
    expect(Array.isArray(entries), JSON.stringify(r.json)).toBe(true);
    expect(entries.length).toBeLessThanOrEqual(limit ?? 100);
    out.ids.push(...entries.map((e) => e[idKey]!));
    out.pages.push(entries.length);
    expect(r.json.next === undefined || (typeof r.json.next === 'string' && r.json.next !== next), `next ${r.json.next} after ${next}`).toBe(true);
    next = r.json.next;
    if (next !== undefined) out.nexts.push(next);
    expect(out.pages.length, `${path} did not end`).toBeLessThan(100_000);
  } while (next !== undefined);
  return out;
}

/** Every drive back in service with no error counts and no evacuation, for the tests and files after a test that retires drives. */
export async function resetDrives(): Promise<void> {
  for (const d of await listDrives()) if (d.state !== 'active' || d.evacuation || d.writeErrors || d.lostChunks) await reactivateDrive(d.driveId);
}
