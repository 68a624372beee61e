/**
 * The Cauchy generator and its GF(2^w) arithmetic, exactly as ronomon builds them, and the
 * decoding rows for a set of surviving shards (the portable codec's matrices).
 */

// ---------------------------------------------------------------------------------------
// The generator, exactly as ronomon builds it.

/**
 * PARAMETERS[k-1][m-1] = [w, p, x, y, b] from binding.c: field exponent, primitive
 * polynomial, Cauchy column/row offsets (-1 when m <= 2), number of ones in the bitmatrix.
 */
const PARAMETERS: readonly (readonly (readonly [number, number, number, number, number])[])[] = [
  [
    [2, 7, -1, -1, 2],
    [2, 7, -1, -1, 4],
    [2, 7, 0, 1, 6],
    [4, 19, 0, 1, 16],
    [4, 19, 0, 1, 20],
    [4, 19, 0, 1, 24],
  ],
  [
    [2, 7, -1, -1, 4],
    [2, 7, -1, -1, 9],
    [4, 19, 0, 4, 28],
    [4, 19, 0, 5, 40],
    [4, 19, 2, 9, 51],
    [4, 19, 4, 10, 62],
  ],
  [
    [2, 7, -1, -1, 6],
    [4, 19, -1, -1, 26],
    [4, 19, 0, 9, 44],
    [4, 19, 1, 8, 63],
    [4, 19, 1, 9, 82],
    [4, 19, 0, 9, 101],
  ],
  [
    [4, 19, -1, -1, 16],
    [4, 19, -1, -1, 36],
    [4, 19, 0, 9, 63],
    [4, 19, 3, 11, 89],
    [4, 19, 3, 11, 116],
    [4, 19, 11, 4, 145],
  ],
  [
    [4, 19, -1, -1, 20],
    [4, 19, -1, -1, 47],
    [4, 19, 4, 13, 82],
    [4, 19, 3, 12, 118],
    [4, 19, 0, 9, 152],
    [4, 19, 0, 9, 185],
  ],
  [
    [4, 19, -1, -1, 24],
    [4, 19, -1, -1, 58],
    [4, 19, 2, 12, 102],
    [4, 19, 2, 12, 144],
    [4, 19, 0, 9, 186],
    [4, 19, 0, 9, 231],
  ],
  [
    [4, 19, -1, -1, 28],
    [4, 19, -1, -1, 71],
    [4, 19, 1, 13, 123],
    [4, 19, 2, 12, 174],
    [4, 19, 0, 9, 226],
    [4, 19, 7, 0, 277],
  ],
  [
    [4, 19, -1, -1, 32],
    [4, 19, -1, -1, 84],
    [4, 19, 2, 13, 142],
    [4, 19, 2, 12, 205],
    [4, 19, 0, 9, 265],
    [4, 19, 0, 8, 328],
  ],
  [
    [4, 19, -1, -1, 36],
    [4, 19, -1, -1, 97],
    [4, 19, 1, 13, 162],
    [4, 19, 2, 12, 237],
    [4, 19, 0, 9, 308],
    [4, 19, 1, 10, 376],
  ],
  [
    [4, 19, -1, -1, 40],
    [4, 19, -1, -1, 111],
    [4, 19, 1, 13, 186],
    [4, 19, 0, 12, 268],
    [4, 19, 0, 11, 347],
    [4, 19, 0, 10, 426],
  ],
  [
    [4, 19, -1, -1, 44],
    [4, 19, -1, -1, 125],
    [4, 19, 0, 13, 211],
    [4, 19, 0, 12, 300],
    [4, 19, 0, 11, 390],
    [8, 135, 58, 188, 1401],
  ],
  [
    [4, 19, -1, -1, 48],
    [4, 19, -1, -1, 139],
    [4, 19, 3, 0, 234],
    [4, 19, 0, 12, 334],
    [8, 113, 24, 208, 1269],
    [8, 135, 57, 188, 1577],
  ],
  [
    [4, 19, -1, -1, 52],
    [4, 19, -1, -1, 155],
    [4, 19, 0, 13, 261],
    [8, 135, 59, 189, 1037],
    [8, 113, 27, 236, 1393],
    [8, 113, 27, 236, 1733],
  ],
  [
    [4, 19, -1, -1, 56],
    [4, 19, -1, -1, 171],
    [8, 169, 4, 252, 777],
    [8, 135, 58, 189, 1121],
    [8, 135, 58, 189, 1508],
    [8, 135, 58, 188, 1880],
  ],
  [
    [4, 19, -1, -1, 60],
    [8, 135, -1, -1, 353],
    [8, 113, 24, 209, 836],
    [8, 135, 58, 189, 1225],
    [8, 101, 28, 232, 1644],
    [8, 113, 120, 241, 2037],
  ],
  [
    [8, 29, -1, -1, 128],
    [8, 135, -1, -1, 380],
    [8, 113, 22, 213, 901],
    [8, 113, 22, 212, 1324],
    [8, 101, 28, 232, 1765],
    [8, 101, 28, 232, 2195],
  ],
  [
    [8, 29, -1, -1, 136],
    [8, 135, -1, -1, 407],
    [8, 113, 22, 213, 960],
    [8, 135, 58, 189, 1423],
    [8, 101, 27, 232, 1880],
    [8, 101, 27, 232, 2343],
  ],
  [
    [8, 29, -1, -1, 144],
    [8, 135, -1, -1, 434],
    [8, 113, 24, 213, 1027],
    [8, 113, 22, 212, 1513],
    [8, 195, 8, 32, 2019],
    [8, 113, 205, 126, 2500],
  ],
  [
    [8, 29, -1, -1, 152],
    [8, 135, -1, -1, 462],
    [8, 113, 22, 213, 1086],
    [8, 113, 23, 212, 1604],
    [8, 195, 7, 32, 2131],
    [8, 195, 3, 60, 2654],
  ],
  [
    [8, 29, -1, -1, 160],
    [8, 135, -1, -1, 490],
    [8, 113, 22, 213, 1147],
    [8, 113, 22, 212, 1695],
    [8, 195, 4, 238, 2270],
    [8, 113, 21, 233, 2816],
  ],
  [
    [8, 29, -1, -1, 168],
    [8, 135, -1, -1, 518],
    [8, 113, 21, 213, 1225],
    [8, 113, 21, 212, 1801],
    [8, 195, 3, 60, 2395],
    [8, 195, 3, 60, 2980],
  ],
  [
    [8, 29, -1, -1, 176],
    [8, 135, -1, -1, 546],
    [8, 113, 20, 213, 1292],
    [8, 113, 21, 212, 1906],
    [8, 195, 35, 28, 2512],
    [8, 195, 3, 60, 3135],
  ],
  [
    [8, 29, -1, -1, 184],
    [8, 135, -1, -1, 574],
    [8, 113, 19, 213, 1366],
    [8, 113, 19, 212, 2008],
    [8, 195, 3, 238, 2652],
    [8, 113, 205, 126, 3291],
  ],
  [
    [8, 29, -1, -1, 192],
    [8, 135, -1, -1, 603],
    [8, 113, 18, 213, 1437],
    [8, 195, 125, 91, 2110],
    [8, 195, 3, 238, 2787],
    [8, 195, 42, 225, 3466],
  ],
];

/** GF(2^w) log/exp tables plus ronomon's `bit` (ones in an element's bitmatrix) and `min` (elements by fewest ones). */
export interface Field {
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

export interface Context {
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

export function context(k: number, m: number): Context {
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
export function rowsOf(matrix: Uint8Array, rows: number, cols: number): Int32Array[] {
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
export function decoder(ctx: Context, sourcesMask: number, sources: readonly number[]): Int32Array[] {
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
export function chunkSize(w: number, k: number, shardSize: number): number {
  let chunk = shardSize / w;
  while (chunk > 64 && chunk % 2 === 0 && (1 + k * w) * chunk > 1048576) chunk /= 2;
  return chunk;
}
