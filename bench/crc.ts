/**
 * CPU per 4 MiB write with the portable and the native CRC-32C: what the `@node-rs/crc32`
 * addon the Lambda bundle carries (cdk/native-crc.ts) saves the head where it loads (it runs
 * the portable erasure codec either way). Measured on the machine that runs the bench, not
 * on Lambda's arm64.
 *
 * The CRC implementation is chosen once, when shared/data/crc32c.ts loads (SLEDGE_CRC_IMPL), so
 * `benchCrc()` measures each in a child process of its own: `npx tsx bench/crc.ts` measures the
 * implementation its process loaded and prints one JSON line.
 *
 * CPU is this process's user + system time (all threads, so the native codec's libuv thread is
 * counted), per 4 MiB, the median of ROUNDS rounds of WRITES_PER_ROUND after one warm-up round.
 * Two measurements per implementation:
 * - `crc32c` over 4 MiB in 64 KiB granules: the checksums of a write's data, and what a read
 *   of 4 MiB verifies;
 * - `encodeSegment` of a 4 MiB payload, RS 4+2: everything the head computes for a write (split,
 *   parity, per-granule and per-object CRCs, trailers), without the HTTP and AWS SDK work, with
 *   the portable codec (as on Lambda) and with the native one.
 */
import { spawn } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { fileURLToPath } from 'node:url';

const MiB = 1024 * 1024;
const WRITE_BYTES = 4 * MiB;
const GRANULE_BYTES = 64 * 1024;
const WRITES_PER_ROUND = 16;
const ROUNDS = 5;

export interface CrcBenchRow {
  crc: 'native' | 'portable';
  measurement: string;
  /** CPU milliseconds per 4 MiB, median of the rounds. */
  cpuMsPer4MiB: number;
}

/** Median CPU milliseconds per call of `work`, over ROUNDS rounds of WRITES_PER_ROUND calls. */
async function cpuMsPerCall(work: () => Promise<void> | void): Promise<number> {
  for (let i = 0; i < WRITES_PER_ROUND; i++) await work();
  const perRound: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const before = process.cpuUsage();
    for (let i = 0; i < WRITES_PER_ROUND; i++) await work();
    const used = process.cpuUsage(before);
    perRound.push((used.user + used.system) / 1000 / WRITES_PER_ROUND);
  }
  perRound.sort((a, b) => a - b);
  return perRound[Math.floor(ROUNDS / 2)]!;
}

/** Measures the CRC implementation this process loaded. */
async function measureThisProcess(): Promise<CrcBenchRow[]> {
  const { crc32c, crc32cImpl } = await import('#shared/data/crc32c.ts');
  const { encodeSegment, newSegmentId } = await import('#shared/data/segments.ts');
  const payload = randomFillSync(Buffer.alloc(WRITE_BYTES));
  const rows: CrcBenchRow[] = [];
  let sink = 0;
  rows.push({
    crc: crc32cImpl,
    measurement: 'crc32c, 4 MiB in 64 KiB granules',
    cpuMsPer4MiB: await cpuMsPerCall(() => {
      for (let o = 0; o < WRITE_BYTES; o += GRANULE_BYTES) sink ^= crc32c(payload.subarray(o, o + GRANULE_BYTES));
    }),
  });
  const meta = { volumeId: 'vol-bench', seq: 1, prev: '', writer: { id: 'bench' }, k: 4, m: 2, blockSizeBytes: 4096, extents: [[0, 1024, 0]] as Array<[number, number, number]> };
  for (const codec of ['portable', 'native'] as const) {
    // shared/data/erasure.ts reads SLEDGE_EC_IMPL on every call, so the codec can change in-process.
    if (codec === 'portable') process.env.SLEDGE_EC_IMPL = 'portable';
    else delete process.env.SLEDGE_EC_IMPL;
    rows.push({
      crc: crc32cImpl,
      measurement: `encodeSegment 4 MiB, RS 4+2, ${codec} codec${codec === 'portable' ? ' (as on Lambda)' : ''}`,
      // Released after each, as the write path does once its PUTs settle.
      cpuMsPer4MiB: await cpuMsPerCall(async () => (await encodeSegment({ ...meta, segmentId: newSegmentId(1) }, payload)).release()),
    });
  }
  // Keeps the CRC loop from being optimized away.
  if (sink === 0x1234_5678) console.error('(an unlikely checksum)');
  return rows;
}

/** Runs this file in a child process with SLEDGE_CRC_IMPL set to `impl`; returns its rows. */
function measureIn(impl: 'native' | 'portable'): Promise<CrcBenchRow[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url)], {
      env: { ...process.env, SLEDGE_CRC_IMPL: impl },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) return reject(new Error(`bench/crc.ts with SLEDGE_CRC_IMPL=${impl} exited with ${code}: ${out}`));
      const rows = JSON.parse(out.trim().split('\n').pop()!) as CrcBenchRow[];
      // A machine without the addon would measure the portable CRC twice; say so instead.
      if (rows.some((r) => r.crc !== impl)) return reject(new Error(`asked for the ${impl} CRC, measured ${rows[0]?.crc}: is @node-rs/crc32 installed?`));
      resolve(rows);
    });
  });
}

/** Both implementations, one child process each, one after the other (so they do not share the cores). */
export async function benchCrc(): Promise<CrcBenchRow[]> {
  return [...(await measureIn('portable')), ...(await measureIn('native'))];
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  process.stdout.write(`${JSON.stringify(await measureThisProcess())}\n`);
}
