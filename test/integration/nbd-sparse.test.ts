/**
 * Block status (`base:allocation`) through real clients: `qemu-img map` of a sparse volume
 * shows exactly what was written (flushed, and still in the gateway's cache), and `nbdcopy` of
 * a mostly empty 1 GiB volume reads only the written extents, counted in the API reads and S3
 * ranged GETs the gateway reports when it stops.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { testApi, testTempDir } from './helpers.ts';
import { describeRun, nbdsh, run, startGateway } from './nbd-tools.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

const dir = testTempDir('sledge-nbd-sparse-');
const { api, apiUrl } = testApi();

interface MapEntry {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
}

/** `qemu-img map` of the export, as merged [start, end) ranges of data. */
async function dataRanges(uri: string): Promise<Array<[number, number]>> {
  const r = await run('qemu-img', ['map', '-f', 'raw', '--output=json', uri]);
  expect(r.code, describeRun('qemu-img map', r)).toBe(0);
  const out: Array<[number, number]> = [];
  for (const e of JSON.parse(r.stdout) as MapEntry[]) {
    if (!e.data) {
      expect(e.zero, `a hole at ${e.start} reads as zeros`).toBe(true);
      continue;
    }
    const last = out[out.length - 1];
    if (last && last[1] === e.start) last[1] = e.start + e.length;
    else out.push([e.start, e.start + e.length]);
  }
  return out;
}

describe('block status (base:allocation) from the page map', () => {
  it('qemu-img map of a sparse volume shows exactly the written ranges, flushed or still cached', async () => {
    const vol = await api.createVolume({ sizeBytes: 64 * MiB });
    const gw = await startGateway(apiUrl, vol.volumeId, ['--socket', join(dir, 'map.sock')], ['--max-dirty-age-ms', '0']);
    try {
      const script = `
h.pwrite(b"\\x11" * ${MiB}, 0)
h.pwrite(b"\\x22" * ${64 * KiB}, ${10 * MiB})
h.pwrite(b"\\x33" * ${4 * MiB}, ${20 * MiB})
h.zero(${MiB}, ${21 * MiB})
h.flush()
# Still only in the gateway's cache: a write, and a trim over flushed data.
h.pwrite(b"\\x44" * 4096, ${40 * MiB})
h.trim(${64 * KiB}, ${22 * MiB})
`;
      const r = await nbdsh(gw.uri, script);
      expect(r.code, describeRun('nbdsh', r)).toBe(0);
      expect(await dataRanges(gw.uri)).toEqual([
        [0, MiB],
        [10 * MiB, 10 * MiB + 64 * KiB],
        [20 * MiB, 21 * MiB],
        [22 * MiB + 64 * KiB, 24 * MiB],
        [40 * MiB, 40 * MiB + 4096],
      ]);
      // nbdinfo lists the context and the flags.
      const info = await run('nbdinfo', ['--json', gw.uri]);
      expect(info.code, describeRun('nbdinfo', info)).toBe(0);
      const e = JSON.parse(info.stdout).exports[0];
      expect(e.contexts).toContain('base:allocation');
      expect(e.can_fast_zero).toBe(true);
    } finally {
      expect(await gw.stop(), gw.output()).toBe(0);
    }
    // After the shutdown write-back a fresh gateway sees the same map, all from the page map.
    const again = await startGateway(apiUrl, vol.volumeId, ['--socket', join(dir, 'map2.sock')]);
    try {
      expect((await dataRanges(again.uri)).at(-1)).toEqual([40 * MiB, 40 * MiB + 4096]);
    } finally {
      expect(await again.stop()).toBe(0);
    }
  });

  it('nbdcopy of a mostly empty 1 GiB volume reads only the written extents', async () => {
    const vol = await api.createVolume({ sizeBytes: GiB });
    const extents = [100 * MiB, 500 * MiB, 900 * MiB];
    const src = join(dir, 'expected.img');
    const parts = extents.map((at) => ({ at, data: randomBytes(MiB) }));
    const writer = await startGateway(apiUrl, vol.volumeId, ['--socket', join(dir, 'copy-w.sock')]);
    try {
      for (const p of parts) {
        writeFileSync(join(dir, 'part.bin'), p.data);
        const r = await nbdsh(writer.uri, `h.pwrite(open(${JSON.stringify(join(dir, 'part.bin'))}, "rb").read(), ${p.at}); h.flush()`);
        expect(r.code, describeRun('nbdsh write', r)).toBe(0);
      }
    } finally {
      expect(await writer.stop()).toBe(0);
    }
    // The expected image, sparse: zeros except the three extents.
    writeFileSync(src, Buffer.alloc(0));
    const expected = await run('truncate', ['-s', String(GiB), src]);
    expect(expected.code).toBe(0);
    const fd = await open(src, 'r+');
    for (const p of parts) await fd.write(p.data, 0, p.data.length, p.at);
    await fd.close();

    // A fresh gateway: an empty cache, so every byte nbdcopy reads comes through the API.
    const reader = await startGateway(apiUrl, vol.volumeId, ['--socket', join(dir, 'copy-r.sock')]);
    const out = join(dir, 'copy.img');
    try {
      const c = await run('nbdcopy', [reader.uri, out], { timeoutMs: 300_000 });
      expect(c.code, describeRun('nbdcopy', c)).toBe(0);
    } finally {
      expect(await reader.stop(), reader.output()).toBe(0);
    }
    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, out]);
    expect(cmp.code, describeRun('qemu-img compare', cmp)).toBe(0);
    const m = /(\d+) API reads \((\d+) bytes, \d+ ahead, \d+ for CACHE, (\d+) S3 ranged GETs\), (\d+) allocation queries/.exec(reader.output());
    expect(m, reader.output()).not.toBeNull();
    const [, reads, bytes, gets, queries] = m!.map(Number);
    console.log(`nbdcopy of 1 GiB with 3 MiB written: ${reads} API reads, ${bytes} bytes, ${gets} S3 ranged GETs, ${queries} allocation queries`);
    // Without block status nbdcopy would read all 1 GiB (256 API reads of 4 MiB at least).
    // With it: the three 1 MiB extents, and read-ahead of at most a few 4 MiB windows past each.
    expect(bytes!).toBeLessThanOrEqual(3 * 24 * MiB);
    // Each 1 MiB extent is one segment of 4 data chunks: a few ranged GETs each, not hundreds.
    expect(gets!).toBeLessThanOrEqual(3 * 8);
    expect(queries!).toBeGreaterThan(0);
  });
});
