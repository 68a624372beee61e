/**
 * The codec interface and the argument checks both codecs share, so that they fail the same way.
 */

export interface ErasureCodec {
  readonly name: 'native' | 'portable';
  /**
   * Computes the m parity shards for k data shards of equal length (length a multiple of 8 is
   * guaranteed by callers; assert it). With `into` (m buffers of the shard length), the parity
   * is written there and those buffers are returned; otherwise new ones are.
   */
  encode(k: number, m: number, data: readonly Buffer[], into?: readonly Buffer[]): Promise<Buffer[]>;
  /**
   * shards has k+m entries, null where missing; at least k present, all of the same length.
   * Returns all k+m shards, missing ones rebuilt. Throws a clear Error if fewer than k present.
   * With `into` (k+m entries), a missing shard whose entry is a buffer of the shard length is
   * rebuilt there (and that buffer returned for it); other missing shards get new buffers.
   */
  reconstruct(k: number, m: number, shards: readonly (Buffer | null)[], into?: readonly (Buffer | null)[]): Promise<Buffer[]>;
}

/** Largest k both codecs accept (ronomon's MAX_K). */
export const MAX_K = 24;

/** Largest m both codecs accept (ronomon's MAX_M). */
export const MAX_M = 6;

export function checkKM(k: number, m: number): void {
  if (!Number.isInteger(k) || k < 1 || k > MAX_K) {
    throw new RangeError(`k must be an integer between 1 and ${MAX_K}, got ${k}`);
  }
  if (!Number.isInteger(m) || m < 1 || m > MAX_M) {
    throw new RangeError(`m must be an integer between 1 and ${MAX_M}, got ${m}`);
  }
}

export function checkShardLength(length: number, what: string): void {
  if (length === 0 || length % 8 !== 0) {
    throw new RangeError(`${what}: shard length must be a positive multiple of 8, got ${length}`);
  }
}

export function checkInto(m: number, length: number, into: readonly Buffer[]): void {
  if (into.length !== m || into.some((p) => !(p instanceof Uint8Array) || p.length !== length)) {
    throw new RangeError(`encode: expected m = ${m} output shards of ${length} bytes`);
  }
}

/** Checks reconstruct's `into`: k+m entries, each null or a buffer of the shard length. */
export function checkReconstructInto(n: number, length: number, into: readonly (Buffer | null)[]): void {
  if (into.length !== n || into.some((p) => p !== null && p !== undefined && (!(p instanceof Uint8Array) || p.length !== length))) {
    throw new RangeError(`reconstruct: expected k + m = ${n} output entries, each null or ${length} bytes`);
  }
}

/** Copies each of `from` into the matching `into` buffer; returns `into`. */
export function copyInto(from: readonly Buffer[], into: readonly Buffer[]): Buffer[] {
  from.forEach((p, i) => p.copy(into[i]!));
  return into as Buffer[];
}

/** Validates encode arguments; returns the shard length. */
export function checkEncode(k: number, m: number, data: readonly Buffer[]): number {
  checkKM(k, m);
  if (!Array.isArray(data) || data.length !== k) {
    throw new RangeError(`encode: expected k = ${k} data shards, got ${Array.isArray(data) ? data.length : typeof data}`);
  }
  let length = -1;
  for (let i = 0; i < k; i++) {
    const shard = data[i];
    if (!(shard instanceof Uint8Array)) throw new TypeError(`encode: data shard ${i} is not a Buffer`);
    if (length < 0) length = shard.length;
    else if (shard.length !== length) {
      throw new RangeError(`encode: data shard ${i} has length ${shard.length}, but shard 0 has length ${length}; all shards must have the same length`);
    }
  }
  checkShardLength(length, 'encode');
  return length;
}

export interface ReconstructArgs {
  length: number;
  /** Bit i set when shard i is present. */
  present: number;
  presentCount: number;
}

export function checkReconstruct(k: number, m: number, shards: readonly (Buffer | null)[]): ReconstructArgs {
  checkKM(k, m);
  const n = k + m;
  if (!Array.isArray(shards) || shards.length !== n) {
    throw new RangeError(`reconstruct: expected k + m = ${n} shards (null where missing), got ${Array.isArray(shards) ? shards.length : typeof shards}`);
  }
  let length = -1;
  let first = -1;
  let present = 0;
  let presentCount = 0;
  for (let i = 0; i < n; i++) {
    const shard = shards[i];
    if (shard === null || shard === undefined) continue;
    if (!(shard instanceof Uint8Array)) throw new TypeError(`reconstruct: shard ${i} is neither a Buffer nor null`);
    if (length < 0) {
      length = shard.length;
      first = i;
    } else if (shard.length !== length) {
      throw new RangeError(`reconstruct: shard ${i} has length ${shard.length}, but shard ${first} has length ${length}; all shards must have the same length`);
    }
    present |= 1 << i;
    presentCount++;
  }
  if (presentCount < k) {
    throw new Error(`reconstruct: only ${presentCount} of ${n} shards present, need at least k = ${k} to rebuild the rest`);
  }
  checkShardLength(length, 'reconstruct');
  return { length, present, presentCount };
}
