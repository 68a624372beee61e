/**
 * The page map's records as DynamoDB items: the one place that knows their attribute names and
 * encodings (docs/page-map.md, "What is stored where").
 */
import { type AttributeValue, ConditionalCheckFailedException } from '@aws-sdk/client-dynamodb';
import type { ReservationState, ReservationType } from '../../control/reservations.ts';
import type {
  CheckpointPointer,
  FlattenProgress,
  HeadDesignation,
  PageRecord,
  ParentRef,
  SegmentRecord,
  StoredFrozen,
  StoredPage,
  VolumeRecord,
  VolumeState,
} from '../../core/records.ts';
import { invariant } from '../../core/errors.ts';
import { decodePage, type EncodedPage, encodePage, type Extent } from '../../data/extents.ts';
import { packPage, unpackPage } from './page-bytes.ts';
import { unzigzag, VarintReader, VarintWriter, zigzag } from './varint.ts';
import { formatLocation, parseLocation, type ChunkLocation } from '../../data/sleds.ts';

export const S = (s: string): AttributeValue => ({ S: s });

export const N = (n: number): AttributeValue => ({ N: String(n) });

export const num = (a: AttributeValue | undefined): number => Number(a?.N ?? NaN);

export const str = (a: AttributeValue | undefined): string => a?.S ?? '';

export function headsToAttribute(h: HeadDesignation): AttributeValue {
  return {
    M: {
      primary: S(h.primary),
      reserves: { L: h.reserves.map(S) },
      leaseExpiresAtMs: N(h.leaseExpiresAtMs),
      leaseDurationMs: N(h.leaseDurationMs),
    },
  };
}

export function attributeToHeads(a: AttributeValue | undefined): HeadDesignation | undefined {
  const m = a?.M;
  if (!m) return undefined;
  return {
    primary: str(m.primary),
    reserves: (m.reserves?.L ?? []).map(str),
    leaseExpiresAtMs: num(m.leaseExpiresAtMs),
    leaseDurationMs: num(m.leaseDurationMs),
  };
}

export function volumeToItem(v: VolumeRecord): Record<string, AttributeValue> {
  const item: Record<string, AttributeValue> = {
    volumeId: S(v.volumeId),
    sizeBytes: N(v.sizeBytes),
    blockSizeBytes: N(v.blockSizeBytes),
    dataChunks: N(v.dataChunks),
    parityChunks: N(v.parityChunks),
    pageBlocks: N(v.pageBlocks),
    state: S(v.state),
    headSeq: N(v.headSeq),
    headSegmentId: S(v.headSegmentId),
    ...reservationAttributes(v.reservations),
    createdAt: S(v.createdAt),
    updatedAt: S(v.updatedAt),
  };
  if (v.name !== undefined) item.name = S(v.name);
  if (v.owner !== undefined) item.owner = S(v.owner);
  if (v.heads) item.heads = headsToAttribute(v.heads);
  if (v.checkpointEveryCommits !== undefined) item.checkpointEveryCommits = N(v.checkpointEveryCommits);
  if (v.snapSeq !== undefined) item.snapSeq = N(v.snapSeq);
  if (v.foldedSeq !== undefined) {
    item.foldedSeq = N(v.foldedSeq);
    item.foldedSegmentId = S(v.foldedSegmentId ?? '');
    if (v.foldTailMax !== undefined) item.foldTailMax = N(v.foldTailMax);
  }
  if (v.parent) item.parent = parentToAttribute(v.parent);
  return item;
}

export function reservationAttributes(r: ReservationState): Record<string, AttributeValue> {
  const attrs: Record<string, AttributeValue> = {
    resGen: N(r.generation),
    registrants: { M: Object.fromEntries(Object.entries(r.registrants).map(([k, g]) => [k, N(g)])) },
  };
  if (r.reservation) {
    attrs.resHolder = S(r.reservation.holder);
    attrs.resType = S(r.reservation.type);
  }
  return attrs;
}

export function itemToReservations(item: Record<string, AttributeValue>): ReservationState {
  const registrants: Record<string, number> = {};
  for (const [k, g] of Object.entries(item.registrants?.M ?? {})) registrants[k] = num(g);
  const holder = item.resHolder?.S;
  const type = item.resType?.S as ReservationType | undefined;
  return { generation: num(item.resGen ?? N(0)), registrants, reservation: holder && type ? { holder, type } : null };
}

