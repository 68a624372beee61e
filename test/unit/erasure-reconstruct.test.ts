/**
 * Reconstruct as the degraded read path uses it: every erasure pattern of 4+2 (and of 8+3)
 * rebuilt byte-exact by both codecs, on 64 KiB granules, many at once (the native codec's
 * reused scratch buffers), into the caller's buffers or new ones; and the portable codec's
 * cache of decoding matrices, which must give what a fresh inversion gives.
 */
import { randomInt } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { type ErasureCodec } from '#shared/data/erasure/checks.ts';
import { context, decoder } from '#shared/data/erasure/generator.ts';
import { mulberry32, prngBytes } from './fixtures/make-erasure-vectors.ts';
import { CODECS, subsets } from './fixtures/codecs.ts';

const SEED = process.env.SLEDGE_SEED ? Number(process.env.SLEDGE_SEED) : randomInt(2 ** 31);
console.log(`erasure-reconstruct.test seed: ${SEED} (rerun with SLEDGE_SEED=${SEED})`);

const GRANULE = 64 * 1024;

/** Every non-empty subset of {0..n-1} with at most `max` elements. */
function patterns(n: number, max: number): number[][] {
  return subsets(n, max).filter((p) => p.length > 0);
}

async function stripe(c: ErasureCodec, k: number, m: number, length: number, rng: () => number): Promise<Buffer[]> {
  const data = Array.from({ length: k }, () => prngBytes(rng(), length));
  return [...data, ...(await c.encode(k, m, data))];
}

describe.each(CODECS)('%s reconstruct', (_name, get) => {
  // 4+2 on the 64 KiB granules reads rebuild; 8+3 (176 patterns) on smaller shards, for time.
  for (const [k, m, length] of [
    [4, 2, GRANULE],
    [8, 3, GRANULE / 8],
  ] as const) {
    it(`rebuilds every erasure pattern of ${k}+${m} byte-exact, all patterns at once, with and without into`, async () => {
      const c = get();
      const rng = mulberry32(SEED ^ (k * 16 + m));
      const all = patterns(k + m, m);
      // One stripe per pattern, so that a mixed-up scratch buffer would show as wrong bytes.
      const stripes = await Promise.all(all.map(() => stripe(c, k, m, length, rng)));
      const inputs = stripes.map((s, p) => s.map((shard, i) => (all[p]!.includes(i) ? null : Buffer.from(shard))));
      const snapshots = inputs.map((shards) => shards.map((s) => (s ? Buffer.from(s) : null)));
      for (const withInto of [false, true]) {
        const intos = all.map((missing) => Array.from({ length: k + m }, (_, i) => (withInto && missing.includes(i) ? Buffer.alloc(length, 0xa5) : null)));
        const results = await Promise.all(inputs.map((shards, p) => c.reconstruct(k, m, shards, withInto ? intos[p] : undefined)));
        results.forEach((out, p) => {
          const label = `pattern ${all[p]!.join(',')}${withInto ? ' into' : ''}`;
          expect(out.length, label).toBe(k + m);
          out.forEach((shard, i) => expect(shard.equals(stripes[p]![i]!), `${label}: shard ${i}`).toBe(true));
          // Rebuilt shards land in the caller's buffers when given; inputs are not touched.
          for (const i of all[p]!) if (withInto) expect(out[i], `${label}: shard ${i} is the into buffer`).toBe(intos[p]![i]);
          inputs[p]!.forEach((s, i) => expect(s === null || s.equals(snapshots[p]![i]!), `${label}: input ${i} unchanged`).toBe(true));
        });
        // A later call must not change what an earlier one returned (no view of a reused buffer).
        const before = results.map((out) => out.map((s) => Buffer.from(s)));
        await Promise.all(inputs.map((shards) => c.reconstruct(k, m, shards.map((s) => (s ? Buffer.from(s).fill(0x3c) : null)))));
        results.forEach((out, p) => out.forEach((s, i) => expect(s.equals(before[p]![i]!), `pattern ${all[p]!.join(',')}: result ${i} kept`).toBe(true)));
      }
    });
  }

  it('refuses an into entry of the wrong length', async () => {
    const c = get();
    const shards = await stripe(c, 4, 2, GRANULE, mulberry32(SEED));
    const into = [Buffer.alloc(GRANULE - 8), null, null, null, null, null];
    await expect(c.reconstruct(4, 2, [null, ...shards.slice(1)], into)).rejects.toThrow(/output entries/);
  });
});

describe('portable decoding-matrix cache', () => {
  it('answers each source set of 4+2 with the rows a fresh inversion gives, once computed', () => {
    const ctx = context(4, 2);
    for (const missing of patterns(6, 2)) {
      const sources = [0, 1, 2, 3, 4, 5].filter((i) => !missing.includes(i)).slice(0, 4);
      const mask = sources.reduce((a, i) => a | (1 << i), 0);
      const first = decoder(ctx, mask, sources);
      expect(decoder(ctx, mask, sources), `sources ${sources.join(',')} cached`).toBe(first);
      // A fresh context has an empty cache: its inversion must equal the cached rows.
      const fresh = decoder({ ...ctx, decoders: new Map() }, mask, sources);
      expect(fresh.map((r) => [...r]), `sources ${sources.join(',')}`).toEqual(first.map((r) => [...r]));
    }
  });
});
