import { beforeAll, describe, expect, it } from 'vitest';
import { encodeBatch } from '#shared/api/batch.ts';
import { seeded } from '../unit/seed.ts';
import { Api, useSledgeEnv } from './helpers.ts';

/**
 * Model-based test: random writes, batches, trims, overwrites and reads against an in-memory
 * copy of the volume. Every read must equal the model. The seed is printed; replay it with
 * SLEDGE_SEED=<seed>. SLEDGE_MODEL_OPS sets the number of operations (default 600).
 */
const OPS = Number(process.env.SLEDGE_MODEL_OPS ?? 600);
const BLOCK = 4096;
const SIZE = 24 * 1024 * 1024;

let api: Api;
beforeAll(() => {
  api = new Api(useSledgeEnv().apiUrl);
});

describe('randomized model', () => {
  it(`matches an in-memory model over ${OPS} operations`, async () => {
    const rng = seeded('volume model');
    const vol = await api.createVolume({ sizeBytes: SIZE });
    const model = Buffer.alloc(SIZE);
    const blocks = SIZE / BLOCK;
    // Mostly small I/O near a few hot spots (overwrites), sometimes large and anywhere.
    const hot = [0, 255, 256, 1000, blocks - 300].map((b) => Math.max(0, Math.min(blocks - 1, b)));
    const pickStart = (maxBlocks: number) => {
      const base = rng.next() < 0.6 ? hot[rng.int(hot.length)]! + rng.int(64) : rng.int(blocks);
      return Math.max(0, Math.min(blocks - maxBlocks, base));
    };
    const pickCount = () => {
      const r = rng.next();
      return r < 0.6 ? 1 + rng.int(4) : r < 0.9 ? 1 + rng.int(64) : 1 + rng.int(1024);
    };
    const randomData = (n: number) => {
      const b = Buffer.alloc(n);
      for (let i = 0; i < n; i += 4) b.writeUInt32LE((rng.next() * 2 ** 32) >>> 0, i);
      return b;
    };
    const counts = { write: 0, batch: 0, trim: 0, read: 0 };
    for (let op = 0; op < OPS; op++) {
      const r = rng.next();
      const count = pickCount();
      const start = pickStart(count);
      const context = `op ${op} (seed ${rng.seed})`;
      if (r < 0.4) {
        const data = randomData(count * BLOCK);
        await api.write(vol.volumeId, start * BLOCK, data);
        data.copy(model, start * BLOCK);
        counts.write++;
      } else if (r < 0.5) {
        // A batch of up to 6 non-overlapping extents, some zero.
        const pieces: Array<{ offset: number; data: Buffer } | { offset: number; length: number; zero: true }> = [];
        let cursor = rng.int(blocks / 2);
        for (let i = 0; i < 1 + rng.int(6) && cursor < blocks - 16; i++) {
          const n = 1 + rng.int(16);
          if (rng.next() < 0.3) pieces.push({ offset: cursor * BLOCK, length: n * BLOCK, zero: true });
          else pieces.push({ offset: cursor * BLOCK, data: randomData(n * BLOCK) });
          cursor += n + rng.int(300);
        }
        if (pieces.length === 0) continue;
        await api.batch(vol.volumeId, encodeBatch(pieces));
        for (const p of pieces) {
          if ('data' in p) p.data.copy(model, p.offset);
          else model.fill(0, p.offset, p.offset + p.length);
        }
        counts.batch++;
      } else if (r < 0.6) {
        await api.trim(vol.volumeId, start * BLOCK, count * BLOCK);
        model.fill(0, start * BLOCK, (start + count) * BLOCK);
        counts.trim++;
      } else {
        const got = await api.read(vol.volumeId, start * BLOCK, count * BLOCK);
        const want = model.subarray(start * BLOCK, (start + count) * BLOCK);
        if (!got.equals(want)) expect.fail(`${context}: read of ${count} blocks at block ${start} differs from the model`);
        counts.read++;
      }
    }
    // Finally the whole volume.
    for (let o = 0; o < SIZE; o += 4 * 1024 * 1024) {
      const got = await api.read(vol.volumeId, o, 4 * 1024 * 1024);
      if (!got.equals(model.subarray(o, o + 4 * 1024 * 1024))) expect.fail(`final read at ${o} differs from the model (seed ${rng.seed})`);
    }
    console.log(`model: ${JSON.stringify(counts)}`);
    expect(counts.read).toBeGreaterThan(OPS / 5);
  });
});