export function itemToVolume(item: Record<string, AttributeValue>): VolumeRecord {
  const v: VolumeRecord = {
    volumeId: str(item.volumeId),
    sizeBytes: num(item.sizeBytes),
    blockSizeBytes: num(item.blockSizeBytes),
    dataChunks: num(item.dataChunks),
    parityChunks: num(item.parityChunks),
    pageBlocks: num(item.pageBlocks),
    state: str(item.state) as VolumeState,
    headSeq: num(item.headSeq),
    headSegmentId: str(item.headSegmentId),
    reservations: itemToReservations(item),
    createdAt: str(item.createdAt),
    updatedAt: str(item.updatedAt),
  };
  if (item.name?.S !== undefined) v.name = item.name.S;
  if (item.owner?.S !== undefined) v.owner = item.owner.S;
  const heads = attributeToHeads(item.heads);
  if (heads) v.heads = heads;
  readCheckpointFields(item, v);
  if (item.snapSeq?.N !== undefined) v.snapSeq = num(item.snapSeq);
  if (item.foldedSeq?.N !== undefined) {
    v.foldedSeq = num(item.foldedSeq);
    v.foldedSegmentId = str(item.foldedSegmentId);
    if (item.foldTailMax?.N !== undefined) v.foldTailMax = num(item.foldTailMax);
  }
  const parent = attributeToParent(item.parent);
  if (parent) v.parent = parent;
  if (item.snapPurge?.S !== undefined) v.snapPurge = item.snapPurge.S;
  if (item.groupId?.S !== undefined) v.groupId = item.groupId.S;
  const barrier = item.barrier?.M;
  if (barrier) v.barrier = { id: str(barrier.id), expiresAtMs: num(barrier.expiresAtMs) };
  const intent = item.writeIntent?.M;
  if (intent) v.writeIntent = { epoch: num(intent.epoch), open: intent.open?.BOOL === true };
  const leases = item.readLeases?.M;
  if (leases) {
    v.readLeases = {};
    for (const [k, l] of Object.entries(leases)) v.readLeases[k] = { expiresAtMs: num(l.M?.expiresAtMs), ackedEpoch: num(l.M?.ackedEpoch) };
  }
  if (item.leaseRev?.N !== undefined) v.leaseRev = num(item.leaseRev);
  const f = item.flatten?.M;
  if (f) {
    v.flatten = { pagesDone: num(f.pagesDone), pages: num(f.pages), bytesCopied: num(f.bytesCopied), startedAt: str(f.startedAt), updatedAt: str(f.updatedAt) };
  }
  return v;
}

export function flattenToAttribute(f: FlattenProgress): AttributeValue {
  return { M: { pagesDone: N(f.pagesDone), pages: N(f.pages), bytesCopied: N(f.bytesCopied), startedAt: S(f.startedAt), updatedAt: S(f.updatedAt) } };
}

export function parentToAttribute(p: ParentRef): AttributeValue {
  return { M: { volumeId: S(p.volumeId), snapshotId: S(p.snapshotId), seq: N(p.seq) } };
}

export function attributeToParent(a: AttributeValue | undefined): ParentRef | undefined {
  const m = a?.M;
  return m ? { volumeId: str(m.volumeId), snapshotId: str(m.snapshotId), seq: num(m.seq) } : undefined;
}

export function readCheckpointFields(item: Record<string, AttributeValue>, v: VolumeRecord): void {
  if (item.checkpointEveryCommits?.N !== undefined) v.checkpointEveryCommits = num(item.checkpointEveryCommits);
  const c = item.checkpoint?.M;
  if (c) v.checkpoint = attributeToCheckpoint(c);
  if (item.checkpointFloorSeq?.N !== undefined) v.checkpointFloorSeq = num(item.checkpointFloorSeq);
  if (item.rebuilds?.N !== undefined) v.rebuilds = num(item.rebuilds);
  if (item.rebuildToken?.S !== undefined) v.rebuildToken = item.rebuildToken.S;
}

export function packCrcs(crcs: readonly number[]): Uint8Array {
  const out = Buffer.alloc(crcs.length * 4);
  crcs.forEach((c, i) => out.writeUInt32BE(c >>> 0, i * 4));
  return out;
}

export function unpackCrcs(bytes: Uint8Array): number[] {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: number[] = [];
  for (let o = 0; o < b.length; o += 4) out.push(b.readUInt32BE(o));
  return out;
}

export function segmentToItem(s: SegmentRecord): Record<string, AttributeValue> {
  return {
    volumeId: S(s.volumeId),
    segmentId: S(s.segmentId),
    seq: N(s.seq),
    prev: S(s.prev),
    k: N(s.k),
    m: N(s.m),
    chunkSizeBytes: N(s.chunkSizeBytes),
    granuleBytes: N(s.granuleBytes),
    blockSizeBytes: N(s.blockSizeBytes),
    payloadBytes: N(s.payloadBytes),
    locations: locationsToAttribute(s.locations),
    crcs: { L: s.crcs.map((c) => ({ B: packCrcs(c) })) },
    createdAt: S(s.createdAt),
    ...(s.extents ? { ext: { B: packSegmentExtents(s.extents) } } : {}),
  };
}

