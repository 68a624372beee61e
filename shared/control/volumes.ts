/**
 * Volumes: create, describe, list, grow, delete and reclaim. The data path (write, batch, read,
 * trim) is in shared/data/write.ts and shared/data/read.ts.
 */
import { randomBytes } from 'node:crypto';
import { DEFAULT_CHECKPOINT_EVERY_COMMITS } from '../maintenance/checkpoint-messages.ts';
import { config } from '../core/config.ts';
import { pageLimit, pageStart } from '../core/paging.ts';
import { ConflictError, InvalidInputError, NotFoundError, UnavailableError, invariant } from '../core/errors.ts';
import { segmentRef, type VolumeRecord } from '../core/records.ts';
import { EMPTY_RESERVATIONS } from './reservations.ts';
import {
  DEFAULT_BLOCK_SIZE_BYTES,
  DEFAULT_DATA_CHUNKS,
  DEFAULT_PARITY_CHUNKS,
  MAX_VOLUME_BYTES,
  PAGE_BLOCKS,
  checkAligned,
  integerField,
  requireActive,
} from '../data/volume-rules.ts';
import { forEachLimited } from '../core/async.ts';
import { forgetSegment } from '../data/read.ts';
import { MAX_CLONE_DEPTH, checkSnapshotIdField, requireSnapshot } from '../data/views.ts';
import { chunkStore, workQueue } from '../ports.ts';
import type { ReclaimVolumeMessage } from '../core/work-messages.ts';
import { pageMap } from '../ports.ts';

/** What the API shows of a volume. */
export interface VolumeView {
  volumeId: string;
  name?: string;
  /** The principal that created it (docs/security.md). */
  owner?: string;
  sizeBytes: number;
  blockSizeBytes: number;
  dataChunks: number;
  parityChunks: number;
  pageBlocks: number;
  state: string;
  commitSeq: number;
  createdAt: string;
  updatedAt: string;
  checkpointEveryCommits: number;
  /** The seq of the latest checkpoint, or null before the first. */
  checkpointSeq: number | null;
  /** For a folding volume (docs/page-map.md, "Folding"): the last seq folded into the page items. */
  foldedSeq?: number;
  /** For a folding volume: its tail bound, the most commits not yet folded. */
  foldTailMax?: number;
  /** For a clone: the snapshot it reads through to (docs/snapshots.md). */
  parent?: { volumeId: string; snapshotId: string };
  /** The consistency group it is in (docs/consistency-groups.md). */
  groupId?: string;
  /** While a clone is flattened: pages done of pages, bytes copied so far. */
  flatten?: { pagesDone: number; pages: number; bytesCopied: number; fractionDone: number; startedAt: string; updatedAt: string };
}

export function view(v: VolumeRecord): VolumeView {
  const out: VolumeView = {
    volumeId: v.volumeId,
    sizeBytes: v.sizeBytes,
    blockSizeBytes: v.blockSizeBytes,
    dataChunks: v.dataChunks,
    parityChunks: v.parityChunks,
    pageBlocks: v.pageBlocks,
    state: v.state,
    commitSeq: v.headSeq,
    createdAt: v.createdAt,
    updatedAt: v.updatedAt,
    checkpointEveryCommits: v.checkpointEveryCommits ?? DEFAULT_CHECKPOINT_EVERY_COMMITS,
    checkpointSeq: v.checkpoint?.seq ?? null,
  };
  if (v.name !== undefined) out.name = v.name;
  if (v.owner !== undefined) out.owner = v.owner;
  if (v.parent) out.parent = { volumeId: v.parent.volumeId, snapshotId: v.parent.snapshotId };
  if (v.groupId) out.groupId = v.groupId;
  if (v.foldedSeq !== undefined) out.foldedSeq = v.foldedSeq;
  if (v.foldTailMax !== undefined) out.foldTailMax = v.foldTailMax;
  if (v.flatten) out.flatten = { ...v.flatten, fractionDone: v.flatten.pages === 0 ? 1 : Math.min(1, v.flatten.pagesDone / v.flatten.pages) };
  return out;
}

