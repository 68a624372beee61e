/**
 * A local stand-in for an API Gateway HTTP API (payload format 2.0, one `$default` route)
 * in front of a Lambda function.
 *
 * It reproduces the parts of API Gateway's behaviour that a handler can observe:
 *
 * - the event: `rawPath` arrives URL-decoded (HTTP APIs decode it; REST APIs and function
 *   URLs do not), `rawQueryString` stays percent-encoded, repeated query keys and headers
 *   are joined with commas, header names are lowercased, the `cookie` header moves to
 *   `cookies`, textual bodies arrive as text and everything else as base64;
 * - the response: `isBase64Encoded` bodies are decoded, `cookies` become `set-cookie`
 *   headers, `multiValueHeaders` is ignored (payload 2.0 has none), a result without a
 *   `statusCode` is sent as a JSON body with status 200;
 * - the errors: a handler that throws or returns a malformed result gives
 *   `500 {"message":"Internal Server Error"}`, a body over the payload limit gives
 *   `413 {"message":"Request Entity Too Large"}` without invoking the handler, and a handler
 *   slower than the integration timeout gives `503 {"message":"Service Unavailable"}`;
 * - Lambda's limits: an event over 6 MiB as JSON (a binary body grows by a third in base64) is
 *   `413 {"message":"Request Entity Too Large"}` without invoking the handler, and a result
 *   over 6 MiB is `500 {"message":"Internal Server Error"}`, as Lambda fails such an invocation;
 * - IAM authorization (with `iam`): every request must carry a valid SigV4 signature for
 *   `execute-api`, checked as API Gateway checks it (local/iam-auth.ts), else `403` with API
 *   Gateway's message; the handler then finds the caller in `requestContext.authorizer.iam`.
 */
import { randomBytes } from 'node:crypto';
import { isUtf8 } from 'node:buffer';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { finished } from 'node:stream';
import type { APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2 } from 'aws-lambda';
import { BufferPool } from '#shared/data/buffer-pool.ts';
import { type LocalIamOptions, verifySigV4 } from './iam-auth.ts';

/** Request bodies, kept only until the event's copy is made (see readBody). */
const bodyBuffers = new BufferPool({ minBytes: 64 * 1024, maxBytes: 16 * 1024 * 1024, classBytes: 1024 * 1024, keepPerClass: 4 });

export type HttpHandler = (event: APIGatewayProxyEventV2) => Promise<APIGatewayProxyStructuredResultV2>;

export interface LocalApiOptions {
  handler: HttpHandler;
  /** Default 3000; 0 picks any free port. */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** Largest request body accepted; default 10 MiB, API Gateway's payload limit. */
  maxBodyBytes?: number;
  /**
   * Default `$default`. A named stage is served under `/<stage>/...` (the returned `url`
   * includes it) and, as on API Gateway, the stage segment stays in `rawPath`.
   */
  stage?: string;
  /** Integration timeout in milliseconds; default 30 000 as on API Gateway, 0 disables it. */
  timeoutMs?: number;
  /** Where handler failures are reported; default `console.error`. */
  log?: (message: string, err: unknown) => void;
  /**
   * Require SigV4-signed requests from these principals, as API Gateway's IAM authorization
   * does. Absent: no authorization (an API whose route has `AuthorizationType: NONE`).
   */
  iam?: LocalIamOptions;
  /** Largest event (as JSON) and result Lambda carries; default 6 MiB, Lambda's synchronous limit. */
  maxLambdaPayloadBytes?: number;
}

export interface LocalApi {
  /** Base URL, e.g. `http://127.0.0.1:3000` (with `/<stage>` for a named stage). */
  url: string;
  port: number;
  /** Stops accepting connections, lets requests in progress finish (at most 5 s), closes idle keep-alive connections. */
  close(): Promise<void>;
}

export interface RawHttpRequest {
  method: string;
  /** Path and query string as sent on the request line, e.g. `/a%20b?x=1&x=2`. */
  url: string;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  sourceIp?: string;
  /** `requestContext.stage`; default `$default`. */
  stage?: string;
  /** `requestContext.requestId`; default a fresh random id. */
  requestId?: string;
  /** Request time in epoch milliseconds; default now. */
  timeEpoch?: number;
}

