import { randomInt } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { crc32c } from '#shared/data/crc32c.ts';
import { codec } from '#shared/data/erasure.ts';
import { loadNativeCodec } from '#shared/data/erasure/native.ts';
import { MAX_K, MAX_M } from '#shared/data/erasure/checks.ts';
import { portableCodec } from '#shared/data/erasure/portable.ts';
import { mulberry32, prngBytes, vectorData, type ErasureVectors } from './fixtures/make-erasure-vectors.ts';
import { CODECS, nativeCodec, subsets } from './fixtures/codecs.ts';
import vectorsJson from './fixtures/erasure-vectors.json' with { type: 'json' };

const vectors = vectorsJson as ErasureVectors;

const SEED = process.env.SLEDGE_SEED ? Number(process.env.SLEDGE_SEED) : randomInt(2 ** 31);
console.log(`erasure.test seed: ${SEED} (rerun with SLEDGE_SEED=${SEED})`);

function erase(shards: readonly Buffer[], missing: readonly number[]): (Buffer | null)[] {
  return shards.map((s, i) => (missing.includes(i) ? null : s));
}

function xorAll(shards: readonly Buffer[]): Buffer {
  const out = Buffer.alloc(shards[0]!.length);
  for (const s of shards) for (let i = 0; i < s.length; i++) out[i]! ^= s[i]!;
  return out;
}

describe('native addon', () => {
  it('loads (@ronomon/reed-solomon is installed by our build)', () => {
    expect(loadNativeCodec()?.name).toBe('native');
  });
});

describe('codec()', () => {
  const saved = process.env.SLEDGE_EC_IMPL;
  afterEach(() => {
    if (saved === undefined) delete process.env.SLEDGE_EC_IMPL;
    else process.env.SLEDGE_EC_IMPL = saved;
  });

  it('is portable when SLEDGE_EC_IMPL=portable', () => {
    process.env.SLEDGE_EC_IMPL = 'portable';
    expect(codec()).toBe(portableCodec);
  });

  it('is native by default (and for any other SLEDGE_EC_IMPL)', () => {
    delete process.env.SLEDGE_EC_IMPL;
    expect(codec().name).toBe('native');
    process.env.SLEDGE_EC_IMPL = 'native';
    expect(codec().name).toBe('native');
  });
});

