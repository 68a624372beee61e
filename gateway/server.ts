/**
 * The NBD server: one volume, served on a TCP port or a Unix socket, every connection sharing
 * one write-back cache. Handshake and command rules live in protocol.ts; caching and write-back
 * in cache.ts; this file is sockets, concurrency and error replies.
 *
 * A client that breaks the protocol (bad magic, unknown client flags, a WRITE over the payload
 * limit) loses its own connection and nothing else; a request that is well formed but wrong
 * (out of range, unknown command or flag) gets an NBD error reply; a failure of the API gets
 * EIO. Nothing a client sends can stop the gateway.
 */
import net from 'node:net';
import { WriteBackError, type WriteBackCache } from './cache.ts';
import {
  BASE_ALLOCATION,
  CLIENT_FLAGS_BYTES,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_FLAG_SEND_CACHE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  decodeMetaContextRequest,
  encodeBlockStatus,
  encodeMetaContextReply,
  encodeOffsetDataHeader,
  encodeStructuredError,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EIO,
  NBD_EINVAL,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_STARTTLS,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NbdProtocolError,
  OPTION_DATA_MAX_BYTES,
  OPTION_HEADER_BYTES,
  PAYLOAD_MAX_BYTES,
  REQUEST_HEADER_BYTES,
  commandName,
  decodeClientFlags,
  decodeInfoRequest,
  decodeOptionHeader,
  decodeRequest,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeOptionError,
  encodeOptionReply,
  encodeServerReply,
  encodeSimpleReply,
  requestError,
  type NbdRequest,
} from './protocol.ts';

/**
 * What every export advertises, and why each flag is true:
 * - SEND_FLUSH, SEND_FUA: the cache is volatile; FLUSH and FUA make writes durable.
 * - SEND_TRIM, SEND_WRITE_ZEROES: both become zero extents in the cache, in order with writes.
 * - CAN_MULTI_CONN: all connections to this gateway share one cache, so a FLUSH or FUA on one
 *   connection makes every connection's completed writes durable, and every connection reads
 *   every other's writes at once.
 * - SEND_FAST_ZERO: WRITE_ZEROES is a zero extent in the cache, never slower than a write of
 *   zeros, so a FAST_ZERO request is never refused.
 * - SEND_CACHE: NBD_CMD_CACHE reads the range into the clean cache (at most half of it) and
 *   replies once it is there.
 * Not advertised: READ_ONLY (but on snapshot exports), ROTATIONAL, DF (a READ is always one chunk anyway).
 * Structured replies and block status (base:allocation) are options, not flags.
 */
export const TRANSMISSION_FLAGS =
  NBD_FLAG_HAS_FLAGS |
  NBD_FLAG_SEND_FLUSH |
  NBD_FLAG_SEND_FUA |
  NBD_FLAG_SEND_TRIM |
  NBD_FLAG_SEND_WRITE_ZEROES |
  NBD_FLAG_CAN_MULTI_CONN |
  NBD_FLAG_SEND_FAST_ZERO |
  NBD_FLAG_SEND_CACHE;

/** The id of base:allocation on every connection that selects it. */
const BASE_ALLOCATION_ID = 1;

/** Options per connection before the server hangs up (a client looping on options is a DoS). */
const OPTIONS_MAX = 256;
/** Requests a connection may have in progress; past this the server stops reading its socket. */
const INFLIGHT_REQUESTS_MAX = 64;
/** Bytes read ahead of the request being parsed before the socket is paused. */
const READ_AHEAD_BYTES = 1024 * 1024;
/** How long shutdown waits for in-flight requests before it closes connections anyway. */
const SHUTDOWN_GRACE_MS = 30_000;
/**
 * After shutdown has answered every request and half-closed a connection, how long it waits for
 * the client to close its end before dropping the connection. A client may sit idle on an open
 * connection forever (and never read the server's end-of-stream), so this must be bounded.
 */
const SHUTDOWN_LINGER_MS = 1000;