export const DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024;
/** Lambda's limit on a synchronous invocation's event and on its result (6 MB = 6 MiB here, as Lambda counts). */
export const LAMBDA_MAX_PAYLOAD_BYTES = 6 * 1024 * 1024;
const DEFAULT_TIMEOUT_MS = 30_000;
const ACCOUNT_ID = '123456789012';
const API_ID = 'local';
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const TIMED_OUT: unique symbol = Symbol('timed out');
const TEXT_TYPES = new Set(['application/json', 'application/x-www-form-urlencoded', 'application/xml']);

/** An id shaped like API Gateway's (`JKJaXmPLvHcESHA=`). */
export function newRequestId(): string {
  return randomBytes(11).toString('base64');
}

/** API Gateway's `requestContext.time` format: `12/Mar/2020:19:03:58 +0000`. */
function formatTime(epochMs: number): string {
  const d = new Date(epochMs);
  const p = (n: number) => String(n).padStart(2, '0');
  return `${p(d.getUTCDate())}/${MONTHS[d.getUTCMonth()]}/${d.getUTCFullYear()}:${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} +0000`;
}

function isTextual(contentType: string | undefined): boolean {
  if (contentType === undefined) return false;
  const mime = (contentType.split(';')[0] ?? '').trim().toLowerCase();
  return mime.startsWith('text/') || TEXT_TYPES.has(mime);
}

function decodePath(path: string): string {
  try {
    return decodeURIComponent(path);
  } catch {
    return path; // malformed escapes are passed through as sent
  }
}

function decodeQueryComponent(s: string): string {
  const plus = s.replace(/\+/g, ' ');
  try {
    return decodeURIComponent(plus);
  } catch {
    return plus;
  }
}

/** Splits a request target into the path and the raw query string (without `?`). */
function splitTarget(target: string): { path: string; query: string } {
  let t = target;
  if (!t.startsWith('/')) {
    // absolute-form (`http://host/path`) or asterisk-form
    try {
      const u = new URL(t);
      t = u.pathname + u.search;
    } catch {
      t = '/' + t;
    }
  }
  const hash = t.indexOf('#');
  if (hash >= 0) t = t.slice(0, hash);
  const q = t.indexOf('?');
  return q < 0 ? { path: t, query: '' } : { path: t.slice(0, q), query: t.slice(q + 1) };
}

/** Builds the payload-2.0 event API Gateway would send for this request. */
export function toApiGatewayEvent(req: RawHttpRequest): APIGatewayProxyEventV2 {
  const { path, query } = splitTarget(req.url);
  const rawPath = decodePath(path);

  const headers: Record<string, string> = {};
  const cookies: string[] = [];
  for (const [name, value] of Object.entries(req.headers)) {
    if (value === undefined) continue;
    const key = name.toLowerCase();
    const values = Array.isArray(value) ? value : [value];
    if (key === 'cookie') {
      for (const v of values) {
        for (const c of v.split(';')) {
          const t = c.trim();
          if (t !== '') cookies.push(t);
        }
      }
      continue;
    }
    const joined = values.join(',');
    headers[key] = key in headers ? `${headers[key]},${joined}` : joined;
  }

  const params: Record<string, string> = {};
  let anyParam = false;
  if (query !== '') {
    for (const pair of query.split('&')) {
      if (pair === '') continue;
      const eq = pair.indexOf('=');
      const k = decodeQueryComponent(eq < 0 ? pair : pair.slice(0, eq));
      const v = eq < 0 ? '' : decodeQueryComponent(pair.slice(eq + 1));
      params[k] = k in params ? `${params[k]},${v}` : v;
      anyParam = true;
    }
  }

  const timeEpoch = req.timeEpoch ?? Date.now();
  const domainName = (headers['host'] ?? 'localhost').replace(/:\d+$/, '');
  const event: APIGatewayProxyEventV2 = {
    version: '2.0',
    routeKey: '$default',
    rawPath,
    rawQueryString: query,
    ...(cookies.length > 0 ? { cookies } : {}),
    headers,
    ...(anyParam ? { queryStringParameters: params } : {}),
    requestContext: {
      accountId: ACCOUNT_ID,
      apiId: API_ID,
      domainName,
      domainPrefix: domainName.split('.')[0] ?? domainName,
      http: {
        method: req.method.toUpperCase(),
        path: rawPath,
        protocol: 'HTTP/1.1',
        sourceIp: req.sourceIp ?? '127.0.0.1',
        userAgent: headers['user-agent'] ?? '',
      },
      requestId: req.requestId ?? newRequestId(),
      routeKey: '$default',
      stage: req.stage ?? '$default',
      time: formatTime(timeEpoch),
      timeEpoch,
    },
    isBase64Encoded: false,
  };
  if (req.body.length > 0) {
    if (isTextual(headers['content-type']) && isUtf8(req.body)) {
      event.body = req.body.toString('utf8');
    } else {
      event.body = req.body.toString('base64');
      event.isBase64Encoded = true;
    }
  }
  return event;
}