describe.each(CODECS)('%s codec', (name, get) => {
  it('has its name', () => {
    expect(get().name).toBe(name);
  });

  it.each(vectors.vectors.map((v) => [`${v.k}+${v.m}`, v] as const))('matches the %s vector', async (_, v) => {
    const data = v.data.map((hex) => Buffer.from(hex, 'hex'));
    expect(data).toEqual(vectorData(v.seed, v.k, v.shardSize));
    const parity = await get().encode(v.k, v.m, data);
    expect(parity.map((p) => p.toString('hex'))).toEqual(v.parity);
    // Parity shard 0 is the XOR of the data shards (row 0 of ronomon's generator).
    expect(parity[0]).toEqual(xorAll(data));
  });

  it.each(vectors.digestVectors.map((v) => [`${v.k}+${v.m}`, v.shardSize, v] as const))(
    'matches the %s digest vector with %d-byte shards',
    async (_, __, v) => {
      const parity = await get().encode(v.k, v.m, vectorData(v.seed, v.k, v.shardSize));
      expect(parity.map((p) => crc32c(p).toString(16).padStart(8, '0'))).toEqual(v.parityCrc32c);
    },
  );

  describe.each([
    [4, 2],
    [6, 3],
    [8, 3],
  ])('%i+%i', (k, m) => {
    // 64: word path; 72: 18-byte packets, byte path.
    it.each([64, 72])('rebuilds every erasure pattern of up to m shards (%d-byte shards)', async (shardSize) => {
      const c = get();
      const data = vectorData(SEED + k * 100 + m, k, shardSize);
      const shards = [...data, ...(await c.encode(k, m, data))];
      const snapshot = shards.map((s) => Buffer.from(s));
      const patterns = subsets(k + m, m);
      expect(patterns.length).toBe(Array.from({ length: m + 1 }, (_, r) => binomial(k + m, r)).reduce((a, b) => a + b));
      for (const missing of patterns) {
        const rebuilt = await c.reconstruct(k, m, erase(shards, missing));
        expect(rebuilt.length, `missing ${missing}`).toBe(k + m);
        for (let i = 0; i < k + m; i++) expect(rebuilt[i], `shard ${i}, missing ${missing}`).toEqual(shards[i]);
      }
      // Inputs are never modified.
      expect(shards).toEqual(snapshot);
    });

    it('rebuilds 1 MiB shards (packet size halved to stay in cache)', async () => {
      const c = get();
      const data = vectorData(SEED + 1, k, 1 << 20);
      const shards = [...data, ...(await c.encode(k, m, data))];
      const next = mulberry32(SEED);
      const patterns = subsets(k + m, m).filter((p) => p.length === m);
      for (let round = 0; round < 4; round++) {
        const missing = patterns[next() % patterns.length]!;
        const rebuilt = await c.reconstruct(k, m, erase(shards, missing));
        for (let i = 0; i < k + m; i++) expect(rebuilt[i]!.equals(shards[i]!), `shard ${i}, missing ${missing}`).toBe(true);
      }
    });

    it('throws when fewer than k shards are present', async () => {
      const c = get();
      const data = vectorData(SEED, k, 64);
      const shards = [...data, ...(await c.encode(k, m, data))];
      const missing = Array.from({ length: m + 1 }, (_, i) => i * 2 % (k + m));
      await expect(c.reconstruct(k, m, erase(shards, missing))).rejects.toThrow(
        `reconstruct: only ${k - 1} of ${k + m} shards present, need at least k = ${k}`,
      );
      await expect(c.reconstruct(k, m, new Array<Buffer | null>(k + m).fill(null))).rejects.toThrow(/need at least k/);
    });

    it('throws on mismatched shard lengths', async () => {
      const c = get();
      const data = vectorData(SEED, k, 64);
      const shards: (Buffer | null)[] = [...data, ...(await c.encode(k, m, data))];
      shards[k - 1] = Buffer.alloc(72);
      await expect(c.reconstruct(k, m, shards)).rejects.toThrow(/has length 72, but shard 0 has length 64/);
      const uneven = data.slice();
      uneven[1] = Buffer.alloc(128);
      await expect(c.encode(k, m, uneven)).rejects.toThrow(/data shard 1 has length 128, but shard 0 has length 64/);
    });
  });

  it('rejects bad arguments with clear messages', async () => {
    const c = get();
    const data = (k: number, size = 64): Buffer[] => Array.from({ length: k }, () => Buffer.alloc(size));
    await expect(c.encode(0, 2, [])).rejects.toThrow(`k must be an integer between 1 and ${MAX_K}, got 0`);
    await expect(c.encode(25, 2, data(25))).rejects.toThrow(`k must be an integer between 1 and ${MAX_K}, got 25`);
    await expect(c.encode(4, 0, data(4))).rejects.toThrow(`m must be an integer between 1 and ${MAX_M}, got 0`);
    await expect(c.encode(4, 7, data(4))).rejects.toThrow(`m must be an integer between 1 and ${MAX_M}, got 7`);
    await expect(c.encode(4.5, 2, data(4))).rejects.toThrow('k must be an integer');
    await expect(c.encode(4, 2, data(3))).rejects.toThrow('encode: expected k = 4 data shards, got 3');
    await expect(c.encode(4, 2, data(4, 12))).rejects.toThrow('shard length must be a positive multiple of 8, got 12');
    await expect(c.encode(4, 2, data(4, 0))).rejects.toThrow('shard length must be a positive multiple of 8, got 0');
    await expect(c.reconstruct(4, 2, data(5))).rejects.toThrow('reconstruct: expected k + m = 6 shards (null where missing), got 5');
    await expect(c.reconstruct(4, 2, [...data(5, 12), null])).rejects.toThrow('positive multiple of 8, got 12');
  });

  it('returns the present shards and needs no work when none is missing', async () => {
    const c = get();
    const data = vectorData(SEED, 4, 64);
    const shards = [...data, ...(await c.encode(4, 2, data))];
    const rebuilt = await c.reconstruct(4, 2, shards);
    expect(rebuilt).not.toBe(shards);
    rebuilt.forEach((s, i) => expect(s).toBe(shards[i]));
  });

  it('accepts shards at unaligned offsets and contiguous views of one buffer', async () => {
    const c = get();
    const k = 6;
    const m = 3;
    const data = vectorData(SEED, k, 4096);
    const expected = await portableCodec.encode(k, m, data);
    const backing = Buffer.alloc(1 + k * 4096);
    data.forEach((d, i) => d.copy(backing, 1 + i * 4096));
    const unaligned = data.map((_, i) => backing.subarray(1 + i * 4096, 1 + (i + 1) * 4096));
    expect(await c.encode(k, m, unaligned)).toEqual(expected);
    const contiguous = Buffer.concat(data);
    expect(await c.encode(k, m, data.map((_, i) => contiguous.subarray(i * 4096, (i + 1) * 4096)))).toEqual(expected);
    const shards = erase([...unaligned, ...expected], [0, 2, 7]);
    expect(await c.reconstruct(k, m, shards)).toEqual([...data, ...expected]);
  });
});

