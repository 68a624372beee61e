/**
 * Garbage collection and compaction of a volume's segments (docs/evacuation.md, section 6).
 * GC never deletes a segment that any page-map entry references: it asserts so before the
 * delete against the only pages that can refer to the segment, and checks them again after.
 */
import { config } from '../core/config.ts';
import { FencedError, InvariantError, invariant } from '../core/errors.ts';
import {
  DEFAULT_COMPACTION_POLICY,
  groupForCommits,
  liveness,
  pagesTouched,
  planCompaction,
  spaceRatio,
  type LiveExtent,
  type SegmentUsage,
} from './liveness.ts';
import { MAX_PAGES_PER_COMMIT, segmentRef, type PageRecord, type SegmentRecord, type VolumeRecord } from '../core/records.ts';
import { takeCheckpoint } from './checkpoints/take.ts';
import { readPayload } from '../data/segment-reader.ts';
import { FOOTER_BYTES, parseTrailer, segmentIdSeq, trailerBytesFromFooter, type SegmentDescriptor } from '../data/segments.ts';
import { formatLocation, parseChunkKey, sameLocation, type ChunkLocation, type ListedChunk } from '../data/sleds.ts';
import { askRepairs } from '../data/repair-requests.ts';
import { MAX_IO_BYTES } from '../data/volume-rules.ts';
import { completeWrite, prepareWrite, type WritePiece } from '../data/write.ts';
import { forgetSegment } from '../data/read.ts';
import { isFolding, livePages } from '../data/tail.ts';
import { foldVolume } from './fold.ts';
import { chunkStore, workQueue } from '../ports.ts';
import type { GcMessage } from '../core/work-messages.ts';
import { pageMap } from '../ports.ts';

// ---------------------------------------------------------------------------------------
// Retention: what other features still need (snapshots, checkpoints)

/** Segments a feature still needs, whatever the live page map says. */
export interface SegmentRetention {
  /** Keep every segment (for example: no checkpoint exists yet, so a rebuild replays them all). */
  keepAll?: boolean;
  /** Keep every segment with `seq` above this (a rebuild from the oldest checkpoint replays them). */
  keepSeqAbove?: number;
  /** Keep these segment references (`<volumeId>/<segmentId>`). */
  refs?: ReadonlySet<string>;
}

/**
 * A feature that references segments outside the live page map. `segmentsNeededBy` is called
 * once per GC pass, after the segment records were listed and before anything is deleted; it
 * must read with consistent reads. Throwing stops the pass: nothing is deleted on a partial
 * answer.
 */
export interface SegmentRetentionProvider {
  name: string;
  segmentsNeededBy(volume: VolumeRecord): Promise<SegmentRetention>;
}

const providers: SegmentRetentionProvider[] = [];

/**
 * Registers a provider (the checkpoint and snapshot modules call this when they load).
 *
 * @example
 * registerRetentionProvider({ name: 'checkpoints', segmentsNeededBy: async (v) => ({ keepSeqAbove: floorOf(v) }) });
 */
export function registerRetentionProvider(provider: SegmentRetentionProvider): () => void {
  providers.push(provider);
  return () => {
    const i = providers.indexOf(provider);
    if (i >= 0) providers.splice(i, 1);
  };
}

/** Whether `rec` must be kept whatever its liveness (pure). */
export function isKept(rec: Pick<SegmentRecord, 'volumeId' | 'segmentId' | 'seq'>, headSegmentId: string, retentions: readonly SegmentRetention[]): boolean {
  if (rec.segmentId === headSegmentId) return true; // the commit chain's anchor
  const ref = segmentRef(rec.volumeId, rec.segmentId);
  return retentions.some((r) => r.keepAll === true || (r.keepSeqAbove !== undefined && rec.seq > r.keepSeqAbove) || r.refs?.has(ref) === true);
}