export interface HttpReply {
  statusCode: number;
  /** Header name/value pairs; `set-cookie` may repeat. */
  headers: Array<[string, string]>;
  body: Buffer;
}

const DROPPED_RESPONSE_HEADERS = new Set(['content-length', 'transfer-encoding', 'connection', 'keep-alive']);

export class MalformedResponseError extends Error {
  override name = 'MalformedResponseError';
}

function jsonReply(statusCode: number, message: string): HttpReply {
  return { statusCode, headers: [['content-type', 'application/json']], body: Buffer.from(JSON.stringify({ message })) };
}

/**
 * Turns what the handler returned into the HTTP response API Gateway would send.
 * Throws `MalformedResponseError` where API Gateway would answer 500.
 */
export function fromHandlerResult(result: unknown): HttpReply {
  if (typeof result === 'string') {
    return { statusCode: 200, headers: [['content-type', 'application/json']], body: Buffer.from(result) };
  }
  if (result === null || result === undefined || typeof result !== 'object' || !('statusCode' in result)) {
    // Payload 2.0 "inferred" format: anything without a statusCode is the JSON body.
    return { statusCode: 200, headers: [['content-type', 'application/json']], body: Buffer.from(JSON.stringify(result ?? null)) };
  }
  const r = result as APIGatewayProxyStructuredResultV2;
  const statusCode = r.statusCode;
  if (typeof statusCode !== 'number' || !Number.isInteger(statusCode) || statusCode < 100 || statusCode > 599) {
    throw new MalformedResponseError(`statusCode must be an integer from 100 to 599, got ${JSON.stringify(statusCode)}`);
  }
  const headers: Array<[string, string]> = [];
  if (r.headers !== undefined && r.headers !== null) {
    if (typeof r.headers !== 'object') throw new MalformedResponseError('headers must be an object');
    for (const [name, value] of Object.entries(r.headers)) {
      if (DROPPED_RESPONSE_HEADERS.has(name.toLowerCase())) continue;
      if (value === undefined || value === null) continue;
      if (typeof value === 'object') throw new MalformedResponseError(`header ${name} must be a string, number or boolean`);
      headers.push([name, String(value)]);
    }
  }
  if (r.cookies !== undefined && r.cookies !== null) {
    if (!Array.isArray(r.cookies)) throw new MalformedResponseError('cookies must be an array of strings');
    for (const c of r.cookies) headers.push(['set-cookie', String(c)]);
  }
  let body = Buffer.alloc(0);
  if (r.body !== undefined && r.body !== null) {
    if (typeof r.body !== 'string') throw new MalformedResponseError('body must be a string');
    body = r.isBase64Encoded === true ? Buffer.from(r.body, 'base64') : Buffer.from(r.body, 'utf8');
  }
  return { statusCode, headers, body };
}

function send(res: ServerResponse, reply: HttpReply): void {
  if (res.headersSent || res.destroyed) return;
  res.statusCode = reply.statusCode;
  const grouped = new Map<string, { name: string; values: string[] }>();
  for (const [name, value] of reply.headers) {
    const key = name.toLowerCase();
    const g = grouped.get(key);
    if (g) g.values.push(value);
    else grouped.set(key, { name, values: [value] });
  }
  for (const { name, values } of grouped.values()) {
    // Only set-cookie may repeat on the wire; API Gateway sends other duplicates once.
    res.setHeader(name, name.toLowerCase() === 'set-cookie' ? values : (values[values.length - 1] ?? ''));
  }
  res.setHeader('content-length', reply.body.length);
  res.end(reply.body);
}

/** The size of `value` as JSON, cheaply when it carries a large string body (which needs no escaping in base64). */
function jsonBytes(value: { body?: string; isBase64Encoded?: boolean }): number {
  const { body, ...rest } = value;
  if (typeof body !== 'string') return Buffer.byteLength(JSON.stringify(value));
  const bodyBytes = value.isBase64Encoded === true ? body.length + 2 : Buffer.byteLength(JSON.stringify(body));
  return Buffer.byteLength(JSON.stringify(rest)) + ',"body":'.length + bodyBytes;
}

