/**
 * A small router for API Gateway HTTP API (payload 2.0) events. All Lambda-event knowledge
 * lives here: routes receive a parsed request and return a plain response; errors are mapped
 * to HTTP once, in `toErrorResponse`, after AWS SDK errors that mean "unavailable now"
 * (throttling, 5xx, timeouts) became UnavailableErrors (`toSledgeError`, shared/aws/errors.ts).
 *
 * Authorization happens here too, once for every route (shared/api/authz.ts): the caller is
 * read from the event, the matched route's rule (operator only, any principal, or the owner of
 * the resource its path names) is applied before the handler runs, and control-plane changes
 * and refusals are written to the audit log.
 */
import type { APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2 } from 'aws-lambda';
import { toSledgeError } from '../aws/errors.ts';
import { headBodyBuffers } from '../data/buffer-pool.ts';
import { InvalidInputError, NotFoundError, PayloadTooLargeError, SledgeError, UnsupportedMediaTypeError } from '../core/errors.ts';
import { type AuthSettings, type OwnerResolver, type Principal, type RouteAccess, audit, authorize, defaultAccess, principalOf } from './authz.ts';

export interface Request {
  method: string;
  path: string;
  params: Record<string, string>;
  query: Record<string, string | undefined>;
  headers: Record<string, string | undefined>;
  body: Buffer;
  /** The caller, once the router has read it from the event (shared/api/authz.ts). */
  principal?: Principal;
}

export type Response =
  | { status: number; json: unknown; headers?: Record<string, string> }
  | {
      status: number;
      bytes: Buffer;
      headers?: Record<string, string>;
      /** Called once `bytes` is encoded into the result: a pooled buffer is given back. */
      release?: () => void;
    }
  | { status: number; headers?: Record<string, string> };

type Handler = (req: Request) => Promise<Response>;
type Route = { method: string; path: string; pattern: RegExp; names: string[]; access: RouteAccess; handle: Handler };

/**
 * Lambda's limit on a synchronous invocation's result (and event): 6 MB, counted as 6 MiB. A
 * result over it would make Lambda fail the invocation (API Gateway then answers 500), so the
 * router answers 413 itself.
 */
export const LAMBDA_PAYLOAD_LIMIT_BYTES = 6 * 1024 * 1024;

export interface HandleOptions {
  /** Add stacks to 500 bodies. */
  development?: boolean;
  /** Default `{ mode: 'none' }`: every caller is an operator (routers built in tests). The head passes its configuration. */
  auth?: AuthSettings;
}

export class Router {
  private readonly routes: Route[] = [];
  private readonly resolvers = new Map<string, OwnerResolver>();
  private unexpected?: (err: unknown, req: Request) => Promise<void>;

  /** Registers how to find the owner of a resource kind named by routes' `owned(kind, param)` rules. */
  resource(kind: string, resolve: OwnerResolver): this {
    this.resolvers.set(kind, resolve);
    return this;
  }

  /** Called for errors that are not SledgeErrors (bugs, broken invariants) before the 500. */
  onUnexpectedError(hook: (err: unknown, req: Request) => Promise<void>): this {
    this.unexpected = hook;
    return this;
  }

  /**
   * Adds a route; `{name}` segments match one path segment and become `params.name`. `access`
   * says who may call it (shared/authz.ts); without it, a path with `{volumeId}` is for the
   * volume's owner and any other path for operators.
   */
  on(method: string, path: string, handle: Handler): this;
  on(method: string, path: string, access: RouteAccess, handle: Handler): this;
  on(method: string, path: string, accessOrHandle: RouteAccess | Handler, maybeHandle?: Handler): this {
    const [access, handle] = typeof accessOrHandle === 'function' ? [defaultAccess(path), accessOrHandle] : [accessOrHandle, maybeHandle!];
    const names: string[] = [];
    const pattern = new RegExp('^' + path.replace(/\{(\w+)\}/g, (_, name: string) => (names.push(name), '([^/]+)')) + '/?$');
    this.routes.push({ method, path, pattern, names, access, handle });
    return this;
  }

  /** Who may call each route, as registered: `METHOD /path` -> its rule. */
  accessRules(): Map<string, RouteAccess> {
    return new Map(this.routes.map((r) => [`${r.method} ${r.path}`, r.access]));
  }

