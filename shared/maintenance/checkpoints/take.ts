/**
 * Taking a checkpoint of a volume's page map, its retention, the listing of a volume's
 * checkpoints, and the scheduled sweep (docs/checkpoints.md). This folder is the only
 * implementation of that note.
 */
import { foldThrough, foldVolume } from '../fold.ts';
import { inTail } from '../../data/tail.ts';
import { sendCheckpointMessages, sendCheckpointMessage, DEFAULT_CHECKPOINT_EVERY_COMMITS } from '../checkpoint-messages.ts';
import { config } from '../../core/config.ts';
import { crc32c } from '../../data/crc32c.ts';
import { ConflictError, InvalidInputError, NotFoundError, UnavailableError } from '../../core/errors.ts';
import { type CheckpointPointer, type StoredFrozen, type StoredPage, type VolumeRecord } from '../../core/records.ts';
import { GRANULE_BYTES, decodeTrailer, encodeStripes, encodeTrailer } from '../../data/segments.ts';
import { placeChunks } from '../../data/sleds.ts';
import { deleteChunksQuietly, uploadChunksAt } from '../../data/upload.ts';
import { forEachLimited } from '../../core/async.ts';
import {
  CHECKPOINT_ALIGN_BYTES,
  CHECKPOINT_FOOTER_MAGIC,
  CHECKPOINT_GRACE_MS,
  CHECKPOINT_REPLAY_SEGMENTS_MAX,
  CHECKPOINT_RETAIN,
  CheckpointDescriptor,
  IO_CONCURRENCY,
  SETTLE_ROUNDS_MAX,
  SWEEP_VOLUMES_PER_MESSAGE,
  encodeCheckpointPayload,
  formatPlacement,
  newCheckpointId,
  samePage,
} from './format.ts';
import { planRetention, replaySegment, touchedPages } from './chain.ts';
import { canonicalFrozen, changedPages, replayFreezes } from './frozen.ts';
import { STABLE_ATTEMPTS_MAX, compareFrozen, scanFrozen, stillStable, tagsWithoutPurge } from './frozen-scan.ts';
import { committedDescriptors, listCheckpointSets, readTrailerBytes } from './read.ts';
import { RebuildBase, RebuildReport, findBase, phaseClock } from './rebuild.ts';
import { chunkStore } from '../../ports.ts';
import { pageMap } from '../../ports.ts';

/** What the API shows of a checkpoint. */
export interface CheckpointView {
  checkpointId: string;
  seq: number;
  pages: number;
  payloadBytes: number;
  payloadCrc: number;
}

export function pointerView(p: CheckpointPointer): CheckpointView {
  return { checkpointId: p.id, seq: p.seq, pages: p.pages, payloadBytes: p.bytes, payloadCrc: p.crc };
}

export type CheckpointOutcome =
  /** A new checkpoint was written and recorded as the latest. */
  | ({
      done: 'written';
      volumeId: string;
      checkpoint: CheckpointView;
      removedCheckpoints: number;
      elapsedMs: number;
      phasesMs: Partial<Record<CheckpointPhase, number>>;
    } & MapProvenance)
  /** The latest checkpoint already covers the requested seq (a duplicate or late request). */
  | { done: 'up-to-date'; volumeId: string; checkpoint: CheckpointView | null }
  /** Another job recorded a checkpoint at least as new while this one ran; this one's chunks were deleted. */
  | { done: 'superseded'; volumeId: string; checkpoint: CheckpointView | null }
  /** Nothing to do: the volume is being deleted or rebuilt. */
  | { done: 'skipped'; volumeId: string; reason: string };

type CheckpointPhase = 'base' | 'build' | 'verify' | 'write' | 'record';

function mustStayActive(v0: VolumeRecord, now: VolumeRecord | null): VolumeRecord {
  if (!now || now.state !== 'active' || (now.rebuilds ?? 0) !== (v0.rebuilds ?? 0)) {
    throw new UnavailableError(`volume ${v0.volumeId} was deleted or rebuilt while its checkpoint was taken; retry`, { retryAfterSeconds: 5 });
  }
  return now;
}