/** Starts the local API. Resolves once it is listening. */
export async function startLocalApi(opts: LocalApiOptions): Promise<LocalApi> {
  const host = opts.host ?? '127.0.0.1';
  const maxBodyBytes = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const stage = opts.stage ?? '$default';
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const maxLambdaPayloadBytes = opts.maxLambdaPayloadBytes ?? LAMBDA_MAX_PAYLOAD_BYTES;
  const log = opts.log ?? ((message: string, err: unknown) => (err === undefined ? console.error(message) : console.error(message, err)));
  const stagePrefix = stage === '$default' ? '' : `/${stage}`;
  let listenPort = 0;

  // Requests in progress per connection, so that close() can end idle keep-alive
  // connections at once (Node's own idle tracking misses a connection whose 413 response
  // went out before the request body had been drained).
  const busy = new Map<Socket, number>();
  const unanswered = new Set<ServerResponse>();
  let shuttingDown = false;

  const server = createServer((req, res) => {
    const socket = req.socket;
    busy.set(socket, (busy.get(socket) ?? 0) + 1);
    if (shuttingDown) res.setHeader('connection', 'close');
    unanswered.add(res);
    res.once('close', () => unanswered.delete(res));
    let pending = 2;
    const settle = () => {
      if (--pending > 0) return;
      const n = (busy.get(socket) ?? 1) - 1;
      busy.set(socket, n);
      if (shuttingDown && n === 0) socket.destroy();
    };
    finished(res, settle);
    finished(req, settle);
    handleRequest(req, res).catch((err: unknown) => {
      log('[local-api] internal error', err);
      send(res, jsonReply(500, 'Internal Server Error'));
    });
  });
  server.on('connection', (socket: Socket) => {
    busy.set(socket, 0);
    socket.on('close', () => busy.delete(socket));
  });

  async function handleRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const requestId = newRequestId();
    res.setHeader('apigw-requestid', requestId);

    const read = await readBody(req, res);
    if (read === undefined) return; // 413 sent, or the client went away
    const { body } = read;

    const { path, query } = splitTarget(req.url ?? '/');
    if (stagePrefix !== '' && !(path === stagePrefix || path.startsWith(`${stagePrefix}/`))) {
      send(res, jsonReply(404, 'Not Found'));
      return;
    }

    let iam: Awaited<ReturnType<typeof verifySigV4>> | undefined;
    if (opts.iam) {
      const signed: Record<string, string | undefined> = {};
      for (const [name, values] of Object.entries(req.headersDistinct)) if (values) signed[name] = values.join(',');
      iam = await verifySigV4(opts.iam, {
        method: req.method ?? 'GET',
        path,
        query,
        headers: signed,
        body,
      });
      if (!iam.ok) {
        read.release();
        send(res, jsonReply(403, iam.message));
        return;
      }
    }

    const headers: Record<string, string | string[] | undefined> = { ...req.headersDistinct };
    const sourceIp = (req.socket.remoteAddress ?? '127.0.0.1').replace(/^::ffff:/, '');
    const forwardedFor = req.headersDistinct['x-forwarded-for'];
    headers['x-forwarded-for'] = forwardedFor ? [...forwardedFor, sourceIp].join(', ') : sourceIp;
    headers['x-forwarded-port'] = String(listenPort);
    headers['x-forwarded-proto'] = 'http';

    const event = toApiGatewayEvent({
      method: req.method ?? 'GET',
      url: req.url ?? '/',
      headers,
      body,
      sourceIp,
      stage,
      requestId,
    });
    read.release(); // the event holds its own copy (text or base64) of the body
    if (iam?.ok) (event.requestContext as { authorizer?: unknown }).authorizer = { iam: iam.iam };
    const eventBytes = jsonBytes(event);
    if (eventBytes > maxLambdaPayloadBytes) {
      log(`[local-api] event of ${eventBytes} bytes is over Lambda's ${maxLambdaPayloadBytes} (requestId ${requestId})`, undefined);
      send(res, jsonReply(413, 'Request Entity Too Large'));
      return;
    }

    let timer: NodeJS.Timeout | undefined;
    try {
      const invocation = Promise.resolve().then(() => opts.handler(event));
      const result =
        timeoutMs > 0
          ? await Promise.race([
              invocation,
              new Promise<typeof TIMED_OUT>((resolve) => {
                timer = setTimeout(() => resolve(TIMED_OUT), timeoutMs);
              }),
            ])
          : await invocation;
      if (result === TIMED_OUT) {
        invocation.catch((err: unknown) => log(`[local-api] handler failed after timing out (requestId ${requestId})`, err));
        log(`[local-api] handler timed out after ${timeoutMs} ms (requestId ${requestId})`, undefined);
        send(res, jsonReply(503, 'Service Unavailable'));
        return;
      }
      const resultBytes = typeof result === 'object' && result !== null ? jsonBytes(result as { body?: string }) : 0;
      if (resultBytes > maxLambdaPayloadBytes) {
        log(`[local-api] result of ${resultBytes} bytes is over Lambda's ${maxLambdaPayloadBytes}; Lambda fails the invocation (requestId ${requestId})`, undefined);
        send(res, jsonReply(500, 'Internal Server Error'));
        return;
      }
      send(res, fromHandlerResult(result));
    } catch (err) {
      log(`[local-api] handler failed (requestId ${requestId}, ${event.requestContext.http.method} ${event.rawPath})`, err);
      send(res, jsonReply(500, 'Internal Server Error'));
    } finally {
      if (timer) clearTimeout(timer);
    }
  }

  /**
   * Reads the whole body, or answers 413 and returns undefined once it exceeds the limit.
   * After a 413 the rest of the body is read and discarded so the keep-alive connection
   * stays usable (and the client sees the response rather than a reset); a client still
   * sending 10 s later has its connection closed.
   */
  function readBody(req: IncomingMessage, res: ServerResponse): Promise<{ body: Buffer; release: () => void } | undefined> {
    return new Promise((resolve) => {
      const tooLarge = () => {
        send(res, jsonReply(413, 'Request Entity Too Large'));
        const killer = setTimeout(() => req.socket.destroy(), 10_000);
        killer.unref();
        req.on('end', () => clearTimeout(killer));
        req.on('close', () => clearTimeout(killer));
        req.removeAllListeners('data');
        req.on('data', () => {}); // drain
        resolve(undefined);
      };
      const declared = Number(req.headers['content-length']);
      if (Number.isFinite(declared) && declared > maxBodyBytes) {
        tooLarge();
        return;
      }
      // A declared length is read straight into a pooled buffer of that size (released once
      // the event is built): no chunk list and no concatenation per request.
      const lease = Number.isSafeInteger(declared) && declared > 0 ? bodyBuffers.take(declared) : undefined;
      const chunks: Buffer[] = [];
      let size = 0;
      let done = false;
      const finish = (value: { body: Buffer; release: () => void } | undefined) => {
        done = true;
        if (value === undefined) lease?.release();
        resolve(value);
      };
      req.on('data', (chunk: Buffer) => {
        if (done) return;
        if (lease && size + chunk.length <= lease.buffer.length) chunk.copy(lease.buffer, size);
        else chunks.push(chunk);
        size += chunk.length;
        if (size > maxBodyBytes) {
          chunks.length = 0;
          finish(undefined);
          tooLarge();
          return;
        }
      });
      req.on('end', () => {
        if (done) return;
        if (lease && size === lease.buffer.length) finish({ body: lease.buffer, release: () => lease.release() });
        else {
          // The body was not the declared length (Node refuses that for HTTP/1.1, but be exact).
          const parts = lease ? [lease.buffer.subarray(0, Math.min(size, lease.buffer.length)), ...chunks] : chunks;
          const body = Buffer.concat(parts, size);
          lease?.release();
          done = true;
          resolve({ body, release: () => {} });
        }
      });
      req.on('error', () => {
        if (done) return;
        finish(undefined);
      });
      req.on('close', () => {
        if (done) return;
        finish(undefined); // aborted before the body was complete
      });
    });
  }

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.listen(opts.port ?? 3000, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
  listenPort = (server.address() as AddressInfo).port;
  const hostForUrl = host.includes(':') ? `[${host}]` : host;

  let closing: Promise<void> | undefined;
  return {
    url: `http://${hostForUrl}:${listenPort}${stagePrefix}`,
    port: listenPort,
    close() {
      closing ??= new Promise<void>((resolve, reject) => {
        const force = setTimeout(() => server.closeAllConnections(), 5_000);
        force.unref();
        server.close((err) => {
          clearTimeout(force);
          if (err) reject(err);
          else resolve();
        });
        shuttingDown = true;
        for (const [socket, n] of busy) if (n === 0) socket.destroy();
        for (const res of unanswered) if (!res.headersSent) res.setHeader('connection', 'close');
      });
      return closing;
    },
  };
}
