/**
 * A small router for API Gateway HTTP API (payload 2.0) events. All Lambda-event knowledge
 * lives here: routes receive a parsed request and return a plain response; errors are mapped
 * to HTTP once, in `toErrorResponse`, after AWS SDK errors that mean "unavailable now"
 * (throttling, 5xx, timeouts) became UnavailableErrors (`toSledgeError`, shared/aws/errors.ts).
 */
import type { APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2 } from 'aws-lambda';
import { toSledgeError } from '../aws/errors.ts';
import { InvalidInputError, NotFoundError, PayloadTooLargeError, SledgeError, UnsupportedMediaTypeError } from '../core/errors.ts';

export interface Request {
  method: string;
  path: string;
  params: Record<string, string>;
  query: Record<string, string | undefined>;
  headers: Record<string, string | undefined>;
  body: Buffer;
}

export type Response =
  | { status: number; json: unknown; headers?: Record<string, string> }
  | { status: number; bytes: Buffer; headers?: Record<string, string> }
  | { status: number; headers?: Record<string, string> };

type Route = { method: string; pattern: RegExp; names: string[]; handle: (req: Request) => Promise<Response> };

export class Router {
  private readonly routes: Route[] = [];
  private unexpected?: (err: unknown, req: Request) => Promise<void>;

  /** Called for errors that are not SledgeErrors (bugs, broken invariants) before the 500. */
  onUnexpectedError(hook: (err: unknown, req: Request) => Promise<void>): this {
    this.unexpected = hook;
    return this;
  }

  /** Adds a route; `{name}` segments match one path segment and become `params.name`. */
  on(method: string, path: string, handle: (req: Request) => Promise<Response>): this {
    const names: string[] = [];
    const pattern = new RegExp('^' + path.replace(/\{(\w+)\}/g, (_, name: string) => (names.push(name), '([^/]+)')) + '/?$');
    this.routes.push({ method, pattern, names, handle });
    return this;
  }

  async handle(event: APIGatewayProxyEventV2, development = false): Promise<APIGatewayProxyStructuredResultV2> {
    let parsed: Request | undefined;
    try {
      const req = (parsed = toRequest(event));
      let pathMatched = false;
      for (const route of this.routes) {
        const m = route.pattern.exec(req.path);
        if (!m) continue;
        pathMatched = true;
        if (route.method !== req.method) continue;
        route.names.forEach((n, i) => (req.params[n] = decodeParam(n, m[i + 1]!)));
        return toResult(await route.handle(req));
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
      if (!(err instanceof SledgeError) && this.unexpected && parsed) {
        await this.unexpected(err, parsed).catch((hookErr) => console.error('unexpected-error hook failed', hookErr));
      }
      return toResult(toErrorResponse(err, development));
    }
  }
}

function toRequest(event: APIGatewayProxyEventV2): Request {
  const headers: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(event.headers ?? {})) headers[k.toLowerCase()] = v;
  const body = event.body === undefined || event.body === null ? Buffer.alloc(0) : Buffer.from(event.body, event.isBase64Encoded ? 'base64' : 'utf8');
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
  if ('json' in res) {
    return { statusCode: res.status, headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(res.json) };
  }
  if ('bytes' in res) {
    return {
      statusCode: res.status,
      headers: { 'content-type': 'application/octet-stream', ...headers },
      body: res.bytes.toString('base64'),
      isBase64Encoded: true,
    };
  }
  return { statusCode: res.status, headers };
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