/**
 * A segment record's `ext` (docs/page-map.md, "Folding"): a format byte (1), then per extent,
 * in order, LEB128 varints: the zigzag distance of its first block from where the extent before
 * it ended, its block count times two plus one for a run of zeros, and for data the zigzag
 * distance of its offset in the segment from where the data before it ended. A 4 KiB write
 * scattered over a volume takes about 4 bytes where fixed fields took 14; no extent takes more
 * than SEGMENT_EXTENT_BYTES_MAX.
 */
const SEGMENT_EXTENTS_FORMAT = 1;
/** The most bytes one extent takes in `ext`: first block (u48) 8, count (u32) 5, offset (i32) 5. */
export const SEGMENT_EXTENT_BYTES_MAX = 18;

/** Packs a segment's extents for its record. */
export function packSegmentExtents(extents: ReadonlyArray<readonly [number, number, number]>): Uint8Array {
  const w = new VarintWriter(1 + extents.length * SEGMENT_EXTENT_BYTES_MAX);
  w.byte(SEGMENT_EXTENTS_FORMAT);
  let end = 0;
  let dataEnd = 0;
  for (const [first, count, offset] of extents) {
    w.varint(zigzag(first - end));
    w.varint(count * 2 + (offset < 0 ? 1 : 0));
    if (offset >= 0) {
      w.varint(zigzag(offset - dataEnd));
      dataEnd = offset + count;
    }
    end = first + count;
  }
  return w.done();
}

export function unpackSegmentExtents(bytes: Uint8Array): Array<[number, number, number]> {
  invariant(bytes[0] === SEGMENT_EXTENTS_FORMAT, () => `segment extents in format ${bytes[0]}`);
  const r = new VarintReader(bytes, 'segment extents', 1);
  const out: Array<[number, number, number]> = [];
  let end = 0;
  let dataEnd = 0;
  while (!r.atEnd()) {
    const first = end + unzigzag(r.varint());
    const c = r.varint();
    const count = Math.floor(c / 2);
    let offset = -1;
    if (c % 2 === 0) {
      offset = dataEnd + unzigzag(r.varint());
      dataEnd = offset + count;
    }
    out.push([first, count, offset]);
    end = first + count;
  }
  return out;
}

/**
 * A segment tombstone: an item in the Segments table under a segment id that was never
 * committed, written so that it never can be (the commit puts the record with
 * `attribute_not_exists(segmentId)`; docs/page-map.md, "Settling an outcome"). Readers of
 * segment records never see tombstones.
 */
export function isTombstone(item: Record<string, AttributeValue>): boolean {
  return item.tombstone?.BOOL === true;
}

export function itemToSegment(item: Record<string, AttributeValue>): SegmentRecord {
  invariant(!isTombstone(item), () => `segment ${str(item.segmentId)} is a tombstone, not a record`);
  return {
    volumeId: str(item.volumeId),
    segmentId: str(item.segmentId),
    seq: num(item.seq),
    prev: str(item.prev),
    k: num(item.k),
    m: num(item.m),
    chunkSizeBytes: num(item.chunkSizeBytes),
    granuleBytes: num(item.granuleBytes),
    blockSizeBytes: num(item.blockSizeBytes),
    payloadBytes: num(item.payloadBytes),
    locations: (item.locations?.L ?? []).map((a) => parseLocation(str(a))),
    crcs: (item.crcs?.L ?? []).map((a) => unpackCrcs(a.B ?? new Uint8Array())),
    createdAt: str(item.createdAt),
    ...(item.ext?.B ? { extents: unpackSegmentExtents(item.ext.B) } : {}),
  };
}

/**
 * A page or frozen page item's contents as written: packed in `pg` (page-bytes.ts), which a
 * page of scattered 4 KiB writes fits in about a third of the bytes of the old `segs` and `ext`.
 */
export function contentsToAttributes(volumeId: string, enc: EncodedPage): Record<string, AttributeValue> {
  return { pg: { B: packPage(volumeId, enc) } };
}

/** A page or frozen page item's contents in stored form, from `pg` or, on an item written before it, `segs` and `ext`. */
export function contentsOf(volumeId: string, item: Record<string, AttributeValue>): EncodedPage {
  if (item.pg?.B) return unpackPage(volumeId, item.pg.B);
  return { segs: (item.segs?.L ?? []).map(str), ext: item.ext?.B ?? new Uint8Array() };
}