/** Reads exact byte counts from a socket, pausing it when the reader falls behind (back-pressure). */
class SocketReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: { bytes: number; resolve: (b: Buffer | null) => void; reject: (e: Error) => void } | null = null;
  private ended = false;

  constructor(private readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
      this.settle();
      if (!this.waiter && this.buffered >= READ_AHEAD_BYTES) socket.pause();
    });
    const end = () => {
      this.ended = true;
      this.settle();
    };
    socket.on('end', end);
    socket.on('close', end);
    socket.on('error', end);
  }

  /** Stops reading: a pending or later read resolves as a clean end. */
  stop(): void {
    this.chunks = [];
    this.buffered = 0;
    this.ended = true;
    this.settle();
  }

  private take(bytes: number): Buffer {
    // Always a fresh buffer: the cache may keep it, and must not pin the socket's chunks.
    const out = Buffer.allocUnsafe(bytes);
    let filled = 0;
    while (filled < bytes) {
      const c = this.chunks[0]!;
      const n = Math.min(c.length, bytes - filled);
      c.copy(out, filled, 0, n);
      filled += n;
      if (n === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(n);
    }
    this.buffered -= bytes;
    return out;
  }

  private settle(): void {
    const w = this.waiter;
    if (!w) return;
    if (this.buffered >= w.bytes) {
      this.waiter = null;
      w.resolve(this.take(w.bytes));
    } else if (this.ended) {
      this.waiter = null;
      if (this.buffered === 0) w.resolve(null);
      else w.reject(new NbdProtocolError(`connection ended in the middle of a message (${this.buffered} of ${w.bytes} bytes)`));
    }
  }

  /** Exactly `bytes` bytes, or null when the peer ended the connection before sending any of them. */
  read(bytes: number): Promise<Buffer | null> {
    if (this.waiter) return Promise.reject(new Error('SocketReader: one read at a time'));
    return new Promise((resolve, reject) => {
      this.waiter = { bytes, resolve, reject };
      this.settle();
      if (this.waiter) this.socket.resume();
    });
  }

  /** Exactly `bytes` bytes; an end of the connection here is a protocol error. */
  async readExact(bytes: number): Promise<Buffer> {
    const b = await this.read(bytes);
    if (!b) throw new NbdProtocolError(`connection ended where ${bytes} more bytes were due`);
    return b;
  }
}

export interface NbdServerOptions {
  /** The export's name (the volume id). The empty name (the default export) means the same. */
  exportName: string;
  description: string;
  cache: WriteBackCache;
  listen: { host: string; port: number } | { socketPath: string };
  /**
   * Connections accepted before this resolves wait for it before the greeting; if it rejects
   * they are closed. The CLI listens first and attaches to the volume after, so that a gateway
   * that cannot listen never takes the volume from one that serves it.
   */
  ready?: Promise<void>;
  log?: (message: string) => void;
  /**
   * A read-only export (a snapshot): READ_ONLY is advertised, writes, trims and zeroes get
   * EPERM, and block status is not offered (the snapshot has no allocation route).
   */
  readOnly?: boolean;
}

export interface NbdServer {
  /** A URI the libnbd tools and qemu accept, e.g. `nbd://127.0.0.1:10809/vol-...`. */
  uri: string;
  /** Stops accepting, lets in-flight requests finish (bounded), then closes every connection. */
  close(): Promise<void>;
}

class Connection {
  private readonly reader: SocketReader;
  private inflight = 0;
  private waiters: Array<() => void> = [];
  private stopping = false;
  /** NBD_OPT_STRUCTURED_REPLY was negotiated: READ and BLOCK_STATUS answer in chunks. */
  private structured = false;
  /** base:allocation was selected with NBD_OPT_SET_META_CONTEXT. */
  private allocation = false;

  constructor(
    private readonly socket: net.Socket,
    private readonly opts: NbdServerOptions,
    private readonly log: (message: string) => void,
  ) {
    this.reader = new SocketReader(socket);
    if (socket.setNoDelay) socket.setNoDelay(true);
  }

  /** Asks the connection to stop reading requests; in-flight ones still get their replies. */
  stop(): void {
    this.stopping = true;
    this.reader.stop();
  }

  /** Drops the connection at once (shutdown grace expired). */
  destroy(): void {
    this.socket.destroy();
  }

  async run(): Promise<void> {
    try {
      if (this.opts.ready) await this.opts.ready;
      if (await this.handshake()) await this.transmission();
    } catch (err) {
      this.log(`connection closed: ${(err as Error).message}`);
    } finally {
      await this.idle();
      this.socket.end();
    }
  }

  private send(b: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(b);
  }

  private knows(name: string): boolean {
    return name === '' || name === this.opts.exportName;
  }

  /** The export's flags: a read-only export advertises READ_ONLY and no write commands. */
  private transmissionFlags(): number {
    return this.opts.readOnly ? NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_CACHE : TRANSMISSION_FLAGS;
  }

