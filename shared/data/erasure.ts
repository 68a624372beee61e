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
import { ENV } from '../core/config.ts';
import type { ErasureCodec } from './erasure/checks.ts';
import { loadNativeCodec } from './erasure/native.ts';
import { portableCodec } from './erasure/portable.ts';

/** The codec this process uses: native unless unavailable or process.env.SLEDGE_EC_IMPL === 'portable'. */
export function codec(): ErasureCodec {
  if (process.env[ENV.erasureImpl] === 'portable') return portableCodec;
  return loadNativeCodec() ?? portableCodec;
}
