import { randomBytes } from 'node:crypto';
import { BatchWriteItemCommand, QueryCommand, type AttributeValue } from '@aws-sdk/client-dynamodb';
import { DeleteObjectCommand } from '@aws-sdk/client-s3';
import type { SQSEvent } from 'aws-lambda';
import { describe, expect, it } from 'vitest';
import { dynamo, s3 } from '#shared/aws/clients.ts';
import { encodeBatch } from '#shared/api/batch.ts';
import { sendCheckpointMessage } from '#shared/maintenance/checkpoint-messages.ts';
import { CHECKPOINT_RETAIN, parsePlacement } from '#shared/maintenance/checkpoints/format.ts';
import { readCheckpoint } from '#shared/maintenance/checkpoints/read.ts';
import { takeCheckpoint } from '#shared/maintenance/checkpoints/take.ts';
import { config } from '#shared/core/config.ts';
import { fenceForRebuild, getVolume, unfenceAfterRebuild } from '#shared/aws/pagemap/volumes.ts';
import { writeRebuiltPages } from '#shared/aws/pagemap/transactions.ts';
import { contentsOf } from '#shared/aws/pagemap/items.ts';
import { RebuildFenceLostError, type VolumeRecord } from '#shared/core/records.ts';
import { encodeSegment, newSegmentId, parseTrailer } from '#shared/data/segments.ts';
import { placeChunks } from '#shared/data/sleds.ts';
import { putChunk, getChunkTail } from '#shared/aws/chunk-store.ts';
import { handleWorkEvent } from '#shared/maintenance/worker.ts';
import { foldVolume } from '#shared/maintenance/fold.ts';
import { isFolding } from '#shared/data/tail.ts';
import { formatRebuildReport, rebuildVolume, RebuildRequestError } from '../../cli/rebuild.ts';
import { seeded } from '../unit/seed.ts';
import { http, testApi, type HttpResult } from './helpers.ts';

/**
 * Checkpoints and rebuild over HTTP against the local endpoint (docs/checkpoints.md). Page
 * items are compared raw, attribute by attribute, as DynamoDB returns them: invariant 6 says
 * the rebuilt map is identical, versions included. The suite also runs on folding volumes
 * (SLEDGE_FOLD_TAIL_MAX > 0, docs/page-map.md, "Folding"): there the page items are the map at
 * the folded point, so a test that deletes or compares them folds the tail first (`settle`),
 * and the `foldedTo` bookkeeping is checked on its own (a rebuild writes it as the head).
 */
const MiB = 1024 * 1024;
const BLOCK = 4096;
const json = { 'content-type': 'application/json' };

const { api, apiUrl: url } = testApi({ sledgeEnv: true });

type Rng = ReturnType<typeof seeded>;

/** A volume and an in-memory copy of what it should read as. */
interface Subject {
  volumeId: string;
  sizeBytes: number;
  model: Buffer;
}

async function newSubject(sizeBytes: number, extra: Record<string, unknown> = {}): Promise<Subject> {
  // Automatic checkpoints off unless a test asks: page items are deleted behind the system's
  // back here, and a background checkpoint of a deliberately damaged map is not what is tested.
  const v = await api.createVolume({ sizeBytes, checkpointEveryCommits: 0, ...extra });
  return { volumeId: v.volumeId, sizeBytes, model: Buffer.alloc(sizeBytes) };
}

/** Random writes (some over page boundaries), overwrites of hot spots, batches with zero extents, and trims. */
async function workload(s: Subject, rng: Rng, ops: number): Promise<void> {
  const blocks = s.sizeBytes / BLOCK;
  const hot = [0, 250, 256, 700, blocks - 40];
  const data = (n: number) => {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i += 4) b.writeUInt32LE((rng.next() * 2 ** 32) >>> 0, i);
    return b;
  };
  for (let op = 0; op < ops; op++) {
    const r = rng.next();
    const count = rng.next() < 0.7 ? 1 + rng.int(8) : 1 + rng.int(600);
    const base = rng.next() < 0.6 ? hot[rng.int(hot.length)]! + rng.int(32) : rng.int(blocks);
    const start = Math.max(0, Math.min(blocks - count, base));
    if (r < 0.55) {
      const d = data(count * BLOCK);
      await api.write(s.volumeId, start * BLOCK, d);
      d.copy(s.model, start * BLOCK);
    } else if (r < 0.75) {
      const pieces: Array<{ offset: number; data: Buffer } | { offset: number; length: number; zero: true }> = [];
      let cursor = rng.int(blocks / 2);
      for (let i = 0; i < 2 + rng.int(5) && cursor < blocks - 16; i++) {
        const n = 1 + rng.int(16);
        pieces.push(rng.next() < 0.35 ? { offset: cursor * BLOCK, length: n * BLOCK, zero: true } : { offset: cursor * BLOCK, data: data(n * BLOCK) });
        cursor += n + rng.int(400);
      }
      await api.batch(s.volumeId, encodeBatch(pieces));
      for (const p of pieces) {
        if ('data' in p) p.data.copy(s.model, p.offset);
        else s.model.fill(0, p.offset, p.offset + p.length);
      }
    } else {
      await api.trim(s.volumeId, start * BLOCK, count * BLOCK);
      s.model.fill(0, start * BLOCK, (start + count) * BLOCK);
    }
  }
}

