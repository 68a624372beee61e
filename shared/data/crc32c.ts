/**
 * CRC-32C (Castagnoli): reflected polynomial 0x82F63B78, init 0xFFFFFFFF, xorout 0xFFFFFFFF
 * (the checksum of iSCSI, ext4, S3's `x-amz-checksum-crc32c`).
 *
 * Two implementations with identical results (checked by the shared test vectors):
 * `@node-rs/crc32` (SSE4.2 / ARMv8 CRC instructions, an optional prebuilt addon) when it loads,
 * else pure TypeScript, slicing-by-8 (eight 256-entry tables, one 8-byte step per iteration),
 * which runs anywhere. `SLEDGE_CRC_IMPL=portable` forces the TypeScript one (the switch lets the
 * tests run it). The stack's Lambda bundles have no `@node-rs/crc32` package; they carry its
 * Linux arm64 addon instead (`cdk/native-crc.ts`), loaded from next to the bundle, and fall back
 * to the TypeScript one where that addon does not load.
 */
import { createRequire } from 'node:module';
import { ENV } from '../core/config.ts';

const POLY = 0x82f63b78;

/** TABLES[t * 256 + b]: CRC of byte b followed by t zero bytes. One array for locality. */
const TABLES: Int32Array = (() => {
  const t = new Int32Array(8 * 256);
  for (let b = 0; b < 256; b++) {
    let c = b;
    for (let i = 0; i < 8; i++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[b] = c;
  }
  for (let b = 0; b < 256; b++) {
    let c = t[b]!;
    for (let s = 1; s < 8; s++) {
      c = (c >>> 8) ^ t[c & 0xff]!;
      t[s * 256 + b] = c;
    }
  }
  return t;
})();

/**
 * CRC-32C of `data`, as an unsigned 32-bit number.
 *
 * Incremental: pass the CRC of the preceding bytes as `initial`, so that
 * `crc32c(b, crc32c(a)) === crc32c(concat(a, b))`. `crc32c(empty, x) === x`.
 */
export function crc32cPortable(data: Uint8Array, initial = 0): number {
  const t = TABLES;
  let crc = ~initial;
  const n = data.length;
  let i = 0;
  const end8 = n - (n & 7);
  while (i < end8) {
    const lo = crc ^ (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24));
    crc =
      t[1792 + (lo & 0xff)]! ^
      t[1536 + ((lo >>> 8) & 0xff)]! ^
      t[1280 + ((lo >>> 16) & 0xff)]! ^
      t[1024 + (lo >>> 24)]! ^
      t[768 + data[i + 4]!]! ^
      t[512 + data[i + 5]!]! ^
      t[256 + data[i + 6]!]! ^
      t[data[i + 7]!]!;
    i += 8;
  }
  while (i < n) {
    crc = (crc >>> 8) ^ t[(crc ^ data[i]!) & 0xff]!;
    i++;
  }
  return ~crc >>> 0;
}

type NativeCrc = (input: Uint8Array, initial?: number) => number;

/**
 * The file name of the Linux arm64 addon a Lambda bundle may carry next to its `index.mjs`
 * (`cdk/native-crc.ts` puts it there; `@node-rs/crc32` is not in the bundle).
 */
export const BUNDLED_CRC_ADDON_FILE = 'crc32c-linux-arm64-gnu.node';

type NativeSource = '@node-rs/crc32' | typeof BUNDLED_CRC_ADDON_FILE;

function loadNative(): { fn: NativeCrc; source: NativeSource } | null {
  // Not named `require`, so that esbuild leaves these loads to run time.
  const load = createRequire(import.meta.url);
  const candidates: Array<[NativeSource, string]> = [
    ['@node-rs/crc32', '@node-rs/crc32'],
    // Next to this module: in a Lambda bundle, next to index.mjs (never there in the source tree).
    [BUNDLED_CRC_ADDON_FILE, `./${BUNDLED_CRC_ADDON_FILE}`],
  ];
  for (const [source, specifier] of candidates) {
    try {
      const mod = load(specifier) as { crc32c: (input: Buffer, initial?: number) => number };
      const fn: NativeCrc = (input, initial = 0) =>
        mod.crc32c(Buffer.isBuffer(input) ? input : Buffer.from(input.buffer, input.byteOffset, input.byteLength), initial) >>> 0;
      // Pair assertion at load: the addon must agree with the portable code on the check value.
      if (fn(Buffer.from('123456789')) === 0xe3069283) return { fn, source };
    } catch {
      // Not installed, or built for another platform (the arm64 addon on x64): try the next.
    }
  }
  return null;
}

