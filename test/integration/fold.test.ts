import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { createVolume, deleteVolume, reclaimVolume } from '#shared/control/volumes.ts';
import { createSnapshot } from '#shared/control/snapshots.ts';
import { readData, readSnapshotData } from '#shared/data/read.ts';
import { writePieces, type WritePiece } from '#shared/data/write.ts';
import { foldVolume } from '#shared/maintenance/fold.ts';
import { collectVolume } from '#shared/maintenance/gc.ts';
import { rebuildPageMap } from '#shared/maintenance/checkpoints/rebuild.ts';
import { takeCheckpoint } from '#shared/maintenance/checkpoints/take.ts';
import { handleWorkEvent } from '#shared/maintenance/worker.ts';
import { toSqsRecord } from '#local/sqs-poller.ts';
import { pageMap } from '#shared/ports.ts';
import { requestCounts, resetRequestCounts } from '#shared/aws/clients.ts';
import { seeded } from '../unit/seed.ts';
import { http, testApi, useSledgeEnv } from './helpers.ts';

/**
 * Folding (docs/page-map.md, "Folding"): commits of a folding volume write no page items; the
 * folder moves the tail into them. Volumes are made in this process with the switch on (the
 * protocol is the volume's, so the control plane serves them as folding volumes too). Each case
 * checks reads against a model of the bytes, and the page items against the commit chain (a
 * verified checkpoint replays the chain and compares every page item it can).
 */
process.env.SLEDGE_FOLD_TAIL_MAX = '8';
const BLOCK = 4096;
const MiB = 1024 * 1024;
const CHILD = fileURLToPath(new URL('./fold-child.ts', import.meta.url));

const { api } = testApi({ sledgeEnv: true });

interface Model {
  volumeId: string;
  bytes: Buffer;
}

async function folding(sizeBytes: number): Promise<Model> {
  const v = await createVolume({ sizeBytes });
  expect(v.foldedSeq).toBe(0);
  return { volumeId: v.volumeId, bytes: Buffer.alloc(sizeBytes) };
}

/** One commit of `n` 4 KiB blocks scattered over the whole volume (one per page where it can). */
async function scattered(m: Model, rng: ReturnType<typeof seeded>, n: number): Promise<number> {
  const blocks = m.bytes.length / BLOCK;
  const chosen = new Set<number>();
  while (chosen.size < n) chosen.add(rng.int(blocks));
  const pieces: WritePiece[] = [...chosen].map((b) => {
    const zero = rng.next() < 0.1;
    return zero ? { offset: b * BLOCK, length: BLOCK } : { offset: b * BLOCK, length: BLOCK, data: Buffer.alloc(BLOCK, 1 + rng.int(250)) };
  });
  const out = await writePieces(m.volumeId, pieces);
  for (const p of pieces) {
    if (p.data) p.data.copy(m.bytes, p.offset);
    else m.bytes.fill(0, p.offset, p.offset + p.length);
  }
  return out.commitSeq;
}

async function expectModel(m: Model, how: 'api' | 'process', context: string): Promise<void> {
  for (let o = 0; o < m.bytes.length; o += 4 * MiB) {
    const len = Math.min(4 * MiB, m.bytes.length - o);
    const got = how === 'api' ? await api.read(m.volumeId, o, len) : await readData(m.volumeId, o, len);
    if (!got.equals(m.bytes.subarray(o, o + len))) expect.fail(`${context}: ${how} read at ${o} differs from the model`);
  }
}

/** The page items and the commit chain agree: a checkpoint replays the chain and compares the page items no tail holds. */
async function expectChainAgrees(volumeId: string): Promise<void> {
  const out = await takeCheckpoint(volumeId);
  expect(out.done, JSON.stringify(out)).toBe('written');
  if (out.done === 'written') expect(out).toMatchObject({ method: 'replay', verified: true });
}