async function readAll(s: Subject): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let o = 0; o < s.sizeBytes; o += 4 * MiB) parts.push(await api.read(s.volumeId, o, Math.min(4 * MiB, s.sizeBytes - o)));
  return Buffer.concat(parts);
}

/** The page items of a volume exactly as DynamoDB stores them, keyed by page. */
async function rawPages(volumeId: string): Promise<Map<number, Record<string, AttributeValue>>> {
  const out = new Map<number, Record<string, AttributeValue>>();
  let start: Record<string, AttributeValue> | undefined;
  do {
    const page = await dynamo().send(
      new QueryCommand({ TableName: config().pagesTable, KeyConditionExpression: 'volumeId = :v', ExpressionAttributeValues: { ':v': { S: volumeId } }, ExclusiveStartKey: start, ConsistentRead: true }),
    );
    for (const item of page.Items ?? []) out.set(Number(item.page!.N), item);
    start = page.LastEvaluatedKey;
  } while (start);
  return out;
}

/**
 * A comparable form of raw page items: every attribute but a folding volume's `foldedTo`, binary
 * as hex. `foldedTo` is the point a page was last folded to, which a rebuild sets to the head
 * (checked by `expectFoldedToHead`), whatever fold batch wrote the page before.
 */
function comparable(items: Map<number, Record<string, AttributeValue>>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [page, item] of [...items].sort((a, b) => a[0] - b[0])) {
    out[page] = Object.fromEntries(
      Object.entries(item)
        .filter(([k]) => k !== 'foldedTo')
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([k, v]) => [k, v.B ? { B: Buffer.from(v.B).toString('hex') } : v]),
    );
  }
  return out;
}

/**
 * Folds a folding volume's whole tail into its page items, so that they alone are the map at the
 * head (docs/page-map.md, "Folding"); does nothing on a volume that does not fold.
 */
async function settle(volumeId: string): Promise<VolumeRecord> {
  for (let round = 0; round < 20; round++) {
    const v = await volumeRecord(volumeId);
    if (!isFolding(v) || v.foldedSeq === v.headSeq) return v;
    await foldVolume(volumeId);
  }
  throw new Error(`the tail of ${volumeId} did not fold in 20 rounds`);
}

/**
 * The bookkeeping of a rebuild that wrote `pages`: on a folding volume each carries
 * `foldedTo` = the head it was rebuilt at, and the folded point is the head; on a volume that does
 * not fold, no page carries it.
 */
async function expectFoldedToHead(volumeId: string, headSeq: number, pages: number[]): Promise<void> {
  const v = await volumeRecord(volumeId);
  const raw = await rawPages(volumeId);
  expect(pages.length).toBeGreaterThan(0);
  const want = isFolding(v) ? String(headSeq) : undefined;
  if (isFolding(v)) expect(v.foldedSeq).toBe(headSeq);
  expect(pages.map((p) => [p, raw.get(p)?.foldedTo?.N])).toEqual(pages.map((p) => [p, want]));
}

async function deletePageItems(volumeId: string): Promise<number> {
  const keys = [...(await rawPages(volumeId)).keys()].map((page) => ({ volumeId: { S: volumeId }, page: { N: String(page) } }));
  for (let i = 0; i < keys.length; i += 25) {
    const out = await dynamo().send(new BatchWriteItemCommand({ RequestItems: { [config().pagesTable]: keys.slice(i, i + 25).map((Key) => ({ DeleteRequest: { Key } })) } }));
    expect(Object.keys(out.UnprocessedItems ?? {})).toHaveLength(0);
  }
  expect((await rawPages(volumeId)).size).toBe(0);
  return keys.length;
}

async function post(path: string, body?: unknown): Promise<HttpResult> {
  return http(`${url}${path}`, { method: 'POST', ...(body === undefined ? {} : { body: JSON.stringify(body), headers: json }) });
}

async function checkpoint(volumeId: string): Promise<any> {
  const r = await post(`/volumes/${volumeId}/checkpoints`);
  expect(r.status, r.body.toString()).toBe(201);
  expect(r.json.done).toBe('written');
  return r.json;
}

async function rebuild(volumeId: string): Promise<any> {
  const r = await post(`/volumes/${volumeId}/rebuild`);
  expect(r.status, r.body.toString()).toBe(200);
  return r.json;
}

async function volumeRecord(volumeId: string): Promise<VolumeRecord> {
  const v = await getVolume(volumeId);
  expect(v).not.toBeNull();
  return v!;
}

/** Deletes the given chunks of the latest checkpoint from the sleds. */
async function deleteCheckpointChunks(volumeId: string, chunkIndexes: number[]): Promise<void> {
  const v = await volumeRecord(volumeId);
  const locations = parsePlacement(v.checkpoint!.placement, volumeId, v.checkpoint!.id, config().sledBuckets);
  for (const i of chunkIndexes) await s3().send(new DeleteObjectCommand({ Bucket: locations[i]!.bucket, Key: locations[i]!.key }));
}