/** How a checkpoint's page map was obtained. */
export interface MapProvenance {
  method: 'replay' | 'scan';
  /** The checkpoint a `replay` started from (null: from the first write). */
  baseCheckpointId: string | null;
  segmentsReplayed: number;
  verified: boolean;
  /** Pages compared with the live items; pages changed by commits during the comparison are skipped. */
  pagesVerified: number;
  pagesSkipped: number;
  /** Frozen pages compared with the copies the commit chain implies. */
  frozenVerified: number;
  /** `scan` only: times the scan was repaired because commits overtook it. */
  settleRounds: number;
}

/** A page map as of one commit, and how it was obtained. */
interface BuiltMap extends MapProvenance {
  seq: number;
  headSegmentId: string;
  map: Map<number, StoredPage>;
  /** The snapshots' frozen pages as of `seq` (docs/checkpoints.md, "Frozen pages"). */
  frozen: Map<string, StoredFrozen>;
}

/**
 * The map at the head `v0` read, by construction: the base checkpoint plus the committed
 * segments after it. Then every page that no commit touched since `v0` is compared with its
 * live item; any difference means the live map and the chain disagree, and nothing is written.
 */
async function mapByReplay(v0: VolumeRecord, base: RebuildBase, clock: ReturnType<typeof phaseClock<CheckpointPhase>>): Promise<BuiltMap> {
  if (inTail(v0, v0.headSeq)) {
    // A folding volume's tail pages and the copies its tail tags need are made by the folder:
    // fold up to the head read (a fixed seq, whatever commits meanwhile) so that every page the
    // checkpoint holds can be compared (docs/page-map.md, "Snapshots on a tail").
    await foldThrough(v0, v0.headSeq);
    v0 = { ...v0, foldedSeq: v0.headSeq, foldedSegmentId: v0.headSegmentId };
  }
  for (let attempt = 1; ; attempt++) {
    const built = await mapByReplayOnce(v0, base, clock);
    if (built) return built;
    if (attempt >= STABLE_ATTEMPTS_MAX) {
      throw new UnavailableError(`snapshots of volume ${v0.volumeId} kept being purged during its checkpoint; retry later`, { retryAfterSeconds: 10 });
    }
  }
}

/** One attempt of mapByReplay; null when a snapshot purge overlapped the scans (then it is tried again). */
async function mapByReplayOnce(v0: VolumeRecord, base: RebuildBase, clock: ReturnType<typeof phaseClock<CheckpointPhase>>): Promise<BuiltMap | null> {
  const { volumeId, pageBlocks } = v0;
  const snapshots = await tagsWithoutPurge(volumeId);
  const { tags } = snapshots;
  // As in a rebuild: a base from before checkpoints held frozen pages knows nothing of the
  // copies made up to it when a snapshot is older than it; then the scanned copies are taken.
  const frozenKnown = base.frozen !== null || !tags.some((t) => t < base.seq);
  const derived = canonicalFrozen(base.frozen ?? [], tags);
  const descs = await committedDescriptors(volumeId, { seq: base.seq, segmentId: base.headSegmentId }, { seq: v0.headSeq, segmentId: v0.headSegmentId });
  const map = new Map(base.pages.map((p) => [p.page, p]));
  for (const d of descs) {
    if (frozenKnown) replayFreezes(derived, map, d, tags, pageBlocks);
    replaySegment(map, d, pageBlocks);
  }
  clock.lap('build');

  const live = new Map<number, StoredPage>();
  for await (const p of pageMap().listStoredPages(volumeId)) live.set(p.page, p);
  const scanned = canonicalFrozen(await scanFrozen(volumeId), tags);
  if (!(await stillStable(volumeId, snapshots))) return null;
  const now = mustStayActive(v0, await pageMap().getVolume(volumeId));
  // Commits after v0 may have changed pages (and frozen them) during the scans: those pages are
  // not compared. On a folding volume, neither are those of its tail at v0: they may be folded
  // or not (docs/page-map.md, "Folding").
  const from = v0.foldedSeq === undefined ? { seq: v0.headSeq, segmentId: v0.headSegmentId } : { seq: v0.foldedSeq, segmentId: v0.foldedSegmentId ?? '' };
  const later = await committedDescriptors(volumeId, from, { seq: now.headSeq, segmentId: now.headSegmentId });
  const moved = new Set(later.flatMap((d) => changedPages(d, pageBlocks)));
  let pagesVerified = 0;
  for (const page of new Set([...map.keys(), ...live.keys()])) {
    if (moved.has(page)) continue;
    const want = map.get(page);
    const have = live.get(page);
    if (!want || !have || !samePage(want, have)) {
      const describe = (p: StoredPage | undefined) => (p ? `version ${p.version}` : 'no item');
      throw new ConflictError(
        `the live page map of volume ${volumeId} does not match its commit chain at page ${page} ` +
          `(live: ${describe(have)}, checkpoint ${base.checkpointId ?? 'of the first write'} plus ${descs.length} commits: ${describe(want)}); ` +
          'no checkpoint was written: rebuild the page map',
      );
    }
    pagesVerified++;
  }
  let frozenVerified = 0;
  if (frozenKnown) {
    const check = compareFrozen(derived, scanned, map, moved, pageBlocks);
    if (check.mismatch) {
      throw new ConflictError(
        `the frozen pages of volume ${volumeId} do not match its commit chain: ${check.mismatch}; no checkpoint was written: rebuild the page map`,
      );
    }
    frozenVerified = check.compared;
  }
  return {
    seq: v0.headSeq,
    headSegmentId: v0.headSegmentId,
    map,
    // Copies under tags after the checkpoint's head are made by commits a rebuild replays.
    frozen: frozenKnown ? derived : new Map([...scanned].filter(([, f]) => f.tag <= v0.headSeq)),
    method: 'replay',
    baseCheckpointId: base.checkpointId,
    segmentsReplayed: descs.length,
    verified: true,
    pagesVerified,
    pagesSkipped: moved.size,
    frozenVerified,
    settleRounds: 0,
  };
}