/**
 * What the checkpoints need (docs/checkpoints.md, "What GC keeps"): a rebuild starts from the
 * latest checkpoint and walks the commit chain after it, so every committed segment above the
 * latest checkpoint's seq stays, live or not (its trailer carries the chain link); before any
 * checkpoint exists, every committed segment stays. `collectVolume` checkpoints a volume first
 * when commits since the latest checkpoint hold back what it would reclaim.
 */
export function checkpointRetention(v: Pick<VolumeRecord, 'checkpoint'>): SegmentRetention {
  return v.checkpoint === undefined ? { keepAll: true } : { keepSeqAbove: v.checkpoint.seq };
}

/**
 * What a folding volume needs (docs/page-map.md, "Folding"): its tail, which readers lay over the
 * pages. `v` is read before the pages are listed, so every segment at or below its `foldedSeq`
 * is in them, and no later page write can name one again.
 */
export function foldRetention(v: Pick<VolumeRecord, 'foldedSeq'>): SegmentRetention {
  return v.foldedSeq === undefined ? {} : { keepSeqAbove: v.foldedSeq };
}

/**
 * What snapshots need (docs/snapshots.md): every segment a frozen page references, under any
 * tag (ready, deleting, or a stray the purge has not reached).
 */
export async function snapshotRetention(v: VolumeRecord): Promise<SegmentRetention> {
  const refs = new Set<string>();
  for await (const f of pageMap().listFrozenPages(v.volumeId, v.pageBlocks, 0)) for (const e of f.extents) if (e.seg !== null) refs.add(e.seg);
  return { refs };
}

// ---------------------------------------------------------------------------------------
// Messages

/** Dead segments deleted per message; orphans deleted per message. */
export const DELETE_SEGMENTS_MAX = 200;
export const DELETE_ORPHANS_MAX = 1000;
/** Chunks missing from the listing that one pass confirms and asks to have repaired. */
export const SCRUB_SUSPECTS_MAX = 1000;
const COMPACTION_ATTEMPT_MAX = 3;
const SWEEP_PAGE_VOLUMES = 100;
const TAIL_GUESS_BYTES = 64 * 1024;

/** Queues GC of a volume. */
export async function queueGc(volumeId: string): Promise<void> {
  const m: GcMessage = { type: 'gc-volume', volumeId };
  await workQueue().send(m);
}

/** What one GC pass did. */
export interface GcReport {
  volumeId: string;
  segments: number;
  liveBytes: number;
  storedBytesBefore: number;
  segmentsDeleted: number;
  bytesReclaimed: number;
  segmentsCompacted: number;
  compactionCommits: number;
  compactionBytesRewritten: number;
  compactionGaveUp: string | null;
  orphansDeleted: number;
  /** Chunks kept because a page references their segment although it has no record (rebuild restores it). */
  referencedWithoutRecord?: number;
  /** Chunks the records point at that the listing lacks, confirmed lost (docs/evacuation.md, "The listing check"). */
  chunksMissing?: number;
  /** Repairs of those this pass asked (fewer when repairs are off or this process asked lately). */
  repairsAsked?: number;
  /** Work left over for a continuation message. */
  continued: boolean;
  skipped?: string;
}

// ---------------------------------------------------------------------------------------
// Deleting one dead segment

/** The segment's descriptor from any readable chunk trailer, or null if none is readable. */
async function descriptorOf(rec: SegmentRecord): Promise<SegmentDescriptor | null> {
  for (const loc of rec.locations) {
    try {
      let tail = await chunkStore().getChunkTail(loc, TAIL_GUESS_BYTES);
      if (!tail || tail.length < FOOTER_BYTES) continue;
      const need = trailerBytesFromFooter(tail.subarray(tail.length - FOOTER_BYTES));
      if (tail.length < need) tail = await chunkStore().getChunkTail(loc, need);
      if (!tail) continue;
      const d = parseTrailer(tail);
      if (d.volumeId === rec.volumeId && d.segmentId === rec.segmentId) return d;
    } catch (err) {
      console.warn(`gc: trailer of ${loc.bucket}/${loc.key} unreadable: ${(err as Error).message}`);
    }
  }
  return null;
}

