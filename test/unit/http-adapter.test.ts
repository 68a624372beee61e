import { createHash, randomBytes } from 'node:crypto';
import { Agent, request as httpRequest, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2 } from 'aws-lambda';
import { LAMBDA_MAX_PAYLOAD_BYTES, startLocalApi, toApiGatewayEvent, type HttpHandler, type LocalApiOptions } from '#local/http-adapter.ts';
import type { LocalPrincipal } from '#local/iam-auth.ts';
import { requestSigner, type SigningCredentials } from '#shared/api/signing.ts';

interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  reusedSocket: boolean;
}

function send(
  url: string,
  opts: { method?: string; headers?: OutgoingHttpHeaders; body?: Buffer | string; chunked?: Buffer[]; agent?: Agent } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: opts.method ?? 'GET', headers: opts.headers, agent: opts.agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), reusedSocket: req.reusedSocket }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (opts.chunked) {
      for (const c of opts.chunked) req.write(c);
      req.end();
    } else {
      req.end(opts.body);
    }
  });
}

const closers: Array<() => Promise<void>> = [];
afterEach(async () => {
  await Promise.all(closers.splice(0).map((c) => c()));
});

async function serve(handler: HttpHandler, extra: Partial<LocalApiOptions> = {}) {
  const api = await startLocalApi({ handler, port: 0, host: '127.0.0.1', log: () => {}, ...extra });
  closers.push(() => api.close());
  return api;
}

/** A handler that records each event and echoes the request body back, byte for byte. */
function echo() {
  const events: APIGatewayProxyEventV2[] = [];
  const handler: HttpHandler = async (event) => {
    events.push(event);
    const bytes = event.body === undefined ? Buffer.alloc(0) : Buffer.from(event.body, event.isBase64Encoded ? 'base64' : 'utf8');
    return { statusCode: 200, headers: { 'content-type': 'application/octet-stream' }, body: bytes.toString('base64'), isBase64Encoded: true };
  };
  return { events, handler };
}

describe('toApiGatewayEvent', () => {
  it('builds a payload 2.0 event like API Gateway', () => {
    const event = toApiGatewayEvent({
      method: 'get',
      url: '/volumes/a%20b?x=1&x=2&flag&e=%3D%26&plus=a+b',
      headers: { Host: 'abc.example.com:8443', 'User-Agent': 'ua/1', 'X-Multi': ['a', 'b'], Cookie: 'c1=v1; c2=v2', Empty: undefined },
      body: Buffer.alloc(0),
      sourceIp: '10.0.0.1',
      timeEpoch: Date.UTC(2020, 2, 12, 19, 3, 58),
    });
    expect(event.version).toBe('2.0');
    expect(event.routeKey).toBe('$default');
    expect(event.rawPath).toBe('/volumes/a b'); // HTTP APIs deliver the path decoded
    expect(event.rawQueryString).toBe('x=1&x=2&flag&e=%3D%26&plus=a+b'); // ...and the query string as sent
    expect(event.queryStringParameters).toEqual({ x: '1,2', flag: '', e: '=&', plus: 'a b' });
    expect(event.headers).toEqual({ host: 'abc.example.com:8443', 'user-agent': 'ua/1', 'x-multi': 'a,b' });
    expect(event.cookies).toEqual(['c1=v1', 'c2=v2']);
    expect(event.body).toBeUndefined();
    expect('body' in event).toBe(false);
    expect(event.isBase64Encoded).toBe(false);
    expect('pathParameters' in event).toBe(false);
    expect(event.requestContext).toMatchObject({
      domainName: 'abc.example.com',
      domainPrefix: 'abc',
      http: { method: 'GET', path: '/volumes/a b', protocol: 'HTTP/1.1', sourceIp: '10.0.0.1', userAgent: 'ua/1' },
      routeKey: '$default',
      stage: '$default',
      time: '12/Mar/2020:19:03:58 +0000',
      timeEpoch: Date.UTC(2020, 2, 12, 19, 3, 58),
    });
    expect(event.requestContext.requestId).toMatch(/^[A-Za-z0-9+/]{15}=$/);
  });

  it('leaves out queryStringParameters and cookies when there are none', () => {
    const event = toApiGatewayEvent({ method: 'GET', url: '/x?', headers: {}, body: Buffer.alloc(0) });
    expect(event.rawPath).toBe('/x');
    expect(event.rawQueryString).toBe('');
    expect('queryStringParameters' in event).toBe(false);
    expect('cookies' in event).toBe(false);
  });

  it('sends textual bodies as text and everything else as base64', () => {
    const ev = (contentType: string | undefined, body: Buffer) =>
      toApiGatewayEvent({ method: 'POST', url: '/', headers: contentType ? { 'content-type': contentType } : {}, body });
    const utf8 = Buffer.from('{"name":"zoë"}');
    for (const ct of ['application/json', 'application/json; charset=utf-8', 'TEXT/plain', 'text/csv', 'application/x-www-form-urlencoded', 'application/xml']) {
      expect(ev(ct, utf8)).toMatchObject({ body: '{"name":"zoë"}', isBase64Encoded: false });
    }
    for (const ct of ['application/octet-stream', 'image/png', undefined]) {
      expect(ev(ct, utf8)).toMatchObject({ body: utf8.toString('base64'), isBase64Encoded: true });
    }
    const invalid = Buffer.from([0x7b, 0xff, 0xfe, 0x7d]);
    expect(ev('application/json', invalid)).toMatchObject({ body: invalid.toString('base64'), isBase64Encoded: true });
  });
});