  async handle(event: APIGatewayProxyEventV2, options: boolean | HandleOptions = false): Promise<APIGatewayProxyStructuredResultV2> {
    const { development = false, auth = { mode: 'none', operators: [] } } = typeof options === 'boolean' ? { development: options } : options;
    const requestId = (event.requestContext as { requestId?: string } | undefined)?.requestId;
    let parsed: Request | undefined;
    let matched: Route | undefined;
    let stage: 'authenticating' | 'authorizing' | 'handling' = 'authenticating';
    const body = requestBody(event);
    try {
      const req = (parsed = toRequest(event, body.buffer));
      req.principal = principalOf(event.requestContext, auth);
      let pathMatched = false;
      for (const route of this.routes) {
        const m = route.pattern.exec(req.path);
        if (!m) continue;
        pathMatched = true;
        if (route.method !== req.method) continue;
        matched = route;
        route.names.forEach((n, i) => (req.params[n] = decodeParam(n, m[i + 1]!)));
        stage = 'authorizing';
        await authorize(route.access, req.principal, req.params, `${route.method} ${route.path}`, this.resolvers);
        stage = 'handling';
        const response = await route.handle(req);
        const result = toResult(response);
        if ('release' in response) response.release?.();
        if (auditable(route, req))
          audit({
            ...who(req),
            action: `${route.method} ${route.path}`,
            resource: { ...req.params },
            status: result.statusCode ?? 200,
            result: 'allowed',
            ...(requestId ? { requestId } : {}),
          });
        return result;
      }
      if (pathMatched) {
        const allowed = this.routes.filter((r) => r.pattern.test(req.path)).map((r) => r.method);
        return toResult({
          status: 405,
          json: { error: 'MethodNotAllowed', message: `${req.method} is not supported on ${req.path}; use ${allowed.join(', ')}` },
          headers: { allow: allowed.join(', ') },
        });
      }
      throw new NotFoundError(`no route for ${req.method} ${req.path}; see /openapi.json`);
    } catch (thrown) {
      // Throttling, 5xx and timeouts of AWS are 503s, not bugs: no diagnostic dump for them.
      const err = toSledgeError(thrown);
      if (!(err instanceof SledgeError) && this.unexpected && parsed && stage === 'handling') {
        await this.unexpected(err, parsed).catch((hookErr) => console.error('unexpected-error hook failed', hookErr));
      }
      const result = toResult(toErrorResponse(err, development));
      // Refused by authentication (403) or by the route's rule (403, or 404 for another tenant's resource).
      const denied =
        (stage === 'authenticating' && result.statusCode === 403) || (stage === 'authorizing' && (result.statusCode === 403 || result.statusCode === 404));
      if (denied || (matched && parsed && stage === 'handling' && auditable(matched, parsed))) {
        audit({
          ...(parsed ? who(parsed) : { principal: 'unknown' }),
          action: matched ? `${matched.method} ${matched.path}` : `${event.requestContext?.http?.method ?? '?'} ${event.rawPath ?? '?'}`,
          resource: { ...(parsed?.params ?? {}) },
          status: result.statusCode ?? 500,
          result: denied ? 'denied' : 'failed',
          ...(requestId ? { requestId } : {}),
        });
      }
      return result;
    } finally {
      // The request is answered: nothing reads its body any more (handlers await all their work).
      body.release();
    }
  }
}

function auditable(route: Route, req: Request): boolean {
  return route.access.audit ?? !(req.method === 'GET' || req.method === 'HEAD');
}

function who(req: Request): { principal: string; accessKey?: string } {
  const p = req.principal;
  return p ? { principal: p.arn, ...(p.accessKey ? { accessKey: p.accessKey } : {}) } : { principal: 'unsigned' };
}

/**
 * The event's body as bytes. A base64 body (a write's data) is decoded into a buffer leased
 * from `headBodyBuffers` (shared/data/buffer-pool.ts), to be released once the request is
 * answered: a fresh 4 MiB buffer per write was garbage whose external memory started full
 * collections, and whose first touch cost more CPU (page faults) than decoding into it. The
 * bytes are exactly those `Buffer.from` decodes.
 */
function requestBody(event: APIGatewayProxyEventV2): { buffer: Buffer; release(): void } {
  const text = event.body;
  if (text === undefined || text === null) return { buffer: Buffer.alloc(0), release: () => {} };
  if (!event.isBase64Encoded) return { buffer: Buffer.from(text, 'utf8'), release: () => {} };
  // At least the decoded length (exact unless the text holds characters base64 skips).
  const lease = headBodyBuffers.take(Buffer.byteLength(text, 'base64'));
  const written = lease.buffer.write(text, 'base64');
  return { buffer: lease.buffer.subarray(0, written), release: () => lease.release() };
}