describe('native and portable', () => {
  it('produce identical parity for every k <= 24, m <= 6 on random inputs', async () => {
    const native = nativeCodec();
    const next = mulberry32(SEED);
    for (let k = 1; k <= MAX_K; k++) {
      for (let m = 1; m <= MAX_M; m++) {
        for (const shardSize of [8, 8 * (1 + (next() % 64)), 8 * (1 + (next() % 4096))]) {
          const data = vectorData(next(), k, shardSize);
          const a = await native.encode(k, m, data);
          const b = await portableCodec.encode(k, m, data);
          expect(b.length).toBe(m);
          for (let i = 0; i < m; i++) expect(b[i]!.equals(a[i]!), `k=${k} m=${m} shardSize=${shardSize} parity ${i}`).toBe(true);
        }
      }
    }
  });

  it('produce identical parity for large random shards', async () => {
    const native = nativeCodec();
    const next = mulberry32(SEED ^ 0x1234);
    for (let round = 0; round < 8; round++) {
      const k = 1 + (next() % MAX_K);
      const m = 1 + (next() % MAX_M);
      const shardSize = 8 * (1 + (next() % (1 << 16)));
      const data = vectorData(next(), k, shardSize);
      const a = await native.encode(k, m, data);
      const b = await portableCodec.encode(k, m, data);
      for (let i = 0; i < m; i++) expect(b[i]!.equals(a[i]!), `k=${k} m=${m} shardSize=${shardSize} parity ${i}`).toBe(true);
    }
  });

  it('rebuild the same shards from random erasures for random k, m', async () => {
    const native = nativeCodec();
    const next = mulberry32(SEED ^ 0xbeef);
    for (let round = 0; round < 300; round++) {
      const k = 1 + (next() % MAX_K);
      const m = 1 + (next() % MAX_M);
      const shardSize = 8 * (1 + (next() % 128));
      const data = vectorData(next(), k, shardSize);
      const shards = [...data, ...(await native.encode(k, m, data))];
      const lost = next() % (m + 1);
      const missing: number[] = [];
      while (missing.length < lost) {
        const i = next() % (k + m);
        if (!missing.includes(i)) missing.push(i);
      }
      const input = erase(shards, missing);
      const a = await native.reconstruct(k, m, input);
      const b = await portableCodec.reconstruct(k, m, input);
      for (let i = 0; i < k + m; i++) {
        expect(a[i]!.equals(shards[i]!), `native k=${k} m=${m} missing ${missing} shard ${i}`).toBe(true);
        expect(b[i]!.equals(shards[i]!), `portable k=${k} m=${m} missing ${missing} shard ${i}`).toBe(true);
      }
    }
  });

  it('run concurrently without interfering (native threadpool, shared scratch buffers)', async () => {
    const native = nativeCodec();
    const inputs = Array.from({ length: 16 }, (_, i) => vectorData(SEED + i, 4, 65536));
    const expected = await Promise.all(inputs.map((d) => portableCodec.encode(4, 2, d)));
    const actual = await Promise.all(inputs.map((d) => native.encode(4, 2, d)));
    // Buffer.equals: toEqual walks large buffers element by element, slowly.
    actual.forEach((parity, i) => parity.forEach((p, j) => expect(p.equals(expected[i]![j]!), `input ${i} parity ${j}`).toBe(true)));
  });
});

function binomial(n: number, r: number): number {
  let out = 1;
  for (let i = 0; i < r; i++) out = (out * (n - i)) / (i + 1);
  return out;
}

// prngBytes is used by the fixture generator; keep its contract pinned here.
describe('fixture PRNG', () => {
  it('is deterministic mulberry32, little-endian', () => {
    expect(prngBytes(1, 8).toString('hex')).toBe(prngBytes(1, 8).toString('hex'));
    const next = mulberry32(1);
    const first = next();
    expect(prngBytes(1, 4).readUInt32LE(0)).toBe(first);
    expect(first).toBe(2693262067); // the well-known 0.6270739405881613 * 2^32
  });
});
