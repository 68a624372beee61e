import { describe, expect, it } from 'vitest';
import { ApiError, apiError, CliError, formatCliError, networkReason, unreachable } from '../../cli/errors.ts';
import { listDrivesCommand, retireDriveCommand, watchEvacuation } from '../../cli/drives.ts';

/** What fetch throws when the socket fails: a TypeError whose cause carries Node's error code. */
function fetchFailure(cause: Error & { code?: string }): TypeError {
  return new TypeError('fetch failed', { cause });
}

describe('the CLI error lines', () => {
  it('names the network cause in an operator\'s words, with a hint only where it helps', () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:3000'), { code: 'ECONNREFUSED' });
    expect(unreachable('http://127.0.0.1:3000', fetchFailure(refused)).message).toBe('cannot reach the API at http://127.0.0.1:3000: connection refused; is npm start running?');
    expect(unreachable('https://api.example.com', fetchFailure(refused)).message).toBe('cannot reach the API at https://api.example.com: connection refused; is --api the URL of the Sledge API?');
    const noHost = Object.assign(new Error('getaddrinfo ENOTFOUND x.invalid'), { code: 'ENOTFOUND' });
    expect(unreachable('http://x.invalid', fetchFailure(noHost)).message).toBe('cannot reach the API at http://x.invalid: no such host');
    expect(networkReason(fetchFailure(new Error('bad port')), 'http://127.0.0.1:9')).toMatch(/^fetch refuses to connect to port 9 /);
    expect(networkReason(Object.assign(new Error('The operation was aborted due to timeout'), { name: 'TimeoutError' }), 'http://h')).toBe('no answer before the timeout');
    expect(networkReason(fetchFailure(new Error('something new')), 'http://h')).toBe('something new');
  });

  it('shows Sledge\'s error message with the status, and suspects --api when the body is not Sledge\'s', () => {
    const e = apiError(404, { error: 'NotFoundError', message: 'volume vol-x does not exist', retryable: false }, '', 'POST /volumes/vol-x/rebuild', null);
    expect(e).toBeInstanceOf(ApiError);
    expect(e.message).toBe('volume vol-x does not exist (404)');
    expect(apiError(503, { message: 'volume vol-x is being rebuilt' }, '', 'GET /x', '5').message).toBe('volume vol-x is being rebuilt (503; retry after 5 s)');
    expect(apiError(404, null, '<html>Not Found</html>', 'GET /drives', null).message).toBe('GET /drives answered 404: <html>Not Found</html>; is --api the URL of the Sledge API?');
  });

  it('prints one line, and the stack and causes only when debugging', () => {
    const err = new CliError('volume vol-x does not exist (404)', { cause: new Error('inner') });
    expect(formatCliError(err, false)).toBe('sledge: volume vol-x does not exist (404)\n');
    const debug = formatCliError(err, true);
    expect(debug.startsWith('sledge: volume vol-x does not exist (404)\n')).toBe(true);
    expect(debug).toMatch(/^\s+at /m);
    expect(debug).toContain('inner');
    const bug = new TypeError("Cannot read properties of undefined (reading 'x')");
    expect(formatCliError(bug, false)).toBe("sledge: unexpected TypeError: Cannot read properties of undefined (reading 'x') (set SLEDGE_DEBUG=1 to see the stack)\n");
    expect(formatCliError(bug, true)).toMatch(/^\s+at /m);
  });

  it('throws the API\'s error from the drive commands instead of printing it to stdout', async () => {
    const out: string[] = [];
    const w = { write: (s: string) => (out.push(s), true) } as never;
    const notFound = async () => ({ status: 404, json: async () => ({ error: 'NotFoundError', message: 'drive s/d09 is not in the registry', retryable: false }) });
    await expect(watchEvacuation('http://api', 's/d09', w, { fetch: notFound })).rejects.toMatchObject({ name: 'ApiError', message: 'drive s/d09 is not in the registry (404)', status: 404 });
    await expect(retireDriveCommand('http://api', 's/d09', w, { fetch: notFound })).rejects.toThrow('drive s/d09 is not in the registry (404)');
    const busy = async () => ({ status: 503, json: async () => ({ error: 'UnavailableError', message: 'throttled', retryable: true }), retryAfter: '1' });
    await expect(listDrivesCommand('http://api', w, { fetch: busy })).rejects.toThrow('throttled (503; retry after 1 s)');
    expect(out).toEqual([]);
  });
});
