/**
 * The native codec: `@ronomon/reed-solomon` when it loads (it does not on Lambda).
 */
import { createRequire } from 'node:module';
import { type ErasureCodec, MAX_K, MAX_M, checkEncode, checkInto, checkReconstruct, checkReconstructInto, copyInto } from './checks.ts';

// ---------------------------------------------------------------------------------------
// The native codec.

/** The surface of `@ronomon/reed-solomon` 6.x that we use. */
interface Ronomon {
  readonly MAX_K: number;
  readonly MAX_M: number;
  /** The encoding context: [w, k, m, ...(m*w) x (k*w) bitmatrix]. */
  create(k: number, m: number): Buffer;
  /**
   * Queues work on libuv's threadpool; argument errors throw synchronously, and `end`
   * is called with no arguments when done. Data shards are contiguous in `buffer`,
   * parity shards contiguous in `parity`. sources/targets are bitmasks over k + m shards.
   */
  encode(
    context: Buffer,
    sources: number,
    targets: number,
    buffer: Buffer,
    bufferOffset: number,
    bufferSize: number,
    parity: Buffer,
    parityOffset: number,
    paritySize: number,
    end: () => void,
  ): void;
}

/**
 * Reusable gather buffers for native encode (ronomon reads the data shards from one
 * contiguous buffer; copying into a warm buffer is ~3x faster than into a fresh one).
 * Never handed to callers. At most SCRATCH_KEEP are kept.
 */
const scratch: Buffer[] = [];

/**
 * Kept: at most SCRATCH_KEEP buffers of at most SCRATCH_KEEP_BYTES together (a degraded read
 * rebuilds its granules' stripes concurrently, two scratch buffers each).
 */
const SCRATCH_KEEP = 32;
const SCRATCH_KEEP_BYTES = 16 * 1024 * 1024;
let scratchBytes = 0;

function takeScratch(size: number): Buffer {
  const i = scratch.findIndex((b) => b.length === size);
  if (i < 0) return Buffer.allocUnsafeSlow(size);
  scratchBytes -= size;
  return scratch.splice(i, 1)[0]!;
}

function giveScratch(buffer: Buffer): void {
  while (scratch.length > 0 && (scratch.length >= SCRATCH_KEEP || scratchBytes + buffer.length > SCRATCH_KEEP_BYTES)) scratchBytes -= scratch.shift()!.length;
  if (buffer.length > SCRATCH_KEEP_BYTES) return;
  scratch.push(buffer);
  scratchBytes += buffer.length;
}

