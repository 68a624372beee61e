/**
 * Systematic Reed-Solomon erasure coding: k data shards, m parity shards, any k of the
 * k + m shards rebuild the rest.
 *
 * Two implementations with byte-identical output:
 *
 * - `native` wraps `@ronomon/reed-solomon` (a C addon that runs in libuv's threadpool).
 *   It is an optional dependency: Lambda does not ship it, and this module must import
 *   and work without it.
 * - `portable` is pure TypeScript and reproduces ronomon's code exactly.
 *
 * What ronomon actually computes (read from its binding.c, v6.0.0), which the portable
 * codec reproduces:
 *
 * - It is a *Cauchy bitmatrix* code (Jerasure style), not byte-wise GF(2^8) arithmetic.
 *   For every (k, m) a precomputed table (`PARAMETERS` below, copied from binding.c)
 *   picks the field GF(2^w) with w in {2, 4, 8}, its primitive polynomial p, and the
 *   Cauchy offsets x, y. For k + m <= 16 it is mostly GF(2^4) (poly 19 = x^4+x+1), so
 *   (4,2), (6,3), (8,3) all use w = 4.
 * - The generator: row 0 of parity is all ones (parity 0 = XOR of the data shards). For
 *   m = 2, row 1 holds the field elements with the fewest ones in their bitmatrices. For
 *   m >= 3, a Cauchy matrix 1/((y+r) xor (x+c)) has each column divided by its row-0
 *   entry, and each later row divided by the one of its entries that minimizes the number
 *   of ones. Each element e becomes a w x w bit matrix (column a = bits of e * 2^a).
 * - Each shard is cut into stripes of w packets of `chunkSize` bytes; bit row b of a parity
 *   block is the XOR of the data packets whose bit is set. The packet size is
 *   shardSize / w, halved while it is > 64, even, and (1 + k*w) * chunkSize > 1 MiB (to
 *   stay in cache). So parity depends on the shard size: encoding a shard in two halves
 *   gives different parity than encoding it whole. Encode whole shards only.
 * - Shard size must be a multiple of 8 (and of w, implied). k <= 24, m <= 6.
 */
import { createRequire } from 'node:module';
import { ENV } from '../core/config.ts';

export interface ErasureCodec {
  readonly name: 'native' | 'portable';
  /**
   * Computes the m parity shards for k data shards of equal length (length a multiple of 8 is
   * guaranteed by callers; assert it). With `into` (m buffers of the shard length), the parity
   * is written there and those buffers are returned; otherwise new ones are.
   */
  encode(k: number, m: number, data: readonly Buffer[], into?: readonly Buffer[]): Promise<Buffer[]>;
  /** shards has k+m entries, null where missing; at least k present, all of the same length. Returns all k+m shards, missing ones rebuilt. Throws a clear Error if fewer than k present. */
  reconstruct(k: number, m: number, shards: readonly (Buffer | null)[]): Promise<Buffer[]>;
}

/** Largest k both codecs accept (ronomon's MAX_K). */
export const MAX_K = 24;
/** Largest m both codecs accept (ronomon's MAX_M). */
export const MAX_M = 6;

// ---------------------------------------------------------------------------------------
// Argument checks, shared by both codecs so that they fail the same way.

function checkKM(k: number, m: number): void {
  if (!Number.isInteger(k) || k < 1 || k > MAX_K) {
    throw new RangeError(`k must be an integer between 1 and ${MAX_K}, got ${k}`);
  }
  if (!Number.isInteger(m) || m < 1 || m > MAX_M) {
    throw new RangeError(`m must be an integer between 1 and ${MAX_M}, got ${m}`);
  }
}

function checkShardLength(length: number, what: string): void {
  if (length === 0 || length % 8 !== 0) {
    throw new RangeError(`${what}: shard length must be a positive multiple of 8, got ${length}`);
  }
}

function checkInto(m: number, length: number, into: readonly Buffer[]): void {
  if (into.length !== m || into.some((p) => !(p instanceof Uint8Array) || p.length !== length)) {
    throw new RangeError(`encode: expected m = ${m} output shards of ${length} bytes`);
  }
}