/**
 * The frozen pages for a checkpoint at `seq`, scanned after the map settled there (so every copy
 * a commit up to `seq` made is in it) by a scan no purge overlapped. Copies made by later commits
 * under older tags are harmless: a rebuild's replay of those commits finds them made.
 */
async function frozenAfter(volumeId: string, seq: number): Promise<Map<string, StoredFrozen>> {
  let frozen: Map<string, StoredFrozen> | undefined;
  for (let attempt = 1; !frozen; attempt++) {
    const snapshots = await tagsWithoutPurge(volumeId);
    const scanned = canonicalFrozen(await scanFrozen(volumeId), snapshots.tags);
    if (await stillStable(volumeId, snapshots)) frozen = scanned;
    else if (attempt >= STABLE_ATTEMPTS_MAX) {
      throw new UnavailableError(`snapshots of volume ${volumeId} kept being purged during its checkpoint; retry later`, { retryAfterSeconds: 10 });
    }
  }
  return new Map([...frozen].filter(([, f]) => f.tag <= seq));
}

/** The result of a scan settled at `known`'s head: nothing replayed, nothing to verify against. */
async function scanSettled(known: VolumeRecord, map: Map<number, StoredPage>, settleRounds: number): Promise<BuiltMap> {
  return {
    seq: known.headSeq,
    headSegmentId: known.headSegmentId,
    map,
    frozen: await frozenAfter(known.volumeId, known.headSeq),
    method: 'scan',
    baseCheckpointId: null,
    segmentsReplayed: 0,
    verified: false,
    pagesVerified: 0,
    pagesSkipped: 0,
    frozenVerified: 0,
    settleRounds,
  };
}

function scanKeptMoving(volumeId: string): UnavailableError {
  return new UnavailableError(`volume ${volumeId} kept committing during ${SETTLE_ROUNDS_MAX} rounds of its checkpoint scan; retry later`, {
    retryAfterSeconds: 10,
  });
}

/** Reads `pages` of the scanned `map` again (a page whose item is gone leaves it). */
async function readPagesAgain(volumeId: string, map: Map<number, StoredPage>, pages: Set<number>): Promise<void> {
  const fresh = await pageMap().getStoredPages(volumeId, [...pages]);
  for (const p of pages) {
    const item = fresh.get(p);
    if (item) map.set(p, item);
    else map.delete(p);
  }
}

/**
 * The map from a scan of the live page items, settled at a head that did not move while the
 * pages changed by overtaking commits were read again (docs/checkpoints.md). Used when no
 * checkpoint is near enough to replay from; nothing to verify it against.
 */