function nativeCodec(rs: Ronomon): ErasureCodec {
  const contextCache = new Map<number, Buffer>();
  const ctxOf = (k: number, m: number): Buffer => {
    let ctx = contextCache.get(k * 16 + m);
    if (!ctx) contextCache.set(k * 16 + m, (ctx = rs.create(k, m)));
    return ctx;
  };
  const run = (k: number, m: number, sources: number, targets: number, buffer: Buffer, parity: Buffer, length: number): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      try {
        rs.encode(ctxOf(k, m), sources, targets, buffer, 0, k * length, parity, 0, m * length, () => resolve());
      } catch (error) {
        reject(error instanceof Error ? error : new Error(String(error)));
      }
    });
  const checkSize = (k: number, m: number, length: number): void => {
    // ronomon takes 32-bit sizes.
    if (Math.max(k, m) * length > 0xffffffff) {
      throw new RangeError(`native erasure codec: ${Math.max(k, m)} shards of ${length} bytes exceed 4 GiB`);
    }
  };
  return {
    name: 'native',
    async encode(k, m, data, into) {
      const length = checkEncode(k, m, data);
      if (into) checkInto(m, length, into);
      checkSize(k, m, length);
      // ronomon wants the data shards contiguous: use them in place when they already are
      // (consecutive views of one ArrayBuffer), else copy. ronomon only reads them here.
      const first = data[0]!;
      const contiguous = data.every((d, i) => d.buffer === first.buffer && d.byteOffset === first.byteOffset + i * length);
      let buffer: Buffer;
      let borrowed: Buffer | undefined;
      if (contiguous) {
        buffer = Buffer.from(first.buffer, first.byteOffset, k * length);
      } else {
        buffer = borrowed = takeScratch(k * length);
        for (let i = 0; i < k; i++) buffer.set(data[i]!, i * length);
      }
      // ronomon writes the parity shards contiguously: straight into `into` when those are
      // consecutive views, else into a scratch buffer copied out after.
      const direct = into && into.every((p, i) => p.buffer === into[0]!.buffer && p.byteOffset === into[0]!.byteOffset + i * length);
      let parity: Buffer;
      let parityScratch: Buffer | undefined;
      if (into && direct) parity = Buffer.from(into[0]!.buffer, into[0]!.byteOffset, m * length);
      else if (into) parity = parityScratch = takeScratch(m * length);
      else parity = Buffer.allocUnsafeSlow(m * length);
      let targets = 0;
      for (let i = k; i < k + m; i++) targets |= 1 << i;
      try {
        await run(k, m, (1 << k) - 1, targets, buffer, parity, length);
        const out = Array.from({ length: m }, (_, i) => parity.subarray(i * length, (i + 1) * length));
        return into ? (direct ? (into as Buffer[]) : copyInto(out, into)) : out;
      } finally {
        if (borrowed) giveScratch(borrowed);
        if (parityScratch) giveScratch(parityScratch);
      }
    },
    async reconstruct(k, m, shards, into) {
      const { length, present, presentCount } = checkReconstruct(k, m, shards);
      const n = k + m;
      if (into) checkReconstructInto(n, length, into);
      const out = shards.slice() as (Buffer | null)[];
      if (presentCount === n) return out as Buffer[];
      checkSize(k, m, length);
      // ronomon wants the shards gathered contiguously: into reused scratch buffers (fresh ones
      // per call cost page faults and, per 64 KiB granule of a degraded read, the garbage
      // collector's time). Every byte is either copied from a present shard or written by
      // ronomon (targets = all missing shards), so they need no zeroing.
      const buffer = takeScratch(k * length);
      const parity = takeScratch(m * length);
      try {
        for (let i = 0; i < n; i++) {
          const shard = out[i];
          if (shard) shard.copy(i < k ? buffer : parity, (i < k ? i : i - k) * length);
        }
        const targets = ((1 << n) - 1) & ~present;
        await run(k, m, present, targets, buffer, parity, length);
        // Rebuilt shards go to `into` where given, else to one new buffer for all of them.
        let fresh = 0;
        for (let i = 0; i < n; i++) if (!out[i] && !into?.[i]) fresh++;
        const pool = fresh > 0 ? Buffer.allocUnsafeSlow(fresh * length) : null;
        let next = 0;
        for (let i = 0; i < n; i++) {
          if (out[i]) continue;
          const rebuilt = i < k ? buffer.subarray(i * length, (i + 1) * length) : parity.subarray((i - k) * length, (i - k + 1) * length);
          const target = into?.[i] ?? pool!.subarray(next * length, ++next * length);
          rebuilt.copy(target);
          out[i] = target;
        }
        return out as Buffer[];
      } finally {
        giveScratch(buffer);
        giveScratch(parity);
      }
    },
  };
}

let native: ErasureCodec | null | undefined;

/** The native codec, or null when `@ronomon/reed-solomon` cannot load (as on Lambda). Loaded once. */
export function loadNativeCodec(): ErasureCodec | null {
  if (native !== undefined) return native;
  try {
    const nodeRequire = createRequire(import.meta.url);
    const rs = nodeRequire('@ronomon/reed-solomon') as Ronomon;
    if (typeof rs.encode !== 'function' || typeof rs.create !== 'function' || rs.MAX_K < MAX_K || rs.MAX_M < MAX_M) {
      throw new Error('@ronomon/reed-solomon has an unexpected interface');
    }
    native = nativeCodec(rs);
  } catch {
    native = null;
  }
  return native;
}