/** Deletes the page items, rebuilds, and checks that items and bytes came back identical. */
async function loseAndRebuild(s: Subject): Promise<any> {
  // A folding volume's tail first: while it holds data, deleting the page items loses nothing.
  await settle(s.volumeId);
  const raw = await rawPages(s.volumeId);
  const before = comparable(raw);
  const bytes = await readAll(s);
  expect(bytes.equals(s.model), 'the volume reads as the model before the loss').toBe(true);
  const pageCount = await deletePageItems(s.volumeId);
  // Without its page items the volume reads as zeros: the loss is real, and the rebuild below has work to do.
  expect((await readAll(s)).equals(s.model)).toBe(false);
  const report = await rebuild(s.volumeId);
  expect(report.pagesWritten).toBe(pageCount);
  expect(report.pagesDeleted).toBe(0);
  expect(comparable(await rawPages(s.volumeId))).toEqual(before);
  await expectFoldedToHead(s.volumeId, report.headSeq, [...raw.keys()]);
  expect((await readAll(s)).equals(s.model), 'every byte reads back identical after the rebuild').toBe(true);
  return report;
}

function sqsEvent(bodies: unknown[]): SQSEvent {
  return {
    Records: bodies.map((body, i) => ({
      messageId: `m-${i}-${randomBytes(4).toString('hex')}`,
      receiptHandle: 'r',
      body: JSON.stringify(body),
      attributes: { ApproximateReceiveCount: '1', SentTimestamp: '0', SenderId: 'test', ApproximateFirstReceiveTimestamp: '0' },
      messageAttributes: {},
      md5OfBody: '',
      eventSource: 'aws:sqs',
      eventSourceARN: 'arn:aws:sqs:us-east-1:000000000000:checkpoint',
      awsRegion: 'us-east-1',
    })),
  };
}

/**
 * Runs `commit` (real commits through the API) `times[op]` times right after the first request
 * `op` of this process to the Pages table about `volumeId` returns (`times['op#k']`: after the
 * k-th): a way to put commits at an exact point of a checkpoint running in this process. Returns
 * the function that removes it.
 */
