/**
 * Direct writes (docs/nbd-gateway.md, "Direct writes"): a commit by reference whose answer is
 * lost between the head and the gateway (a proxy over real HTTP forwards the first commit to the
 * head, then cuts the connection instead of answering) is sent again by the gateway's client
 * within its retry budget, and the head answers the repeat with the same result: the volume's
 * head moves once and the bytes read back.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { dataPiece } from '#shared/api/batch.ts';
import { VolumeClient } from '#gateway/volume-client.ts';
import { apiProxy, testApi } from './helpers.ts';

const MiB = 1024 * 1024;
const { api, apiUrl } = testApi({ sledgeEnv: true });

async function client(volumeId: string, url: string) {
  const c = new VolumeClient(url, volumeId, { retryBudgetMs: 10_000, directWrites: true });
  await c.describe();
  return c;
}

async function headSeq(volumeId: string): Promise<number> {
  return ((await api.describe(volumeId)).json as { commitSeq: number }).commitSeq;
}

describe('direct writes: a lost commit answer', () => {
  it('a commit whose answer is lost on the way back is sent again by the client and applies once', async () => {
    const vol = await api.createVolume({ sizeBytes: 16 * MiB });
    // Between the client and the head: the first commit reaches the head, its answer never comes back.
    let commits = 0;
    const proxy = await apiProxy(apiUrl, (req) => (req.url?.endsWith('/commit') === true && ++commits === 1 ? 'drop-answer' : false));
    try {
      const c = await client(vol.volumeId, proxy.url);
      const data = randomBytes(MiB);
      await c.writeBatch([dataPiece(0, data)]);
      expect({ commits, sent: c.sent.commits, direct: c.direct.writes, fallbacks: c.direct.writeFallbacks, batches: c.sent.batches }).toEqual({
        commits: 2,
        sent: 1,
        direct: 1,
        fallbacks: 0,
        batches: 0,
      });
      expect(await headSeq(vol.volumeId)).toBe(1);
      expect((await api.read(vol.volumeId, 0, MiB)).equals(data)).toBe(true);
    } finally {
      await proxy.close();
    }
  });
});