const native = loadNative();

/** The native implementation, or null where no addon loads. */
export const crc32cNative: NativeCrc | null = native?.fn ?? null;

/** Where the native implementation came from: the installed package, or the addon a Lambda bundle carries. */
export const crc32cNativeSource: NativeSource | null = native?.source ?? null;

/**
 * The implementation `crc32c` is, chosen once, when this module loads: the environment is read
 * then and never again, so every checksum of a process comes from one implementation.
 */
export const crc32cImpl: 'native' | 'portable' = crc32cNative && process.env[ENV.crcImpl] !== 'portable' ? 'native' : 'portable';

/**
 * CRC-32C of `data`, as an unsigned 32-bit number.
 *
 * Incremental: pass the CRC of the preceding bytes as `initial`, so that
 * `crc32c(b, crc32c(a)) === crc32c(concat(a, b))`.
 *
 * @example
 * crc32c(Buffer.from('123456789')); // 0xe3069283
 */
export const crc32c: (data: Uint8Array, initial?: number) => number = crc32cImpl === 'native' ? crc32cNative! : crc32cPortable;

// CRC combination (as zlib's crc32_combine): the CRC of A‖B from crc(A), crc(B) and |B|, by
// applying |B| zero bytes to crc(A) with GF(2) matrix squaring. O(32² log |B|), no data pass.

function gf2Times(mat: Uint32Array, vec: number): number {
  let sum = 0;
  for (let i = 0; vec !== 0; i++, vec >>>= 1) if (vec & 1) sum ^= mat[i]!;
  return sum >>> 0;
}

function gf2Square(square: Uint32Array, mat: Uint32Array): void {
  for (let n = 0; n < 32; n++) square[n] = gf2Times(mat, mat[n]!);
}

/** `crc` advanced over `len` zero bytes (zlib's crc32_combine core), without the final xor. */
function shiftByZeros(crc: number, len: number): number {
  const even = new Uint32Array(32);
  const odd = new Uint32Array(32);
  odd[0] = POLY; // the operator for one zero bit
  for (let n = 1, row = 1; n < 32; n++, row <<= 1) odd[n] = row;
  gf2Square(even, odd); // two zero bits
  gf2Square(odd, even); // four zero bits
  let c = crc >>> 0;
  do {
    gf2Square(even, odd);
    if (len & 1) c = gf2Times(even, c);
    len = Math.floor(len / 2);
    if (len === 0) break;
    gf2Square(odd, even);
    if (len & 1) c = gf2Times(odd, c);
    len = Math.floor(len / 2);
  } while (len !== 0);
  return c >>> 0;
}

/**
 * The shift over `len` zero bytes is linear in the CRC, so it is a 32x32 bit matrix: built once
 * per length (column i is the shift of bit i) and kept, since callers combine many blocks of the
 * same few lengths (granules). A combine then costs at most 32 XORs.
 */
const zeroShiftOperators = new Map<number, Uint32Array>();

function zeroShiftOperator(len: number): Uint32Array {
  let op = zeroShiftOperators.get(len);
  if (!op) {
    op = new Uint32Array(32);
    for (let i = 0; i < 32; i++) op[i] = shiftByZeros((1 << i) >>> 0, len);
    if (zeroShiftOperators.size >= 256) zeroShiftOperators.clear();
    zeroShiftOperators.set(len, op);
  }
  return op;
}

/**
 * CRC-32C of the concatenation of two blocks, given each block's CRC and the second's length.
 *
 * @example
 * crc32cCombine(crc32c(a), crc32c(b), b.length) === crc32c(Buffer.concat([a, b])); // true
 */
export function crc32cCombine(crc1: number, crc2: number, len2: number): number {
  if (len2 <= 0) return crc1 >>> 0;
  return (gf2Times(zeroShiftOperator(len2), crc1 >>> 0) ^ crc2) >>> 0;
}

/** A CRC32C as S3 writes it in `x-amz-checksum-crc32c` and `ChecksumCRC32C`: 4 bytes big-endian, base64. */
export function crc32cBase64(crc: number): string {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(crc >>> 0);
  return b.toString('base64');
}