function afterPagesRequest(volumeId: string, times: Record<string, number>, commit: () => Promise<void>): () => void {
  const pagesTable = config().pagesTable;
  const pending = { ...times };
  const seen: Record<string, number> = {};
  const name = `commitsAfterPagesRequest-${randomBytes(4).toString('hex')}`;
  const stack = dynamo().middlewareStack as unknown as {
    add(mw: (next: (a: any) => Promise<any>, ctx: { commandName?: string }) => (a: any) => Promise<any>, o: { step: 'initialize'; name: string }): void;
    remove(name: string): boolean;
  };
  stack.add(
    (next, ctx) => async (args) => {
      const out = await next(args);
      const op = String(ctx.commandName).replace(/Command$/, '');
      const onPages = args.input?.TableName === pagesTable || Object.keys(args.input?.RequestItems ?? {}).includes(pagesTable);
      if (onPages && JSON.stringify(args.input).includes(volumeId)) {
        seen[op] = (seen[op] ?? 0) + 1;
        const key = seen[op] === 1 && op in pending ? op : `${op}#${seen[op]}`;
        const n = pending[key] ?? 0;
        if (n > 0) pending[key] = 0;
        for (let i = 0; i < n; i++) await commit();
      }
      return out;
    },
    { step: 'initialize', name },
  );
  return () => {
    stack.remove(name);
    // Every planned commit happened: the test put them where it meant to.
    expect(pending).toEqual(Object.fromEntries(Object.keys(times).map((k) => [k, 0])));
  };
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 0; Date.now() < deadline; attempt++) {
    const value = await probe();
    if (value !== undefined) return value;
    await new Promise((r) => setTimeout(r, Math.min(1000, 50 * 2 ** attempt)));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

describe('checkpoints and page-map rebuild', () => {
  it('rebuilds identical page items and bytes from a mid-workload checkpoint and replay', async () => {
    const rng = seeded('checkpoint workload');
    const s = await newSubject(24 * MiB);
    await workload(s, rng, 40);
    const ckpt = await checkpoint(s.volumeId);
    const atCheckpoint = (await api.describe(s.volumeId)).json.commitSeq;
    expect(ckpt.checkpoint.seq).toBe(atCheckpoint);
    expect(ckpt.verified).toBe(true);
    await workload(s, rng, 40);
    const head = (await api.describe(s.volumeId)).json.commitSeq;
    expect(head).toBeGreaterThan(atCheckpoint);

    const report = await loseAndRebuild(s);
    expect(report.checkpoint).toEqual({ checkpointId: ckpt.checkpoint.checkpointId, seq: atCheckpoint });
    expect(report.unreadableCheckpoints).toEqual([]);
    expect(report.segmentsReplayed).toBe(head - atCheckpoint);
    expect(report.headSeq).toBe(head);

    // A replacement head runs the same rebuild on an intact map: it finds nothing to change.
    const again = await rebuild(s.volumeId);
    expect(again).toMatchObject({ pagesWritten: 0, pagesDeleted: 0, pagesUnchanged: report.pages });
    expect((await api.describe(s.volumeId)).json.state).toBe('active');
  });

  it('rebuilds with m chunks of the checkpoint lost, and falls back to an older checkpoint with m + 1 lost', async () => {
    const rng = seeded('checkpoint chunk loss');
    const s = await newSubject(16 * MiB, { dataChunks: 3, parityChunks: 2 });
    await workload(s, rng, 25);
    const first = await checkpoint(s.volumeId);
    await workload(s, rng, 15);
    const second = await checkpoint(s.volumeId);
    await workload(s, rng, 15);
    const head = (await api.describe(s.volumeId)).json.commitSeq;

    // m = 2 data chunks gone: the payload is rebuilt from parity.
    await deleteCheckpointChunks(s.volumeId, [0, 2]);
    const degraded = await loseAndRebuild(s);
    expect(degraded.checkpoint.checkpointId).toBe(second.checkpoint.checkpointId);
    expect(degraded.unreadableCheckpoints).toEqual([]);
    expect(degraded.segmentsReplayed).toBe(head - second.checkpoint.seq);

    // m + 1 gone: that checkpoint cannot be read, never wrongly; the older one and a longer replay serve.
    await deleteCheckpointChunks(s.volumeId, [1]);
    await expect(readCheckpoint(await volumeRecord(s.volumeId), second.checkpoint.checkpointId)).rejects.toThrow(/only 2 of 5 chunks|could not be read/);
    const fallback = await loseAndRebuild(s);
    expect(fallback.checkpoint.checkpointId).toBe(first.checkpoint.checkpointId);
    expect(fallback.unreadableCheckpoints.map((u: { checkpointId: string }) => u.checkpointId)).toEqual([second.checkpoint.checkpointId]);
    expect(fallback.segmentsReplayed).toBe(head - first.checkpoint.seq);
  });

  it('never replays a segment that was uploaded but not committed', async () => {
    const rng = seeded('uncommitted segment');
    const s = await newSubject(8 * MiB);
    await workload(s, rng, 20);
    await checkpoint(s.volumeId);
    await workload(s, rng, 5);

    // A head builds and uploads a segment for the next seq on the current head, then crashes
    // (or is fenced) before committing: a complete, valid segment on the sleds.
    const orphan = async (block: number, blocks: number) => {
      const v = await volumeRecord(s.volumeId);
      const segmentId = newSegmentId(v.headSeq + 1);
      const seg = await encodeSegment(
        { volumeId: s.volumeId, segmentId, seq: v.headSeq + 1, prev: v.headSegmentId, writer: { id: 'crashed-head' }, k: v.dataChunks, m: v.parityChunks, blockSizeBytes: BLOCK, extents: [[block, blocks, 0]] },
        Buffer.alloc(blocks * BLOCK, 0xee),
      );
      const locations = placeChunks(s.volumeId, segmentId, v.dataChunks + v.parityChunks, config().sledBuckets);
      for (let i = 0; i < locations.length; i++) await putChunk(locations[i]!, seg.chunks[i]!, seg.objectCrcs[i]!);
      // It is self-describing and intact: only the commit chain can tell that it was never committed.
      expect(parseTrailer((await getChunkTail(locations[0]!, 16 * 1024))!)).toMatchObject({ segmentId, seq: v.headSeq + 1, prev: v.headSegmentId });
      return { segmentId, seq: v.headSeq + 1 };
    };
    const lost = await orphan(10, 16);
    // A real write wins that very seq, on the same prev.
    const winner = randomBytes(16 * BLOCK);
    const res = await api.write(s.volumeId, 100 * BLOCK, winner);
    winner.copy(s.model, 100 * BLOCK);
    expect(res.commitSeq).toBe(lost.seq);
    await workload(s, rng, 5);
    // And one more at the tip, on the final head, never committed either.
    await orphan(200, 8);

    const report = await loseAndRebuild(s);
    expect(report.segmentsIgnored).toBe(2);
    expect((await api.read(s.volumeId, 10 * BLOCK, 16 * BLOCK)).includes(Buffer.alloc(BLOCK, 0xee))).toBe(false);
  });

  it('keeps one consistent latest checkpoint under duplicate, concurrent and out-of-order messages', async () => {
    const rng = seeded('checkpoint messages');
    const s = await newSubject(8 * MiB);
    await workload(s, rng, 12);
    const early = (await api.describe(s.volumeId)).json.commitSeq;
    // The same message twice in one batch, and two batches at once.
    const batch = [{ type: 'checkpoint-volume', volumeId: s.volumeId, requestedAtSeq: early }, { type: 'checkpoint-volume', volumeId: s.volumeId, requestedAtSeq: early }];
    const results = await Promise.all([handleWorkEvent(sqsEvent(batch)), handleWorkEvent(sqsEvent(batch))]);
    expect(results.flatMap((r) => r.batchItemFailures)).toEqual([]);
    expect((await volumeRecord(s.volumeId)).checkpoint?.seq).toBe(early);

    await workload(s, rng, 8);
    const head = (await api.describe(s.volumeId)).json.commitSeq;
    // Late messages (asked at the early seq) interleaved with current ones, concurrently.
    const mixed = [
      { type: 'checkpoint-volume', volumeId: s.volumeId, requestedAtSeq: head },
      { type: 'checkpoint-volume', volumeId: s.volumeId, requestedAtSeq: early },
      { type: 'checkpoint-volume', volumeId: s.volumeId },
    ];
    const more = await Promise.all([handleWorkEvent(sqsEvent(mixed)), handleWorkEvent(sqsEvent([...mixed].reverse())), handleWorkEvent(sqsEvent([mixed[1]]))]);
    expect(more.flatMap((r) => r.batchItemFailures)).toEqual([]);
    // And through the real queue and poller: duplicates of a late one and of the current one.
    for (const m of [mixed[1], mixed[0], mixed[0]]) await sendCheckpointMessage(m as Parameters<typeof sendCheckpointMessage>[0]);

    const v = await volumeRecord(s.volumeId);
    expect(v.checkpoint?.seq).toBe(head);
    const listed = (await http(`${url}/volumes/${s.volumeId}/checkpoints`)).json;
    expect(listed.latest.checkpointId).toBe(v.checkpoint!.id);
    expect(listed.checkpoints.filter((c: { latest: boolean }) => c.latest)).toHaveLength(1);
    // Losers deleted their own chunks; every set left is complete and within the retention.
    expect(listed.checkpoints.length).toBeLessThanOrEqual(CHECKPOINT_RETAIN);
    for (const c of listed.checkpoints) expect(c.chunksFound).toBe(v.dataChunks + v.parityChunks);
    expect(listed.floorSeq).toBe(Math.min(...listed.checkpoints.map((c: { seq: number }) => c.seq)));
    // The latest is the page map at its seq, item for item (a folding volume's tail folded first:
    // its page items are the map at the folded point).
    const loaded = await readCheckpoint(v, v.checkpoint!.id, { placement: v.checkpoint!.placement, expectedCrc: v.checkpoint!.crc });
    expect((await settle(s.volumeId)).headSeq).toBe(head);
    const raw = await rawPages(s.volumeId);
    expect(loaded.pages.map((p) => [p.page, p.version, p.segs, Buffer.from(p.ext).toString('hex')])).toEqual(
      [...raw.values()].map((i) => [Number(i.page!.N), Number(i.version!.N), contentsOf(s.volumeId, i).segs, Buffer.from(contentsOf(s.volumeId, i).ext).toString('hex')]),
    );
    // Let the poller drain the queued duplicates, then check that nothing moved backwards.
    await waitFor('queued duplicates to be handled', async () => {
      const now = (await http(`${url}/volumes/${s.volumeId}/checkpoints`)).json;
      return now.checkpoints.every((c: { seq: number }) => c.seq <= head) && now.latest.seq === head ? now : undefined;
    });
    await new Promise((r) => setTimeout(r, 1500));
    expect((await volumeRecord(s.volumeId)).checkpoint?.id).toBe(v.checkpoint!.id);
  });

  it('stays consistent when the checkpoint is taken while writes continue', async () => {
    const rng = seeded('checkpoint under writes');
    const s = await newSubject(16 * MiB);
    await workload(s, rng, 30);
    let writing = true;
    const writer = (async () => {
      let n = 0;
      // Bounded: at most 200 writes, and it stops as soon as the checkpoint is done.
      for (; writing && n < 200; n++) {
        const block = rng.int(s.sizeBytes / BLOCK - 4);
        const d = randomBytes(4 * BLOCK);
        await api.write(s.volumeId, block * BLOCK, d);
        d.copy(s.model, block * BLOCK);
      }
      return n;
    })();
    const ckpt = await checkpoint(s.volumeId);
    writing = false;
    const writes = await writer;
    console.log(`checkpoint at seq ${ckpt.checkpoint.seq} (${ckpt.method}, ${ckpt.pagesSkipped} pages changed while verifying); ${writes} concurrent writes`);
    expect(ckpt.method).toBe('replay');
    await workload(s, rng, 5);
    const report = await loseAndRebuild(s);
    expect(report.checkpoint.checkpointId).toBe(ckpt.checkpoint.checkpointId);
  });

  it('replays from the previous checkpoint whatever commits do meanwhile, and verifies the pages they left alone', async () => {
    const rng = seeded('checkpoint replay under commits');
    const s = await newSubject(8 * MiB);
    await workload(s, rng, 10);
    const first = await checkpoint(s.volumeId);
    expect(first).toMatchObject({ method: 'replay', baseCheckpointId: null, verified: true });
    await workload(s, rng, 8);
    const atStart = (await volumeRecord(s.volumeId)).headSeq;
    // Real commits through the API right after this process's verification scan returns.
    const removeHook = afterPagesRequest(s.volumeId, { Query: 3 }, () => workload(s, rng, 1));
    let out;
    try {
      out = await takeCheckpoint(s.volumeId);
    } finally {
      removeHook();
    }
    expect(out.done).toBe('written');
    if (out.done !== 'written') return;
    expect(out).toMatchObject({ method: 'replay', baseCheckpointId: first.checkpoint.checkpointId, verified: true });
    expect(out.checkpoint.seq).toBe(atStart);
    expect(out.segmentsReplayed).toBe(atStart - first.checkpoint.seq);
    expect(out.pagesSkipped).toBeGreaterThan(0);
    expect(out.pagesVerified + out.pagesSkipped).toBeGreaterThanOrEqual(out.checkpoint.pages);
    expect((await volumeRecord(s.volumeId)).headSeq).toBe(atStart + 3);
    const report = await loseAndRebuild(s);
    expect(report).toMatchObject({ checkpoint: { checkpointId: out.checkpoint.checkpointId }, segmentsReplayed: 3 });
  });

  it('without a checkpoint near enough, repairs a scan that commits overtook, round after round', async () => {
    const rng = seeded('checkpoint settle');
    const s = await newSubject(8 * MiB);
    await workload(s, rng, 10);
    // Real commits, through the API, at the worst moments of this process's checkpoint scan:
    // right after the scan returns, and again right after its first re-read of the touched pages.
    // On a folding volume the scan folds the tail before each round, and the fold reads the
    // pages it folds first: so the tail is folded beforehand (the scan's first fold then reads
    // nothing), and its first re-read is the second page read, after the first round's fold.
    const folding = isFolding(await settle(s.volumeId));
    const removeHook = afterPagesRequest(s.volumeId, { Query: 2, [folding ? 'BatchGetItem#2' : 'BatchGetItem']: 1 }, () => workload(s, rng, 1));
    let out;
    try {
      // No replay allowed: the scan path, as for a long history with no checkpoint.
      out = await takeCheckpoint(s.volumeId, { replaySegmentsMax: 0 });
    } finally {
      removeHook();
    }
    expect(out.done).toBe('written');
    if (out.done !== 'written') return;
    expect(out).toMatchObject({ method: 'scan', settleRounds: 2, verified: false });
    const v = await volumeRecord(s.volumeId);
    expect(out.checkpoint.seq).toBe(v.headSeq);
    // Nothing committed after it settled: the checkpoint is the stored page map, item for item.
    const loaded = await readCheckpoint(v, out.checkpoint.checkpointId);
    const raw = await rawPages(s.volumeId);
    expect(loaded.pages.map((p) => [p.page, p.version, p.segs, Buffer.from(p.ext).toString('hex')])).toEqual(
      [...raw.values()].map((i) => [Number(i.page!.N), Number(i.version!.N), contentsOf(s.volumeId, i).segs, Buffer.from(contentsOf(s.volumeId, i).ext).toString('hex')]),
    );
    await loseAndRebuild(s);
  });

  it('checkpoints every N commits through the queue and the worker', async () => {
    const rng = seeded('checkpoint trigger');
    const s = await newSubject(4 * MiB, { checkpointEveryCommits: 3 });
    expect((await api.describe(s.volumeId)).json.checkpointEveryCommits).toBe(3);
    await workload(s, rng, 7);
    const seqAfter = (await api.describe(s.volumeId)).json.commitSeq;
    // The commit that reached a multiple of 3 queued a checkpoint; the worker takes it.
    const listed = await waitFor('an automatic checkpoint', async () => {
      const r = (await http(`${url}/volumes/${s.volumeId}/checkpoints`)).json;
      return r.latest && r.latest.seq >= Math.floor(seqAfter / 3) * 3 ? r : undefined;
    });
    // Taken at the head when the worker ran, which later commits may have moved past the multiple.
    expect(listed.latest.seq).toBeGreaterThanOrEqual(3);
    expect(listed.latest.seq).toBeLessThanOrEqual(seqAfter);
    expect(listed.checkpoints.every((c: { readable: boolean; verified: boolean }) => c.readable && c.verified)).toBe(true);
  });

  it('sweeps every volume with commits since its latest checkpoint, a page of volumes a message, and skips the rest', async () => {
    const due = await newSubject(4 * MiB, { checkpointEveryCommits: 1000 });
    const off = await newSubject(4 * MiB); // automatic checkpoints off
    const current = await newSubject(4 * MiB, { checkpointEveryCommits: 1000 });
    const idle = await api.createVolume({ sizeBytes: MiB }); // no commits at all
    for (const v of [due, off, current]) await api.write(v.volumeId, 0, randomBytes(BLOCK));
    await checkpoint(current.volumeId);

    // The sweep's messages go to a fresh queue on the endpoint instead of the worker's, so that
    // it does not queue checkpoints of every other test's volumes; the test follows its chain.
    const { CreateQueueCommand, DeleteQueueCommand, ReceiveMessageCommand } = await import('@aws-sdk/client-sqs');
    const { sqs } = await import('#shared/aws/clients.ts');
    const { sweepCheckpoints } = await import('#shared/maintenance/checkpoints/take.ts');
    const queueUrl = (await sqs().send(new CreateQueueCommand({ QueueName: `sledge-it-sweep-${randomBytes(4).toString('hex')}` }))).QueueUrl!;
    const name = 'redirectToSweepQueue';
    const stack = sqs().middlewareStack as unknown as { add(mw: (next: (a: any) => Promise<any>) => (a: any) => Promise<any>, o: { step: 'initialize'; name: string }): void; remove(n: string): boolean };
    stack.add((next) => async (args) => next({ ...args, input: { ...args.input, QueueUrl: args.input.QueueUrl === config().checkpointQueueUrl ? queueUrl : args.input.QueueUrl } }), { step: 'initialize', name });
    const asked: string[] = [];
    try {
      // One volume a step (100 in production), so that the chain of continuations is long.
      let step = await sweepCheckpoints(undefined, 1);
      let scanned = step.scanned;
      // Bounded: the test environment has far fewer than 1,000 volumes.
      let hops = 0;
      for (; step.next && hops < 1000; hops++) {
        const bodies: unknown[] = [];
        for (let polls = 0; polls < 20; polls++) {
          const got = await sqs().send(new ReceiveMessageCommand({ QueueUrl: queueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 0 }));
          bodies.push(...(got.Messages ?? []).map((m) => JSON.parse(m.Body!)));
          const cont = bodies.find((b: any) => b.type === 'checkpoint-sweep') as { startAfter?: string } | undefined;
          if (cont) {
            expect(cont.startAfter).toBe(step.next);
            asked.push(...bodies.filter((b: any) => b.type === 'checkpoint-volume').map((b: any) => b.volumeId));
            break;
          }
        }
        step = await sweepCheckpoints(step.next, 1);
        scanned += step.scanned;
      }
      expect(step.next).toBeUndefined();
      expect(scanned).toBeGreaterThanOrEqual(4);
      expect(hops).toBeGreaterThanOrEqual(3);
      for (let polls = 0; polls < 20; polls++) {
        const got = await sqs().send(new ReceiveMessageCommand({ QueueUrl: queueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 0 }));
        if (!got.Messages?.length) break;
        asked.push(...got.Messages.map((m) => JSON.parse(m.Body!)).filter((b) => b.type === 'checkpoint-volume').map((b) => b.volumeId));
      }
    } finally {
      stack.remove(name);
      await sqs().send(new DeleteQueueCommand({ QueueUrl: queueUrl }));
    }
    expect(asked).toContain(due.volumeId);
    for (const skipped of [off.volumeId, current.volumeId, idle.volumeId]) expect(asked).not.toContain(skipped);
    expect(new Set(asked).size).toBe(asked.length);
  });

  it('keeps the newest checkpoints, raises the floor to the oldest kept, and deletes the rest', async () => {
    const rng = seeded('checkpoint retention');
    const s = await newSubject(4 * MiB);
    const seqs: number[] = [];
    for (let i = 0; i < CHECKPOINT_RETAIN + 2; i++) {
      await workload(s, rng, 1);
      seqs.push((await checkpoint(s.volumeId)).checkpoint.seq);
    }
    const after = (await http(`${url}/volumes/${s.volumeId}/checkpoints`)).json;
    expect(after.checkpoints.map((c: { seq: number }) => c.seq)).toEqual(seqs.slice(-CHECKPOINT_RETAIN).reverse());
    expect(after.checkpoints[0].latest).toBe(true);
    expect(after.latest.seq).toBe((await api.describe(s.volumeId)).json.commitSeq);
    expect(after.floorSeq).toBe(seqs[seqs.length - CHECKPOINT_RETAIN]);
    expect(after.checkpoints.every((c: { readable: boolean; verified: boolean }) => c.readable && c.verified)).toBe(true);
  });

  it('refuses to checkpoint a page map that does not match its commit chain', async () => {
    const rng = seeded('damaged map');
    const s = await newSubject(8 * MiB);
    await workload(s, rng, 15);
    const first = await checkpoint(s.volumeId);
    await workload(s, rng, 5);
    // A folding volume's tail first: a page item it still overlays is not lost by its deletion.
    await settle(s.volumeId);
    const raw = await rawPages(s.volumeId);
    const victim = [...raw.keys()][0]!;
    await dynamo().send(new BatchWriteItemCommand({ RequestItems: { [config().pagesTable]: [{ DeleteRequest: { Key: { volumeId: { S: s.volumeId }, page: { N: String(victim) } } } }] } }));
    const r = await post(`/volumes/${s.volumeId}/checkpoints`);
    expect(r.status, r.body.toString()).toBe(409);
    expect(r.json.message).toMatch(/does not match its commit chain/);
    expect((await volumeRecord(s.volumeId)).checkpoint?.id).toBe(first.checkpoint.checkpointId);
    // The rebuild repairs it, and then checkpoints verify again.
    const report = await rebuild(s.volumeId);
    expect(report.pagesWritten).toBe(1);
    expect(comparable(await rawPages(s.volumeId))).toEqual(comparable(raw));
    await expectFoldedToHead(s.volumeId, report.headSeq, [victim]);
    await checkpoint(s.volumeId);
  });

  it('fences I/O during a rebuild, and a rebuild that lost its fence cannot write', async () => {
    const s = await newSubject(4 * MiB);
    await api.write(s.volumeId, 0, randomBytes(BLOCK));
    const token = 'test-fence-a';
    await fenceForRebuild(s.volumeId, token);
    const write = await http(`${url}/volumes/${s.volumeId}/data?offset=0`, { method: 'PUT', body: randomBytes(BLOCK), headers: { 'content-type': 'application/octet-stream' } });
    expect(write.status).toBe(503);
    expect(write.headers.get('retry-after')).toBe('5');
    expect(write.json.message).toMatch(/being rebuilt/);
    expect((await api.readRaw(s.volumeId, 0, BLOCK)).status).toBe(503);
    expect((await http(`${url}/volumes/${s.volumeId}`, { method: 'DELETE' })).status).toBe(409);
    expect((await post(`/volumes/${s.volumeId}/checkpoints`)).status).toBe(409);
    // Another rebuild takes over the fence, completes and lifts it; the first can no longer write.
    await rebuild(s.volumeId);
    await expect(writeRebuiltPages(s.volumeId, token, [], [0])).rejects.toBeInstanceOf(RebuildFenceLostError);
    expect(await unfenceAfterRebuild(s.volumeId, token)).toBe(false);
    expect((await rawPages(s.volumeId)).size).toBe(1);
    await api.write(s.volumeId, 0, randomBytes(BLOCK));
  });

  it('refuses a rebuild whose chain is broken, lifting the fence only if no rebuild may have written', async () => {
    const rng = seeded('broken chain');
    const s = await newSubject(4 * MiB);
    await workload(s, rng, 6);
    await checkpoint(s.volumeId);
    await workload(s, rng, 2);
    const lost = await api.write(s.volumeId, 0, randomBytes(BLOCK));
    // Later commits elsewhere, so that block 0 is the lost segment's alone and the lost one is mid-chain.
    await api.write(s.volumeId, 2 * MiB, randomBytes(BLOCK));
    await api.write(s.volumeId, 3 * MiB, randomBytes(BLOCK));
    // Every chunk of a committed segment after the checkpoint is gone: the chain cannot be walked.
    const { listChunks } = await import('#shared/aws/chunk-store.ts');
    const chunks = await listChunks(s.volumeId, config().sledBuckets, { namePrefix: lost.segmentId });
    expect(chunks).toHaveLength(6);
    for (const c of chunks) await s3().send(new DeleteObjectCommand({ Bucket: c.bucket, Key: c.key }));

    const refused = await post(`/volumes/${s.volumeId}/rebuild`);
    expect(refused.status).toBe(503);
    expect(refused.json.message).toContain(`segment ${lost.segmentId} (seq ${lost.commitSeq}) is on the commit chain`);
    // It wrote nothing, so the volume serves again (the lost segment's own blocks cannot be read, never wrongly).
    expect((await volumeRecord(s.volumeId)).state).toBe('active');
    expect((await api.readRaw(s.volumeId, 2 * MiB, BLOCK)).status).toBe(200);
    expect((await api.readRaw(s.volumeId, 0, BLOCK)).status).toBe(503);

    // A rebuild that takes over from one that stopped midway must not lift the fence on failure:
    // the map may be half rewritten.
    await fenceForRebuild(s.volumeId, 'crashed-rebuild');
    expect((await post(`/volumes/${s.volumeId}/rebuild`)).status).toBe(503);
    expect((await volumeRecord(s.volumeId)).state).toBe('rebuilding');
    expect((await api.readRaw(s.volumeId, 2 * MiB, BLOCK)).status).toBe(503);
  });

  it('is driven by the CLI function over HTTP, which reports API errors clearly', async () => {
    const rng = seeded('cli rebuild');
    const s = await newSubject(4 * MiB);
    await workload(s, rng, 6);
    await checkpoint(s.volumeId);
    await workload(s, rng, 3);
    await deletePageItems(s.volumeId);
    const report = await rebuildVolume(url, s.volumeId);
    expect('queued' in report).toBe(false);
    if ('queued' in report) return;
    expect(report.segmentsReplayed).toBe(3);
    expect(formatRebuildReport(report)).toMatch(new RegExp(`rebuilt the page map of ${s.volumeId} at seq \\d+ from checkpoint ckpt-`));
    expect((await readAll(s)).equals(s.model)).toBe(true);
    const missing = await rebuildVolume(url, 'vol-0000000000000000').catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(RebuildRequestError);
    expect(missing).toMatchObject({ status: 404, body: { error: 'NotFoundError' } });
    await expect(rebuildVolume(url, '../volumes')).rejects.toThrow(/not a volume id/);
    expect(await rebuildVolume(url, s.volumeId, { queue: true })).toEqual({ queued: true, volumeId: s.volumeId });
  });

  it('answers bad checkpoint and rebuild requests with 4xx and changes nothing', async () => {
    const s = await newSubject(4 * MiB);
    expect((await post(`/volumes/${s.volumeId}/checkpoints`, { mode: 'later' })).status).toBe(400);
    expect((await post(`/volumes/${s.volumeId}/rebuild`, { mode: 'run', force: true })).status).toBe(400);
    expect((await post('/volumes/vol-0000000000000000/checkpoints')).status).toBe(404);
    expect((await post('/volumes/vol-0000000000000000/rebuild')).status).toBe(404);
    expect((await http(`${url}/volumes/vol-0000000000000000/checkpoints`)).status).toBe(404);
    expect((await api.createVolume({ sizeBytes: MiB, checkpointEveryCommits: -1 }).catch((e: Error) => e.message))).toMatch(/400 .*checkpointEveryCommits/);
    // An empty volume has nothing to checkpoint; queueing is accepted.
    const empty = await post(`/volumes/${s.volumeId}/checkpoints`);
    expect(empty.status).toBe(200);
    expect(empty.json).toMatchObject({ done: 'up-to-date', checkpoint: null });
    expect((await post(`/volumes/${s.volumeId}/checkpoints`, { mode: 'queue' })).status).toBe(202);
    expect((await volumeRecord(s.volumeId)).state).toBe('active');
  });
});