function toRequest(event: APIGatewayProxyEventV2, body: Buffer): Request {
  const headers: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(event.headers ?? {})) headers[k.toLowerCase()] = v;
  return {
    method: event.requestContext.http.method.toUpperCase(),
    path: event.rawPath,
    params: {},
    query: { ...(event.queryStringParameters ?? {}) },
    headers,
    body,
  };
}

/** The single mapping from errors to HTTP responses. */
export function toErrorResponse(thrown: unknown, development: boolean): Response {
  const err = toSledgeError(thrown);
  if (err instanceof SledgeError) {
    const headers: Record<string, string> = {};
    if (err.retryAfterSeconds !== undefined) headers['retry-after'] = String(err.retryAfterSeconds);
    return { status: err.status, json: { error: err.name, message: err.message, retryable: err.retryable }, headers };
  }
  console.error('unhandled error', err);
  const e = err as Error;
  return {
    status: 500,
    json: {
      error: 'InternalError',
      message: development ? `${e?.name}: ${e?.message}` : 'internal error; the request may or may not have taken effect',
      ...(development ? { stack: e?.stack } : {}),
    },
  };
}

function toResult(res: Response): APIGatewayProxyStructuredResultV2 {
  const headers = { ...(res.headers ?? {}) };
  let result: APIGatewayProxyStructuredResultV2;
  if ('json' in res) {
    result = { statusCode: res.status, headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(res.json) };
  } else if ('bytes' in res) {
    result = {
      statusCode: res.status,
      headers: { 'content-type': 'application/octet-stream', ...headers },
      body: res.bytes.toString('base64'),
      isBase64Encoded: true,
    };
  } else return { statusCode: res.status, headers };
  // What Lambda would carry: the result as JSON (a base64 body needs no escaping).
  const body = result.body ?? '';
  // Escaping at most sextuples a character (`\u0000`); small bodies need no count.
  if (body.length * 6 + 64 * 1024 < LAMBDA_PAYLOAD_LIMIT_BYTES) return result;
  const size = (result.isBase64Encoded ? body.length : Buffer.byteLength(JSON.stringify(body))) + Buffer.byteLength(JSON.stringify({ ...result, body: '' }));
  if (size > LAMBDA_PAYLOAD_LIMIT_BYTES) {
    const err = new PayloadTooLargeError(
      `the response would be ${size} bytes as a Lambda result, over the ${LAMBDA_PAYLOAD_LIMIT_BYTES} Lambda carries; ask for less`,
    );
    return {
      statusCode: 413,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ error: err.name, message: err.message, retryable: false }),
    };
  }
  return result;
}

// ---------------------------------------------------------------------------------------
// Parsing helpers shared by routes

/** Parses a JSON object body with a size limit; malformed JSON is a 400 naming the problem. */
export function jsonBody(req: Request, maxBytes = 64 * 1024): Record<string, unknown> {
  const type = req.headers['content-type'] ?? '';
  if (type && !type.startsWith('application/json')) throw new UnsupportedMediaTypeError(`expected content-type application/json, got ${type}`);
  if (req.body.length > maxBytes) throw new PayloadTooLargeError(`JSON body of ${req.body.length} bytes is over the limit of ${maxBytes}`);
  if (req.body.length === 0) throw new InvalidInputError('the body is empty; send a JSON object');
  let parsed: unknown;
  try {
    parsed = JSON.parse(req.body.toString('utf8'));
  } catch (err) {
    throw new InvalidInputError(`the body is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new InvalidInputError('the body must be a JSON object');
  return parsed as Record<string, unknown>;
}

/** Like jsonBody, but an empty body is an empty object (for routes whose body is optional). */
export function optionalJsonBody(req: Request, maxBytes = 64 * 1024): Record<string, unknown> {
  return req.body.length === 0 ? {} : jsonBody(req, maxBytes);
}

/** A required non-negative integer query parameter. */
export function intQuery(req: Request, name: string): number {
  const raw = req.query[name];
  if (raw === undefined || raw === '') throw new InvalidInputError(`query parameter ${name} is required`);
  if (!/^\d+$/.test(raw)) throw new InvalidInputError(`query parameter ${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  const n = Number(raw);
  if (!Number.isSafeInteger(n)) throw new InvalidInputError(`query parameter ${name} is too large: ${raw}`);
  return n;
}

/** A path parameter, percent-decoded; a malformed escape (`%zz`) is the caller's error, a 400. */
function decodeParam(name: string, raw: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    throw new InvalidInputError(`path parameter ${name} (${JSON.stringify(raw)}) holds a malformed percent-escape`);
  }
}