async function mapByScan(v0: VolumeRecord): Promise<BuiltMap> {
  if (v0.foldedSeq !== undefined) return mapByFoldedScan(v0);
  const { volumeId } = v0;
  const map = new Map<number, StoredPage>();
  for await (const p of pageMap().listStoredPages(volumeId)) map.set(p.page, p);
  let known = v0;
  const touched = new Set<number>();
  for (let settleRounds = 0; ; settleRounds++) {
    const now = mustStayActive(v0, await pageMap().getVolume(volumeId));
    if (now.headSeq === known.headSeq) {
      return scanSettled(known, map, settleRounds);
    }
    if (settleRounds >= SETTLE_ROUNDS_MAX) throw scanKeptMoving(volumeId);
    const descs = await committedDescriptors(
      volumeId,
      { seq: known.headSeq, segmentId: known.headSegmentId },
      { seq: now.headSeq, segmentId: now.headSegmentId },
    );
    for (const d of descs) for (const p of touchedPages(d, v0.pageBlocks)) touched.add(p);
    await readPagesAgain(volumeId, map, touched);
    known = now;
  }
}

/**
 * mapByScan for a folding volume (docs/page-map.md, "Folding"): the page items hold the map at
 * the folded point, page by page at different points while a fold runs. So the tail is folded
 * here first, and the scan settles at a head that neither moved nor had a tail while the pages
 * changed since the previous round (by commits after its folded point) were read again.
 */
async function mapByFoldedScan(v0: VolumeRecord): Promise<BuiltMap> {
  const { volumeId } = v0;
  await foldVolume(volumeId);
  let known = mustStayActive(v0, await pageMap().getVolume(volumeId));
  const map = new Map<number, StoredPage>();
  for await (const p of pageMap().listStoredPages(volumeId)) map.set(p.page, p);
  for (let settleRounds = 0; ; settleRounds++) {
    await foldVolume(volumeId);
    const now = mustStayActive(v0, await pageMap().getVolume(volumeId));
    if (now.headSeq === known.headSeq && known.foldedSeq === known.headSeq) {
      return scanSettled(known, new Map([...map].map(([page, p]) => [page, { page, version: p.version, segs: p.segs, ext: p.ext }])), settleRounds);
    }
    if (settleRounds >= SETTLE_ROUNDS_MAX) throw scanKeptMoving(volumeId);
    // Pages a fold or commit may have changed since `known`: those of the segments after its folded point.
    const descs = await committedDescriptors(
      volumeId,
      { seq: known.foldedSeq ?? known.headSeq, segmentId: known.foldedSegmentId ?? known.headSegmentId },
      { seq: now.headSeq, segmentId: now.headSegmentId },
    );
    await readPagesAgain(volumeId, map, new Set(descs.flatMap((d) => touchedPages(d, v0.pageBlocks))));
    known = now;
  }
}

/**
 * Takes a checkpoint of a volume's page map, unless the latest checkpoint already covers
 * `requestedAtSeq` (default: the head). The map is the previous checkpoint plus the segments
 * committed since (exact whatever the write load), checked page by page against the live
 * items; without a checkpoint within `replaySegmentsMax` commits it is a settled scan.
 * Idempotent: duplicates and late requests return `up-to-date`, and concurrent jobs leave the
 * newest checkpoint recorded.
 *
 * @example
 * const out = await takeCheckpoint('vol-0123456789abcdef');
 * if (out.done === 'written') console.log(out.checkpoint.seq, out.checkpoint.payloadBytes);
 */
