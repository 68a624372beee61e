import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { config } from '#shared/core/config.ts';
import { listVolumeChunks } from '#shared/aws/chunk-store.ts';
import { http, testApi } from './helpers.ts';

const MiB = 1024 * 1024;
const { api, apiUrl: url } = testApi({ sledgeEnv: true });

async function chunksOf(volumeId: string): Promise<number> {
  let n = 0;
  for await (const _ of listVolumeChunks(volumeId, config().sledBuckets)) n++;
  return n;
}

describe('volume lifecycle', () => {
  it('creates with defaults, lists, describes, grows, deletes and reclaims', async () => {
    const vol = await api.createVolume({ sizeBytes: 4 * MiB, name: 'lifecycle' });
    expect(vol).toMatchObject({ sizeBytes: 4 * MiB, blockSizeBytes: 4096, dataChunks: 4, parityChunks: 2, state: 'active', commitSeq: 0, name: 'lifecycle' });
    expect(vol.volumeId).toMatch(/^vol-[0-9a-f]{16}$/);

    const listed: string[] = [];
    let next: string | undefined;
    do {
      const r = await http(`${url}/volumes?limit=2${next ? `&next=${next}` : ''}`);
      expect(r.status).toBe(200);
      listed.push(...r.json.volumes.map((v: { volumeId: string }) => v.volumeId));
      next = r.json.next;
    } while (next);
    expect(listed).toContain(vol.volumeId);

    const data = randomBytes(MiB);
    await api.write(vol.volumeId, 3 * MiB, data);
    const grown = await http(`${url}/volumes/${vol.volumeId}`, { method: 'PATCH', body: JSON.stringify({ sizeBytes: 8 * MiB }), headers: { 'content-type': 'application/json' } });
    expect(grown.status).toBe(200);
    expect(grown.json.sizeBytes).toBe(8 * MiB);
    await api.write(vol.volumeId, 7 * MiB, data);
    expect((await api.read(vol.volumeId, 7 * MiB, MiB)).equals(data)).toBe(true);
    expect((await api.read(vol.volumeId, 3 * MiB, MiB)).equals(data)).toBe(true);
    expect(await chunksOf(vol.volumeId)).toBe(12);

    const del = await http(`${url}/volumes/${vol.volumeId}`, { method: 'DELETE' });
    expect(del.status).toBe(202);
    expect(['deleting', 'deleted']).toContain(del.json.state);
    // It stops serving at once.
    const io = await api.readRaw(vol.volumeId, 0, 4096);
    expect([404]).toContain(io.status);

    // The worker reclaims everything; wait (bounded) for the volume item to disappear.
    const deadline = Date.now() + 60_000;
    let status = 200;
    while (Date.now() < deadline && (status = (await api.describe(vol.volumeId)).status) !== 404) await new Promise((r) => setTimeout(r, 250));
    expect(status).toBe(404);
    expect(await chunksOf(vol.volumeId)).toBe(0);
  });
});
