import { describe, expect, it } from 'vitest';
import { encodeBatch } from '#shared/api/batch.ts';
import { createVolume } from '#shared/control/volumes.ts';
import { foldVolume } from '#shared/maintenance/fold.ts';
import { pageMap } from '#shared/ports.ts';
import { seeded } from '../unit/seed.ts';
import { testApi } from './helpers.ts';

/**
 * Model-based test: random writes, batches, trims, overwrites and reads against an in-memory
 * copy of the volume. Every read must equal the model. The seed is printed; replay it with
 * SLEDGE_SEED=<seed>. SLEDGE_MODEL_OPS sets the number of operations (default 600).
 */
const OPS = Number(process.env.SLEDGE_MODEL_OPS ?? 600);
const BLOCK = 4096;
const SIZE = 24 * 1024 * 1024;

const { api } = testApi({ sledgeEnv: true });

/**
 * The model against a volume made with `create`: the default (a folding volume, bound 512) over
 * OPS operations, and one that writes its page items at every commit (`foldTailMax: 0`, the
 * protocol of volumes made before folding) over a quarter of them.
 */
async function runModel(label: string, ops: number, create: Record<string, unknown>): Promise<void> {
  const rng = seeded(label);
  const vol = await api.createVolume({ sizeBytes: SIZE, ...create });
  expect(vol.foldedSeq === undefined).toBe(create.foldTailMax === 0);
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
  for (let op = 0; op < ops; op++) {
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
  console.log(`model (${label}): ${JSON.stringify(counts)}`);
  expect(counts.read).toBeGreaterThan(ops / 5);
}

describe('randomized model', () => {
  it(`matches an in-memory model over ${OPS} operations (a volume made with the defaults: folding)`, async () => {
    await runModel('volume model', OPS, {});
  });

  it(`matches an in-memory model over ${Math.round(OPS / 4)} operations on a volume that does not fold`, async () => {
    await runModel('volume model, not folding', Math.round(OPS / 4), { foldTailMax: 0 });
  });
});

/**
 * The same model on a folding volume (docs/page-map.md, "Folding"), made in this process with
 * the switch on: batches scattered over the whole volume (one commit across many pages), reads
 * through the API while the tail is unfolded (the worker folds every fourth commit, writers when
 * it is full, and this test now and then), and a final read after the last fold.
 */
describe('randomized model, folding', () => {
  it(`matches an in-memory model over ${Math.round(OPS / 8)} operations with writes scattered over the whole volume`, async () => {
    process.env.SLEDGE_FOLD_TAIL_MAX = '8';
    const rng = seeded('folding volume model');
    const size = 32 * 1024 * 1024;
    const vol = await createVolume({ sizeBytes: size });
    expect(vol.foldedSeq).toBe(0);
    const model = Buffer.alloc(size);
    const blocks = size / BLOCK;
    const counts = { scattered: 0, write: 0, trim: 0, read: 0, readsWithTail: 0, folds: 0 };
    for (let op = 0; op < OPS / 8; op++) {
      const r = rng.next();
      const context = `op ${op} (seed ${rng.seed})`;
      if (r < 0.3) {
        // Up to 120 extents anywhere in the volume, some zero: one commit over up to 32 pages.
        const starts = new Set<number>();
        const n = 1 + rng.int(120);
        while (starts.size < n) starts.add(rng.int(blocks / 4) * 4);
        const pieces: Array<{ offset: number; data: Buffer } | { offset: number; length: number; zero: true }> = [...starts]
          .sort((a, b) => a - b)
          .map((b) => {
            const count = 1 + rng.int(4);
            if (rng.next() < 0.15) return { offset: b * BLOCK, length: count * BLOCK, zero: true as const };
            const data = Buffer.alloc(count * BLOCK);
            for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((rng.next() * 2 ** 32) >>> 0, i);
            return { offset: b * BLOCK, data };
          });
        await api.batch(vol.volumeId, encodeBatch(pieces));
        for (const p of pieces) {
          if ('data' in p) p.data.copy(model, p.offset);
          else model.fill(0, p.offset, p.offset + p.length);
        }
        counts.scattered++;
      } else if (r < 0.4) {
        const count = 1 + rng.int(64);
        const start = rng.int(blocks - count);
        const data = Buffer.alloc(count * BLOCK, 1 + rng.int(250));
        await api.write(vol.volumeId, start * BLOCK, data);
        data.copy(model, start * BLOCK);
        counts.write++;
      } else if (r < 0.45) {
        const count = 1 + rng.int(512);
        const start = rng.int(blocks - count);
        await api.trim(vol.volumeId, start * BLOCK, count * BLOCK);
        model.fill(0, start * BLOCK, (start + count) * BLOCK);
        counts.trim++;
      } else if (r < 0.48) {
        await foldVolume(vol.volumeId);
        counts.folds++;
      } else {
        const count = 1 + rng.int(256);
        const start = rng.int(blocks - count);
        const v = await pageMap().getVolume(vol.volumeId);
        if (v && v.headSeq > (v.foldedSeq ?? v.headSeq)) counts.readsWithTail++;
        const got = await api.read(vol.volumeId, start * BLOCK, count * BLOCK);
        if (!got.equals(model.subarray(start * BLOCK, (start + count) * BLOCK))) expect.fail(`${context}: read of ${count} blocks at block ${start} differs from the model`);
        counts.read++;
      }
    }
    const readAll = async (when: string) => {
      for (let o = 0; o < size; o += 4 * 1024 * 1024) {
        const got = await api.read(vol.volumeId, o, 4 * 1024 * 1024);
        if (!got.equals(model.subarray(o, o + 4 * 1024 * 1024))) expect.fail(`final read ${when} at ${o} differs from the model (seed ${rng.seed})`);
      }
    };
    await readAll('before the last fold');
    await foldVolume(vol.volumeId);
    const v = await pageMap().getVolume(vol.volumeId);
    expect(v?.foldedSeq).toBe(v?.headSeq);
    await readAll('after the last fold');
    console.log(`folding model: ${JSON.stringify(counts)}`);
    expect(counts.readsWithTail).toBeGreaterThan(OPS / 80);
  });
});