export async function takeCheckpoint(volumeId: string, opts: { requestedAtSeq?: number; replaySegmentsMax?: number } = {}): Promise<CheckpointOutcome> {
  const started = performance.now();
  const v0 = await pageMap().getVolume(volumeId);
  if (!v0) throw new NotFoundError(`volume ${volumeId} does not exist`);
  if (v0.state !== 'active') return { done: 'skipped', volumeId, reason: `volume ${volumeId} is ${v0.state}` };
  const target = opts.requestedAtSeq ?? v0.headSeq;
  if (v0.headSeq === 0 || (v0.checkpoint && v0.checkpoint.seq >= target)) {
    return { done: 'up-to-date', volumeId, checkpoint: v0.checkpoint ? pointerView(v0.checkpoint) : null };
  }

  // 1. The map at a known head (docs/checkpoints.md).
  const clock = phaseClock<CheckpointPhase>();
  const unreadable: RebuildReport['unreadableCheckpoints'] = [];
  const base = await findBase(v0, unreadable, opts.replaySegmentsMax ?? CHECKPOINT_REPLAY_SEGMENTS_MAX);
  for (const u of unreadable) console.warn(`checkpoint of ${volumeId}: ${u.checkpointId} is unreadable (${u.reason})`);
  clock.lap('base');
  const built = base ? await mapByReplay(v0, base, clock) : await mapByScan(v0);
  clock.lap(base ? 'verify' : 'build');

  // 2. Write the object set, then record it if it is newer than the recorded one.
  const { seq, headSegmentId, map, frozen, ...provenance } = built;
  const payload = encodeCheckpointPayload(map.values(), frozen.values());
  const checkpointId = newCheckpointId(seq);
  const k = v0.dataChunks;
  const m = v0.parityChunks;
  const { chunkSizeBytes, shards, crcs } = await encodeStripes(k, m, CHECKPOINT_ALIGN_BYTES, payload);
  const descriptor: CheckpointDescriptor = {
    v: 1,
    kind: 'checkpoint',
    volumeId,
    checkpointId,
    seq,
    headSegmentId,
    k,
    m,
    chunkSizeBytes,
    granuleBytes: GRANULE_BYTES,
    payloadBytes: payload.length,
    payloadCrc: crc32c(payload),
    pages: map.size,
    method: built.method,
    verified: built.verified,
    crcs,
    createdAt: new Date().toISOString(),
  };
  const chunks = shards.map((shard, chunkIndex) => Buffer.concat([shard, encodeTrailer({ ...descriptor, chunkIndex }, CHECKPOINT_FOOTER_MAGIC)]));
  const buckets = config().sledBuckets;
  const locations = placeChunks(volumeId, checkpointId, k + m, buckets);
  await uploadChunksAt(
    locations,
    chunks,
    chunks.map((c) => crc32c(c)),
    chunkSizeBytes,
  );
  const pointer: CheckpointPointer = {
    id: checkpointId,
    seq,
    crc: descriptor.payloadCrc,
    bytes: payload.length,
    pages: map.size,
    placement: formatPlacement(locations, buckets),
  };
  clock.lap('write');
  const recorded = await pageMap().recordCheckpoint(volumeId, pointer);
  if (!recorded.recorded) {
    await deleteChunksQuietly(locations);
    const latest = recorded.current?.checkpoint;
    return { done: 'superseded', volumeId, checkpoint: latest ? pointerView(latest) : null };
  }

  // 3. Retention. A failure here leaves extra checkpoints, which the next pass removes.
  let removedCheckpoints = 0;
  try {
    removedCheckpoints = await applyRetention(recorded.current ?? v0, pointer);
  } catch (err) {
    console.error(`retention after checkpoint ${volumeId}/${checkpointId} failed; the next checkpoint retries it:`, err);
  }
  clock.lap('record');
  return {
    done: 'written',
    volumeId,
    checkpoint: pointerView(pointer),
    ...provenance,
    removedCheckpoints,
    elapsedMs: Math.round(performance.now() - started),
    phasesMs: clock.laps,
  };
}

/** Keeps the newest CHECKPOINT_RETAIN checkpoints, raises the floor, deletes the rest. */
async function applyRetention(volume: VolumeRecord, latest: CheckpointPointer): Promise<number> {
  const sets = await listCheckpointSets(volume.volumeId);
  const listed = [...sets.values()].map((s) => s.set);
  // "Now" on S3's clock: the newest chunk listed, at the latest the one just written. A local
  // clock that runs ahead could otherwise delete a set whose job is still recording it.
  const nowMs = Math.max(0, ...listed.map((s) => s.lastModifiedMs));
  const plan = planRetention(listed, latest, { retain: CHECKPOINT_RETAIN, k: volume.dataChunks, nowMs, graceMs: CHECKPOINT_GRACE_MS });
  // The floor first: GC then keeps no more than the kept checkpoints need; a crash before the
  // deletes below only leaves extra checkpoints for the next pass.
  await pageMap().raiseCheckpointFloor(volume.volumeId, plan.floorSeq);
  const doomed = plan.remove.flatMap((id) => [...(sets.get(id)?.chunks.values() ?? [])]);
  await forEachLimited(doomed, IO_CONCURRENCY, (c) => chunkStore().deleteChunk({ bucket: c.bucket, key: c.key }));
  return plan.remove.length;
}