  /** Fixed newstyle negotiation. True when the client entered the transmission phase. */
  private async handshake(): Promise<boolean> {
    const { cache } = this.opts;
    this.send(encodeGreeting());
    const flagsBytes = await this.reader.read(CLIENT_FLAGS_BYTES);
    if (!flagsBytes) return false;
    const clientFlags = decodeClientFlags(flagsBytes);
    for (let i = 0; i < OPTIONS_MAX; i++) {
      const header = await this.reader.read(OPTION_HEADER_BYTES);
      if (!header) return false;
      const { option, length } = decodeOptionHeader(header);
      if (length > OPTION_DATA_MAX_BYTES) throw new NbdProtocolError(`option ${option} carries ${length} bytes, over the ${OPTION_DATA_MAX_BYTES} this server reads`);
      const data = length > 0 ? await this.reader.readExact(length) : Buffer.alloc(0);
      if (this.stopping && option !== NBD_OPT_ABORT) {
        if (option === NBD_OPT_EXPORT_NAME) return false;
        this.send(encodeOptionError(option, NBD_REP_ERR_SHUTDOWN, 'the gateway is shutting down'));
        continue;
      }
      switch (option) {
        case NBD_OPT_EXPORT_NAME: {
          const name = data.toString('utf8');
          // This option cannot fail politely: an unknown name ends the session.
          if (!this.knows(name)) throw new NbdProtocolError(`client asked for export ${JSON.stringify(name)}; this gateway serves ${this.opts.exportName}`);
          this.send(encodeExportNameReply(cache.sizeBytes, this.transmissionFlags(), clientFlags.noZeroes));
          return true;
        }
        case NBD_OPT_ABORT:
          this.send(encodeOptionReply(option, NBD_REP_ACK));
          return false;
        case NBD_OPT_LIST:
          if (length !== 0) {
            this.send(encodeOptionError(option, NBD_REP_ERR_INVALID, 'NBD_OPT_LIST carries no data'));
          } else {
            this.send(encodeServerReply(this.opts.exportName, this.opts.description));
            this.send(encodeOptionReply(option, NBD_REP_ACK));
          }
          break;
        case NBD_OPT_INFO:
        case NBD_OPT_GO: {
          const req = decodeInfoRequest(data);
          if (!req) {
            this.send(encodeOptionError(option, NBD_REP_ERR_INVALID, 'malformed NBD_OPT_INFO/GO data'));
            break;
          }
          if (!this.knows(req.name)) {
            this.send(encodeOptionError(option, NBD_REP_ERR_UNKNOWN, `no export ${JSON.stringify(req.name)}; this gateway serves ${this.opts.exportName}`));
            break;
          }
          this.send(encodeInfoExport(option, cache.sizeBytes, this.transmissionFlags()));
          // Sent even when not asked for (allowed): clients that honour it align to the volume's
          // blocks; the gateway still serves unaligned requests by read-modify-write.
          this.send(
            encodeInfoBlockSize(option, {
              minimumBytes: cache.blockSizeBytes,
              preferredBytes: Math.max(cache.blockSizeBytes, 4096),
              maximumBytes: PAYLOAD_MAX_BYTES,
            }),
          );
          if (req.requests.includes(NBD_INFO_NAME)) this.send(encodeInfoString(option, NBD_INFO_NAME, this.opts.exportName));
          if (req.requests.includes(NBD_INFO_DESCRIPTION)) this.send(encodeInfoString(option, NBD_INFO_DESCRIPTION, this.opts.description));
          this.send(encodeOptionReply(option, NBD_REP_ACK));
          if (option === NBD_OPT_GO) return true;
          break;
        }
        case NBD_OPT_STRUCTURED_REPLY:
          if (length !== 0) this.send(encodeOptionError(option, NBD_REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY carries no data'));
          else {
            this.structured = true;
            this.send(encodeOptionReply(option, NBD_REP_ACK));
          }
          break;
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT: {
          const req = decodeMetaContextRequest(data);
          if (!this.structured) {
            this.send(encodeOptionError(option, NBD_REP_ERR_INVALID, 'metadata contexts need structured replies (NBD_OPT_STRUCTURED_REPLY) first'));
            break;
          }
          if (!req) {
            this.send(encodeOptionError(option, NBD_REP_ERR_INVALID, 'malformed metadata context request'));
            break;
          }
          if (!this.knows(req.name)) {
            this.send(encodeOptionError(option, NBD_REP_ERR_UNKNOWN, `no export ${JSON.stringify(req.name)}; this gateway serves ${this.opts.exportName}`));
            break;
          }
          if (option === NBD_OPT_SET_META_CONTEXT) {
            // Each SET replaces the selection; only the exact name selects it.
            this.allocation = !this.opts.readOnly && req.queries.includes(BASE_ALLOCATION);
            if (this.allocation) this.send(encodeMetaContextReply(option, BASE_ALLOCATION_ID, BASE_ALLOCATION));
          } else if (req.queries.length === 0 || req.queries.some((q) => q === 'base:' || q === BASE_ALLOCATION)) {
            this.send(encodeMetaContextReply(option, 0, BASE_ALLOCATION));
          }
          this.send(encodeOptionReply(option, NBD_REP_ACK));
          break;
        }
        case NBD_OPT_STARTTLS:
          this.send(encodeOptionError(option, NBD_REP_ERR_UNSUP, 'this gateway does not speak TLS; use a Unix socket or a private network'));
          break;
        default:
          this.send(encodeOptionError(option, NBD_REP_ERR_UNSUP, `option ${option} is not supported`));
      }
    }
    throw new NbdProtocolError(`more than ${OPTIONS_MAX} options without entering transmission`);
  }

  private async transmission(): Promise<void> {
    const limits = { sizeBytes: this.opts.cache.sizeBytes, readOnly: this.opts.readOnly === true, blockStatus: this.structured && this.allocation };
    // Bounded by the life of the connection: each pass reads one request or ends it.
    while (!this.stopping) {
      await this.room();
      const header = await this.reader.read(REQUEST_HEADER_BYTES);
      if (!header) return;
      const req = decodeRequest(header);
      let payload: Buffer | undefined;
      if (req.type === NBD_CMD_WRITE) {
        // Only a WRITE carries a payload; one too large to buffer can only be refused by hanging up.
        if (req.length > PAYLOAD_MAX_BYTES) throw new NbdProtocolError(`WRITE of ${req.length} bytes is over the ${PAYLOAD_MAX_BYTES}-byte limit`);
        payload = await this.reader.readExact(req.length);
      }
      // DISC has no reply: in-flight requests are finished (run() waits for them), then the socket closes.
      if (req.type === NBD_CMD_DISC) return;
      const error = requestError(req, limits);
      if (error !== 0) {
        this.reply(req, error);
        continue;
      }
      this.inflight++;
      void this.serve(req, payload).finally(() => {
        this.inflight--;
        this.wake();
      });
    }
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Waits until this connection may take another request: few enough in flight, socket drained, cache not full. */
  private async room(): Promise<void> {
    while (this.inflight >= INFLIGHT_REQUESTS_MAX) await new Promise<void>((resolve) => this.waiters.push(resolve));
    if (this.socket.writableNeedDrain) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this.socket.off('drain', done);
          this.socket.off('close', done);
          resolve();
        };
        this.socket.on('drain', done);
        this.socket.on('close', done);
      });
    }
    await this.opts.cache.waitForRoom();
  }

  private async idle(): Promise<void> {
    while (this.inflight > 0) await new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  /** Replies to `req`; a READ's data is written from `data`'s buffers as they are (cached lines, fetched bytes), without joining them. */
  private reply(req: NbdRequest, error: number, data?: readonly Buffer[]): void {
    if (this.socket.destroyed) return;
    if (this.structured && (req.type === NBD_CMD_READ || req.type === NBD_CMD_BLOCK_STATUS)) {
      // Once negotiated, READ and BLOCK_STATUS answer in structured chunks (the others may
      // keep simple replies, as qemu's server does).
      if (error !== 0) this.socket.write(encodeStructuredError(req.handle, error, `${commandName(req.type)} failed`));
      else if (req.type === NBD_CMD_READ) {
        this.socket.cork();
        this.socket.write(encodeOffsetDataHeader(req.handle, req.offset, data!.reduce((n, b) => n + b.length, 0)));
        for (const b of data!) this.socket.write(b);
        this.socket.uncork();
      }
      return;
    }
    this.socket.cork();
    this.socket.write(encodeSimpleReply(error, req.handle));
    if (data && error === 0) for (const b of data) this.socket.write(b);
    this.socket.uncork();
  }

  /** BLOCK_STATUS for base:allocation: runs of data (flags 0) and of zeros (HOLE | ZERO). */
  private async blockStatus(req: NbdRequest): Promise<void> {
    const runs = await this.opts.cache.allocation(req.offset, req.length);
    let descriptors = runs.map((r) => ({ length: r.length, flags: r.zero ? NBD_STATE_HOLE | NBD_STATE_ZERO : 0 }));
    if ((req.flags & NBD_CMD_FLAG_REQ_ONE) !== 0) descriptors = descriptors.slice(0, 1);
    if (!this.socket.destroyed) this.socket.write(encodeBlockStatus(req.handle, BASE_ALLOCATION_ID, descriptors));
  }

  private async serve(req: NbdRequest, payload: Buffer | undefined): Promise<void> {
    const { cache } = this.opts;
    const fua = (req.flags & NBD_CMD_FLAG_FUA) !== 0;
    try {
      switch (req.type) {
        case NBD_CMD_READ:
          this.reply(req, 0, await cache.readv(req.offset, req.length));
          return;
        case NBD_CMD_WRITE:
          await cache.write(req.offset, payload!);
          break;
        case NBD_CMD_TRIM:
          await cache.trim(req.offset, req.length);
          break;
        case NBD_CMD_WRITE_ZEROES:
          await cache.writeZeroes(req.offset, req.length);
          break;
        case NBD_CMD_FLUSH:
          await cache.flush();
          break;
        case NBD_CMD_BLOCK_STATUS:
          await this.blockStatus(req);
          return;
        case NBD_CMD_CACHE:
          await cache.prefetch(req.offset, req.length);
          break;
        default:
          // requestError lets only the commands above through.
          this.reply(req, NBD_EINVAL);
          return;
      }
      if (fua && req.type !== NBD_CMD_FLUSH && req.type !== NBD_CMD_CACHE) await cache.flush();
      this.reply(req, 0);
    } catch (err) {
      // Every failure is an NBD error for this request only; the gateway keeps serving.
      const known = err instanceof WriteBackError || (err as Error).name === 'CacheReadError';
      this.log(`${commandName(req.type)} @${req.offset}+${req.length} failed${known ? '' : ' (unexpected)'}: ${(err as Error).message}`);
      this.reply(req, NBD_EIO);
    }
  }
}

