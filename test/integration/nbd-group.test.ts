/**
 * Group snapshots of volumes attached through the NBD gateway (docs/consistency-groups.md):
 * two volumes, each attached by its own `sledge nbd` (each with its own reservation key), fio
 * writing each sequentially with a FLUSH after every FLUSH_EVERY writes, and group snapshots
 * taken through the API meanwhile, presenting each member's key. fio stamps every 4 KiB block
 * with a header (its offset, and the wall-clock time its write was issued: `--clocksource=
 * gettimeofday`, so the two fio processes share one clock).
 *
 * Crash consistency through a write-back gateway is about flushed writes: a write is durable
 * once a FLUSH after it returned, and fio issues the write after a flush only once the flush
 * returned. So block `a` was durable before the write right after its flush (`next(a)`) was
 * issued. For each group snapshot, with `C` the latest issue time among the blocks it holds (on
 * either volume): every block `a` of either volume whose `next(a)` was issued before `C` must be
 * in it; and every block it holds is whole (a valid header for its offset, or zeros).
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { http, testApi, testTempDir } from './helpers.ts';
import { describeRun, run, startGateway, type NbdTarget } from './nbd-tools.ts';

const MiB = 1024 * 1024;
const BLOCK = 4096;
const WRITTEN = MiB;
const BLOCKS = WRITTEN / BLOCK;
const FLUSH_EVERY = 8;
const FIO_MAGIC = 0xacca;
const dir = testTempDir('sledge-nbd-group-');
const { api, apiUrl } = testApi();

/** Issue time in ns of each block fio wrote (null: zeros); throws on a torn or misplaced block. */
function blockTimes(image: Buffer, what: string): Array<bigint | null> {
  const out: Array<bigint | null> = [];
  for (let i = 0; i < BLOCKS; i++) {
    const b = image.subarray(i * BLOCK, (i + 1) * BLOCK);
    if (b.every((x) => x === 0)) {
      out.push(null);
      continue;
    }
    // fio's verify header: magic u16, type u16, len u32, seed u64, offset u64, sec u32, nsec u32, ...
    if (b.readUInt16LE(0) !== FIO_MAGIC || b.readBigUInt64LE(16) !== BigInt(i * BLOCK)) {
      throw new Error(`${what}: block ${i} is neither zeros nor fio's block for its offset`);
    }
    out.push(BigInt(b.readUInt32LE(24)) * 1_000_000_000n + BigInt(b.readUInt32LE(28)));
  }
  return out;
}

async function readAll(path: string): Promise<Buffer> {
  const r = await http(`${apiUrl}${path}?offset=0&length=${WRITTEN}`);
  expect(r.status, r.body.toString()).toBe(200);
  return r.body;
}

describe('group snapshots through the NBD gateway', () => {
  it('are crash consistent across two gateways with fio flushing', async () => {
    const volumes = [(await api.createVolume({ sizeBytes: 16 * MiB })).volumeId, (await api.createVolume({ sizeBytes: 16 * MiB })).volumeId];
    const created = await http(`${apiUrl}/consistency-groups`, {
      method: 'POST',
      body: JSON.stringify({ name: 'nbd', volumeIds: volumes }),
      headers: { 'content-type': 'application/json' },
    });
    expect(created.status, created.body.toString()).toBe(201);
    const groupId = created.json.groupId;
    const keys = ['gw-group-a', 'gw-group-b'];
    const gateways: NbdTarget[] = [];
    try {
      for (const [i, v] of volumes.entries()) gateways.push(await startGateway(apiUrl, v, ['--socket', join(dir, `${i}.sock`)], ['--key', keys[i]!]));
      let running = true;
      const fios = gateways.map((gw, i) =>
        run('fio', [
          `--name=group-${i}`,
          '--ioengine=nbd',
          `--uri=${gw.uri}`,
          '--rw=write',
          `--bs=${BLOCK}`,
          `--size=${WRITTEN}`,
          '--iodepth=1',
          `--fsync=${FLUSH_EVERY}`,
          '--verify=crc32c',
          '--do_verify=0',
          '--verify_state_save=0',
          '--clocksource=gettimeofday',
        ]),
      );
      void Promise.all(fios).finally(() => {
        running = false;
      });
      const snapshots: Array<{ snapshotId: string }[]> = [];
      const body = JSON.stringify({ reservationKeys: { [volumes[0]!]: keys[0], [volumes[1]!]: keys[1] } });
      while (running) {
        const r = await http(`${apiUrl}/consistency-groups/${groupId}/snapshots`, { method: 'POST', body, headers: { 'content-type': 'application/json' } });
        expect(r.status, r.body.toString()).toBe(201);
        snapshots.push(r.json.snapshots);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      for (const [i, r] of (await Promise.all(fios)).entries()) expect(r.code, describeRun(`fio ${i}`, r)).toBe(0);
      for (const gw of gateways.splice(0)) expect(await gw.stop()).toBe(0);

      // Every block's issue time, from the volumes as fio left them (each block written once).
      const final = await Promise.all(volumes.map(async (v, i) => blockTimes(await readAll(`/volumes/${v}/data`), `volume ${i}`)));
      for (const times of final) expect(times.every((t) => t !== null)).toBe(true);
      /** When the write after block `a`'s flush was issued (null: no write after it). */
      const durableBy = final.map((times) => times.map((_, a) => times[Math.floor(a / FLUSH_EVERY) * FLUSH_EVERY + FLUSH_EVERY] ?? null));

      let nonEmpty = 0;
      for (const [n, members] of snapshots.entries()) {
        const held = await Promise.all(members.map(async (m, i) => blockTimes(await readAll(`/snapshots/${m.snapshotId}/data`), `group snapshot ${n}, volume ${i}`)));
        let cut = -1n;
        for (const times of held) for (const t of times) if (t !== null && t > cut) cut = t;
        if (cut >= 0n) nonEmpty++;
        for (let v = 0; v < 2; v++) {
          for (let a = 0; a < BLOCKS; a++) {
            // A block held must be the block fio wrote there.
            if (held[v]![a] !== null) expect(held[v]![a], `group snapshot ${n}, volume ${v}, block ${a}`).toBe(final[v]![a]);
            const by = durableBy[v]![a];
            if (by !== null && by !== undefined && by < cut) {
              expect(held[v]![a], `group snapshot ${n} holds a write issued after volume ${v} block ${a} was flushed, but not that block`).not.toBeNull();
            }
          }
        }
      }
      console.log(`${snapshots.length} group snapshots checked, ${nonEmpty} holding fio's writes`);
      expect(snapshots.length).toBeGreaterThanOrEqual(3);
      expect(nonEmpty).toBeGreaterThan(0);
    } finally {
      for (const gw of gateways) await gw.stop();
    }
  });
});
