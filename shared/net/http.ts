/**
 * A plain HTTP client: one request over node:http(s) with kept-alive connections, its answer's
 * body read into one buffer (`httpExchange`), and a smaller one over raw sockets for chunk
 * requests (`rawExchange`). The gateway uses them for the volume API and the chunk requests of
 * direct reads and writes, the head for its chunk PUTs and GETs (shared/aws/s3-direct.ts),
 * instead of fetch or the SDK's handler, which cost several times more CPU per request and copy
 * every body once more (measured in docs/nbd-gateway.md, "Speed against s3backer", and
 * docs/page-map.md, "The head's CPU").
 */
import { Agent as HttpAgent, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import * as net from 'node:net';

// Keep-alive connections, shared by every request of the process.
const httpAgent = new HttpAgent({ keepAlive: true, maxSockets: 64 });
const httpsAgent = new HttpsAgent({ keepAlive: true, maxSockets: 64 });

export interface HttpAnswer {
  status: number;
  headers: IncomingHttpHeaders | Record<string, string>;
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

/** A request's body as the pieces to send, and its headers with the body's `content-length` (when it has a body). */
function outgoing(r: HttpRequest): { parts: readonly Buffer[]; headers: Record<string, string> } {
  const parts = r.body === undefined ? [] : Buffer.isBuffer(r.body) ? [r.body] : r.body;
  const headers: Record<string, string> = { ...r.headers };
  if (r.body !== undefined) headers['content-length'] = String(parts.reduce((n, b) => n + b.length, 0));
  return { parts, headers };
}

/** Sends one request; resolves with any answer (the caller judges the status), rejects on network errors and the timeout. */
export function httpExchange(url: string, r: HttpRequest): Promise<HttpAnswer> {
  const https = url.startsWith('https:');
  const { parts, headers } = outgoing(r);
  return new Promise((resolve, reject) => {
    const req = (https ? httpsRequest : httpRequest)(url, { method: r.method, headers, agent: https ? httpsAgent : httpAgent }, (res: IncomingMessage) => {
      const status = res.statusCode ?? 0;
      const declared = Number(res.headers['content-length']);
      const target =
        r.into && r.into.status === status && declared === r.into.target.length
          ? r.into.target
          : Number.isSafeInteger(declared) && declared > 0
            ? Buffer.allocUnsafe(declared)
            : null;
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

/**
 * A GET over plain HTTP/1.1 into `target` when the answer has status `status` and exactly
 * `target.length` bytes (`rawExchange`).
 */
export function getInto(url: string, headers: Record<string, string>, target: Buffer, status: number, timeoutMs: number): Promise<HttpAnswer> {
  return rawExchange(url, { method: 'GET', headers, timeoutMs, into: { status, target } });
}

/**
 * One request over plain HTTP/1.1 (a chunk GET or PUT), its answer's body read straight into
 * `into.target` by the kernel when it has that status and length (net's `onread` with a buffer
 * chosen before each socket read: once the header section is parsed, the rest of the body's
 * room), so the body is not copied in user space; the header section and the body's first bytes
 * after it come through the connection's own read buffer. A request body is written to the
 * socket as given, in one corked write. No buffer per socket read, no stream, no HTTP parser
 * object per answer. A cold read is mostly these bodies, and node:http spent about a third of
 * the gateway's CPU on them (its parser and two layers of streams, and the garbage of a buffer
 * per 64 KiB read). Only for http: URLs whose answer has a Content-Length; anything else goes
 * through `httpExchange`.
 *
 * A kept-alive connection the server closed while it sat idle fails before any answer byte;
 * the request is then sent once more on a new connection. For a PUT that is safe only when the
 * request is conditional or idempotent (chunk PUTs carry `If-None-Match: *`).
 */
export function rawExchange(url: string, r: HttpRequest): Promise<HttpAnswer> {
  const u = new URL(url);
  if (u.protocol !== 'http:') return httpExchange(url, r);
  const { parts, headers } = outgoing(r);
  const head = Buffer.from(
    `${r.method} ${u.pathname}${u.search} HTTP/1.1\r\nhost: ${u.host}\r\n${Object.entries(headers)
      .map(([k, v]) => `${k}: ${v}\r\n`)
      .join('')}\r\n`,
    'latin1',
  );
  const key = `${u.hostname}:${u.port || '80'}`;
  return new Promise((resolve, reject) => {
    const attempt = (reused: boolean) => {
      const conn = takeConnection(key, u.hostname, Number(u.port || 80));
      const wasIdle = reused && conn.exchanges > 0;
      conn.start(head, parts, r.into, r.timeoutMs, (err, answer) => {
        if (!err) return resolve(answer!);
        // A kept-alive connection the server closed while idle: once more on a new one.
        if (wasIdle && (err as { beforeAnswer?: boolean }).beforeAnswer) return attempt(false);
        reject(err);
      });
    };
    attempt(true);
  });
}

const idle = new Map<string, RawConnection[]>();

/** Body bytes of `getInto` answers the kernel read into place, and those copied out of a connection's read buffer (tests, benchmarks). */
export const rawGetBodyBytes = { inPlace: 0, copied: 0 };

function takeConnection(key: string, host: string, port: number): RawConnection {
  const list = idle.get(key);
  while (list && list.length > 0) {
    const c = list.pop()!;
    if (c.usable()) return c;
  }
  return new RawConnection(key, host, port);
}

/** How long a connection may sit idle before the gateway closes it (servers close theirs too). */
const IDLE_MS = 4_000;
/** A header section longer than this is not an S3 answer. */
const HEADER_MAX_BYTES = 64 * 1024;
/**
 * The most one socket read takes before an answer's header section is parsed: an S3 header
 * section is well under this, so the body's bytes in the same read, copied once more, are few
 * (a read into the whole buffer took up to 256 KiB of a 1 MiB chunk's body that way).
 */
export const HEAD_READ_BYTES = 8 * 1024;

class RawConnection {
  private readonly socket: net.Socket;
  private readonly readBuffer = Buffer.allocUnsafe(HEAD_READ_BYTES);
  exchanges = 0;
  private closed = false;
  private idleTimer: NodeJS.Timeout | undefined;
  private x:
    | {
        into: { status: number; target: Buffer } | undefined;
        done: (err: Error | null, answer?: HttpAnswer) => void;
        timer: NodeJS.Timeout;
        headerBytes: Buffer[];
        headerLength: number;
        answer?: HttpAnswer;
        bodyBytes: number;
        filled: number;
        keepAlive: boolean;
        sentBody: boolean;
      }
    | undefined;

  constructor(
    private readonly key: string,
    host: string,
    port: number,
  ) {
    this.socket = net.connect({ host, port, onread: { buffer: () => this.nextReadInto(), callback: (n: number, buf: Uint8Array) => this.onRead(n, buf) } });
    this.socket.setNoDelay(true);
    this.socket.unref();
    this.socket.on('error', (err) => this.fail(err));
    this.socket.on('close', () => this.fail(new Error('the connection closed')));
    this.socket.on('end', () => this.socket.end());
  }

  usable(): boolean {
    return !this.closed && !this.socket.destroyed;
  }

  start(
    head: Buffer,
    body: readonly Buffer[],
    into: { status: number; target: Buffer } | undefined,
    timeoutMs: number,
    done: (err: Error | null, answer?: HttpAnswer) => void,
  ): void {
    clearTimeout(this.idleTimer);
    this.exchanges++;
    const timer = setTimeout(() => this.fail(new Error(`no answer within ${timeoutMs} ms`), true), timeoutMs);
    this.x = { into, done, timer, headerBytes: [], headerLength: 0, bodyBytes: 0, filled: 0, keepAlive: true, sentBody: body.length > 0 };
    this.socket.cork();
    this.socket.write(head);
    for (const b of body) this.socket.write(b);
    this.socket.uncork();
  }

  /**
   * Where the next socket read goes (node calls this before each read): the unfilled rest of the
   * answer's body once its header section is parsed, so that the kernel copies the body into
   * place; else the connection's small read buffer (HEAD_READ_BYTES). Never an empty buffer (a
   * read into none fails).
   * A read never goes past the body's declared end: bytes beyond it stay in the socket and the
   * next read, into the read buffer, refuses them.
   */
  private nextReadInto(): Uint8Array {
    const x = this.x;
    if (x?.answer && x.filled < x.bodyBytes) return x.answer.body.subarray(x.filled, x.bodyBytes);
    return this.readBuffer;
  }

  private onRead(n: number, buf: Uint8Array): boolean {
    const x = this.x;
    if (x?.answer && buf.buffer === x.answer.body.buffer && buf.byteOffset === x.answer.body.byteOffset + x.filled) {
      // Read into the body in place (nextReadInto): nothing to copy.
      x.filled += n;
      rawGetBodyBytes.inPlace += n;
      if (x.filled === x.bodyBytes) this.finish();
      return true;
    }
    if (!x) {
      // Bytes nobody asked for: the connection cannot be trusted any more.
      this.fail(new Error('unexpected bytes on an idle connection'), true);
      return false;
    }
    let data = Buffer.from(buf.buffer, buf.byteOffset, n);
    if (!x.answer) {
      // Headers: read where they are when the blank line ends them in this read (the body's
      // first bytes after them are not copied twice); otherwise copied out of the shared read
      // buffer until it comes.
      const all = x.headerBytes.length === 0 ? data : Buffer.concat([...x.headerBytes, data]);
      x.headerLength += n;
      const end = all.indexOf('\r\n\r\n');
      if (end < 0) {
        if (x.headerLength > HEADER_MAX_BYTES) this.fail(new Error('an answer with an endless header section'), true);
        // Kept past this read: a view of the shared read buffer is copied, a joined one already is a copy.
        else x.headerBytes = [all === data ? Buffer.from(data) : all];
        return true;
      }
      const lines = all.subarray(0, end).toString('latin1').split('\r\n');
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '');
      const headers: Record<string, string> = {};
      for (const line of lines.slice(1)) {
        const colon = line.indexOf(':');
        if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
      }
      const length = Number(headers['content-length']);
      if (!m || headers['transfer-encoding'] !== undefined || !Number.isSafeInteger(length) || length < 0) {
        this.fail(new Error(`an answer this client does not read (${lines[0]}, content-length ${headers['content-length']})`), true);
        return false;
      }
      const status = Number(m[1]);
      // A refused request with a body may have been answered before the server read all of it:
      // the connection is not used again, lest the rest be read as the next request.
      x.keepAlive = (headers.connection ?? '').toLowerCase() !== 'close' && !lines[0]!.startsWith('HTTP/1.0') && !(x.sentBody && status >= 300);
      const body = x.into && status === x.into.status && length === x.into.target.length ? x.into.target : Buffer.allocUnsafe(length);
      x.answer = { status, headers, body };
      x.bodyBytes = length;
      data = all.subarray(end + 4);
    }
    const room = x.bodyBytes - x.filled;
    if (data.length > room) {
      this.fail(new Error('more bytes than the answer declared'), true);
      return false;
    }
    data.copy(x.answer.body, x.filled);
    x.filled += data.length;
    rawGetBodyBytes.copied += data.length;
    if (x.filled === x.bodyBytes) this.finish();
    return true;
  }

  private finish(): void {
    const x = this.x!;
    this.x = undefined;
    clearTimeout(x.timer);
    if (x.keepAlive && this.usable()) {
      let list = idle.get(this.key);
      if (!list) idle.set(this.key, (list = []));
      list.push(this);
      this.idleTimer = setTimeout(() => this.close(), IDLE_MS);
      this.idleTimer.unref();
    } else this.close();
    x.done(null, x.answer);
  }

  private close(): void {
    this.closed = true;
    clearTimeout(this.idleTimer);
    this.socket.destroy();
  }

  /** Ends the exchange in progress, if any, with `err`, and the connection with it. */
  private fail(err: Error, destroy = false): void {
    const x = this.x;
    this.x = undefined;
    this.closed = true;
    clearTimeout(this.idleTimer);
    if (destroy || !this.socket.destroyed) this.socket.destroy();
    if (!x) return;
    clearTimeout(x.timer);
    if (!x.answer) Object.assign(err, { beforeAnswer: true });
    x.done(err);
  }
}