function assertUnreferenced(pages: Map<number, PageRecord>, ref: string, when: string): void {
  for (const p of pages.values()) {
    if (p.extents.some((e) => e.seg === ref)) {
      throw new InvariantError(`gc ${when}: page ${p.page} (version ${p.version}) still references segment ${ref}; it must not be deleted`);
    }
  }
}

/**
 * Deletes a segment that no page references and nothing keeps: asserts it against the pages its
 * extents touched, deletes its chunks, then its record (on condition that its locations did not
 * change, else again with the moved chunks), and checks the pages again. Returns stored bytes freed.
 */
export async function deleteDeadSegment(v: VolumeRecord, rec: SegmentRecord, storedBytes: number): Promise<number> {
  const ref = segmentRef(rec.volumeId, rec.segmentId);
  const descriptor = await descriptorOf(rec);
  const pages = descriptor ? pagesTouched(descriptor.extents, v.pageBlocks) : [];
  if (descriptor) assertUnreferenced(await pageMap().getPages(v, pages), ref, 'before deleting');
  else console.warn(`gc: no trailer of ${ref} readable; deleting on the page scan's evidence alone`);
  let locations: readonly ChunkLocation[] = rec.locations;
  for (let attempt = 0; ; attempt++) {
    invariant(attempt < 3, () => `gc: segment ${ref} kept moving while it was deleted`);
    await Promise.all(locations.map((l) => chunkStore().deleteChunk(l)));
    const moved = await pageMap().deleteSegmentRecordIf(rec.volumeId, rec.segmentId, locations);
    if (!moved) break;
    // An evacuation moved a chunk between our read and the delete: delete the new copy too.
    locations = moved.locations;
  }
  forgetSegment(ref);
  if (descriptor) assertUnreferenced(await pageMap().getPages(v, pages), ref, 'after deleting');
  return storedBytes;
}

// ---------------------------------------------------------------------------------------
// Compaction

/**
 * Rewrites the live extents of `refs` into new segments through the normal commit path
 * (docs/evacuation.md, section 6, step 5). Returns the segments now fully rewritten.
 */