/** Copies each of `from` into the matching `into` buffer; returns `into`. */
function copyInto(from: readonly Buffer[], into: readonly Buffer[]): Buffer[] {
  from.forEach((p, i) => p.copy(into[i]!));
  return into as Buffer[];
}

/** Validates encode arguments; returns the shard length. */
function checkEncode(k: number, m: number, data: readonly Buffer[]): number {
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

interface ReconstructArgs {
  length: number;
  /** Bit i set when shard i is present. */
  present: number;
  presentCount: number;
}

function checkReconstruct(k: number, m: number, shards: readonly (Buffer | null)[]): ReconstructArgs {
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

// ---------------------------------------------------------------------------------------
// The generator, exactly as ronomon builds it.

/**
 * PARAMETERS[k-1][m-1] = [w, p, x, y, b] from binding.c: field exponent, primitive
 * polynomial, Cauchy column/row offsets (-1 when m <= 2), number of ones in the bitmatrix.
 */
const PARAMETERS: readonly (readonly (readonly [number, number, number, number, number])[])[] = [
  [[2,7,-1,-1,2], [2,7,-1,-1,4], [2,7,0,1,6], [4,19,0,1,16], [4,19,0,1,20], [4,19,0,1,24]],
  [[2,7,-1,-1,4], [2,7,-1,-1,9], [4,19,0,4,28], [4,19,0,5,40], [4,19,2,9,51], [4,19,4,10,62]],
  [[2,7,-1,-1,6], [4,19,-1,-1,26], [4,19,0,9,44], [4,19,1,8,63], [4,19,1,9,82], [4,19,0,9,101]],
  [[4,19,-1,-1,16], [4,19,-1,-1,36], [4,19,0,9,63], [4,19,3,11,89], [4,19,3,11,116], [4,19,11,4,145]],
  [[4,19,-1,-1,20], [4,19,-1,-1,47], [4,19,4,13,82], [4,19,3,12,118], [4,19,0,9,152], [4,19,0,9,185]],
  [[4,19,-1,-1,24], [4,19,-1,-1,58], [4,19,2,12,102], [4,19,2,12,144], [4,19,0,9,186], [4,19,0,9,231]],
  [[4,19,-1,-1,28], [4,19,-1,-1,71], [4,19,1,13,123], [4,19,2,12,174], [4,19,0,9,226], [4,19,7,0,277]],
  [[4,19,-1,-1,32], [4,19,-1,-1,84], [4,19,2,13,142], [4,19,2,12,205], [4,19,0,9,265], [4,19,0,8,328]],
  [[4,19,-1,-1,36], [4,19,-1,-1,97], [4,19,1,13,162], [4,19,2,12,237], [4,19,0,9,308], [4,19,1,10,376]],
  [[4,19,-1,-1,40], [4,19,-1,-1,111], [4,19,1,13,186], [4,19,0,12,268], [4,19,0,11,347], [4,19,0,10,426]],
  [[4,19,-1,-1,44], [4,19,-1,-1,125], [4,19,0,13,211], [4,19,0,12,300], [4,19,0,11,390], [8,135,58,188,1401]],
  [[4,19,-1,-1,48], [4,19,-1,-1,139], [4,19,3,0,234], [4,19,0,12,334], [8,113,24,208,1269], [8,135,57,188,1577]],
  [[4,19,-1,-1,52], [4,19,-1,-1,155], [4,19,0,13,261], [8,135,59,189,1037], [8,113,27,236,1393], [8,113,27,236,1733]],
  [[4,19,-1,-1,56], [4,19,-1,-1,171], [8,169,4,252,777], [8,135,58,189,1121], [8,135,58,189,1508], [8,135,58,188,1880]],
  [[4,19,-1,-1,60], [8,135,-1,-1,353], [8,113,24,209,836], [8,135,58,189,1225], [8,101,28,232,1644], [8,113,120,241,2037]],
  [[8,29,-1,-1,128], [8,135,-1,-1,380], [8,113,22,213,901], [8,113,22,212,1324], [8,101,28,232,1765], [8,101,28,232,2195]],
  [[8,29,-1,-1,136], [8,135,-1,-1,407], [8,113,22,213,960], [8,135,58,189,1423], [8,101,27,232,1880], [8,101,27,232,2343]],
  [[8,29,-1,-1,144], [8,135,-1,-1,434], [8,113,24,213,1027], [8,113,22,212,1513], [8,195,8,32,2019], [8,113,205,126,2500]],
  [[8,29,-1,-1,152], [8,135,-1,-1,462], [8,113,22,213,1086], [8,113,23,212,1604], [8,195,7,32,2131], [8,195,3,60,2654]],
  [[8,29,-1,-1,160], [8,135,-1,-1,490], [8,113,22,213,1147], [8,113,22,212,1695], [8,195,4,238,2270], [8,113,21,233,2816]],
  [[8,29,-1,-1,168], [8,135,-1,-1,518], [8,113,21,213,1225], [8,113,21,212,1801], [8,195,3,60,2395], [8,195,3,60,2980]],
  [[8,29,-1,-1,176], [8,135,-1,-1,546], [8,113,20,213,1292], [8,113,21,212,1906], [8,195,35,28,2512], [8,195,3,60,3135]],
  [[8,29,-1,-1,184], [8,135,-1,-1,574], [8,113,19,213,1366], [8,113,19,212,2008], [8,195,3,238,2652], [8,113,205,126,3291]],
  [[8,29,-1,-1,192], [8,135,-1,-1,603], [8,113,18,213,1437], [8,195,125,91,2110], [8,195,3,238,2787], [8,195,42,225,3466]],
];

/** GF(2^w) log/exp tables plus ronomon's `bit` (ones in an element's bitmatrix) and `min` (elements by fewest ones). */
interface Field {
  w: number;
  /** 2^w - 1, the order of the multiplicative group. */
  order: number;
  log: Int32Array;
  exp: Int32Array;
  bit: Int32Array;
  min: Int32Array;
}

function gfMul(f: Field, a: number, b: number): number {
  if (a === 0 || b === 0) return 0;
  return f.exp[(f.log[a]! + f.log[b]!) % f.order]!;
}

function gfDiv(f: Field, a: number, b: number): number {
  if (b === 0) throw new Error('erasure: division by zero in GF(2^w)');
  if (a === 0) return 0;
  return f.exp[(f.log[a]! + f.order - f.log[b]!) % f.order]!;
}

/** ronomon's create_tables(). */
function createField(w: number, p: number): Field {
  const z = 1 << w;
  const order = z - 1;
  const log = new Int32Array(z).fill(order);
  const exp = new Int32Array(z);
  let b = 1;
  for (let a = 0; a < order; a++) {
    log[b] = a;
    exp[a] = b;
    b <<= 1;
    if (b & z) b = (b ^ p) & order;
  }
  const f: Field = { w, order, log, exp, bit: new Int32Array(z), min: new Int32Array(z) };
  for (let n = 0; n < z; n++) {
    let count = 0;
    let e = n;
    for (let r = 0; r < w; r++) {
      for (let c = 0; c < w; c++) count += (e >> c) & 1;
      e = gfMul(f, e, 2);
    }
    f.bit[n] = count;
  }
  // min: nonzero elements ordered by number of ones, ties by value.
  f.min[0] = 0;
  for (let a = 1; a < z; a++) {
    const c = f.min[a - 1]!;
    let d = -1;
    for (let e = 1; e < z; e++) {
      if (f.bit[e]! < f.bit[c]!) continue;
      if (f.bit[e] === f.bit[c] && e <= c) continue;
      if (d === -1 || f.bit[e]! < f.bit[d]!) d = e;
    }
    f.min[a] = d;
  }
  return f;
}

/** ronomon's create_matrix(): the m x k generator (parity part), row-major. */
function createMatrix(f: Field, k: number, m: number, x: number, y: number): { matrix: Uint8Array; ones: number } {
  const matrix = new Uint8Array(m * k);
  let ones = f.bit[1]! * k;
  if (m <= 2) {
    for (let c = 0; c < k; c++) matrix[c] = 1;
    if (m === 2) {
      for (let c = 0; c < k; c++) {
        matrix[k + c] = f.min[c + 1]!;
        ones += f.bit[matrix[k + c]!]!;
      }
    }
  } else {
    for (let r = 0; r < m; r++) {
      for (let c = 0; c < k; c++) matrix[r * k + c] = gfDiv(f, 1, (y + r) ^ (x + c));
    }
    // Divide rows by row 0, then row 0 by itself.
    for (let r = 1; r < m; r++) {
      for (let c = 0; c < k; c++) matrix[r * k + c] = gfDiv(f, matrix[r * k + c]!, matrix[c]!);
    }
    for (let c = 0; c < k; c++) matrix[c] = gfDiv(f, matrix[c]!, matrix[c]!);
    // Divide each later row by the entry that minimizes its ones, if any improves.
    for (let r = 1; r < m; r++) {
      const rk = r * k;
      let result = 0;
      let column = -1;
      for (let c = 0; c < k; c++) result += f.bit[matrix[rk + c]!]!;
      for (let c = 0; c < k; c++) {
        let bits = 0;
        for (let d = 0; d < k; d++) bits += f.bit[gfDiv(f, matrix[rk + d]!, matrix[rk + c]!)]!;
        if (bits < result) {
          result = bits;
          column = matrix[rk + c]!;
        }
      }
      if (column >= 0) {
        for (let c = 0; c < k; c++) matrix[rk + c] = gfDiv(f, matrix[rk + c]!, column);
      }
      ones += result;
    }
  }
  return { matrix, ones };
}

/**
 * ronomon's create_bitmatrix_encoding(): (m*w) x (k*w) over GF(2), row-major.
 * Row i*w + b, column c*w + a = bit b of matrix[i][c] * 2^a.
 */
function createBitmatrix(f: Field, k: number, m: number, matrix: Uint8Array): { bitmatrix: Uint8Array; ones: number } {
  const w = f.w;
  const bitmatrix = new Uint8Array(m * w * k * w);
  let ones = 0;
  for (let r = 0; r < m; r++) {
    for (let c = 0; c < k; c++) {
      let x = matrix[k * r + c]!;
      for (let a = 0; a < w; a++) {
        for (let b = 0; b < w; b++) {
          const bit = (x >> b) & 1;
          bitmatrix[r * w * k * w + w * c + a + k * w * b] = bit;
          ones += bit;
        }
        x = gfMul(f, x, 2);
      }
    }
  }
  return { bitmatrix, ones };
}

interface Context {
  k: number;
  m: number;
  w: number;
  /** (m*w) x (k*w) encoding bitmatrix, as ronomon's context buffer minus its 3-byte header. */
  bitmatrix: Uint8Array;
  /** encodeRows[i * w + b]: source columns (slot * w + packet) XORed into bit row b of parity i. */
  encodeRows: Int32Array[];
  /** Inverted decoding matrices by source mask. */
  decoders: Map<number, Int32Array[]>;
}

const contexts = new Map<number, Context>();

function context(k: number, m: number): Context {
  const key = k * 16 + m;
  let ctx = contexts.get(key);
  if (ctx) return ctx;
  const params = PARAMETERS[k - 1]![m - 1]!;
  const [w, p, x, y, expectedOnes] = params;
  const f = createField(w, p);
  const { matrix, ones: matrixOnes } = createMatrix(f, k, m, x, y);
  const { bitmatrix, ones } = createBitmatrix(f, k, m, matrix);
  // ronomon asserts both counts equal the table's b; so do we (guards the transcription).
  if (matrixOnes !== expectedOnes || ones !== expectedOnes) {
    throw new Error(`erasure: generator for k=${k}, m=${m} has ${ones} ones, expected ${expectedOnes}`);
  }
  ctx = { k, m, w, bitmatrix, encodeRows: rowsOf(bitmatrix, m * w, k * w), decoders: new Map() };
  contexts.set(key, ctx);
  return ctx;
}

/** The set columns of each row of a rows x cols 0/1 matrix. */
function rowsOf(matrix: Uint8Array, rows: number, cols: number): Int32Array[] {
  const out: Int32Array[] = [];
  for (let r = 0; r < rows; r++) {
    const list: number[] = [];
    for (let c = 0; c < cols; c++) if (matrix[r * cols + c]) list.push(c);
    out.push(Int32Array.from(list));
  }
  return out;
}

/** Inverts an n x n matrix over GF(2) (Gauss-Jordan, as ronomon's create_bitmatrix_decoding_invert). */
function invertGF2(source: Uint8Array, n: number): Uint8Array {
  const a = source.slice();
  const inv = new Uint8Array(n * n);
  for (let i = 0; i < n; i++) inv[i * n + i] = 1;
  for (let c = 0; c < n; c++) {
    if (a[c * n + c] === 0) {
      let r = c + 1;
      while (r < n && a[r * n + c] === 0) r++;
      if (r === n) throw new Error('erasure: decoding matrix is singular (this is a bug)');
      for (let j = 0; j < n; j++) {
        let t = a[c * n + j]!;
        a[c * n + j] = a[r * n + j]!;
        a[r * n + j] = t;
        t = inv[c * n + j]!;
        inv[c * n + j] = inv[r * n + j]!;
        inv[r * n + j] = t;
      }
    }
    for (let r = 0; r < n; r++) {
      if (r !== c && a[r * n + c]) {
        for (let j = 0; j < n; j++) {
          a[r * n + j]! ^= a[c * n + j]!;
          inv[r * n + j]! ^= inv[c * n + j]!;
        }
      }
    }
  }
  return inv;
}

/**
 * Rows of the decoding matrix for the k sources in `sources` (ascending shard indices):
 * row i*w + b gives data shard i's bit row b as XOR of source columns (slot * w + packet),
 * where slot indexes `sources`.
 */
function decoder(ctx: Context, sourcesMask: number, sources: readonly number[]): Int32Array[] {
  let rows = ctx.decoders.get(sourcesMask);
  if (rows) return rows;
  const { k, w, bitmatrix } = ctx;
  const n = k * w;
  const matrix = new Uint8Array(n * n);
  for (let slot = 0; slot < k; slot++) {
    const s = sources[slot]!;
    if (s < k) {
      for (let b = 0; b < w; b++) matrix[(slot * w + b) * n + s * w + b] = 1;
    } else {
      matrix.set(bitmatrix.subarray((s - k) * w * n, (s - k + 1) * w * n), slot * w * n);
    }
  }
  rows = rowsOf(invertGF2(matrix, n), n, n);
  if (ctx.decoders.size >= 1024) ctx.decoders.clear();
  ctx.decoders.set(sourcesMask, rows);
  return rows;
}

/** ronomon's dot_chunk_size(): the packet size. N.B. it changes the parity. */
function chunkSize(w: number, k: number, shardSize: number): number {
  let chunk = shardSize / w;
  while (chunk > 64 && chunk % 2 === 0 && (1 + k * w) * chunk > 1048576) chunk /= 2;
  return chunk;
}

// ---------------------------------------------------------------------------------------
// The XOR engine of the portable codec.

/** One target shard and, for each of its w bit rows, the source shards and packets XORed into it. */
interface Job {
  target: Uint8Array;
  /** rows[b] = [shard views, packet index within the stripe] pairs. */
  rows: { shards: Uint8Array[]; packets: number[] }[];
}

function job(target: Uint8Array, rows: Int32Array[], firstRow: number, w: number, sources: readonly Uint8Array[]): Job {
  const out: Job['rows'] = [];
  for (let b = 0; b < w; b++) {
    const cols = rows[firstRow + b]!;
    const shards: Uint8Array[] = [];
    const packets: number[] = [];
    for (let j = 0; j < cols.length; j++) {
      const col = cols[j]!;
      shards.push(sources[(col / w) | 0]!);
      packets.push(col % w);
    }
    out.push({ shards, packets });
  }
  return { target, rows: out };
}

function isAligned(a: Uint8Array): boolean {
  return (a.byteOffset & 3) === 0;
}

function words(a: Uint8Array): Int32Array {
  return new Int32Array(a.buffer, a.byteOffset, a.length >>> 2);
}

/** Runs the jobs stripe by stripe (in order, so later jobs may read earlier targets). */
function run(jobs: readonly Job[], w: number, shardSize: number, chunk: number): void {
  if (chunk % 4 === 0 && jobs.every((j) => isAligned(j.target) && j.rows.every((r) => r.shards.every(isAligned)))) {
    runWords(jobs, w, shardSize >>> 2, chunk >>> 2);
  } else {
    runBytes(jobs, w, shardSize, chunk);
  }
}

function runBytes(jobs: readonly Job[], w: number, shardSize: number, chunk: number): void {
  for (let base = 0; base < shardSize; base += w * chunk) {
    for (const { target, rows } of jobs) {
      for (let b = 0; b < w; b++) {
        const { shards, packets } = rows[b]!;
        const to = base + b * chunk;
        if (shards.length === 0) {
          target.fill(0, to, to + chunk);
          continue;
        }
        for (let s = 0; s < shards.length; s++) {
          const src = shards[s]!;
          const so = base + packets[s]! * chunk;
          if (s === 0) for (let i = 0; i < chunk; i++) target[to + i] = src[so + i]!;
          else for (let i = 0; i < chunk; i++) target[to + i]! ^= src[so + i]!;
        }
      }
    }
  }
}

interface WordRow {
  shards: Int32Array[];
  packets: number[];
}

function runWords(jobs: readonly Job[], w: number, shardWords: number, chunkWords: number): void {
  const views = new Map<Uint8Array, Int32Array>();
  const view = (a: Uint8Array): Int32Array => {
    let v = views.get(a);
    if (!v) views.set(a, (v = words(a)));
    return v;
  };
  const wordJobs = jobs.map((j) => ({
    target: view(j.target),
    rows: j.rows.map((r): WordRow => ({ shards: r.shards.map(view), packets: r.packets.map((p) => p * chunkWords) })),
  }));
  const stripe = w * chunkWords;
  for (let base = 0; base < shardWords; base += stripe) {
    for (let j = 0; j < wordJobs.length; j++) {
      const { target, rows } = wordJobs[j]!;
      for (let b = 0; b < w; b++) xorRow(target, base + b * chunkWords, rows[b]!, base, chunkWords);
    }
  }
}

/** target[to .. to+n) = XOR of the row's source packets, up to four sources per pass. */
function xorRow(t: Int32Array, to: number, row: WordRow, base: number, n: number): void {
  const { shards: s, packets: p } = row;
  const count = s.length;
  if (count === 0) {
    t.fill(0, to, to + n);
    return;
  }
  let i = 0;
  let first = true;
  while (i < count) {
    const left = count - i;
    if (left >= 4) {
      const a = s[i]!, b = s[i + 1]!, c = s[i + 2]!, d = s[i + 3]!;
      const ao = base + p[i]!, bo = base + p[i + 1]!, co = base + p[i + 2]!, dO = base + p[i + 3]!;
      if (first) set4(t, to, a, ao, b, bo, c, co, d, dO, n);
      else xor4(t, to, a, ao, b, bo, c, co, d, dO, n);
      i += 4;
    } else if (left === 3) {
      const a = s[i]!, b = s[i + 1]!, c = s[i + 2]!;
      const ao = base + p[i]!, bo = base + p[i + 1]!, co = base + p[i + 2]!;
      if (first) set3(t, to, a, ao, b, bo, c, co, n);
      else xor3(t, to, a, ao, b, bo, c, co, n);
      i += 3;
    } else if (left === 2) {
      const a = s[i]!, b = s[i + 1]!;
      const ao = base + p[i]!, bo = base + p[i + 1]!;
      if (first) set2(t, to, a, ao, b, bo, n);
      else xor2(t, to, a, ao, b, bo, n);
      i += 2;
    } else {
      const a = s[i]!;
      const ao = base + p[i]!;
      if (first) set1(t, to, a, ao, n);
      else xor1(t, to, a, ao, n);
      i += 1;
    }
    first = false;
  }
}

// Monomorphic Int32Array kernels (the `!` are type-level only).
function set1(t: Int32Array, to: number, a: Int32Array, ao: number, n: number): void {
  if (n >= 256) t.set(a.subarray(ao, ao + n), to);
  else for (let i = 0; i < n; i++) t[to + i] = a[ao + i]!;
}
function xor1(t: Int32Array, to: number, a: Int32Array, ao: number, n: number): void {
  for (let i = 0; i < n; i++) t[to + i]! ^= a[ao + i]!;
}
function set2(t: Int32Array, to: number, a: Int32Array, ao: number, b: Int32Array, bo: number, n: number): void {
  for (let i = 0; i < n; i++) t[to + i] = a[ao + i]! ^ b[bo + i]!;
}
function xor2(t: Int32Array, to: number, a: Int32Array, ao: number, b: Int32Array, bo: number, n: number): void {
  for (let i = 0; i < n; i++) t[to + i]! ^= a[ao + i]! ^ b[bo + i]!;
}
function set3(t: Int32Array, to: number, a: Int32Array, ao: number, b: Int32Array, bo: number, c: Int32Array, co: number, n: number): void {
  for (let i = 0; i < n; i++) t[to + i] = a[ao + i]! ^ b[bo + i]! ^ c[co + i]!;
}
function xor3(t: Int32Array, to: number, a: Int32Array, ao: number, b: Int32Array, bo: number, c: Int32Array, co: number, n: number): void {
  for (let i = 0; i < n; i++) t[to + i]! ^= a[ao + i]! ^ b[bo + i]! ^ c[co + i]!;
}
function set4(t: Int32Array, to: number, a: Int32Array, ao: number, b: Int32Array, bo: number, c: Int32Array, co: number, d: Int32Array, dO: number, n: number): void {
  for (let i = 0; i < n; i++) t[to + i] = a[ao + i]! ^ b[bo + i]! ^ c[co + i]! ^ d[dO + i]!;
}
function xor4(t: Int32Array, to: number, a: Int32Array, ao: number, b: Int32Array, bo: number, c: Int32Array, co: number, d: Int32Array, dO: number, n: number): void {
  for (let i = 0; i < n; i++) t[to + i]! ^= a[ao + i]! ^ b[bo + i]! ^ c[co + i]! ^ d[dO + i]!;
}

/** A Buffer of the same bytes whose offset is 4-aligned (the input itself when it already is). */
function aligned(a: Uint8Array): Uint8Array {
  if (isAligned(a)) return a;
  const copy = new Uint8Array(a.length);
  copy.set(a);
  return copy;
}

/** A fresh, 4-aligned, uninitialized Buffer (every byte gets written). */
function output(length: number): Buffer {
  return Buffer.allocUnsafeSlow(length);
}

function portableEncode(k: number, m: number, data: readonly Buffer[]): Buffer[] {
  const length = checkEncode(k, m, data);
  const parity: Buffer[] = [];
  if (k === 1) {
    // ronomon replicates when k = 1 (all generator entries are 1).
    for (let i = 0; i < m; i++) parity.push(Buffer.from(data[0]!));
    return parity;
  }
  const ctx = context(k, m);
  const { w } = ctx;
  const chunk = chunkSize(w, k, length);
  const sources = data.map(aligned);
  const jobs: Job[] = [];
  for (let i = 0; i < m; i++) {
    const target = output(length);
    parity.push(target);
    jobs.push(job(target, ctx.encodeRows, i * w, w, sources));
  }
  run(jobs, w, length, chunk);
  return parity;
}

function portableReconstruct(k: number, m: number, shards: readonly (Buffer | null)[]): Buffer[] {
  const { length, present, presentCount } = checkReconstruct(k, m, shards);
  const n = k + m;
  const out = shards.slice() as (Buffer | null)[];
  if (presentCount === n) return out as Buffer[];
  if (k === 1) {
    const source = out.find((s) => s)!;
    for (let i = 0; i < n; i++) if (!out[i]) out[i] = Buffer.from(source);
    return out as Buffer[];
  }
  const ctx = context(k, m);
  const { w } = ctx;
  const chunk = chunkSize(w, k, length);
  const jobs: Job[] = [];
  const missingData: number[] = [];
  for (let i = 0; i < k; i++) if (!out[i]) missingData.push(i);
  if (missingData.length === 1 && present & (1 << k)) {
    // One data shard lost and parity 0 (the XOR of the data) present: XOR the other k.
    const target = output(length);
    const others: Uint8Array[] = [];
    for (let i = 0; i <= k; i++) if (i !== missingData[0]) others.push(aligned(out[i]!));
    const row = Int32Array.from(others.map((_, slot) => slot * w));
    const rows = Array.from({ length: w }, (_, b) => row.map((c) => c + b));
    jobs.push(job(target, rows, 0, w, others));
    out[missingData[0]!] = target;
  } else if (missingData.length > 0) {
    // Invert the rows of the first k present shards.
    const sourceIndexes: number[] = [];
    let mask = 0;
    for (let i = 0; i < n && sourceIndexes.length < k; i++) {
      if (present & (1 << i)) {
        sourceIndexes.push(i);
        mask |= 1 << i;
      }
    }
    const rows = decoder(ctx, mask, sourceIndexes);
    const sources = sourceIndexes.map((i) => aligned(out[i]!));
    for (const i of missingData) {
      const target = output(length);
      jobs.push(job(target, rows, i * w, w, sources));
      out[i] = target;
    }
  }
  const missingParity: number[] = [];
  for (let i = 0; i < m; i++) if (!out[k + i]) missingParity.push(i);
  if (missingParity.length > 0) {
    // Rebuilt data shards are written by earlier jobs in the same stripe before these read them.
    const data = out.slice(0, k).map((s) => aligned(s!));
    for (const i of missingParity) {
      const target = output(length);
      jobs.push(job(target, ctx.encodeRows, i * w, w, data));
      out[k + i] = target;
    }
  }
  run(jobs, w, length, chunk);
  return out as Buffer[];
}

/**
 * The pure-TypeScript codec. Synchronous work behind a Promise: it occupies the calling
 * thread (roughly 1 ms per MiB of data to encode 4+2, 2 ms to rebuild), unlike the native codec.
 */
export const portableCodec: ErasureCodec = {
  name: 'portable',
  async encode(k, m, data, into) {
    const parity = portableEncode(k, m, data);
    if (!into) return parity;
    checkInto(m, parity[0]?.length ?? 0, into);
    return copyInto(parity, into);
  },
  async reconstruct(k, m, shards) {
    return portableReconstruct(k, m, shards);
  },
};

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
const SCRATCH_KEEP = 4;

function takeScratch(size: number): Buffer {
  const i = scratch.findIndex((b) => b.length === size);
  return i >= 0 ? scratch.splice(i, 1)[0]! : Buffer.allocUnsafeSlow(size);
}

function giveScratch(buffer: Buffer): void {
  if (scratch.length >= SCRATCH_KEEP) scratch.shift();
  scratch.push(buffer);
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
    async reconstruct(k, m, shards) {
      const { length, present, presentCount } = checkReconstruct(k, m, shards);
      const n = k + m;
      const out = shards.slice() as (Buffer | null)[];
      if (presentCount === n) return out as Buffer[];
      checkSize(k, m, length);
      // Every byte is either copied from a present shard or written by ronomon (targets =
      // all missing shards), so the buffers need no zeroing.
      const buffer = Buffer.allocUnsafeSlow(k * length);
      const parity = Buffer.allocUnsafeSlow(m * length);
      for (let i = 0; i < n; i++) {
        const shard = out[i];
        if (shard) shard.copy(i < k ? buffer : parity, (i < k ? i : i - k) * length);
      }
      const targets = ((1 << n) - 1) & ~present;
      await run(k, m, present, targets, buffer, parity, length);
      for (let i = 0; i < n; i++) {
        if (!out[i]) out[i] = i < k ? buffer.subarray(i * length, (i + 1) * length) : parity.subarray((i - k) * length, (i - k + 1) * length);
      }
      return out as Buffer[];
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

/** The codec this process uses: native unless unavailable or process.env.SLEDGE_EC_IMPL === 'portable'. */
export function codec(): ErasureCodec {
  if (process.env[ENV.erasureImpl] === 'portable') return portableCodec;
  return loadNativeCodec() ?? portableCodec;
}