export interface CreateVolumeInput {
  sizeBytes?: unknown;
  blockSizeBytes?: unknown;
  dataChunks?: unknown;
  parityChunks?: unknown;
  name?: unknown;
  checkpointEveryCommits?: unknown;
  foldTailMax?: unknown;
  sourceSnapshotId?: unknown;
}

const CREATE_FIELDS = new Set([
  'sizeBytes',
  'blockSizeBytes',
  'dataChunks',
  'parityChunks',
  'name',
  'checkpointEveryCommits',
  'foldTailMax',
  'sourceSnapshotId',
]);

/**
 * Creates a volume, owned by `owner` (a principal's canonical ARN; without one only operators
 * can reach it).
 *
 * @example
 * const v = await createVolume({ sizeBytes: 1 << 30 }); // 1 GiB, 4 KiB blocks, RS 4+2
 */
export async function createVolume(input: CreateVolumeInput, owner?: string, opts: { volumeId?: string } = {}): Promise<VolumeView> {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) throw new InvalidInputError('the body must be a JSON object');
  for (const key of Object.keys(input)) {
    if (!CREATE_FIELDS.has(key)) throw new InvalidInputError(`unknown field ${JSON.stringify(key)}; allowed: ${[...CREATE_FIELDS].join(', ')}`);
  }
  if (input.sourceSnapshotId !== undefined) return createClone(input, owner, opts.volumeId);
  const blockSizeBytes = input.blockSizeBytes === undefined ? DEFAULT_BLOCK_SIZE_BYTES : integerField(input.blockSizeBytes, 'blockSizeBytes');
  if (blockSizeBytes < 512 || blockSizeBytes > 65536 || (blockSizeBytes & (blockSizeBytes - 1)) !== 0) {
    throw new InvalidInputError(`blockSizeBytes must be a power of two from 512 to 65536, got ${blockSizeBytes}`);
  }
  if (input.sizeBytes === undefined) throw new InvalidInputError('sizeBytes is required');
  const sizeBytes = integerField(input.sizeBytes, 'sizeBytes');
  if (sizeBytes <= 0 || sizeBytes > MAX_VOLUME_BYTES)
    throw new InvalidInputError(`sizeBytes must be between 1 block and ${MAX_VOLUME_BYTES}, got ${sizeBytes}`);
  checkAligned(sizeBytes, blockSizeBytes, 'sizeBytes');
  const dataChunks = input.dataChunks === undefined ? DEFAULT_DATA_CHUNKS : integerField(input.dataChunks, 'dataChunks');
  const parityChunks = input.parityChunks === undefined ? DEFAULT_PARITY_CHUNKS : integerField(input.parityChunks, 'parityChunks');
  if (dataChunks < 1 || dataChunks > 16) throw new InvalidInputError(`dataChunks must be from 1 to 16, got ${dataChunks}`);
  if (parityChunks < 1 || parityChunks > 4) throw new InvalidInputError(`parityChunks must be from 1 to 4, got ${parityChunks}`);
  const sleds = config().sledBuckets.length;
  if (dataChunks + parityChunks > sleds) {
    throw new InvalidInputError(`dataChunks + parityChunks = ${dataChunks + parityChunks} needs that many sleds; this deployment has ${sleds}`);
  }
  // A restore (docs/backup.md) names the volume before its job creates it.
  const record = newVolumeRecord(input, owner, opts.volumeId, { sizeBytes, blockSizeBytes, dataChunks, parityChunks, pageBlocks: PAGE_BLOCKS });
  await pageMap().putNewVolume(record);
  return view(record);
}

/**
 * The record of a volume about to be created: `geometry` (and a clone's `parent`), no commit
 * yet, no reservation, owned by `owner`, with the name, checkpoint interval and fold tail
 * `input` asks for (checked in that order). A new id unless `volumeId` is given.
 */