describe('folding', () => {
  it('commits a write over more than 96 pages as one segment of two items, reads it from the tail, then folds it', async () => {
    const rng = seeded('fold one commit');
    const m = await folding(160 * MiB);
    // One block in each of 120 pages (1 MiB each): more than a commit that writes its pages may touch (96).
    const pieces: WritePiece[] = [...Array(120).keys()].map((p) => ({ offset: (p * 256 + rng.int(256)) * BLOCK, length: BLOCK, data: Buffer.alloc(BLOCK, 1 + p) }));
    const { commitSeq: seq } = await writePieces(m.volumeId, pieces);
    for (const p of pieces) p.data!.copy(m.bytes, p.offset);
    expect(seq).toBe(1);
    const v = await pageMap().getVolume(m.volumeId);
    expect(v?.foldedSeq).toBe(0);
    expect([...(await pageMap().getPages(v!, [...Array(160).keys()])).keys()]).toEqual([]); // no page item yet
    const [rec] = await pageMap().listSegmentRecordsBetween(m.volumeId, 0, 1);
    expect(rec?.extents?.length).toBe(120);
    await expectModel(m, 'api', 'unfolded');
    const r = await foldVolume(m.volumeId);
    expect(r).toMatchObject({ fromSeq: 0, toSeq: 1, segmentsFolded: 1 });
    expect(r.pagesWritten).toBe(120);
    expect((await pageMap().getVolume(m.volumeId))?.foldedSeq).toBe(1);
    await expectModel(m, 'api', 'folded');
    await expectChainAgrees(m.volumeId);
  });

  it('keeps the tail within its bound: writers fold inline when it is full', async () => {
    const rng = seeded('fold bound');
    const m = await folding(64 * MiB);
    for (let i = 0; i < 20; i++) {
      await scattered(m, rng, 1 + rng.int(40));
      const v = (await pageMap().getVolume(m.volumeId))!;
      expect(v.headSeq - v.foldedSeq!).toBeLessThanOrEqual(8);
    }
    await expectModel(m, 'process', 'bounded tail');
    await expectModel(m, 'api', 'bounded tail');
    await foldVolume(m.volumeId);
    await expectChainAgrees(m.volumeId);
  });

  it('bounds a batch by the pages it writes: the oldest commits that touch at most pagesMax pages, at least one', async () => {
    const m = await folding(64 * MiB);
    // Three commits (the worker is sent a fold only at the fourth), each one block in each of 10 pages of its own (pages 10i to 10i+9).
    for (let c = 0; c < 3; c++) {
      const pieces: WritePiece[] = [...Array(10).keys()].map((p) => ({ offset: (c * 10 + p) * MiB + c * BLOCK, length: BLOCK, data: Buffer.alloc(BLOCK, 1 + c * 10 + p) }));
      await writePieces(m.volumeId, pieces);
      for (const p of pieces) p.data!.copy(m.bytes, p.offset);
    }
    const two = await foldVolume(m.volumeId, { pagesMax: 25, batchesMax: 1 });
    expect(two).toMatchObject({ fromSeq: 0, toSeq: 2, segmentsFolded: 2, pagesWritten: 20 });
    expect((await pageMap().getVolume(m.volumeId))?.foldedSeq).toBe(2);
    await expectModel(m, 'api', 'folded in part');
    // A first segment over more pages than the bound is folded alone.
    const one = await foldVolume(m.volumeId, { pagesMax: 5, batchesMax: 1 });
    expect(one).toMatchObject({ fromSeq: 2, toSeq: 3, segmentsFolded: 1, pagesWritten: 10 });
    expect((await pageMap().getVolume(m.volumeId))?.foldedSeq).toBe(3);
    await expectModel(m, 'api', 'folded in two batches');
    await expectChainAgrees(m.volumeId);
  });

  it('survives duplicate, concurrent and late fold messages', async () => {
    const rng = seeded('fold duplicates');
    const m = await folding(64 * MiB);
    for (let i = 0; i < 6; i++) await scattered(m, rng, 60);
    const v = (await pageMap().getVolume(m.volumeId))!;
    // A message delivered three times: two folders run to the end while the first is between its
    // first and second page writes; then the same message once more, late, through the worker.
    let inner: Awaited<ReturnType<typeof foldVolume>>[] = [];
    let others: Promise<Awaited<ReturnType<typeof foldVolume>>[]> | undefined;
    const first = await foldVolume(m.volumeId, {
      createsMax: 1, // pages with no item yet are created one per transaction, so the others' run between two of them
      hooks: {
        // Each of the first folder's page writers, once its write is done, waits for the other
        // two folders: its writes after that meet pages they wrote.
        afterPageWrite: async (written) => {
          if (written === 1 && !others) others = Promise.all([foldVolume(m.volumeId), foldVolume(m.volumeId)]);
          if (others) inner = await others;
        },
      },
    });
    expect(inner.length).toBe(2);
    expect(first.pagesRetried).toBeGreaterThan(0); // its later writes met pages the others had written
    expect(Math.max(first.toSeq, ...inner.map((r) => r.toSeq))).toBe(v.headSeq);
    const message = { MessageId: 'late-fold', ReceiptHandle: 'late-fold', Body: JSON.stringify({ type: 'fold-volume', volumeId: m.volumeId }), Attributes: {} };
    const late = await handleWorkEvent({ Records: [toSqsRecord(message, '', 'us-east-1')] });
    expect(late.batchItemFailures).toEqual([]);
    expect((await pageMap().getVolume(m.volumeId))?.foldedSeq).toBe(v.headSeq);
    await expectModel(m, 'api', 'after duplicate folds');
    await expectChainAgrees(m.volumeId);
  });

  it('a folder SIGKILLed between page writes leaves pages at two fold points, which read right, and the next fold finishes', async () => {
    const rng = seeded('fold killed');
    const m = await folding(128 * MiB);
    // Three commits: the control plane's worker is sent a fold every fourth commit (half the tail), so none runs here.
    for (let i = 0; i < 3; i++) await scattered(m, rng, 100);
    const before = (await pageMap().getVolume(m.volumeId))!;
    const child = spawn(process.execPath, ['--import', 'tsx', CHILD, m.volumeId, '40'], { env: process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code, signal) => resolve(signal === 'SIGKILL' ? -9 : code)));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the folder did not stop in 120 s: ${err}`)), 120_000);
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('stoppedAfter')) {
          clearTimeout(timer);
          resolve();
        }
      });
      void exited.then((code) => reject(new Error(`the folder exited (${code}) before stopping: ${err}`)));
    });
    child.kill('SIGKILL');
    expect(await exited).toBe(-9);
    const after = (await pageMap().getVolume(m.volumeId))!;
    expect(after.foldedSeq).toBe(before.foldedSeq); // it never got to raise the folded point
    const pages = [...(await pageMap().getPages(after, [...Array(128).keys()])).values()];
    const atTarget = pages.filter((p) => p.foldedTo === after.headSeq).length;
    expect(atTarget).toBeGreaterThanOrEqual(40);
    expect(atTarget).toBeLessThan(pages.length + 1);
    await expectModel(m, 'api', 'mid-merge');
    await expectModel(m, 'process', 'mid-merge');
    const r = await foldVolume(m.volumeId);
    expect(r.pagesSkipped).toBeGreaterThanOrEqual(40); // the pages the killed folder wrote
    expect((await pageMap().getVolume(m.volumeId))?.foldedSeq).toBe(after.headSeq);
    await expectModel(m, 'api', 'after the next fold');
    await expectChainAgrees(m.volumeId);
  });

  it('a rebuild racing a fold: the fold cannot overwrite rebuilt pages nor move the folded point back', async () => {
    const rng = seeded('fold rebuild race');
    const m = await folding(64 * MiB);
    for (let i = 0; i < 5; i++) await scattered(m, rng, 50);
    const head = (await pageMap().getVolume(m.volumeId))!.headSeq;
    let rebuilt = false;
    const r = await foldVolume(m.volumeId, {
      hooks: {
        // The fold has read its first step's pages and written none: the whole page map is
        // rebuilt from the sleds now, so every write of the step meets a rebuilt page. (A rebuild
        // after the third page write could come too late: the step's other writes, 16 at a time,
        // or its creating transactions could all be done by then, and the fold meet nothing.)
        afterPagesRead: async () => {
          if (rebuilt) return;
          rebuilt = true;
          const out = await rebuildPageMap(m.volumeId);
          expect(out.headSeq).toBe(head);
        },
      },
    });
    expect(rebuilt).toBe(true);
    expect(r.pagesRetried + r.pagesSkipped).toBeGreaterThan(0); // the fold met the rebuilt pages
    const v = (await pageMap().getVolume(m.volumeId))!;
    expect(v).toMatchObject({ state: 'active', foldedSeq: head, headSeq: head });
    await expectModel(m, 'api', 'after the race');
    await scattered(m, rng, 30);
    await expectModel(m, 'api', 'a write after the race');
    await foldVolume(m.volumeId);
    await expectChainAgrees(m.volumeId);
  });

  it('a volume deleted and reclaimed mid-fold leaves no page item behind: the folder cannot create pages of a volume that stopped serving', async () => {
    const m = await folding(160 * MiB);
    // One commit over 150 pages that have no item yet: every page the fold writes is a new item.
    const pieces: WritePiece[] = [...Array(150).keys()].map((p) => ({ offset: p * MiB, length: BLOCK, data: Buffer.alloc(BLOCK, 1 + p) }));
    await writePieces(m.volumeId, pieces);
    const v = (await pageMap().getVolume(m.volumeId))!;
    let reclaimed: Awaited<ReturnType<typeof reclaimVolume>> | undefined;
    let deleting = false;
    const r = await foldVolume(m.volumeId, {
      hooks: {
        afterPageWrite: async (written) => {
          if (reclaimed || deleting) return;
          deleting = true;
          // After the step's first creating transaction (99 pages): the volume is deleted and
          // reclaimed, and the step's next transaction, of the 100th page, is refused.
          await deleteVolume(m.volumeId);
          reclaimed = await reclaimVolume(m.volumeId);
        },
      },
    });
    expect(reclaimed).toBeDefined();
    expect(r.skipped).toMatch(/no such volume|volume is deleting/);
    expect(r.pagesWritten).toBe(99);
    expect(await pageMap().getVolume(m.volumeId)).toBeNull();
    const left: number[] = [];
    for await (const p of pageMap().listPages(v)) left.push(p.page);
    expect(left, `page items left after the reclaim (the fold wrote ${r.pagesWritten}, the reclaim deleted ${reclaimed?.pagesDeleted})`).toEqual([]);
  });

  it("creates a step's new pages in one transaction; when another folder created some of them since, none is written and each is written alone", async () => {
    const m = await folding(64 * MiB);
    const commit = async (pages: number, fill: number) => {
      const pieces: WritePiece[] = [...Array(pages).keys()].map((p) => ({ offset: p * MiB + fill * BLOCK, length: BLOCK, data: Buffer.alloc(BLOCK, fill + p) }));
      await writePieces(m.volumeId, pieces);
      for (const p of pieces) p.data!.copy(m.bytes, p.offset);
    };
    await commit(10, 1); // seq 1: pages 0-9
    await commit(30, 2); // seq 2: pages 0-29
    let other: Awaited<ReturnType<typeof foldVolume>> | undefined;
    const r = await foldVolume(m.volumeId, {
      hooks: {
        afterPagesRead: async () => {
          // This folder read 30 pages with no item; another folds seq 1 alone, creating pages 0-9.
          other ??= await foldVolume(m.volumeId, { pagesMax: 10, batchesMax: 1 });
        },
      },
    });
    expect(other).toMatchObject({ fromSeq: 0, toSeq: 1, pagesWritten: 10, pagesRetried: 0 });
    // Its transaction of 30 was refused whole: pages 0-9 were read again and rewritten, 10-29 created one by one.
    expect(r).toMatchObject({ fromSeq: 0, toSeq: 2, pagesWritten: 30, pagesRetried: 10, pagesSkipped: 0 });
    const v = (await pageMap().getVolume(m.volumeId))!;
    const pages = await pageMap().getPages(v, [...Array(64).keys()]);
    expect([...pages.keys()].sort((a, b) => a - b)).toEqual([...Array(30).keys()]);
    expect([...pages.values()].every((p) => p.foldedTo === 2)).toBe(true);
    await expectModel(m, 'api', 'after the refused transaction');
    await expectChainAgrees(m.volumeId);
  });

  it('a snapshot taken between a folder reading its pages and freezing them: the folder freezes under the tag of its batch, and each snapshot reads its own bytes', async () => {
    const m = await folding(8 * MiB);
    const a = Buffer.alloc(BLOCK, 0xa1);
    await writePieces(m.volumeId, [{ offset: 0, length: BLOCK, data: a }]);
    const s1 = await createSnapshot(m.volumeId, {}, { id: 'test' });
    await writePieces(m.volumeId, [{ offset: 0, length: BLOCK, data: Buffer.alloc(BLOCK, 0xb2) }]); // page 0 after s1, in the tail
    let raced = false;
    let s2: Awaited<ReturnType<typeof createSnapshot>> | undefined;
    const r = await foldVolume(m.volumeId, {
      hooks: {
        afterPagesRead: async () => {
          if (raced) return;
          raced = true;
          // Between this folder's page read and its freeze: another folder folds the tail, a
          // snapshot is taken, and page 0 changes after it.
          await foldVolume(m.volumeId);
          s2 = await createSnapshot(m.volumeId, {}, { id: 'test' });
          await writePieces(m.volumeId, [{ offset: 0, length: BLOCK, data: Buffer.alloc(BLOCK, 0xc3) }]);
        },
      },
    });
    expect(raced).toBe(true);
    expect(r.toSeq).toBe((await pageMap().getVolume(m.volumeId))!.headSeq);
    expect((await readSnapshotData(s1.snapshotId, 0, BLOCK)).equals(a)).toBe(true);
    expect((await readSnapshotData(s2!.snapshotId, 0, BLOCK)).equals(Buffer.alloc(BLOCK, 0xb2))).toBe(true);
    expect((await readData(m.volumeId, 0, BLOCK)).equals(Buffer.alloc(BLOCK, 0xc3))).toBe(true);
    const v = (await pageMap().getVolume(m.volumeId))!;
    const frozen = await pageMap().getFrozenPages(m.volumeId, v.pageBlocks, [{ tag: s1.commitSeq, page: 0 }, { tag: s2!.commitSeq, page: 0 }]);
    expect(frozen.map((f) => f.tag).sort((x, y) => x - y)).toEqual([s1.commitSeq, s2!.commitSeq]);
    await expectChainAgrees(m.volumeId);
  });

  it('snapshots are taken on a tail without folding it: the folder stops at each tag, and every snapshot keeps its bytes', async () => {
    const rng = seeded('fold snapshot');
    // A bound of 64 here: the worker's folds (every 32 commits) stay out of the way.
    const v0 = await createVolume({ sizeBytes: 64 * MiB, foldTailMax: 64 });
    const m: Model = { volumeId: v0.volumeId, bytes: Buffer.alloc(64 * MiB) };
    const volume = async () => (await pageMap().getVolume(m.volumeId))!;
    const take = async () => ({ snap: await createSnapshot(m.volumeId, {}, { id: 'test' }), at: Buffer.from(m.bytes) });
    // Each snapshot queues a fold up to its tag, which the worker may have run by the time the
    // volume is read: the folded point is then at a tag, never between two.
    const expectFolded = async (headSeq: number, atTags: number[]) => {
      const v = await volume();
      expect(v).toMatchObject({ headSeq, snapSeq: headSeq });
      expect(atTags).toContain(v.foldedSeq);
    };
    for (let i = 0; i < 3; i++) await scattered(m, rng, 40);
    const s1 = await take();
    await expectFolded(3, [0, 3]);
    for (let i = 0; i < 3; i++) await scattered(m, rng, 40);
    const s2 = await take();
    await expectFolded(6, [0, 3, 6]);
    for (let i = 0; i < 2; i++) await scattered(m, rng, 40);
    const s3 = await take();
    const s3again = await take(); // a second snapshot at the same head: one tag
    await expectFolded(8, [0, 3, 6, 8]);
    // A fold of one batch, from wherever the worker left it, ends at a tag too.
    const one = await foldVolume(m.volumeId, { batchesMax: 1 });
    expect([3, 6, 8]).toContain(one.toSeq);
    const taken = [s1, s2, s3, s3again];
    const readAll = async (context: string) => {
      for (const { snap, at } of taken) {
        for (let o = 0; o < at.length; o += 4 * MiB) {
          if (!(await readSnapshotData(snap.snapshotId, o, 4 * MiB)).equals(at.subarray(o, o + 4 * MiB))) expect.fail(`${context}: ${snap.snapshotId} at ${o}`);
        }
      }
    };
    // Through the API (another process): reading s3 folds up to it first, if nothing did yet.
    for (let o = 0; o < s3.at.length; o += 4 * MiB) {
      const got = await http(`${useSledgeEnv().apiUrl}/snapshots/${s3.snap.snapshotId}/data?offset=${o}&length=${4 * MiB}`);
      expect(got.status).toBe(200);
      if (!got.body.equals(s3.at.subarray(o, o + 4 * MiB))) expect.fail(`API read of s3 at ${o}`);
    }
    expect((await volume()).foldedSeq).toBe(8);
    // The changed blocks between two snapshots: every block that differs is listed.
    const changed = await http(`${useSledgeEnv().apiUrl}/snapshots/${s2.snap.snapshotId}/changed-blocks?base=${s1.snap.snapshotId}&limit=10000`);
    expect(changed.status, changed.body.toString()).toBe(200);
    const listed = new Set<number>();
    for (const e of changed.json.extents as Array<{ offset: number; length: number }>) for (let b = e.offset / BLOCK; b < (e.offset + e.length) / BLOCK; b++) listed.add(b);
    let differing = 0;
    for (let b = 0; b < s1.at.length / BLOCK; b++) {
      if (s1.at.subarray(b * BLOCK, (b + 1) * BLOCK).equals(s2.at.subarray(b * BLOCK, (b + 1) * BLOCK))) continue;
      differing++;
      if (!listed.has(b)) expect.fail(`block ${b} differs between s1 and s2 but is not in their changed blocks`);
    }
    expect(differing).toBeGreaterThan(0);
    for (let i = 0; i < 5; i++) await scattered(m, rng, 40);
    const s4 = await take(); // on a tail again, with the previous tag folded past
    for (let i = 0; i < 2; i++) await scattered(m, rng, 40);
    taken.push(s4);
    await readAll('tags in the tail, in this process');
    const gc = await collectVolume(m.volumeId);
    expect(gc.skipped).toBeUndefined();
    await expectModel(m, 'api', 'after gc with a tail');
    await foldVolume(m.volumeId);
    await readAll('tail folded');
    await expectModel(m, 'api', 'folded after the snapshots');
    await scattered(m, rng, 10); // GC checkpointed at the head: one more commit for a checkpoint of its own
    await expectChainAgrees(m.volumeId);
  });

  it('pipelined writes of one writer commit at their first attempt: a tail commit waits for the one it was built on', async () => {
    const rng = seeded('fold pipeline');
    const m = await folding(64 * MiB);
    await scattered(m, rng, 4); // the volume's geometry is known to this process from here on
    // Six: with the tail bound of 8 here, none of them has to wait for a fold.
    const pieces = Array.from({ length: 6 }, (_, i) => ({ offset: i * MiB, length: MiB, data: Buffer.alloc(MiB, 11 + i) }));
    resetRequestCounts();
    // Started together, each builds on the one before (shared/data/write-pipeline.ts).
    const seqs = await Promise.all(pieces.map((p) => writePieces(m.volumeId, [p]).then((r) => r.commitSeq)));
    const c = requestCounts().requests;
    for (const p of pieces) p.data.copy(m.bytes, p.offset);
    // Sent before its predecessor had committed, a commit would be refused (head moved) and the
    // write built again from new chunks: more transactions, more PUTs, deletes of the chunks lost.
    expect({ transactions: c['DynamoDB:TransactWriteItems'], puts: c['S3:PutObject'], deletes: c['S3:DeleteObject'] ?? 0 }).toEqual({
      transactions: 6,
      puts: 6 * 6,
      deletes: 0,
    });
    expect(new Set(seqs).size).toBe(6);
    await expectModel(m, 'api', 'after the pipelined writes');
  });
});
