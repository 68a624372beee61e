/**
 * How the `sledge` command fails: one line on stderr that says what went wrong and, where
 * there is one, what to do, then a non-zero exit. A Node stack trace tells an operator nothing
 * about a mistyped volume id or a stopped API, so stacks are printed only with SLEDGE_DEBUG=1.
 *
 * Errors meant for the user are `CliError`s: their message is that one line already. The API
 * client code in this folder turns HTTP error answers and network failures into them.
 */
import { inspect } from 'node:util';
import { namedError } from '#shared/core/errors.ts';

/** A failure whose message is already the line to show the user (without the `sledge: ` prefix). */
export class CliError extends namedError('CliError') {}

/** The command line is wrong; the message says how. Exit status 2, with the usage. */
export class UsageError extends namedError('UsageError') {}

/**
 * A UsageError from what `util.parseArgs` threw: Node's messages can run to three lines (a
 * value that looks like an option); joined into the one line the CLI prints.
 */
export function parseArgsUsageError(err: unknown): UsageError {
  return new UsageError(String((err as Error).message).split('\n').map((l) => l.trim()).filter(Boolean).join(' '));
}

/** The API answered with an error status; `status` and the API's error body say why. */
export class ApiError extends CliError {
  override name = 'ApiError';
  constructor(
    message: string,
    readonly status: number,
    readonly body: ApiErrorBody | null,
  ) {
    super(message);
  }
}

/** The API could not be reached at all: nothing was answered. */
export class ApiUnreachableError extends CliError {
  override name = 'ApiUnreachableError';
}

/** An answer's body as JSON, or null when it is not JSON (a proxy's HTML page, an empty body). */
export function jsonOrNull(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/** Sledge's error body (shared/api/openapi.json, `Error`). */
export interface ApiErrorBody {
  error?: string;
  message?: string;
  retryable?: boolean;
}

/** Node's network error codes, in the words an operator would use. */
const NETWORK_REASONS: Record<string, string> = {
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'the connection was reset',
  ENOTFOUND: 'no such host',
  EAI_AGAIN: 'the host name could not be resolved (DNS did not answer)',
  EHOSTUNREACH: 'the host is unreachable',
  ENETUNREACH: 'the network is unreachable',
  ETIMEDOUT: 'the connection timed out',
  UND_ERR_CONNECT_TIMEOUT: 'the connection timed out',
  UND_ERR_SOCKET: 'the connection closed unexpectedly',
};

/** The errors `err` wraps, outermost first (fetch wraps the socket error in `cause`). */
function causeChain(err: unknown): unknown[] {
  const chain: unknown[] = [];
  for (let e: unknown = err; e !== undefined && e !== null && chain.length < 10; e = (e as { cause?: unknown }).cause) chain.push(e);
  return chain;
}

/**
 * Why a request to `apiUrl` got no answer, in a few words: `connection refused`, `no such host`.
 *
 * @example
 * networkReason(await fetch('http://127.0.0.1:1').catch((e) => e), 'http://127.0.0.1:1');
 * // "fetch refuses to connect to port 1 ..."
 */
export function networkReason(err: unknown, apiUrl: string): string {
  const chain = causeChain(err);
  for (const e of chain) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && NETWORK_REASONS[code]) return NETWORK_REASONS[code];
  }
  for (const e of chain) {
    const name = (e as { name?: unknown }).name;
    if (name === 'TimeoutError') return 'no answer before the timeout';
    // undici refuses, without connecting, the ports the Fetch standard lists as unsafe.
    if ((e as { message?: unknown }).message === 'bad port') {
      let port = '';
      try {
        port = new URL(apiUrl).port;
      } catch {
        // The URL was checked when it was parsed from the command line.
      }
      return `fetch refuses to connect to port ${port} (the Fetch standard blocks it, so nothing was sent); serve the API on another port`;
    }
  }
  const innermost = chain[chain.length - 1];
  return innermost instanceof Error ? innermost.message : String(innermost);
}

/** Whether `apiUrl` names this machine, where the API is usually the one `npm start` serves. */
function isLoopback(apiUrl: string): boolean {
  try {
    const host = new URL(apiUrl).hostname;
    return host === 'localhost' || host === '[::1]' || host.startsWith('127.');
  } catch {
    return false;
  }
}

/** The error for a request to `apiUrl` that got no answer. */
export function unreachable(apiUrl: string, err: unknown): ApiUnreachableError {
  const reason = networkReason(err, apiUrl);
  const hint = reason !== 'connection refused' ? '' : isLoopback(apiUrl) ? '; is npm start running?' : '; is --api the URL of the Sledge API?';
  return new ApiUnreachableError(`cannot reach the API at ${apiUrl}: ${reason}${hint}`, { cause: err });
}

/**
 * The error for an HTTP error answer. Sledge's error messages name the thing and the problem
 * (`volume vol-x does not exist`), so they are shown as they are, with the status; an answer
 * that is not Sledge's error JSON is more likely a wrong `--api`, and the line says so.
 *
 * @example
 * apiError(404, { error: 'NotFoundError', message: 'volume vol-x does not exist' }, '', 'POST /volumes/vol-x/rebuild', null).message;
 * // "volume vol-x does not exist (404)"
 */
export function apiError(status: number, body: unknown, text: string, request: string, retryAfter: string | null): ApiError {
  const e = body !== null && typeof body === 'object' ? (body as ApiErrorBody) : null;
  if (e && typeof e.message === 'string') {
    const retry = retryAfter ? `; retry after ${retryAfter} s` : '';
    return new ApiError(`${e.message} (${status}${retry})`, status, e);
  }
  const excerpt = text.trim().slice(0, 200);
  return new ApiError(`${request} answered ${status}${excerpt ? `: ${excerpt}` : ''}; is --api the URL of the Sledge API?`, status, null);
}

/** Set SLEDGE_DEBUG=1 to see stacks: for bugs in the CLI, and for reports. */
export function debugEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.SLEDGE_DEBUG === '1';
}

/**
 * What the CLI prints for an error that ends a command. A `CliError` is one line; anything
 * else is a bug in the CLI, reported in one line with a pointer to SLEDGE_DEBUG, or with its
 * stack and causes when debugging.
 */
export function formatCliError(err: unknown, debug: boolean): string {
  const detail = debug ? `\n${inspect(err, { depth: 6 })}` : '';
  if (err instanceof CliError) return `sledge: ${err.message}${detail}\n`;
  const name = err instanceof Error ? err.name : typeof err;
  const message = err instanceof Error ? err.message : String(err);
  return `sledge: unexpected ${name}: ${message}${debug ? detail : ' (set SLEDGE_DEBUG=1 to see the stack)'}\n`;
}