export function pageToItem(
  volumeId: string,
  page: number,
  version: number,
  extents: Extent[],
  pageBlocks: number,
  frozenTag?: number,
  foldedTo?: number,
): Record<string, AttributeValue> {
  const enc = encodePage(extents, page, pageBlocks);
  return {
    volumeId: S(volumeId),
    page: N(page),
    version: N(version),
    ...contentsToAttributes(volumeId, enc),
    ...(frozenTag === undefined ? {} : { ft: N(frozenTag) }),
    ...(foldedTo === undefined ? {} : { foldedTo: N(foldedTo) }),
  };
}

export function itemToPage(item: Record<string, AttributeValue>, pageBlocks: number): PageRecord {
  const page = num(item.page);
  const rec: PageRecord = { page, version: num(item.version), extents: decodePage(contentsOf(str(item.volumeId), item), page, pageBlocks) };
  if (item.ft?.N !== undefined) rec.frozenTag = num(item.ft);
  if (item.foldedTo?.N !== undefined) rec.foldedTo = num(item.foldedTo);
  return rec;
}

export function itemToStoredPage(item: Record<string, AttributeValue>): StoredPage {
  const p: StoredPage = { page: num(item.page), version: num(item.version), ...contentsOf(str(item.volumeId), item) };
  if (item.foldedTo?.N !== undefined) p.foldedTo = num(item.foldedTo);
  return p;
}

export function storedPageToItem(volumeId: string, p: StoredPage): Record<string, AttributeValue> {
  return {
    volumeId: S(volumeId),
    page: N(p.page),
    version: N(p.version),
    ...contentsToAttributes(volumeId, p),
    ...(p.foldedTo === undefined ? {} : { foldedTo: N(p.foldedTo) }),
  };
}

export function pageKey(volumeId: string, page: number): Record<string, AttributeValue> {
  return { volumeId: S(volumeId), page: N(page) };
}

export function segmentKey(volumeId: string, segmentId: string): Record<string, AttributeValue> {
  return { volumeId: S(volumeId), segmentId: S(segmentId) };
}

export function conditionFailed(err: unknown): err is ConditionalCheckFailedException {
  return err instanceof ConditionalCheckFailedException || (err as { name?: string })?.name === 'ConditionalCheckFailedException';
}

/** The `locations` attribute of a segment record: one `<bucket>/<key>` string per chunk. */
export function locationsToAttribute(locations: readonly ChunkLocation[]): AttributeValue {
  return { L: locations.map((l) => S(formatLocation(l))) };
}

/** The `checkpoint` attribute of a volume item: the latest checkpoint's pointer. */
export function checkpointToAttribute(p: CheckpointPointer): AttributeValue {
  return { M: { id: S(p.id), seq: N(p.seq), crc: N(p.crc), bytes: N(p.bytes), pages: N(p.pages), placement: S(p.placement) } };
}

export function attributeToCheckpoint(c: Record<string, AttributeValue>): CheckpointPointer {
  return { id: str(c.id), seq: num(c.seq), crc: num(c.crc), bytes: num(c.bytes), pages: num(c.pages), placement: str(c.placement) };
}

// ---------------------------------------------------------------------------------------
// Frozen pages (docs/snapshots.md)

/** Pages of a volume are below this (2^26 pages at most); a frozen page's key is `tag × PAGE_SPAN + page`. */
export const PAGE_SPAN = 100_000_000n;

export function frozenPartition(volumeId: string): string {
  return `${volumeId}#frozen`;
}

/** The sort key of frozen page `(tag, page)`, as DynamoDB's decimal string (never a JS number: it passes 2^53). */
export function frozenSortKey(tag: number, page: number): string {
  invariant(
    Number.isSafeInteger(tag) && tag >= 0 && Number.isSafeInteger(page) && page >= 0 && BigInt(page) < PAGE_SPAN,
    () => `bad frozen key ${tag}/${page}`,
  );
  return (BigInt(tag) * PAGE_SPAN + BigInt(page)).toString();
}

export function frozenKey(volumeId: string, tag: number, page: number): Record<string, AttributeValue> {
  return { volumeId: S(frozenPartition(volumeId)), page: { N: frozenSortKey(tag, page) } };
}

/** The item of a frozen page in stored form. */
export function storedFrozenToItem(volumeId: string, f: StoredFrozen): Record<string, AttributeValue> {
  return { ...frozenKey(volumeId, f.tag, f.page), tag: N(f.tag), p: N(f.page), version: N(f.version), ...contentsToAttributes(volumeId, f) };
}