function newVolumeRecord(
  input: CreateVolumeInput,
  owner: string | undefined,
  volumeId: string | undefined,
  geometry: Pick<VolumeRecord, 'sizeBytes' | 'blockSizeBytes' | 'dataChunks' | 'parityChunks' | 'pageBlocks'>,
  parent?: VolumeRecord['parent'],
): VolumeRecord {
  const name = volumeName(input.name);
  const checkpointEveryCommits = checkpointInterval(input.checkpointEveryCommits);
  const now = new Date().toISOString();
  const record: VolumeRecord = {
    volumeId: volumeId ?? newVolumeId(),
    sizeBytes: geometry.sizeBytes,
    blockSizeBytes: geometry.blockSizeBytes,
    dataChunks: geometry.dataChunks,
    parityChunks: geometry.parityChunks,
    pageBlocks: geometry.pageBlocks,
    state: 'active',
    headSeq: 0,
    headSegmentId: '',
    reservations: EMPTY_RESERVATIONS,
    createdAt: now,
    updatedAt: now,
    checkpointEveryCommits,
    ...(parent ? { parent } : {}),
  };
  if (name !== undefined) record.name = name;
  if (owner !== undefined) record.owner = owner;
  // The commit protocol is fixed at creation (docs/page-map.md, "Folding").
  const foldTailMax = foldTailField(input.foldTailMax);
  if (foldTailMax > 0) Object.assign(record, { foldedSeq: 0, foldedSegmentId: '', foldTailMax });
  return record;
}

/** A new volume id: 16 random hex digits. */
export function newVolumeId(): string {
  return `vol-${randomBytes(8).toString('hex')}`;
}

/** Whether `id` has the form of a volume id (newVolumeId's; every volume's, restores' and clones' too). */
export const isVolumeId = (id: string): boolean => /^vol-[0-9a-f]{16}$/.test(id);

function volumeName(value: unknown): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || value.length === 0 || value.length > 128) throw new InvalidInputError('name must be a string of 1 to 128 characters');
  return value;
}

/**
 * The tail bound a new volume folds with (docs/page-map.md, "Folding"): the request's
 * `foldTailMax`, else the deployment's (config `foldTailMax`, default 256); 0 makes a volume that
 * writes its page items at every commit.
 */
function foldTailField(value: unknown): number {
  if (value === undefined) return config().foldTailMax;
  const n = integerField(value, 'foldTailMax');
  if (n < 0 || n > 1024) throw new InvalidInputError(`foldTailMax must be from 0 (do not fold) to 1024, got ${n}`);
  return n;
}

function checkpointInterval(value: unknown): number {
  const n = value === undefined ? DEFAULT_CHECKPOINT_EVERY_COMMITS : integerField(value, 'checkpointEveryCommits');
  if (n < 0 || n > 1e9) throw new InvalidInputError(`checkpointEveryCommits must be from 0 (no automatic checkpoints) to 1000000000, got ${n}`);
  return n;
}

const CLONE_FIELDS = new Set(['sourceSnapshotId', 'sizeBytes', 'name', 'checkpointEveryCommits', 'foldTailMax']);

/**
 * Creates a clone of a snapshot: a volume that reads as the snapshot until written, made in
 * constant time with nothing copied (docs/snapshots.md, "Clones").
 */