/**
 * Serves `cache` (one volume) over NBD until `close()`.
 *
 * @example
 * const server = await startNbdServer({ exportName: 'vol-1', description: '1 GiB', cache, listen: { host: '127.0.0.1', port: 10809 } });
 * console.log(server.uri); // nbd://127.0.0.1:10809/vol-1
 */
export async function startNbdServer(opts: NbdServerOptions): Promise<NbdServer> {
  const log = opts.log ?? (() => undefined);
  const connections = new Set<Connection>();
  const running = new Set<Promise<void>>();
  /** Every socket not yet closed, including half-closed ones whose connection has finished. */
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    const conn = new Connection(socket, opts, log);
    connections.add(conn);
    const done = conn.run().finally(() => {
      connections.delete(conn);
      running.delete(done);
    });
    running.add(done);
  });
  server.maxConnections = 64;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    if ('socketPath' in opts.listen) server.listen(opts.listen.socketPath, resolve);
    else server.listen(opts.listen.port, opts.listen.host, resolve);
  });
  server.on('error', (err) => log(`server error: ${err.message}`));
  const name = encodeURIComponent(opts.exportName);
  let uri: string;
  if ('socketPath' in opts.listen) {
    uri = `nbd+unix:///${name}?socket=${opts.listen.socketPath}`;
  } else {
    const addr = server.address() as net.AddressInfo;
    const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
    uri = `nbd://${host}:${addr.port}/${name}`;
  }
  return {
    uri,
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const c of connections) c.stop();
      let timer: NodeJS.Timeout | undefined;
      const grace = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, SHUTDOWN_GRACE_MS);
      });
      await Promise.race([Promise.all(running), grace]);
      clearTimeout(timer);
      for (const c of connections) c.destroy();
      // Connections that finished were half-closed (their replies sent, then end-of-stream); a
      // client that keeps its end open would hold server.close() forever. Give clients a moment
      // to close, then drop what is left.
      const linger = Date.now() + SHUTDOWN_LINGER_MS;
      while (sockets.size > 0 && Date.now() < linger) await new Promise((resolve) => setTimeout(resolve, 20));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}
