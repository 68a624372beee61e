/**
 * Memory for large reads, touched in advance by a worker thread.
 *
 * The first write to a page of fresh memory costs a page fault; on a virtual machine whose host
 * backs guest memory only when it is first touched (this project's own test machine, for one)
 * that is about 3.5 ms of CPU per MiB, three to four times what the gateway spends on the rest
 * of a cold read (docs/nbd-gateway.md, "Speed against s3backer"). A cold read's bytes must land
 * in memory the read cache then keeps, so the faults cannot be avoided; they can be taken off
 * the gateway's one JavaScript thread, which is what limits a cold sequential read. A worker
 * thread faults in slabs of shared memory ahead of need (writing a zero to each page of memory
 * that is already zero, so nothing changes), and `take` hands out pieces of them.
 *
 * Nothing here decides what a read returns: a piece is plain memory that the read then fills
 * completely, as `Buffer.allocUnsafe` memory would be. When no slab is ready, `take` falls back
 * to `Buffer.allocUnsafe` at once (it never waits for the worker).
 */
import { Worker } from 'node:worker_threads';

const MiB = 1024 * 1024;

/** The worker's whole program: touch one byte per page of each slab it is given, and give it back. */
const TOUCHER = `
const { parentPort } = require('node:worker_threads');
parentPort.on('message', (sab) => {
  const bytes = new Uint8Array(sab);
  for (let i = 0; i < bytes.length; i += 4096) bytes[i] = 0;
  parentPort.postMessage(sab);
});
`;

/**
 * The reserve `sledge nbd` keeps by default (`--pretouch-mib`): four slabs. Read-ahead keeps two
 * plans of up to 16 MiB in flight and takes a slab for each; with two slabs the worker fell
 * behind and a third of a cold read still landed in fresh memory (docs/nbd-gateway.md).
 */
export const DEFAULT_PRETOUCH_BYTES = 64 * MiB;

export interface PretouchedOptions {
  /** Bytes per slab (default 16 MiB, the largest read plan). */
  slabBytes?: number;
  /** Bytes of slabs kept ready or being touched, rounded down to whole slabs (default 64 MiB; 0 = none). */
  reserveBytes?: number;
  /** Requests smaller than this take ordinary memory (default 1 MiB): small reads would pin large slabs. */
  minBytes?: number;
}

let shared: PretouchedMemory | undefined;

/** One reserve of the default size for the whole process (its worker starts on first use). */
export function sharedPretouchedMemory(): PretouchedMemory {
  shared ??= new PretouchedMemory();
  return shared;
}

export class PretouchedMemory {
  private readonly slabBytes: number;
  private readonly reserveSlabs: number;
  private readonly minBytes: number;
  private readonly ready: SharedArrayBuffer[] = [];
  private inWorker = 0;
  private worker: Worker | undefined;
  /** The slab being cut into pieces, and where its free part starts. */
  private current: SharedArrayBuffer | undefined;
  private used = 0;
  private closed = false;
  /** What `take` served from touched slabs and what it had to allocate plainly (bytes). */
  readonly stats = { pretouchedBytes: 0, plainBytes: 0 };

  constructor(opts: PretouchedOptions = {}) {
    this.slabBytes = opts.slabBytes ?? 16 * MiB;
    this.reserveSlabs = Math.floor((opts.reserveBytes ?? DEFAULT_PRETOUCH_BYTES) / this.slabBytes);
    this.minBytes = opts.minBytes ?? MiB;
  }

  /** `bytes` of memory to be filled by the caller: from a touched slab when one has room, else plain. */
  take(bytes: number): Buffer {
    if (this.reserveSlabs === 0 || bytes < this.minBytes || bytes > this.slabBytes) return this.plain(bytes);
    if (!this.current || this.used + bytes > this.slabBytes) {
      this.current = this.ready.shift();
      this.used = 0;
      this.refill();
      if (!this.current) return this.plain(bytes);
    }
    const piece = Buffer.from(this.current, this.used, bytes);
    this.used += bytes;
    this.stats.pretouchedBytes += bytes;
    return piece;
  }

  /** Starts filling the reserve now rather than on the first large request (a server at startup). */
  prepare(): void {
    if (this.reserveSlabs > 0) this.refill();
  }

  /** Stops the worker; `take` then serves plain memory. */
  close(): void {
    this.closed = true;
    void this.worker?.terminate();
    this.worker = undefined;
    this.ready.length = 0;
    this.current = undefined;
  }

  private plain(bytes: number): Buffer {
    this.stats.plainBytes += bytes;
    return Buffer.allocUnsafe(bytes);
  }

  private refill(): void {
    if (this.closed) return;
    if (this.worker === undefined) {
      this.worker = new Worker(TOUCHER, { eval: true });
      // It must not keep the process alive, and a failure only means plain memory from now on.
      this.worker.unref();
      this.worker.on('message', (sab: SharedArrayBuffer) => {
        this.inWorker--;
        this.ready.push(sab);
      });
      this.worker.on('error', () => this.close());
    }
    while (this.ready.length + this.inWorker < this.reserveSlabs) {
      this.inWorker++;
      this.worker.postMessage(new SharedArrayBuffer(this.slabBytes));
    }
  }
}