/** One retained checkpoint as `GET /volumes/{id}/checkpoints` lists it. */
export interface CheckpointListing {
  checkpointId: string;
  seq: number;
  latest: boolean;
  chunksFound: number;
  readable: boolean;
  pages?: number;
  payloadBytes?: number;
  method?: 'replay' | 'scan';
  verified?: boolean;
  createdAt?: string;
}

/** The checkpoints of a volume found on the sleds, newest first, with the recorded pointer and floor. */
export async function listCheckpoints(
  volumeId: string,
): Promise<{ volumeId: string; latest: CheckpointView | null; floorSeq: number | null; checkpoints: CheckpointListing[] }> {
  const v = await pageMap().getVolume(volumeId);
  if (!v) throw new NotFoundError(`volume ${volumeId} does not exist`);
  const sets = [...(await listCheckpointSets(volumeId)).values()].sort((a, b) => b.set.seq - a.set.seq || a.set.id.localeCompare(b.set.id));
  const k = v.dataChunks;
  const checkpoints = await Promise.all(
    sets.map(async ({ set, chunks }): Promise<CheckpointListing> => {
      const entry: CheckpointListing = {
        checkpointId: set.id,
        seq: set.seq,
        latest: set.id === v.checkpoint?.id,
        chunksFound: set.chunks,
        readable: set.chunks >= k,
      };
      for (const c of chunks.values()) {
        try {
          const tail = await readTrailerBytes(c);
          if (!tail) continue;
          const d = decodeTrailer<CheckpointDescriptor>(tail, CHECKPOINT_FOOTER_MAGIC);
          return { ...entry, pages: d.pages, payloadBytes: d.payloadBytes, method: d.method, verified: d.verified, createdAt: d.createdAt };
        } catch {
          // Try the next chunk's trailer.
        }
      }
      return entry;
    }),
  );
  return { volumeId, latest: v.checkpoint ? pointerView(v.checkpoint) : null, floorSeq: v.checkpointFloorSeq ?? null, checkpoints };
}

/**
 * One step of the scheduled sweep: scans up to `volumesPerStep` volumes after `startAfter`, queues a
 * checkpoint for each active volume with commits after its latest checkpoint (unless its
 * automatic checkpoints are off), and queues the next step if the scan is not done.
 */
export async function sweepCheckpoints(
  startAfter?: string,
  volumesPerStep = SWEEP_VOLUMES_PER_MESSAGE,
): Promise<{ scanned: number; queued: number; next?: string }> {
  const page = await pageMap().listVolumes(volumesPerStep, startAfter);
  const due = page.volumes.filter(
    (v) => v.state === 'active' && (v.checkpointEveryCommits ?? DEFAULT_CHECKPOINT_EVERY_COMMITS) > 0 && v.headSeq > (v.checkpoint?.seq ?? 0),
  );
  await sendCheckpointMessages(due.map((v) => ({ type: 'checkpoint-volume', volumeId: v.volumeId, requestedAtSeq: v.headSeq })));
  if (page.next) await sendCheckpointMessage({ type: 'checkpoint-sweep', startAfter: page.next });
  return page.next ? { scanned: page.volumes.length, queued: due.length, next: page.next } : { scanned: page.volumes.length, queued: due.length };
}

/** Parses the optional `{ "mode": "run" | "queue" }` body of the checkpoint and rebuild routes. */
export function parseMode(body: Record<string, unknown>): 'run' | 'queue' {
  const extra = Object.keys(body).filter((k) => k !== 'mode');
  if (extra.length > 0) throw new InvalidInputError(`unknown field ${JSON.stringify(extra[0])}; the body takes only "mode"`);
  if (body.mode === undefined || body.mode === 'run') return 'run';
  if (body.mode === 'queue') return 'queue';
  throw new InvalidInputError(`mode must be "run" or "queue", got ${JSON.stringify(body.mode)}`);
}