describe('startLocalApi', () => {
  it('round-trips a binary body byte-exact', async () => {
    const { events, handler } = echo();
    const api = await serve(handler);
    const bytes = Buffer.alloc(256 * 64);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7 + (i >> 8)) & 0xff;
    const reply = await send(`${api.url}/blocks/0`, { method: 'PUT', headers: { 'content-type': 'application/octet-stream' }, body: bytes });
    expect(reply.status).toBe(200);
    expect(reply.body.equals(bytes)).toBe(true);
    expect(reply.headers['content-length']).toBe(String(bytes.length));
    expect(events[0]?.isBase64Encoded).toBe(true);
    expect(events[0]?.requestContext.http.method).toBe('PUT');
  });

  it('passes a JSON body as text', async () => {
    const { events, handler } = echo();
    const api = await serve(handler);
    const json = JSON.stringify({ size: 1 << 30, name: 'vol-ü' });
    const reply = await send(`${api.url}/volumes`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: json });
    expect(reply.status).toBe(200);
    expect(reply.body.toString()).toBe(json);
    expect(events[0]?.body).toBe(json);
    expect(events[0]?.isBase64Encoded).toBe(false);
  });

  it('omits the body of a request without one', async () => {
    const { events, handler } = echo();
    const api = await serve(handler);
    await send(`${api.url}/`);
    expect(events[0]?.isBase64Encoded).toBe(false);
    expect(events[0] && 'body' in events[0]).toBe(false);
  });

  it('parses the query string and lowercases and joins headers', async () => {
    const { events, handler } = echo();
    const api = await serve(handler);
    await send(`${api.url}/v/a%2Fb%20c?page=2&tag=x&tag=y%20z&empty=`, {
      headers: { 'X-Custom-Header': 'Value', 'X-Multi': ['a', 'b'], Cookie: 'sid=1; theme=dark', 'User-Agent': 'test-agent' },
    });
    const event = events[0]!;
    expect(event.rawPath).toBe('/v/a/b c');
    expect(event.rawQueryString).toBe('page=2&tag=x&tag=y%20z&empty=');
    expect(event.queryStringParameters).toEqual({ page: '2', tag: 'x,y z', empty: '' });
    expect(event.headers['x-custom-header']).toBe('Value');
    expect(event.headers['x-multi']).toBe('a,b');
    expect(event.headers['host']).toBe(`127.0.0.1:${api.port}`);
    expect(event.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(event.headers['x-forwarded-proto']).toBe('http');
    expect(event.headers['x-forwarded-port']).toBe(String(api.port));
    expect(event.headers['cookie']).toBeUndefined();
    expect(event.cookies).toEqual(['sid=1', 'theme=dark']);
    expect(Object.keys(event.headers).every((k) => k === k.toLowerCase())).toBe(true);
    expect(event.requestContext.http).toMatchObject({ sourceIp: '127.0.0.1', userAgent: 'test-agent', path: '/v/a/b c' });
    expect(event.requestContext.timeEpoch).toBeGreaterThan(Date.now() - 60_000);
  });

  it('answers 413 without calling the handler when the body is too large', async () => {
    const handler = vi.fn(echo().handler);
    const api = await serve(handler, { maxBodyBytes: 1024 });
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const declared = await send(`${api.url}/`, { method: 'PUT', body: Buffer.alloc(1025), agent });
      expect(declared.status).toBe(413);
      expect(JSON.parse(declared.body.toString())).toEqual({ message: 'Request Entity Too Large' });
      // A chunked body with no content-length is cut off as it crosses the limit.
      const chunked = await send(`${api.url}/`, { method: 'PUT', chunked: [Buffer.alloc(600), Buffer.alloc(600), Buffer.alloc(600)], agent });
      expect(chunked.status).toBe(413);
      expect(handler).not.toHaveBeenCalled();
      // The rest of the body was drained, so the kept-alive connection still works.
      const ok = await send(`${api.url}/`, { method: 'PUT', body: Buffer.alloc(1024, 1), agent });
      expect(ok.status).toBe(200);
      expect(ok.body.equals(Buffer.alloc(1024, 1))).toBe(true);
      expect(ok.reusedSocket).toBe(true);
      expect(handler).toHaveBeenCalledTimes(1);
    } finally {
      agent.destroy();
    }
  });

  it('defaults to API Gateway\'s 10 MiB payload limit', async () => {
    const handler = vi.fn(async (): Promise<APIGatewayProxyStructuredResultV2> => ({ statusCode: 204 }));
    // Lambda's 6 MiB limit on the event would refuse these first; lifted to see API Gateway's.
    const api = await serve(handler, { maxLambdaPayloadBytes: 64 * 1024 * 1024 });
    expect((await send(`${api.url}/`, { method: 'PUT', body: Buffer.alloc(10 * 1024 * 1024) })).status).toBe(204);
    const over = await send(`${api.url}/`, { method: 'PUT', body: Buffer.alloc(10 * 1024 * 1024 + 1) });
    expect(over.status).toBe(413);
    expect(handler).toHaveBeenCalledTimes(1);
  });

  it('answers 500 like API Gateway when the handler throws, and logs the error', async () => {
    const log = vi.fn();
    const boom = new Error('boom');
    const api = await serve(async () => {
      throw boom;
    }, { log });
    const reply = await send(`${api.url}/x`);
    expect(reply.status).toBe(500);
    expect(reply.headers['content-type']).toBe('application/json');
    expect(JSON.parse(reply.body.toString())).toEqual({ message: 'Internal Server Error' });
    expect(log).toHaveBeenCalledWith(expect.stringContaining('handler failed'), boom);
  });

  it('answers 500 for a malformed handler result', async () => {
    const api = await serve(async () => ({ statusCode: 'teapot' }) as unknown as APIGatewayProxyStructuredResultV2);
    const reply = await send(`${api.url}/`);
    expect(reply.status).toBe(500);
    expect(JSON.parse(reply.body.toString())).toEqual({ message: 'Internal Server Error' });
  });

  it('decodes base64 response bodies and sends text ones as they are', async () => {
    const bytes = Buffer.from([0, 1, 2, 0xfe, 0xff, 0x80]);
    const api = await serve(async (event): Promise<APIGatewayProxyStructuredResultV2> =>
      event.rawPath === '/bin'
        ? { statusCode: 201, headers: { 'content-type': 'application/octet-stream', 'x-n': 5, 'x-b': true }, body: bytes.toString('base64'), isBase64Encoded: true }
        : { statusCode: 200, headers: { 'content-type': 'text/plain' }, body: 'aGVsbG8=' },
    );
    const bin = await send(`${api.url}/bin`);
    expect(bin.status).toBe(201);
    expect(bin.body.equals(bytes)).toBe(true);
    expect(bin.headers['x-n']).toBe('5');
    expect(bin.headers['x-b']).toBe('true');
    expect(bin.headers['apigw-requestid']).toMatch(/=$/);
    const text = await send(`${api.url}/text`);
    expect(text.body.toString()).toBe('aGVsbG8=');
  });

  it('sends cookies as set-cookie headers and infers the format of results without a statusCode', async () => {
    const api = await serve(async (event) =>
      event.rawPath === '/cookies'
        ? { statusCode: 200, cookies: ['a=1; Path=/', 'b=2'], body: '' }
        : ({ hello: 'world' } as unknown as APIGatewayProxyStructuredResultV2),
    );
    const cookies = await send(`${api.url}/cookies`);
    expect(cookies.headers['set-cookie']).toEqual(['a=1; Path=/', 'b=2']);
    const inferred = await send(`${api.url}/inferred`);
    expect(inferred.status).toBe(200);
    expect(inferred.headers['content-type']).toBe('application/json');
    expect(JSON.parse(inferred.body.toString())).toEqual({ hello: 'world' });
  });

  it('serves concurrent requests and keeps connections alive', async () => {
    let active = 0;
    let peak = 0;
    const api = await serve(async (event) => {
      active++;
      peak = Math.max(peak, active);
      await new Promise((r) => setTimeout(r, 50));
      active--;
      return { statusCode: 200, body: event.rawPath };
    });
    const agent = new Agent({ keepAlive: true, maxSockets: 8 });
    try {
      const replies = await Promise.all(Array.from({ length: 16 }, (_, i) => send(`${api.url}/r/${i}`, { agent })));
      expect(replies.map((r) => r.body.toString())).toEqual(Array.from({ length: 16 }, (_, i) => `/r/${i}`));
      expect(peak).toBeGreaterThan(1);
      const again = await send(`${api.url}/again`, { agent });
      expect(again.body.toString()).toBe('/again');
      expect(again.reusedSocket).toBe(true);
    } finally {
      agent.destroy();
    }
  });

  it('answers 503 when the handler outlives the integration timeout', async () => {
    const api = await serve(() => new Promise((r) => setTimeout(() => r({ statusCode: 200 }), 500)), { timeoutMs: 50 });
    const reply = await send(`${api.url}/slow`);
    expect(reply.status).toBe(503);
    expect(JSON.parse(reply.body.toString())).toEqual({ message: 'Service Unavailable' });
  });

  it('serves a named stage under its prefix, which stays in rawPath', async () => {
    const { events, handler } = echo();
    const api = await serve(handler, { stage: 'dev' });
    expect(api.url).toBe(`http://127.0.0.1:${api.port}/dev`);
    expect((await send(`${api.url}/volumes`)).status).toBe(200);
    expect(events[0]?.rawPath).toBe('/dev/volumes');
    expect(events[0]?.requestContext.stage).toBe('dev');
    const outside = await send(`http://127.0.0.1:${api.port}/volumes`);
    expect(outside.status).toBe(404);
    expect(events).toHaveLength(1);
  });

  it('closes promptly with idle keep-alive connections open', async () => {
    const api = await startLocalApi({ handler: async () => ({ statusCode: 204 }), port: 0 });
    const agent = new Agent({ keepAlive: true });
    try {
      await send(`${api.url}/`, { agent });
      const t0 = Date.now();
      await api.close();
      expect(Date.now() - t0).toBeLessThan(1000);
    } finally {
      agent.destroy();
    }
  });

  it('lets a request in progress finish when closing', async () => {
    let entered!: () => void;
    const inHandler = new Promise<void>((r) => (entered = r));
    const api = await startLocalApi({
      handler: async () => {
        entered();
        await new Promise((r) => setTimeout(r, 100));
        return { statusCode: 200, body: 'done' };
      },
      port: 0,
    });
    const reply = send(`${api.url}/`);
    await inHandler;
    await api.close();
    const r = await reply;
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe('done');
    expect(r.headers['connection']).toBe('close');
  });

  it('works with fetch, including an early 413', async () => {
    const { handler } = echo();
    const api = await serve(handler, { maxBodyBytes: 64 * 1024 });
    const big = await fetch(`${api.url}/`, { method: 'PUT', body: new Uint8Array(1024 * 1024) });
    expect(big.status).toBe(413);
    expect(await big.json()).toEqual({ message: 'Request Entity Too Large' });
    const small = await fetch(`${api.url}/`, { method: 'PUT', body: new Uint8Array([1, 2, 3]) });
    expect(small.status).toBe(200);
    expect(new Uint8Array(await small.arrayBuffer())).toEqual(new Uint8Array([1, 2, 3]));
  });

  it('enforces Lambda\'s 6 MiB limit on the event (413, handler not called) and on the result (500)', async () => {
    const { events, handler } = echo();
    const api = await serve(handler);
    // A binary body grows by a third in base64: 4.5 MiB of bytes is over 6 MiB as an event.
    const over = await send(`${api.url}/`, { method: 'PUT', body: Buffer.alloc(4.5 * 1024 * 1024, 7), headers: { 'content-type': 'application/octet-stream' } });
    expect(over.status).toBe(413);
    expect(JSON.parse(over.body.toString())).toEqual({ message: 'Request Entity Too Large' });
    expect(events).toHaveLength(0);
    const under = await send(`${api.url}/`, { method: 'PUT', body: Buffer.alloc(4 * 1024 * 1024, 7), headers: { 'content-type': 'application/octet-stream' } });
    expect(under.status).toBe(200);
    expect(events).toHaveLength(1);

    const big = await serve(async () => ({ statusCode: 200, body: 'x'.repeat(LAMBDA_MAX_PAYLOAD_BYTES + 1) }));
    const r = await send(`${big.url}/`);
    expect(r.status).toBe(500);
    expect(JSON.parse(r.body.toString())).toEqual({ message: 'Internal Server Error' });
  });
});

