/**
 * The gateway's HTTP client: one request over node:http(s) with kept-alive connections, its
 * answer's body read into one buffer. The gateway uses it for the volume API and for the chunk
 * GETs of direct reads instead of fetch, which costs several times more CPU per request and
 * copies every body once more (measured in docs/nbd-gateway.md, "Speed against s3backer").
 */
import { Agent as HttpAgent, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';

// Keep-alive connections, shared by every request of the process.
const httpAgent = new HttpAgent({ keepAlive: true, maxSockets: 64 });
const httpsAgent = new HttpsAgent({ keepAlive: true, maxSockets: 64 });

export interface HttpAnswer {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

export interface HttpRequest {
  method: string;
  headers?: Record<string, string>;
  /** Sent in order, without joining them first. */
  body?: Buffer | readonly Buffer[];
  /** The whole exchange, from sending to the last byte of the answer. */
  timeoutMs: number;
  /**
   * Where the body goes when the answer has this status and exactly `bytes` bytes: a buffer of
   * the caller's (a chunk GET lands in the read's own buffer, so it is not copied again).
   */
  into?: { status: number; target: Buffer };
}

/** Sends one request; resolves with any answer (the caller judges the status), rejects on network errors and the timeout. */
export function httpExchange(url: string, r: HttpRequest): Promise<HttpAnswer> {
  const https = url.startsWith('https:');
  const parts = r.body === undefined ? [] : Buffer.isBuffer(r.body) ? [r.body] : r.body;
  const bodyBytes = parts.reduce((n, b) => n + b.length, 0);
  const headers: Record<string, string> = { ...r.headers };
  if (r.body !== undefined) headers['content-length'] = String(bodyBytes);
  return new Promise((resolve, reject) => {
    const req = (https ? httpsRequest : httpRequest)(url, { method: r.method, headers, agent: https ? httpsAgent : httpAgent }, (res: IncomingMessage) => {
      const status = res.statusCode ?? 0;
      const declared = Number(res.headers['content-length']);
      const target = r.into && r.into.status === status && declared === r.into.target.length ? r.into.target : Number.isSafeInteger(declared) && declared > 0 ? Buffer.allocUnsafe(declared) : null;
      const chunks: Buffer[] = [];
      // Bytes in `target`; once a chunk does not fit, it and the rest go to `chunks`.
      let filled = 0;
      res.on('data', (chunk: Buffer) => {
        if (target && chunks.length === 0 && filled + chunk.length <= target.length) {
          chunk.copy(target, filled);
          filled += chunk.length;
        } else chunks.push(chunk);
      });
      res.on('end', () => {
        clearTimeout(timer);
        let body: Buffer;
        if (target && chunks.length === 0) body = filled === target.length ? target : target.subarray(0, filled);
        else body = Buffer.concat([...(target ? [target.subarray(0, filled)] : []), ...chunks]);
        resolve({ status, headers: res.headers, body });
      });
      res.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
    const timer = setTimeout(() => req.destroy(new Error(`no answer within ${r.timeoutMs} ms`)), r.timeoutMs);
    req.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    for (const b of parts) req.write(b);
    req.end();
  });
}
