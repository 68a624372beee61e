/**
 * The raw HTTP/1.1 client (shared/net/http.ts `getInto` and `rawExchange`: the chunk GETs of
 * direct reads, the head's chunk PUTs and GETs)
 * against real HTTP servers on loopback: node:http for well-formed answers, and a raw TCP
 * server for the answers it must refuse. Whatever it refuses, the direct read falls back to the
 * API read; what it accepts must be exactly the bytes sent.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import * as net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getInto, HEAD_READ_BYTES, rawExchange, rawGetBodyBytes } from '#shared/net/http.ts';

const body = randomBytes(300 * 1024 + 17);
let server: Server;
let base = '';
let connections = 0;
const seen: Array<{ url: string; range: string | undefined; host: string | undefined }> = [];
/** PUT bodies the server received, by path. */
const received = new Map<string, Buffer>();

beforeAll(async () => {
  server = createServer((req, res) => {
    seen.push({ url: req.url!, range: req.headers.range, host: req.headers.host });
    if (req.method === 'PUT') {
      const parts: Buffer[] = [];
      req.on('data', (b: Buffer) => parts.push(b));
      req.on('end', () => {
        received.set(req.url!, Buffer.concat(parts));
        if (req.url!.startsWith('/refuse')) res.writeHead(412, { 'content-length': 7 }).end('refused');
        else res.writeHead(200, { 'content-length': 0, etag: '"e"' }).end();
      });
      return;
    }
    if (req.url!.startsWith('/missing')) {
      res.writeHead(404, { 'content-type': 'text/plain', 'content-length': 11 }).end('no such key');
      return;
    }
    if (req.url!.startsWith('/close')) res.setHeader('connection', 'close');
    const m = /bytes=(\d+)-(\d+)/.exec(req.headers.range ?? '')!;
    const part = body.subarray(Number(m[1]), Number(m[2]) + 1);
    res.writeHead(206, { 'content-length': part.length, 'content-range': `bytes ${m[1]}-${m[2]}/${body.length}` });
    // In several writes, so the body arrives in several reads.
    for (let at = 0; at < part.length; at += 50_000) res.write(part.subarray(at, at + 50_000));
    res.end();
  });
  server.on('connection', () => connections++);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

/** A TCP server that answers every request with `answer` (raw bytes), then does what `after` says. */
async function rawServer(answer: Buffer, after: 'keep' | 'close'): Promise<{ url: string; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const s = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('data', () => {
      sock.write(answer);
      if (after === 'close') sock.end();
    });
    sock.on('error', () => {});
  });
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(s.address() as net.AddressInfo).port}/x`,
    close: async () => {
      for (const sock of sockets) sock.destroy();
      await new Promise((resolve) => s.close(resolve));
    },
  };
}

describe('getInto: the raw GET of direct reads', () => {
  it('reads a ranged body into the given buffer over one kept-alive connection, with the query and the signed headers as given', async () => {
    const before = connections;
    const bytesBefore = { ...rawGetBodyBytes };
    for (const [start, end] of [
      [0, 65535],
      [65536, 300 * 1024 + 16],
      [5, 5],
    ] as const) {
      const target = Buffer.alloc(end - start + 1);
      const got = await getInto(`${base}/chunk?X-Amz-Signature=abc&x=1`, { range: `bytes=${start}-${end}` }, target, 206, 5_000);
      expect(got.status).toBe(206);
      expect(got.body, 'the body is the buffer given').toBe(target);
      expect(target.equals(body.subarray(start, end + 1))).toBe(true);
    }
    expect(connections - before, 'one connection, kept alive').toBe(1);
    // Every body byte counted once; past the first read of each answer (its header section and
    // the body's first bytes), the kernel reads the body into the target itself.
    const inPlace = rawGetBodyBytes.inPlace - bytesBefore.inPlace;
    const copied = rawGetBodyBytes.copied - bytesBefore.copied;
    expect(inPlace + copied).toBe(body.length + 1);
    expect(copied, `body bytes copied (${inPlace} read in place): at most what the three header reads held`).toBeLessThanOrEqual(3 * HEAD_READ_BYTES);
    expect(seen.at(-1)).toEqual({ url: '/chunk?X-Amz-Signature=abc&x=1', range: 'bytes=5-5', host: base.slice('http://'.length) });
  });

  it('gives another status its own buffer, and honours connection: close', async () => {
    const target = Buffer.alloc(16, 0xaa);
    const missing = await getInto(`${base}/missing`, { range: 'bytes=0-15' }, target, 206, 5_000);
    expect(missing.status).toBe(404);
    expect(missing.body.toString()).toBe('no such key');
    expect(target.equals(Buffer.alloc(16, 0xaa)), 'the target is untouched').toBe(true);
    const before = connections;
    // The first reuses the connection the 404 came on; the server closes it after each answer.
    for (let i = 0; i < 3; i++) {
      const t = Buffer.alloc(100);
      expect((await getInto(`${base}/close`, { range: 'bytes=0-99' }, t, 206, 5_000)).body.equals(body.subarray(0, 100))).toBe(true);
    }
    expect(connections - before, 'a new connection after each close').toBe(2);
  });

  it('sends again on a new connection when a kept-alive one was closed by the server while idle', async () => {
    const t = Buffer.alloc(10);
    await getInto(`${base}/idle`, { range: 'bytes=0-9' }, t, 206, 5_000);
    // The server drops its idle connections (as S3 does after a while).
    server.closeIdleConnections();
    await new Promise((resolve) => setTimeout(resolve, 50));
    const again = Buffer.alloc(10);
    expect((await getInto(`${base}/idle`, { range: 'bytes=10-19' }, again, 206, 5_000)).body.equals(body.subarray(10, 20))).toBe(true);
  });

  it('reads an answer whose header section arrives in several pieces, the first bytes of the body with its last', async () => {
    const payload = randomBytes(70_000);
    const answer = Buffer.concat([Buffer.from(`HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 0-69999/70000\r\ncontent-length: ${payload.length}\r\n\r\n`), payload]);
    // Cut inside the status line, inside a header, and two bytes into the blank line.
    const cuts = [5, 40, answer.indexOf('\r\n\r\n') + 2, answer.length];
    const sockets = new Set<net.Socket>();
    const s = net.createServer((sock) => {
      sockets.add(sock);
      sock.on('error', () => {});
      sock.once('data', async () => {
        let at = 0;
        for (const cut of cuts) {
          sock.write(answer.subarray(at, cut));
          at = cut;
          // Apart, so that each piece is its own read.
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
      });
    });
    await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
    try {
      const target = Buffer.alloc(payload.length);
      const got = await getInto(`http://127.0.0.1:${(s.address() as net.AddressInfo).port}/x`, {}, target, 206, 5_000);
      expect(got.status).toBe(206);
      expect(got.headers['content-range']).toBe('bytes 0-69999/70000');
      expect(got.body).toBe(target);
      expect(target.equals(payload)).toBe(true);
    } finally {
      for (const sock of sockets) sock.destroy();
      await new Promise((resolve) => s.close(resolve));
    }
  });

  it('refuses answers it cannot read exactly: chunked, more bytes than declared, a closed connection mid-body, silence', async () => {
    const cases: Array<[string, Buffer, 'keep' | 'close', RegExp]> = [
      ['chunked', Buffer.from('HTTP/1.1 206 Partial Content\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n'), 'keep', /does not read/],
      ['too long', Buffer.from('HTTP/1.1 206 Partial Content\r\ncontent-length: 4\r\n\r\nabcdEXTRA'), 'keep', /more bytes than/],
      ['cut short', Buffer.from('HTTP/1.1 206 Partial Content\r\ncontent-length: 8\r\n\r\nabcd'), 'close', /closed/],
      ['not HTTP', Buffer.from('SSH-2.0-OpenSSH\r\n\r\n'), 'keep', /does not read/],
    ];
    for (const [name, answer, after, error] of cases) {
      const s = await rawServer(answer, after);
      try {
        await expect(getInto(s.url, { range: 'bytes=0-3' }, Buffer.alloc(4), 206, 5_000), name).rejects.toThrow(error);
      } finally {
        await s.close();
      }
    }
    const silent = await rawServer(Buffer.alloc(0), 'keep');
    try {
      await expect(getInto(silent.url, {}, Buffer.alloc(4), 206, 300)).rejects.toThrow(/no answer within 300 ms/);
    } finally {
      await silent.close();
    }
  });

  it('PUTs a body given in pieces, in order, and keeps the connection only after a success', async () => {
    const pieces = [randomBytes(100_000), randomBytes(1), randomBytes(70_000)];
    // No connection left from the tests before: the first PUT opens one.
    server.closeIdleConnections();
    await new Promise((resolve) => setTimeout(resolve, 50));
    const before = connections;
    for (let i = 0; i < 3; i++) {
      const got = await rawExchange(`${base}/put-${i}?X-Amz-Signature=s`, { method: 'PUT', headers: { 'if-none-match': '*' }, body: pieces, timeoutMs: 5_000 });
      expect(got.status).toBe(200);
      expect(got.headers.etag).toBe('"e"');
      expect(got.body.length).toBe(0);
      expect(received.get(`/put-${i}?X-Amz-Signature=s`)!.equals(Buffer.concat(pieces))).toBe(true);
    }
    expect(connections - before, 'one connection, kept alive').toBe(1);
    const refused = await rawExchange(`${base}/refuse`, { method: 'PUT', body: pieces[0]!, timeoutMs: 5_000 });
    expect(refused.status).toBe(412);
    expect(refused.body.toString()).toBe('refused');
    // A refused request with a body may have been answered before the server read all of it.
    await rawExchange(`${base}/put-after?X-Amz-Signature=s`, { method: 'PUT', body: pieces[1]!, timeoutMs: 5_000 });
    expect(connections - before, 'a new connection after the refusal').toBe(2);
  });
});