describe('startLocalApi with IAM authorization (SigV4, as API Gateway)', () => {
  const alice: LocalPrincipal = {
    accessKeyId: 'AKIAALICEEXAMPLE0001',
    secretAccessKey: 'alice-secret-key-0123456789abcdefghijklmno',
    userArn: 'arn:aws:iam::123456789012:user/alice',
    userId: 'AIDAALICE',
    accountId: '123456789012',
  };
  const aliceKeys: SigningCredentials = { accessKeyId: alice.accessKeyId, secretAccessKey: alice.secretAccessKey };

  async function signedApi() {
    const { events, handler } = echo();
    const api = await serve(handler, { iam: { principals: [alice], region: 'us-east-1' } });
    return { api, events };
  }

  async function signed(url: string, init: { method?: string; body?: Buffer; headers?: Record<string, string> } = {}, opts: { credentials?: SigningCredentials; region?: string; now?: () => Date } = {}) {
    const sign = await requestSigner({ apiUrl: url, credentials: opts.credentials ?? aliceKeys, region: opts.region ?? 'us-east-1', ...(opts.now ? { now: opts.now } : {}) });
    const method = init.method ?? 'GET';
    const headers = await sign({ method, url, ...(init.headers ? { headers: init.headers } : {}), ...(init.body ? { body: init.body } : {}) });
    return { method, headers, body: init.body };
  }

  it('passes a signed request and fills requestContext.authorizer.iam as API Gateway does', async () => {
    const { api, events } = await signedApi();
    const url = `${api.url}/volumes/vol-1/data?offset=0&length=4096`;
    const body = Buffer.from('hello');
    const req = await signed(url, { method: 'PUT', body, headers: { 'content-type': 'application/octet-stream' } });
    const r = await send(url, req);
    expect(r.status, r.body.toString()).toBe(200);
    expect(r.body.toString()).toBe('hello');
    expect((events[0]!.requestContext as unknown as { authorizer: unknown }).authorizer).toEqual({
      iam: {
        accessKey: alice.accessKeyId,
        accountId: '123456789012',
        callerId: 'AIDAALICE',
        cognitoIdentity: null,
        principalOrgId: null,
        userArn: alice.userArn,
        userId: 'AIDAALICE',
      },
    });
  });

  it('refuses with 403 and API Gateway\'s messages: unsigned, unknown key, wrong secret, stale or future date, wrong service or region', async () => {
    const { api, events } = await signedApi();
    const url = `${api.url}/volumes`;
    const status = async (req: { method: string; headers: Record<string, string>; body?: Buffer }) => {
      const r = await send(url, req);
      return { status: r.status, message: r.status === 200 ? '' : (JSON.parse(r.body.toString()) as { message: string }).message };
    };
    expect(await status({ method: 'GET', headers: {} })).toEqual({ status: 403, message: 'Forbidden' });
    expect(await status(await signed(url, {}, { credentials: { accessKeyId: 'AKIANOBODY0000000000', secretAccessKey: alice.secretAccessKey } }))).toEqual({
      status: 403,
      message: 'The security token included in the request is invalid.',
    });
    expect((await status(await signed(url, {}, { credentials: { ...aliceKeys, secretAccessKey: 'wrong' } }))).message).toMatch(/^The request signature we calculated does not match/);
    const stale = await status(await signed(url, {}, { now: () => new Date(Date.now() - 16 * 60_000) }));
    expect(stale.status).toBe(403);
    expect(stale.message).toMatch(/^Signature expired: \d{8}T\d{6}Z is now earlier than \d{8}T\d{6}Z \(\d{8}T\d{6}Z - 15 min\.\)$/);
    expect((await status(await signed(url, {}, { now: () => new Date(Date.now() + 16 * 60_000) }))).message).toMatch(/^Signature not yet current/);
    // Within the skew either way is fine.
    expect((await status(await signed(url, {}, { now: () => new Date(Date.now() - 14 * 60_000) }))).status).toBe(200);
    expect((await status(await signed(url, {}, { region: 'eu-west-1' }))).message).toMatch(/scoped to a valid region/);
    const s3Scoped = await signed(url);
    s3Scoped.headers.authorization = s3Scoped.headers.authorization!.replace('/execute-api/', '/s3/');
    expect((await status(s3Scoped)).message).toMatch(/correct service: 'execute-api'/);
    expect(events).toHaveLength(1);
  });

  it('refuses a tampered body, path, query or signed header, and a declared body hash that is not the body\'s', async () => {
    const { api, events } = await signedApi();
    const url = `${api.url}/volumes/vol-1/data?offset=0`;
    const req = await signed(url, { method: 'PUT', body: Buffer.from('original'), headers: { 'content-type': 'application/octet-stream' } });
    // The declared x-amz-content-sha256 no longer matches.
    expect((await send(url, { ...req, body: Buffer.from('tampered') })).status).toBe(403);
    // Without the declared hash, the computed one goes into the canonical request: still refused.
    const { 'x-amz-content-sha256': _declared, ...undeclared } = req.headers;
    const noHash = await send(url, { ...req, headers: undeclared, body: Buffer.from('tampered') });
    expect(noHash.status).toBe(403);
    expect(JSON.parse(noHash.body.toString()).message).toMatch(/signature we calculated does not match/);
    expect((await send(`${api.url}/volumes/vol-2/data?offset=0`, req)).status).toBe(403);
    expect((await send(`${api.url}/volumes/vol-1/data?offset=4096`, req)).status).toBe(403);
    expect((await send(url, { ...req, headers: { ...req.headers, 'content-type': 'text/plain' } })).status).toBe(403);
    expect(events).toHaveLength(0);
    expect((await send(url, req)).status).toBe(200);
  });
  it('signs a body given in pieces exactly as the same bytes in one buffer, and the API takes it', async () => {
    const { api, events } = await signedApi();
    const url = `${api.url}/volumes/vol-1/batch`;
    const pieces = [Buffer.from('SLB1'), randomBytes(70_000), Buffer.alloc(0), randomBytes(5)];
    const whole = Buffer.concat(pieces);
    const now = () => new Date('2026-12-02T10:00:00Z');
    const sign = await requestSigner({ apiUrl: url, credentials: aliceKeys, region: 'us-east-1', now });
    const headers = { 'content-type': 'application/vnd.sledge.batch' };
    const fromPieces = await sign({ method: 'POST', url, headers, body: pieces });
    expect(fromPieces).toEqual(await sign({ method: 'POST', url, headers, body: whole }));
    expect(fromPieces['x-amz-content-sha256']).toBe(createHash('sha256').update(whole).digest('hex'));
    // Signed from pieces at the current time, sent as one body: the API takes it.
    const live = await (await requestSigner({ apiUrl: url, credentials: aliceKeys, region: 'us-east-1' }))({ method: 'POST', url, headers, body: pieces });
    expect((await send(url, { method: 'POST', headers: live, body: whole })).status).toBe(200);
    expect(Buffer.from(events[0]!.body!, events[0]!.isBase64Encoded ? 'base64' : 'utf8').equals(whole)).toBe(true);
  });
});
