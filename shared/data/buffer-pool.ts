/**
 * Reusable large buffers for the write path.
 *
 * Why: every large Buffer is an ArrayBuffer whose backing store V8 counts as external memory,
 * and external memory growth starts full (mark-compact) collections. A 4 MiB write allocated
 * some 18 MiB of short-lived buffers, and measured more than one full collection per write
 * (`node --trace-gc`), which cost more CPU than encoding it. Leasing the segment buffer from
 * a small pool instead makes that memory long-lived.
 *
 * Safety: a lease is released once, by the code that took it, after every reader of the
 * buffer has finished (for a segment: after all its chunk PUTs settled). A released lease
 * refuses a second release. With `SLEDGE_POOL_POISON=1` (set for the tests) a released buffer
 * is overwritten at once, so that a use after release would send garbage, which the chunk
 * CRCs recorded at encode time then catch on every read, and the tests with them.
 */
import { invariant } from '../core/errors.ts';

const MiB = 1024 * 1024;

export interface Lease {
  /** Exactly the requested length; a view of a pooled backing buffer. */
  readonly buffer: Buffer;
  /** Gives the backing buffer back. Call once, when nothing reads or writes `buffer` any more. */
  release(): void;
}

export interface BufferPoolOptions {
  /** Requests below this size get a plain allocation (small buffers are cheap). */
  minBytes: number;
  /** Requests above this size get a plain allocation (and are not kept). */
  maxBytes: number;
  /** Backing buffers are sized in multiples of this; one free list per size. */
  classBytes: number;
  /** Free buffers kept per size class; more are dropped to the garbage collector. */
  keepPerClass: number;
}

export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private readonly opts: BufferPoolOptions;
  private readonly poison = process.env.SLEDGE_POOL_POISON === '1';
  /** Counters for tests and benchmarks. */
  readonly stats = { leases: 0, reused: 0, allocated: 0, unpooled: 0 };

  constructor(opts: BufferPoolOptions) {
    invariant(opts.classBytes > 0 && opts.minBytes >= 0 && opts.maxBytes >= opts.minBytes, 'bad buffer pool options');
    this.opts = opts;
  }

  /** A buffer of `size` bytes, uninitialized (it may hold an earlier lease's bytes). */
  take(size: number): Lease {
    invariant(Number.isSafeInteger(size) && size >= 0, () => `bad buffer size ${size}`);
    this.stats.leases++;
    if (size < this.opts.minBytes || size > this.opts.maxBytes) {
      this.stats.unpooled++;
      return { buffer: Buffer.allocUnsafeSlow(size), release: () => {} };
    }
    const classSize = Math.ceil(size / this.opts.classBytes) * this.opts.classBytes;
    const list = this.free.get(classSize);
    let backing = list?.pop();
    if (backing) this.stats.reused++;
    else {
      backing = Buffer.allocUnsafeSlow(classSize);
      this.stats.allocated++;
    }
    const owned = backing;
    let released = false;
    return {
      buffer: owned.subarray(0, size),
      release: () => {
        invariant(!released, 'a pooled buffer was released twice');
        released = true;
        if (this.poison) owned.fill(0xdb);
        const keep = this.free.get(classSize) ?? [];
        if (keep.length < this.opts.keepPerClass) keep.push(owned);
        this.free.set(classSize, keep);
      },
    };
  }
}

/**
 * Segment buffers: all k+m chunks of one write (4 MiB of data at 4+2 is about 6 MiB). Up to
 * 4 free per 1 MiB size class; writes past 64 MiB of chunks are not pooled.
 */
export const segmentBuffers = new BufferPool({ minBytes: 256 * 1024, maxBytes: 64 * MiB, classBytes: MiB, keepPerClass: 4 });

/**
 * The head's request and response bodies: a write's 4 MiB (or a batch's, with its header)
 * decoded from base64 (shared/api/http.ts), and a read's bytes before they are encoded
 * (shared/api/routes.ts). Leased for one request and given back once it is answered, so that a
 * 4 MiB write or read allocates no large buffer of its own. Up to 4 free per 1 MiB size class.
 */
export const headBodyBuffers = new BufferPool({ minBytes: 256 * 1024, maxBytes: 8 * MiB, classBytes: MiB, keepPerClass: 4 });