async function compact(volumeId: string, refs: ReadonlySet<string>, pagesOf: Map<string, Set<number>>, report: GcReport): Promise<string[]> {
  const pageNums = [...new Set([...refs].flatMap((r) => [...(pagesOf.get(r) ?? [])]))].sort((a, b) => a - b);
  for (let attempt = 0; attempt < COMPACTION_ATTEMPT_MAX; attempt++) {
    // The volume item first: the commit is conditioned on this head, so the bytes read below are
    // still the volume's bytes when the commit succeeds.
    const read = await pageMap().getVolume(volumeId);
    if (!read || read.state !== 'active') return [];
    let v: VolumeRecord = read;
    // A folding volume's tail is laid over (docs/page-map.md, "Folding"): blocks a tail segment
    // superseded are not copied back over it.
    const pages = await livePages(v, pageNums);
    const extents: LiveExtent[] = [];
    for (const p of pages.values()) {
      for (const e of p.extents)
        if (e.seg !== null && refs.has(e.seg)) extents.push({ first: e.first, count: e.count, seg: e.seg, segBlock: e.segBlock, page: p.page });
    }
    if (extents.length === 0) return [...refs];
    const records = new Map<string, SegmentRecord>();
    for (const ref of new Set(extents.map((e) => e.seg))) {
      const [vol, seg] = [ref.slice(0, ref.indexOf('/')), ref.slice(ref.indexOf('/') + 1)];
      const rec = await pageMap().getSegmentRecord(vol, seg);
      invariant(rec, () => `page map references segment ${ref}, which has no record`);
      records.set(ref, rec);
    }
    const bs = v.blockSizeBytes;
    const groups = groupForCommits(extents, bs, MAX_IO_BYTES, MAX_PAGES_PER_COMMIT);
    const generation = v.reservations.generation;
    let lost = false;
    const done = new Set<number>();
    for (const group of groups) {
      const pieces: WritePiece[] = [];
      const bySeg = new Map<string, LiveExtent[]>();
      for (const e of group) bySeg.set(e.seg, [...(bySeg.get(e.seg) ?? []), e]);
      const data = new Map<LiveExtent, Buffer>();
      for (const [ref, list] of bySeg) {
        const parts = await readPayload(
          records.get(ref)!,
          list.map((e) => ({ start: e.segBlock * bs, end: (e.segBlock + e.count) * bs })),
        );
        list.forEach((e, i) => data.set(e, parts[i]!));
      }
      for (const e of [...group].sort((a, b) => a.first - b.first)) {
        const last = pieces[pieces.length - 1];
        const bytes = data.get(e)!;
        if (last && last.offset + last.length === e.first * bs) {
          last.data = Buffer.concat([last.data!, bytes]);
          last.length += bytes.length;
        } else pieces.push({ offset: e.first * bs, length: bytes.length, data: bytes });
      }
      try {
        const prepared = await prepareWrite(v, pieces, { id: 'gc-compaction' }, { maintenance: true });
        const outcome = await completeWrite(prepared, { maintenanceAtGeneration: generation });
        if (!outcome) {
          lost = true;
          break;
        }
        report.compactionCommits++;
        report.compactionBytesRewritten += prepared.record.payloadBytes;
        for (const e of group) done.add(e.page);
        // Only our commit moved the head: the next group builds on it, under the same condition.
        v = { ...v, headSeq: prepared.record.seq, headSegmentId: prepared.record.segmentId };
      } catch (err) {
        if (err instanceof FencedError) {
          report.compactionGaveUp = `fenced: ${err.message}`;
          return rewrittenSegments(refs, pagesOf, done);
        }
        throw err;
      }
    }
    if (!lost) return rewrittenSegments(refs, pagesOf, done);
    // Another commit moved the head: whatever we committed stays (it is correct), the rest is
    // read again from the new head.
    if (done.size > 0) return rewrittenSegments(refs, pagesOf, done);
  }
  report.compactionGaveUp = `lost the commit race ${COMPACTION_ATTEMPT_MAX} times`;
  return [];
}

/** The segments all of whose pages were rewritten. */
function rewrittenSegments(refs: ReadonlySet<string>, pagesOf: Map<string, Set<number>>, donePages: ReadonlySet<number>): string[] {
  return [...refs].filter((r) => [...(pagesOf.get(r) ?? [])].every((p) => donePages.has(p)));
}

// ---------------------------------------------------------------------------------------
// One GC pass

/**
 * One GC pass over a volume: delete dead segments, compact to the space target, delete old
 * orphans and strays. Bounded per call; queues its own continuation when work is left.
 *
 * @example
 * const r = await collectVolume('vol-0123'); // { segmentsDeleted, bytesReclaimed, ... }
 */