async function createClone(input: CreateVolumeInput, owner?: string, volumeId?: string): Promise<VolumeView> {
  for (const key of Object.keys(input)) {
    if (!CLONE_FIELDS.has(key)) throw new InvalidInputError(`a clone takes ${[...CLONE_FIELDS].join(', ')}; ${key} comes from the snapshot`);
  }
  const snapshotId = checkSnapshotIdField(input.sourceSnapshotId, 'sourceSnapshotId');
  const { snapshot, volume: source } = await requireSnapshot(snapshotId);
  const sizeBytes = input.sizeBytes === undefined ? snapshot.sizeBytes : integerField(input.sizeBytes, 'sizeBytes');
  if (sizeBytes < snapshot.sizeBytes)
    throw new InvalidInputError(`a clone is at least as large as its snapshot (${snapshot.sizeBytes} bytes), not ${sizeBytes}`);
  if (sizeBytes > MAX_VOLUME_BYTES) throw new InvalidInputError(`sizeBytes must be at most ${MAX_VOLUME_BYTES}`);
  checkAligned(sizeBytes, source.blockSizeBytes, 'sizeBytes');
  let depth = 0;
  for (let p = snapshot.parent; p; depth++) {
    if (depth >= MAX_CLONE_DEPTH - 1) throw new InvalidInputError(`clone chains are at most ${MAX_CLONE_DEPTH} deep; flatten an ancestor first`);
    p = (await pageMap().getSnapshot(p.volumeId, p.snapshotId))?.parent;
  }
  const geometry = {
    sizeBytes,
    blockSizeBytes: source.blockSizeBytes,
    dataChunks: source.dataChunks,
    parityChunks: source.parityChunks,
    pageBlocks: source.pageBlocks,
  };
  const record = newVolumeRecord(input, owner, volumeId, geometry, { volumeId: snapshot.volumeId, snapshotId: snapshot.snapshotId, seq: snapshot.seq });
  await pageMap().createCloneVolume(record);
  return view(record);
}

export async function describeVolume(volumeId: string): Promise<VolumeView> {
  const v = await pageMap().getVolume(volumeId);
  if (!v) throw new NotFoundError(`volume ${volumeId} does not exist`);
  return view(v);
}

/**
 * One page of the volume list; with `owner`, only that principal's volumes, read from the owner
 * index, so `next` is one of its own (docs/security.md, "Lists"). `next` is the id of the last
 * volume of the page before, so a 400 unless it is a volume id (shared/core/paging.ts); any
 * volume id is a place to start after, also one deleted since.
 */
export async function listVolumeViews(
  limitParam: string | undefined,
  nextParam: string | undefined,
  owner?: string,
): Promise<{ volumes: VolumeView[]; next?: string }> {
  const limit = pageLimit(limitParam);
  const next = pageStart(nextParam, 'volumes', isVolumeId);
  const page = await pageMap().listVolumes(limit, next, owner);
  return page.next ? { volumes: page.volumes.map(view), next: page.next } : { volumes: page.volumes.map(view) };
}

/** Grows a volume to `sizeBytes`. Shrinking is refused: it would silently drop data. */
export async function resizeVolume(volumeId: string, body: unknown): Promise<VolumeView> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new InvalidInputError('the body must be a JSON object');
  const extra = Object.keys(body).filter((k) => k !== 'sizeBytes');
  if (extra.length > 0) throw new InvalidInputError(`only sizeBytes can be changed, not ${extra.join(', ')}`);
  const sizeBytes = integerField((body as { sizeBytes?: unknown }).sizeBytes, 'sizeBytes');
  const v = requireActive(await pageMap().getVolume(volumeId), volumeId);
  if (sizeBytes > MAX_VOLUME_BYTES) throw new InvalidInputError(`sizeBytes must be at most ${MAX_VOLUME_BYTES}`);
  checkAligned(sizeBytes, v.blockSizeBytes, 'sizeBytes');
  return view(await pageMap().growVolume(volumeId, sizeBytes));
}

function deletedView(volumeId: string): VolumeView {
  const now = new Date().toISOString();
  return {
    volumeId,
    sizeBytes: 0,
    blockSizeBytes: 0,
    dataChunks: 0,
    parityChunks: 0,
    pageBlocks: 0,
    state: 'deleted',
    commitSeq: 0,
    createdAt: now,
    updatedAt: now,
    checkpointEveryCommits: 0,
    checkpointSeq: null,
  };
}

/**
 * Deletes a volume: it stops serving at once, and a background job reclaims its chunks and
 * items. Deleting a volume that is already being deleted queues the job again (harmless).
 */
