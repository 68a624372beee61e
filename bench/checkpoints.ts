/**
 * Checkpoint and rebuild cost against the size of the page map and the length of the replay
 * (docs/checkpoints.md), through the local API.
 *
 * For each volume size: every page gets extents (batches of 96 pages, one commit each), a
 * first checkpoint is taken (replaying every commit since the first write), then for each
 * replay length the page items are deleted from DynamoDB and the map is rebuilt from the
 * checkpoint plus that many later segments (each rebuild is checked to have restored every
 * page), and finally a second checkpoint replays those segments onto the first.
 */
import { randomBytes } from 'node:crypto';
import { requestCounts, resetRequestCounts } from '#shared/aws/clients.ts';
import { encodeBatch } from '#shared/api/batch.ts';
import { deleteItems, listPages } from '#shared/aws/pagemap/pages.ts';
import { pageKey } from '#shared/aws/pagemap/items.ts';
import { requireVolume } from '#shared/aws/pagemap/volumes.ts';

const MiB = 1024 * 1024;
const BLOCK = 4096;

async function call(url: string, method: string, body?: unknown): Promise<any> {
  const res = await fetch(url, { method, ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }) });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${url}: ${res.status} ${text}`);
  return JSON.parse(text);
}

async function pageKeys(volumeId: string) {
  const keys: ReturnType<typeof pageKey>[] = [];
  for await (const p of listPages(await requireVolume(volumeId))) keys.push(pageKey(volumeId, p.page));
  return keys;
}

function requests(prefix: string): number {
  return Object.entries(requestCounts().requests)
    .filter(([k]) => k.startsWith(prefix))
    .reduce((n, [, v]) => n + v, 0);
}

export interface CheckpointBenchOptions {
  /** Volume sizes in pages (1 MiB each). */
  pageCounts: number[];
  /** Segments committed after the checkpoint before each rebuild (cumulative, ascending). */
  replays: number[];
}

/** Returns one row per checkpoint and one per rebuild. */
export async function benchCheckpoints(api: string, opts: CheckpointBenchOptions): Promise<{ checkpoints: Array<Record<string, string | number>>; rebuilds: Array<Record<string, string | number>> }> {
  const checkpoints: Array<Record<string, string | number>> = [];
  const rebuilds: Array<Record<string, string | number>> = [];
  for (const pages of opts.pageCounts) {
    // Automatic checkpoints off: the bench takes them itself, at known points.
    const { volumeId } = await call(`${api}/volumes`, 'POST', { sizeBytes: pages * MiB, checkpointEveryCommits: 0 });
    const block = randomBytes(2 * BLOCK);
    for (let first = 0; first < pages; first += 96) {
      // Two extents per page (a 2-block write and a trim beside it): a page item like a used one.
      const pieces: Array<{ offset: number; data: Buffer } | { offset: number; length: number; zero: true }> = [];
      for (let p = first; p < Math.min(pages, first + 96); p++) {
        pieces.push({ offset: p * MiB + 8 * BLOCK, data: block }, { offset: p * MiB + 16 * BLOCK, length: 4 * BLOCK, zero: true });
      }
      const res = await fetch(`${api}/volumes/${volumeId}/batch`, { method: 'POST', headers: { 'content-type': 'application/vnd.sledge.batch' }, body: new Uint8Array(encodeBatch(pieces)) });
      if (!res.ok) throw new Error(`batch: ${res.status} ${await res.text()}`);
    }
    const populated = (await call(`${api}/volumes/${volumeId}`, 'GET')).commitSeq as number;

    await takeCheckpointRow(api, volumeId, checkpoints);

    let replayed = 0;
    for (const target of opts.replays) {
      for (; replayed < target; replayed++) {
        const page = Math.floor(Math.random() * pages);
        const res = await fetch(`${api}/volumes/${volumeId}/data?offset=${page * MiB}`, { method: 'PUT', headers: { 'content-type': 'application/octet-stream' }, body: new Uint8Array(block.subarray(0, BLOCK)) });
        if (!res.ok) throw new Error(`write: ${res.status} ${await res.text()}`);
        await res.arrayBuffer();
      }
      const keys = await pageKeys(volumeId);
      await deleteItems('pages', keys);
      resetRequestCounts();
      const t1 = performance.now();
      const report = await call(`${api}/volumes/${volumeId}/rebuild`, 'POST');
      const rebuildMs = performance.now() - t1;
      if (report.pagesWritten !== keys.length || report.segmentsReplayed !== target) {
        throw new Error(`rebuild of ${volumeId} restored ${report.pagesWritten} of ${keys.length} pages, replayed ${report.segmentsReplayed} of ${target}`);
      }
      rebuilds.push({
        pages: report.pages,
        'segments replayed': report.segmentsReplayed,
        'rebuild ms': Math.round(rebuildMs),
        'checkpoint/chain/replay/write ms': ['checkpoint', 'chain', 'replay', 'write'].map((k) => report.phasesMs[k] ?? 0).join('/'),
        'ms/1k pages': ((rebuildMs / report.pages) * 1000).toFixed(0),
        'S3 LIST': requests('S3:ListObjectsV2'),
        'S3 GET': requests('S3:GetObject'),
        'DDB requests': requests('DynamoDB:'),
        'commits before checkpoint': populated,
      });
    }
    // The steady state: the next checkpoint replays the segments since the previous one.
    await takeCheckpointRow(api, volumeId, checkpoints);
  }
  return { checkpoints, rebuilds };
}

/** Takes a checkpoint through the API and adds its row. */
async function takeCheckpointRow(api: string, volumeId: string, rows: Array<Record<string, string | number>>): Promise<void> {
  resetRequestCounts();
  const t0 = performance.now();
  const ckpt = await call(`${api}/volumes/${volumeId}/checkpoints`, 'POST');
  const ms = performance.now() - t0;
  if (ckpt.done !== 'written' || !ckpt.verified) throw new Error(`checkpoint of ${volumeId}: ${JSON.stringify(ckpt)}`);
  const v = await requireVolume(volumeId);
  const storedBytes = (v.dataChunks + v.parityChunks) * Math.ceil(ckpt.checkpoint.payloadBytes / v.dataChunks / BLOCK) * BLOCK;
  rows.push({
    pages: ckpt.checkpoint.pages,
    base: ckpt.baseCheckpointId ? 'previous' : 'none',
    'segments replayed': ckpt.segmentsReplayed,
    'payload KiB': (ckpt.checkpoint.payloadBytes / 1024).toFixed(1),
    'bytes/page': (ckpt.checkpoint.payloadBytes / ckpt.checkpoint.pages).toFixed(1),
    'stored KiB (k+m)': (storedBytes / 1024).toFixed(1),
    'checkpoint ms': Math.round(ms),
    'base/build/verify/write/record ms': ['base', 'build', 'verify', 'write', 'record'].map((k) => ckpt.phasesMs[k] ?? 0).join('/'),
    'S3 GET': requests('S3:GetObject'),
    'S3 PUT': requests('S3:PutObject'),
    'DDB requests': requests('DynamoDB:'),
  });
}