export async function collectVolume(volumeId: string, opts: { queueContinuation?: boolean } = {}): Promise<GcReport> {
  const report: GcReport = {
    volumeId,
    segments: 0,
    liveBytes: 0,
    storedBytesBefore: 0,
    segmentsDeleted: 0,
    bytesReclaimed: 0,
    segmentsCompacted: 0,
    compactionCommits: 0,
    compactionBytesRewritten: 0,
    compactionGaveUp: null,
    orphansDeleted: 0,
    continued: false,
  };
  let v = await pageMap().getVolume(volumeId);
  if (!v || v.state !== 'active') return { ...report, skipped: v ? `volume is ${v.state}` : 'no such volume' };
  if (isFolding(v) && v.headSeq > v.foldedSeq) {
    // A folding volume's tail is kept whole (foldRetention): folding it first, however short it
    // is, lets this pass reclaim what the tail superseded, so an idle volume's garbage does not
    // wait for writes that would fill its tail (docs/page-map.md, "Folding", GC). Without it (it
    // failed: the pass goes on) the pass reclaims only what precedes the folded point.
    try {
      await foldVolume(volumeId);
    } catch (err) {
      console.warn(`gc of ${volumeId}: fold before collecting failed (${(err as Error).message}); keeping the tail`);
    }
    v = await pageMap().getVolume(volumeId);
    if (!v || v.state !== 'active') return { ...report, skipped: v ? `volume is ${v.state}` : 'no such volume' };
  }
  if (v.headSeq > (v.checkpoint?.seq ?? 0)) {
    // Segments after the latest checkpoint are kept for rebuilds; a checkpoint at the head now
    // (cheap next to the scan below) lets this pass reclaim what the last commits superseded.
    // Without it (it failed: the pass goes on) the pass reclaims only what precedes the latest.
    try {
      const out = await takeCheckpoint(volumeId);
      if (out.done === 'skipped') return { ...report, skipped: out.reason };
    } catch (err) {
      console.warn(`gc of ${volumeId}: checkpoint before collecting failed (${(err as Error).message}); collecting up to the latest checkpoint only`);
    }
    v = await pageMap().getVolume(volumeId);
    if (!v || v.state !== 'active') return { ...report, skipped: v ? `volume is ${v.state}` : 'no such volume' };
  }
  // Order matters: records, then pages. A segment listed here and referenced by no page read
  // afterwards is dead for good (its references only ever disappear after its commit).
  const records: SegmentRecord[] = [];
  for await (const r of pageMap().listSegmentRecords(volumeId)) records.push(r);
  const volume = v;
  const retentions = [
    checkpointRetention(volume),
    foldRetention(volume),
    await snapshotRetention(volume),
    ...(await Promise.all(providers.map((p) => p.segmentsNeededBy(volume)))),
  ];
  const pages: PageRecord[] = [];
  for await (const p of pageMap().listPages(v)) pages.push(p);
  const { liveBlocks, pagesOf } = liveness(pages);
  const chunks: ListedChunk[] = [];
  for await (const c of chunkStore().listVolumeChunks(volumeId, config().sledBuckets)) chunks.push(c);
  const stored = new Map<string, number>();
  for (const c of chunks) {
    const p = parseChunkKey(c.key);
    if (p) stored.set(p.segmentId, (stored.get(p.segmentId) ?? 0) + c.sizeBytes);
  }
  const bs = v.blockSizeBytes;
  const usage = (r: SegmentRecord): SegmentUsage => ({
    ref: segmentRef(r.volumeId, r.segmentId),
    liveBytes: (liveBlocks.get(segmentRef(r.volumeId, r.segmentId)) ?? 0) * bs,
    storedBytes: stored.get(r.segmentId) ?? 0,
    kept: isKept(r, v.headSegmentId, retentions),
  });
  const usages = records.map(usage);
  report.segments = records.length;
  report.liveBytes = usages.reduce((n, u) => n + u.liveBytes, 0);
  report.storedBytesBefore = chunks.reduce((n, c) => n + c.sizeBytes, 0);

  // Dead segments.
  const dead = records.filter((r, i) => usages[i]!.liveBytes === 0 && !usages[i]!.kept);
  const deletedIds = new Set<string>();
  for (const r of dead.slice(0, DELETE_SEGMENTS_MAX)) {
    deletedIds.add(r.segmentId);
    const u = usage(r);
    invariant(u.liveBytes === 0 && !u.kept, () => `gc chose live or kept segment ${u.ref}`);
    report.bytesReclaimed += await deleteDeadSegment(v, r, u.storedBytes);
    report.segmentsDeleted++;
  }
  if (dead.length > DELETE_SEGMENTS_MAX) report.continued = true;

  // Compaction to the space target.
  // Segments at or below the newest snapshot are held by it, and rewriting their blocks would
  // make them look changed between snapshots (docs/snapshots.md): only newer ones are compacted.
  const seqOf = new Map(records.map((r) => [segmentRef(r.volumeId, r.segmentId), r.seq]));
  const plan = planCompaction(
    usages.filter((u) => u.liveBytes > 0 && (v.snapSeq === undefined || (seqOf.get(u.ref) ?? 0) > v.snapSeq)),
    { ...DEFAULT_COMPACTION_POLICY, dataChunks: v.dataChunks, parityChunks: v.parityChunks, blockSizeBytes: v.blockSizeBytes, segmentBytesMax: MAX_IO_BYTES },
  );
  if (plan.length > 0) {
    const rewritten = await compact(volumeId, new Set(plan), pagesOf, report);
    // On a folding volume the compaction's commits are in the tail: the pages name the old
    // segments until they are folded (deleteDeadSegment asserts that none does).
    if (rewritten.length > 0 && isFolding(v)) await foldVolume(volumeId);
    const byRef = new Map(records.map((r) => [segmentRef(r.volumeId, r.segmentId), r]));
    for (const ref of rewritten) {
      const r = byRef.get(ref)!;
      deletedIds.add(r.segmentId);
      report.bytesReclaimed += await deleteDeadSegment(v, r, stored.get(r.segmentId) ?? 0);
      report.segmentsCompacted++;
    }
    // More may be worth compacting after this round: look again in a new message.
    if (rewritten.length > 0) report.continued = true;
  }

  // Orphans (no record) and strays (the record points elsewhere), once past the grace.
  const known = new Map(records.map((r) => [r.segmentId, r]));
  const graceCutoff = Date.now() - config().orphanGraceMs;
  for (const c of chunks) {
    if (report.orphansDeleted >= DELETE_ORPHANS_MAX) {
      report.continued = true;
      break;
    }
    const p = parseChunkKey(c.key);
    if (!p || c.lastModifiedMs > graceCutoff || deletedIds.has(p.segmentId)) continue;
    let rec: SegmentRecord | null | undefined = known.get(p.segmentId);
    const referenced = (r: SegmentRecord | null | undefined) => sameLocation(r?.locations[p.chunkIndex], c);
    if (referenced(rec)) continue;
    // Read the record again: a segment committed or a chunk moved since the listing.
    rec = await pageMap().getSegmentRecord(volumeId, p.segmentId);
    if (referenced(rec)) continue;
    const seq = segmentIdSeq(p.segmentId);
    if (!rec && seq <= v.headSeq && seq > (v.checkpoint?.seq ?? 0)) {
      // Above the latest checkpoint the head has passed: it may be a committed segment whose
      // record was lost, and a rebuild walks the chain through its trailer. Kept until a
      // checkpoint passes it (docs/checkpoints.md, "What GC keeps").
      continue;
    }
    if (!rec && seq > v.headSeq) {
      // Not committed, but it still could be: its transaction needs the head at seq - 1 and the
      // head (read before the record) has not passed it. A tombstone makes that impossible, or
      // finds that it just committed (docs/page-map.md, "Settling an outcome").
      if ((await pageMap().tombstoneSegment(volumeId, p.segmentId, seq)) === 'committed') continue;
    }
    if (!rec && liveBlocks.has(segmentRef(volumeId, p.segmentId))) {
      // A page references this segment but its record is gone (a lost or rolled-back Segments
      // table): not an orphan. Its chunks are the data; a rebuild restores the record.
      report.referencedWithoutRecord = (report.referencedWithoutRecord ?? 0) + 1;
      continue;
    }
    await chunkStore().deleteChunk(c);
    report.orphansDeleted++;
    report.bytesReclaimed += c.sizeBytes;
  }
  await checkListing(
    volumeId,
    records.filter((r) => !deletedIds.has(r.segmentId)),
    chunks,
    report,
  );
  // Tombstones the head has passed guard nothing any more (no commit at their seq can apply).
  const spent: string[] = [];
  for await (const t of pageMap().listSegmentTombstones(volumeId)) if (t.seq <= v.headSeq && spent.length < DELETE_ORPHANS_MAX) spent.push(t.segmentId);
  if (spent.length > 0) await pageMap().deleteSegmentRecords(volumeId, spent);
  if (report.continued && opts.queueContinuation !== false) await queueGc(volumeId);
  const after = report.storedBytesBefore - report.bytesReclaimed;
  console.log(JSON.stringify({ msg: 'gc pass', ...report, spaceRatio: Number(spaceRatio(after, report.liveBytes, v.dataChunks, v.parityChunks).toFixed(3)) }));
  return report;
}

