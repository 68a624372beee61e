import { randomInt } from 'node:crypto';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { crc32cCombine, crc32cNative, crc32cPortable } from '#shared/data/crc32c.ts';
import { mulberry32, prngBytes } from './fixtures/make-erasure-vectors.ts';

const SEED = process.env.SLEDGE_SEED ? Number(process.env.SLEDGE_SEED) : randomInt(2 ** 31);
console.log(`crc32c.test seed: ${SEED} (rerun with SLEDGE_SEED=${SEED})`);

/** Bit-at-a-time reference implementation. */
function reference(data: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of data) {
    crc ^= byte;
    for (let i = 0; i < 8; i++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  return ~crc >>> 0;
}

it('loads the native CRC32C addon (installed by npm ci)', () => {
  // The build installs @node-rs/crc32; if it stops loading, the fast path is silently gone.
  expect(crc32cNative).not.toBeNull();
});

const impls: Array<[string, (data: Uint8Array, initial?: number) => number]> = [['portable', crc32cPortable]];
if (crc32cNative) impls.push(['native', crc32cNative]);

for (const [name, crc32c] of impls)
describe(`crc32c (${name})`, () => {
  it('matches the check value and the RFC 3720 (iSCSI) vectors', () => {
    expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
    expect(crc32c(Buffer.alloc(32, 0))).toBe(0x8a9136aa);
    expect(crc32c(Buffer.alloc(32, 0xff))).toBe(0x62a8ab43);
    expect(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => i)))).toBe(0x46dd794e);
    expect(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => 31 - i)))).toBe(0x113fdb5c);
  });

  it('returns 0 for no data and passes `initial` through', () => {
    expect(crc32c(new Uint8Array(0))).toBe(0);
    expect(crc32c(new Uint8Array(0), 0xdeadbeef)).toBe(0xdeadbeef);
  });

  it('returns an unsigned 32-bit integer', () => {
    const value = crc32c(Buffer.from('123456789'));
    expect(value).toBeGreaterThan(0x7fffffff);
    expect(Number.isInteger(value)).toBe(true);
  });

  it('matches a bitwise reference for every length 0..100 and at unaligned offsets', () => {
    const data = prngBytes(SEED, 128);
    for (let length = 0; length <= 100; length++) {
      for (const offset of [0, 1, 3]) {
        const slice = data.subarray(offset, offset + length);
        expect(crc32c(slice), `length ${length} offset ${offset}`).toBe(reference(slice));
      }
    }
  });

  it('is incremental: crc32c(b, crc32c(a)) === crc32c(a ‖ b) at random split points', () => {
    const next = mulberry32(SEED ^ 0x5eed);
    for (let round = 0; round < 200; round++) {
      const length = next() % 5000;
      const data = prngBytes(next(), length + (4 - (length % 4)) % 4).subarray(0, length);
      const whole = crc32c(data);
      expect(whole).toBe(reference(data));
      const cut = length === 0 ? 0 : next() % (length + 1);
      expect(crc32c(data.subarray(cut), crc32c(data.subarray(0, cut)))).toBe(whole);
      // Three pieces, too.
      const cut2 = cut + (length - cut === 0 ? 0 : next() % (length - cut + 1));
      let crc = crc32c(data.subarray(0, cut));
      crc = crc32c(data.subarray(cut, cut2), crc);
      crc = crc32c(data.subarray(cut2), crc);
      expect(crc).toBe(whole);
    }
  });
});

describe('crc32cCombine', () => {
  it('equals the CRC of the concatenation at random split points', () => {
    const data = prngBytes(SEED ^ 0x5eed, 70_000);
    for (let i = 0; i < 50; i++) {
      const cut = randomInt(data.length + 1);
      const a = data.subarray(0, cut);
      const b = data.subarray(cut);
      expect(crc32cCombine(crc32cPortable(a), crc32cPortable(b), b.length), `cut ${cut}`).toBe(crc32cPortable(data));
    }
  });
});

describe('SLEDGE_CRC_IMPL', () => {
  const saved = process.env.SLEDGE_CRC_IMPL;
  afterEach(() => {
    if (saved === undefined) delete process.env.SLEDGE_CRC_IMPL;
    else process.env.SLEDGE_CRC_IMPL = saved;
    vi.resetModules();
  });

  /** A fresh copy of the module, loaded with the environment as it is now. */
  const load = async () => {
    vi.resetModules();
    return import('#shared/data/crc32c.ts');
  };

  it('makes crc32c the portable implementation when set to portable', async () => {
    process.env.SLEDGE_CRC_IMPL = 'portable';
    const m = await load();
    expect(m.crc32cImpl).toBe('portable');
    expect(m.crc32c).toBe(m.crc32cPortable);
    // The addon still loads, for tests that compare the two.
    expect(m.crc32cNative).not.toBeNull();
  });

  it('prefers the native implementation otherwise', async () => {
    for (const value of [undefined, 'native', '']) {
      if (value === undefined) delete process.env.SLEDGE_CRC_IMPL;
      else process.env.SLEDGE_CRC_IMPL = value;
      const m = await load();
      expect(m.crc32cImpl, `SLEDGE_CRC_IMPL=${value}`).toBe('native');
      expect(m.crc32c).toBe(m.crc32cNative);
    }
  });

  it('is read once, when the module loads', async () => {
    delete process.env.SLEDGE_CRC_IMPL;
    const m = await load();
    process.env.SLEDGE_CRC_IMPL = 'portable';
    expect(m.crc32cImpl).toBe('native');
    expect(m.crc32c).toBe(m.crc32cNative);
  });
});
