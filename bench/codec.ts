/**
 * Single-core throughput of the erasure codecs, next to a plain memory copy.
 *
 * Run alone: `npx tsx bench/codec.ts` prints a table. GB/s is 10^9 bytes of *user data*
 * (the k data shards) per second; for Buffer.copy it is bytes copied per second.
 *
 * Each measurement processes ~64 MiB of data, in 1 MiB shards that are separate Buffers
 * (as shards fetched from S3 would be), after one warm-up pass; the best of three
 * measurements is reported.
 *
 * Per core: the native codec (@ronomon/reed-solomon) runs each encode call on one thread
 * of libuv's threadpool (UV_THREADPOOL_SIZE, 4 by default). Issuing calls concurrently
 * would spread them over several threads and report a multi-core figure, so we await
 * each call before issuing the next: one pool thread works at a time while the main
 * thread waits. The portable codec runs on the main thread, also one call at a time.
 */
import { randomFillSync } from 'node:crypto';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadNativeCodec } from '#shared/data/erasure/native.ts';
import { portableCodec } from '#shared/data/erasure/portable.ts';
import { type ErasureCodec } from '#shared/data/erasure/checks.ts';

const MiB = 1 << 20;
const TOTAL = 64 * MiB;
const SHARD = 1 * MiB;
const ROUNDS = 3;

export interface BenchResult {
  name: string;
  gbPerSec: number;
}

/** Best-of-ROUNDS throughput of `pass`, which processes `bytes` bytes per call; one warm-up call first. */
async function measure(bytes: number, pass: () => Promise<void> | void): Promise<number> {
  await pass();
  let best = 0;
  for (let r = 0; r < ROUNDS; r++) {
    const start = process.hrtime.bigint();
    await pass();
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    best = Math.max(best, bytes / seconds / 1e9);
  }
  return best;
}

/** TOTAL bytes of random data as separate SHARD-sized Buffers, grouped into stripes of k. */
function stripes(k: number): Buffer[][] {
  const count = Math.max(1, Math.round(TOTAL / (k * SHARD)));
  return Array.from({ length: count }, () => Array.from({ length: k }, () => randomFillSync(Buffer.allocUnsafeSlow(SHARD))));
}

async function encodeRate(codec: ErasureCodec, k: number, m: number): Promise<number> {
  const input = stripes(k);
  return measure(input.length * k * SHARD, async () => {
    for (const data of input) await codec.encode(k, m, data);
  });
}

/** Encode where the k data shards are consecutive views of one Buffer (native skips its gathering copy). */
async function encodeContiguousRate(codec: ErasureCodec, k: number, m: number): Promise<number> {
  const count = Math.max(1, Math.round(TOTAL / (k * SHARD)));
  const input = Array.from({ length: count }, () => {
    const all = randomFillSync(Buffer.allocUnsafeSlow(k * SHARD));
    return Array.from({ length: k }, (_, i) => all.subarray(i * SHARD, (i + 1) * SHARD));
  });
  return measure(count * k * SHARD, async () => {
    for (const data of input) await codec.encode(k, m, data);
  });
}

/** Reconstruct with data shards 0..m-1 missing (the worst case: all m parity shards used). */
async function decodeRate(codec: ErasureCodec, k: number, m: number): Promise<number> {
  const input: (Buffer | null)[][] = [];
  for (const data of stripes(k)) {
    const parity = await codec.encode(k, m, data);
    input.push([...data.map((d, i) => (i < m ? null : d)), ...parity]);
  }
  return measure(input.length * k * SHARD, async () => {
    for (const shards of input) await codec.reconstruct(k, m, shards);
  });
}

async function copyRate(): Promise<number> {
  const source = randomFillSync(Buffer.allocUnsafeSlow(TOTAL));
  const target = Buffer.allocUnsafeSlow(TOTAL);
  return measure(TOTAL, () => {
    source.copy(target);
  });
}

export async function benchCodec(): Promise<Array<{ name: string; gbPerSec: number }>> {
  const results: BenchResult[] = [];
  results.push({ name: 'Buffer.copy', gbPerSec: await copyRate() });
  const native = loadNativeCodec();
  const codecs: ErasureCodec[] = native ? [native, portableCodec] : [portableCodec];
  for (const [k, m] of [[4, 2], [8, 3]] as const) {
    for (const c of codecs) results.push({ name: `${c.name} encode ${k}+${m}`, gbPerSec: await encodeRate(c, k, m) });
    if (native) results.push({ name: `native encode ${k}+${m} (contiguous data)`, gbPerSec: await encodeContiguousRate(native, k, m) });
    for (const c of codecs) results.push({ name: `${c.name} decode ${k}+${m} (${m} data missing)`, gbPerSec: await decodeRate(c, k, m) });
  }
  return results;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  if (!loadNativeCodec()) console.log('native codec unavailable: @ronomon/reed-solomon did not load');
  const results = await benchCodec();
  const width = Math.max(...results.map((r) => r.name.length));
  console.log(`${'measurement'.padEnd(width)} | GB/s (1 core, ${SHARD / MiB} MiB shards)`);
  console.log(`${'-'.repeat(width)}-|-${'-'.repeat(24)}`);
  for (const r of results) console.log(`${r.name.padEnd(width)} | ${r.gbPerSec.toFixed(2).padStart(6)}`);
}