/**
 * The listing check (docs/evacuation.md, "The listing check"): chunks that `records` (read
 * before the listing) point at and that `listed` lacks are read again in their record and, if
 * it still points there, asked to be repaired.
 */
export async function checkListing(volumeId: string, records: readonly SegmentRecord[], listed: readonly ListedChunk[], report: GcReport): Promise<void> {
  const present = new Set(listed.map(formatLocation));
  const buckets = new Set(config().sledBuckets);
  const suspects: Array<{ segmentId: string; chunk: number; loc: ChunkLocation }> = [];
  for (const r of records) {
    r.locations.forEach((loc, chunk) => {
      // A bucket the listing did not look in is not judged.
      if (buckets.has(loc.bucket) && !present.has(formatLocation(loc))) suspects.push({ segmentId: r.segmentId, chunk, loc });
    });
  }
  if (suspects.length === 0) return;
  const lost: Array<{ rec: SegmentRecord; chunk: number }> = [];
  const checked = suspects.slice(0, SCRUB_SUSPECTS_MAX);
  // Read again (consistent): moved or collected since the listing: not lost.
  const now = await pageMap().getSegmentRecords(checked.map((s) => segmentRef(volumeId, s.segmentId)));
  for (const s of checked) {
    const rec = now.get(segmentRef(volumeId, s.segmentId));
    if (rec && sameLocation(rec.locations[s.chunk], s.loc)) lost.push({ rec, chunk: s.chunk });
  }
  report.chunksMissing = lost.length;
  if (lost.length === 0) return;
  report.repairsAsked = await askRepairs(lost);
  const shown = lost.slice(0, 5).map(({ rec, chunk }) => `${formatLocation(rec.locations[chunk]!)} (chunk ${chunk} of ${rec.segmentId})`);
  console.warn(
    `gc of ${volumeId}: ${lost.length} chunk(s) missing from the listing${suspects.length > SCRUB_SUSPECTS_MAX ? ` (${suspects.length} suspects, ${SCRUB_SUSPECTS_MAX} checked)` : ''}, ` +
      `${report.repairsAsked} repair(s) asked: ${shown.join(', ')}${lost.length > shown.length ? ', ...' : ''}`,
  );
}

/** Queues GC for one page of volumes and continues the sweep. */
export async function sweep(startAfter?: string): Promise<{ queued: number; next?: string }> {
  const page = await pageMap().listVolumes(SWEEP_PAGE_VOLUMES, startAfter);
  const active = page.volumes.filter((v) => v.state === 'active');
  for (let i = 0; i < active.length; i += 10) {
    await workQueue().sendBatch(active.slice(i, i + 10).map((v): GcMessage => ({ type: 'gc-volume', volumeId: v.volumeId })));
  }
  if (page.next) {
    const m: GcMessage = { type: 'gc-sweep', startAfter: page.next };
    await workQueue().send(m);
  }
  return page.next ? { queued: active.length, next: page.next } : { queued: active.length };
}