export async function deleteVolume(volumeId: string): Promise<VolumeView> {
  const item = await pageMap().getVolume(volumeId);
  if (item?.groupId) throw new ConflictError(`volume ${volumeId} is in consistency group ${item.groupId}; remove it from the group first`);
  const snapshots = await pageMap().listSnapshots(volumeId);
  const ready = snapshots.filter((s) => s.state === 'ready');
  if (ready.length > 0) {
    const names = ready.slice(0, 5).map((s) => s.snapshotId);
    throw new ConflictError(`volume ${volumeId} has ${ready.length} snapshots (${names.join(', ')}${ready.length > 5 ? ', ...' : ''}); delete them first`);
  }
  if (snapshots.length > 0)
    throw new UnavailableError(`deleted snapshots of volume ${volumeId} are still being purged; retry shortly`, { retryAfterSeconds: 2 });
  if ((await pageMap().markDeleting(volumeId)) === 'has-snapshots') {
    // A snapshot was taken after the check above, or the purge of the last one is still
    // finishing (it drops the tag last); a purge also drops a tag left without records.
    const now = await pageMap().listSnapshots(volumeId);
    if (now.some((s) => s.state === 'ready')) throw new ConflictError(`volume ${volumeId} has a snapshot taken while it was being deleted; delete it first`);
    await workQueue().send({ type: 'snapshot-purge', volumeId });
    throw new UnavailableError(`deleted snapshots of volume ${volumeId} are still being purged; retry shortly`, { retryAfterSeconds: 2 });
  }
  const before = await pageMap().getVolume(volumeId);
  if (before?.parent) await pageMap().removeDependant(before.parent, volumeId);
  const message: ReclaimVolumeMessage = { type: 'reclaim-volume', volumeId };
  await workQueue().send(message);
  const v = await pageMap().getVolume(volumeId);
  // A reclaim that already finished leaves no item: report the volume as deleted.
  return v ? view(v) : { ...deletedView(volumeId) };
}

/**
 * Reclaims a deleted volume: every segment record, then every chunk on every sled (committed,
 * orphaned or stray), every page item, then the volume item. Idempotent: a repeat finds less
 * to do.
 *
 * Records go first: an evacuation move in flight commits its new location with a condition
 * that the record exists, so once the records are gone no move can leave a copy behind; a move
 * that committed before put its copy on a sled before the listing below began.
 */
export async function reclaimVolume(volumeId: string): Promise<{ chunksDeleted: number; pagesDeleted: number; segmentsDeleted: number }> {
  const v = await pageMap().getVolume(volumeId);
  if (!v) return { chunksDeleted: 0, pagesDeleted: 0, segmentsDeleted: 0 };
  invariant(v.state === 'deleting', `refusing to reclaim volume ${volumeId} in state ${v.state}`);
  const segmentIds: string[] = [];
  for await (const s of pageMap().listSegmentRecords(volumeId)) {
    segmentIds.push(s.segmentId);
    forgetSegment(segmentRef(volumeId, s.segmentId));
  }
  for await (const t of pageMap().listSegmentTombstones(volumeId)) segmentIds.push(t.segmentId);
  await pageMap().deleteSegmentRecords(volumeId, segmentIds);
  const chunksDeleted = await forEachLimited(chunkStore().listVolumeChunks(volumeId, config().sledBuckets), 16, chunkStore().deleteChunk);
  const pages: number[] = [];
  for await (const p of pageMap().listPages(v)) pages.push(p.page);
  await pageMap().deletePages(volumeId, pages);
  // Frozen pages a stray writer may have left under a purged tag (docs/snapshots.md).
  for await (const f of pageMap().listFrozenPages(volumeId, v.pageBlocks, 0)) await pageMap().deleteFrozenPage(volumeId, f.tag, f.page);
  if (v.parent) await pageMap().removeDependant(v.parent, volumeId);
  await pageMap().deleteVolumeItem(volumeId);
  return { chunksDeleted, pagesDeleted: pages.length, segmentsDeleted: segmentIds.length };
}
