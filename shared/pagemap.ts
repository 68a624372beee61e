/**
 * The DynamoDB adapter for volumes, pages and segment records, and the commit transaction.
 * The protocol is described in docs/page-map.md; this file is its only implementation.
 */
import {
  type AttributeValue,
  BatchGetItemCommand,
  BatchWriteItemCommand,
  DeleteItemCommand,
  GetItemCommand,
  PutItemCommand,
  QueryCommand,
  ScanCommand,
  TransactWriteItemsCommand,
  TransactionCanceledException,
  UpdateItemCommand,
  ConditionalCheckFailedException,
  type TransactWriteItem,
} from '@aws-sdk/client-dynamodb';
import { dynamo } from './aws.ts';
import { config } from './config.ts';
import { decodePage, encodePage, type Extent } from './extents.ts';
import { ConflictError, NotFoundError, invariant } from './errors.ts';
import { formatLocation, parseLocation, type ChunkLocation } from './sleds.ts';
import { HOLDER_TYPES, REGISTRANT_TYPES, type ReservationState, type ReservationType } from './reservations.ts';

/** At most this many pages change in one commit (a transaction holds 100 items; see the doc). */
export const MAX_PAGES_PER_COMMIT = 96;
/**
 * Bounds one volume's Query: pages of up to 1 MB, so 100,000 pages is 100 GB of items, far
 * beyond a 64 TiB volume's 64 Mi page items of about 100 bytes.
 */
const QUERY_PAGES_MAX = 100_000;
/** Bounded retries of DynamoDB batch calls that return unprocessed keys. */
const UNPROCESSED_RETRY_MAX = 8;

/** `rebuilding`: a page-map rebuild holds the fence (docs/checkpoints.md); no commit or read is served. */
export type VolumeState = 'active' | 'deleting' | 'rebuilding';

/** The latest checkpoint of a volume, as recorded on its item (docs/checkpoints.md). */
export interface CheckpointPointer {
  id: string;
  seq: number;
  /** CRC32C of the checkpoint payload. */
  crc: number;
  bytes: number;
  pages: number;
  /** `<sled index>/<drive>` of each chunk, comma-joined. */
  placement: string;
}

export interface VolumeRecord {
  volumeId: string;
  name?: string;
  sizeBytes: number;
  blockSizeBytes: number;
  dataChunks: number;
  parityChunks: number;
  pageBlocks: number;
  state: VolumeState;
  headSeq: number;
  headSegmentId: string;
  reservations: ReservationState;
  heads?: HeadDesignation;
  createdAt: string;
  updatedAt: string;
  /** Commits between automatic checkpoints; 0 turns them off. Absent: the default. */
  checkpointEveryCommits?: number;
  checkpoint?: CheckpointPointer;
  /** The seq of the oldest retained checkpoint: GC keeps every segment after it. */
  checkpointFloorSeq?: number;
  /** How many rebuilds have fenced this volume; a checkpoint scan that spans one starts over. */
  rebuilds?: number;
  /** The token of the rebuild holding the fence while `state` is `rebuilding`. */
  rebuildToken?: string;
}

/** The volume's primary head, its reserves, and the primary's lease (docs/reservations.md). */
export interface HeadDesignation {
  primary: string;
  reserves: string[];
  leaseExpiresAtMs: number;
  leaseDurationMs: number;
}

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

function attributeToHeads(a: AttributeValue | undefined): HeadDesignation | undefined {
  const m = a?.M;
  if (!m) return undefined;
  return { primary: str(m.primary), reserves: (m.reserves?.L ?? []).map(str), leaseExpiresAtMs: num(m.leaseExpiresAtMs), leaseDurationMs: num(m.leaseDurationMs) };
}

export interface PageRecord {
  page: number;
  version: number;
  extents: Extent[];
}

export interface SegmentRecord {
  volumeId: string;
  segmentId: string;
  seq: number;
  prev: string;
  k: number;
  m: number;
  chunkSizeBytes: number;
  granuleBytes: number;
  blockSizeBytes: number;
  payloadBytes: number;
  locations: ChunkLocation[];
  /** `crcs[chunk][granule]`. */
  crcs: number[][];
  createdAt: string;
}

const S = (s: string): AttributeValue => ({ S: s });
const N = (n: number): AttributeValue => ({ N: String(n) });
const num = (a: AttributeValue | undefined): number => Number(a?.N ?? NaN);
const str = (a: AttributeValue | undefined): string => a?.S ?? '';

function volumeToItem(v: VolumeRecord): Record<string, AttributeValue> {
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
  if (v.heads) item.heads = headsToAttribute(v.heads);
  if (v.checkpointEveryCommits !== undefined) item.checkpointEveryCommits = N(v.checkpointEveryCommits);
  return item;
}

function reservationAttributes(r: ReservationState): Record<string, AttributeValue> {
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

function itemToReservations(item: Record<string, AttributeValue>): ReservationState {
  const registrants: Record<string, number> = {};
  for (const [k, g] of Object.entries(item.registrants?.M ?? {})) registrants[k] = num(g);
  const holder = item.resHolder?.S;
  const type = item.resType?.S as ReservationType | undefined;
  return { generation: num(item.resGen ?? N(0)), registrants, reservation: holder && type ? { holder, type } : null };
}

function itemToVolume(item: Record<string, AttributeValue>): VolumeRecord {
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
  const heads = attributeToHeads(item.heads);
  if (heads) v.heads = heads;
  readCheckpointFields(item, v);
  return v;
}

function packCrcs(crcs: readonly number[]): Uint8Array {
  const out = Buffer.alloc(crcs.length * 4);
  crcs.forEach((c, i) => out.writeUInt32BE(c >>> 0, i * 4));
  return out;
}

function unpackCrcs(bytes: Uint8Array): number[] {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: number[] = [];
  for (let o = 0; o < b.length; o += 4) out.push(b.readUInt32BE(o));
  return out;
}

function segmentToItem(s: SegmentRecord): Record<string, AttributeValue> {
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
    locations: { L: s.locations.map((l) => S(formatLocation(l))) },
    crcs: { L: s.crcs.map((c) => ({ B: packCrcs(c) })) },
    createdAt: S(s.createdAt),
  };
}

/**
 * A segment tombstone: an item in the Segments table under a segment id that was never
 * committed, written so that it never can be (the commit puts the record with
 * `attribute_not_exists(segmentId)`; docs/page-map.md, "Settling an outcome"). Readers of
 * segment records never see tombstones.
 */
function isTombstone(item: Record<string, AttributeValue>): boolean {
  return item.tombstone?.BOOL === true;
}

function itemToSegment(item: Record<string, AttributeValue>): SegmentRecord {
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
  };
}

function pageToItem(volumeId: string, page: number, version: number, extents: Extent[], pageBlocks: number): Record<string, AttributeValue> {
  const enc = encodePage(extents, page, pageBlocks);
  return {
    volumeId: S(volumeId),
    page: N(page),
    version: N(version),
    segs: { L: enc.segs.map(S) },
    ext: { B: enc.ext },
  };
}

function itemToPage(item: Record<string, AttributeValue>, pageBlocks: number): PageRecord {
  const page = num(item.page);
  const segs = (item.segs?.L ?? []).map(str);
  return { page, version: num(item.version), extents: decodePage({ segs, ext: item.ext?.B ?? new Uint8Array() }, page, pageBlocks) };
}

// ---------------------------------------------------------------------------------------
// Volumes

export async function getVolume(volumeId: string): Promise<VolumeRecord | null> {
  const out = await dynamo().send(
    new GetItemCommand({ TableName: config().volumesTable, Key: { volumeId: S(volumeId) }, ConsistentRead: true, ReturnConsumedCapacity: 'TOTAL' }),
  );
  return out.Item ? itemToVolume(out.Item) : null;
}

/** Like getVolume, but a missing volume is a NotFoundError. */
export async function requireVolume(volumeId: string): Promise<VolumeRecord> {
  const v = await getVolume(volumeId);
  if (!v) throw new NotFoundError(`volume ${volumeId} does not exist`);
  return v;
}

export async function putNewVolume(v: VolumeRecord): Promise<void> {
  await dynamo().send(
    new PutItemCommand({
      TableName: config().volumesTable,
      Item: volumeToItem(v),
      // A fresh random id never exists; the condition makes a collision loud instead of silent.
      ConditionExpression: 'attribute_not_exists(volumeId)',
      ReturnConsumedCapacity: 'TOTAL',
    }),
  );
}

/** One page of the volume list; `next` continues it. */
export async function listVolumes(limit: number, startAfter?: string): Promise<{ volumes: VolumeRecord[]; next?: string }> {
  const out = await dynamo().send(
    new ScanCommand({
      TableName: config().volumesTable,
      Limit: limit,
      ExclusiveStartKey: startAfter ? { volumeId: S(startAfter) } : undefined,
      ConsistentRead: true,
      ReturnConsumedCapacity: 'TOTAL',
    }),
  );
  const volumes = (out.Items ?? []).map(itemToVolume);
  const next = out.LastEvaluatedKey?.volumeId?.S;
  return next ? { volumes, next } : { volumes };
}

function conditionFailed(err: unknown): err is ConditionalCheckFailedException {
  return err instanceof ConditionalCheckFailedException || (err as { name?: string })?.name === 'ConditionalCheckFailedException';
}

/** Grows a volume. Conditions: it is active and not already larger. */
export async function growVolume(volumeId: string, sizeBytes: number): Promise<VolumeRecord> {
  try {
    const out = await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: 'SET sizeBytes = :size, updatedAt = :now',
        ConditionExpression: [
          'attribute_exists(volumeId)', // the volume exists
          '#state = :active', // and is not being deleted
          'sizeBytes <= :size', // and growing (or the same size, which is a no-op)
        ].join(' AND '),
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: { ':size': N(sizeBytes), ':active': S('active'), ':now': S(new Date().toISOString()) },
        ReturnValues: 'ALL_NEW',
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return itemToVolume(out.Attributes!);
  } catch (err) {
    if (!conditionFailed(err)) throw err;
    const old = err.Item ? itemToVolume(err.Item) : null;
    if (!old) throw new NotFoundError(`volume ${volumeId} does not exist`);
    if (old.state !== 'active') throw new ConflictError(`volume ${volumeId} is ${old.state}`);
    throw new ConflictError(`volume ${volumeId} is ${old.sizeBytes} bytes; it can grow but not shrink to ${sizeBytes}`);
  }
}

/** Marks a volume as being deleted; returns false if it was already. */
export async function markDeleting(volumeId: string): Promise<boolean> {
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: 'SET #state = :deleting, updatedAt = :now',
        ConditionExpression: 'attribute_exists(volumeId) AND #state = :active',
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: { ':deleting': S('deleting'), ':active': S('active'), ':now': S(new Date().toISOString()) },
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return true;
  } catch (err) {
    if (!conditionFailed(err)) throw err;
    if (!err.Item) throw new NotFoundError(`volume ${volumeId} does not exist`);
    if (str(err.Item.state) === 'rebuilding') throw new ConflictError(`volume ${volumeId} is being rebuilt; delete it when the rebuild is done`);
    return false;
  }
}

export async function deleteVolumeItem(volumeId: string): Promise<void> {
  await dynamo().send(new DeleteItemCommand({ TableName: config().volumesTable, Key: { volumeId: S(volumeId) }, ReturnConsumedCapacity: 'TOTAL' }));
}

/**
 * Stores a new reservation state computed from the one read at generation `expected`.
 * Returns false if someone changed the reservations since (the caller re-reads and retries).
 * `extra` sets more attributes in the same write (head designation), with its own condition.
 */
export async function storeReservations(
  volumeId: string,
  expected: number,
  next: ReservationState,
  extra?: { set: Record<string, AttributeValue>; condition?: { expression: string; names?: Record<string, string>; values: Record<string, AttributeValue> } },
): Promise<boolean> {
  const attrs = reservationAttributes(next);
  const sets = Object.entries({ ...attrs, ...(extra?.set ?? {}) }).map(([k], i) => `#a${i} = :a${i}`);
  const names: Record<string, string> = { '#state': 'state' };
  const values: Record<string, AttributeValue> = { ':expected': N(expected), ':active': S('active'), ':now': S(new Date().toISOString()) };
  Object.entries({ ...attrs, ...(extra?.set ?? {}) }).forEach(([k, v], i) => {
    names[`#a${i}`] = k;
    values[`:a${i}`] = v;
  });
  const removes = next.reservation ? [] : ['resHolder', 'resType'];
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: `SET ${sets.join(', ')}, updatedAt = :now${removes.length ? ` REMOVE ${removes.join(', ')}` : ''}`,
        ConditionExpression: [
          'attribute_exists(volumeId)', // the volume exists
          '#state = :active', // and is not being deleted
          'resGen = :expected', // and nobody changed its reservations since we read them
          ...(extra?.condition ? [extra.condition.expression] : []),
        ].join(' AND '),
        ExpressionAttributeNames: { ...names, ...(extra?.condition?.names ?? {}) },
        ExpressionAttributeValues: { ...values, ...(extra?.condition?.values ?? {}) },
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return true;
  } catch (err) {
    if (conditionFailed(err)) return false;
    throw err;
  }
}

/**
 * Sets attributes of an active volume under extra named conditions (for head leases).
 * Returns the item as it was when the condition failed, or null on success.
 */
export async function updateVolumeIf(
  volumeId: string,
  set: Record<string, AttributeValue>,
  condition: { parts: string[]; names?: Record<string, string>; values?: Record<string, AttributeValue> },
): Promise<{ ok: true } | { ok: false; current: VolumeRecord | null }> {
  const names: Record<string, string> = { '#state': 'state', ...(condition.names ?? {}) };
  const values: Record<string, AttributeValue> = { ':active': S('active'), ':now': S(new Date().toISOString()), ...(condition.values ?? {}) };
  const sets = Object.entries(set).map(([k, v], i) => {
    names[`#s${i}`] = k;
    values[`:s${i}`] = v;
    return `#s${i} = :s${i}`;
  });
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: `SET ${sets.join(', ')}, updatedAt = :now`,
        ConditionExpression: ['attribute_exists(volumeId)', '#state = :active', ...condition.parts].join(' AND '),
        ExpressionAttributeNames: names,
        ExpressionAttributeValues: values,
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return { ok: true };
  } catch (err) {
    if (!conditionFailed(err)) throw err;
    return { ok: false, current: err.Item ? itemToVolume(err.Item) : null };
  }
}

// ---------------------------------------------------------------------------------------
// Pages and segment records

async function batchGet(table: string, keys: Record<string, AttributeValue>[]): Promise<Record<string, AttributeValue>[]> {
  const items: Record<string, AttributeValue>[] = [];
  for (let i = 0; i < keys.length; i += 100) items.push(...((await batchGetTables({ [table]: keys.slice(i, i + 100) }))[table] ?? []));
  return items;
}

/** One BatchGetItem (at most 100 keys in all) over several tables, consistent reads, retrying unprocessed keys (bounded). */
async function batchGetTables(keysByTable: Record<string, Record<string, AttributeValue>[]>): Promise<Record<string, Record<string, AttributeValue>[]>> {
  const items: Record<string, Record<string, AttributeValue>[]> = {};
  let pending: Record<string, { Keys: Record<string, AttributeValue>[]; ConsistentRead: true }> = {};
  for (const [table, keys] of Object.entries(keysByTable)) if (keys.length > 0) pending[table] = { Keys: keys, ConsistentRead: true };
  for (let attempt = 0; Object.keys(pending).length > 0; attempt++) {
    invariant(attempt < UNPROCESSED_RETRY_MAX, `BatchGetItem on ${Object.keys(pending).join(', ')} still had unprocessed keys after ${UNPROCESSED_RETRY_MAX} attempts`);
    if (attempt > 0) await sleep(Math.min(1000, 20 * 2 ** attempt));
    const out: { Responses?: Record<string, Record<string, AttributeValue>[]>; UnprocessedKeys?: Record<string, { Keys?: Record<string, AttributeValue>[] }> } =
      await dynamo().send(new BatchGetItemCommand({ RequestItems: pending, ReturnConsumedCapacity: 'TOTAL' }));
    for (const [table, got] of Object.entries(out.Responses ?? {})) (items[table] ??= []).push(...got);
    const next: typeof pending = {};
    for (const [table, u] of Object.entries(out.UnprocessedKeys ?? {})) if (u.Keys && u.Keys.length > 0) next[table] = { Keys: u.Keys, ConsistentRead: true };
    pending = next;
  }
  return items;
}

/**
 * The volume item and the stored pages among `pages`, in one BatchGetItem over both tables
 * (consistent reads). The caller knows the volume's geometry (it never changes); the volume
 * item still decides existence, state and size. Missing pages are absent from the map.
 */
export async function getVolumeWithPages(
  geometry: Pick<VolumeRecord, 'volumeId' | 'pageBlocks'>,
  pages: readonly number[],
): Promise<{ volume: VolumeRecord | null; pages: Map<number, PageRecord> }> {
  invariant(pages.length <= 99, () => `${pages.length} pages do not fit one BatchGetItem with the volume`);
  const { volumesTable, pagesTable } = config();
  const got = await batchGetTables({
    [volumesTable]: [{ volumeId: S(geometry.volumeId) }],
    [pagesTable]: pages.map((p) => ({ volumeId: S(geometry.volumeId), page: N(p) })),
  });
  const [item] = got[volumesTable] ?? [];
  const volume = item ? itemToVolume(item) : null;
  const out = new Map<number, PageRecord>();
  for (const p of got[pagesTable] ?? []) {
    const rec = itemToPage(p, geometry.pageBlocks);
    out.set(rec.page, rec);
  }
  return { volume, pages: out };
}

/** The stored pages among `pages` (missing ones are absent from the map). */
export async function getPages(volume: Pick<VolumeRecord, 'volumeId' | 'pageBlocks'>, pages: readonly number[]): Promise<Map<number, PageRecord>> {
  const items = await batchGet(
    config().pagesTable,
    pages.map((p) => ({ volumeId: S(volume.volumeId), page: N(p) })),
  );
  const out = new Map<number, PageRecord>();
  for (const item of items) {
    const rec = itemToPage(item, volume.pageBlocks);
    out.set(rec.page, rec);
  }
  return out;
}

/** Segment records by reference (`<volumeId>/<segmentId>`). Immutable apart from locations. */
export async function getSegmentRecords(refs: readonly string[]): Promise<Map<string, SegmentRecord>> {
  const keys = [...new Set(refs)].map((ref) => {
    const [volumeId, segmentId] = splitSegmentRef(ref);
    return { volumeId: S(volumeId), segmentId: S(segmentId) };
  });
  const items = await batchGet(config().segmentsTable, keys);
  const out = new Map<string, SegmentRecord>();
  for (const item of items) {
    if (isTombstone(item)) continue;
    const rec = itemToSegment(item);
    out.set(segmentRef(rec.volumeId, rec.segmentId), rec);
  }
  return out;
}

export async function getSegmentRecord(volumeId: string, segmentId: string): Promise<SegmentRecord | null> {
  const out = await dynamo().send(
    new GetItemCommand({
      TableName: config().segmentsTable,
      Key: { volumeId: S(volumeId), segmentId: S(segmentId) },
      ConsistentRead: true,
      ReturnConsumedCapacity: 'TOTAL',
    }),
  );
  return out.Item && !isTombstone(out.Item) ? itemToSegment(out.Item) : null;
}

/**
 * Makes a segment that has no record uncommittable: puts a tombstone under its id, which the
 * commit's `attribute_not_exists(segmentId)` then refuses. `tombstoned` (also when an earlier
 * attempt put it) proves the segment never committed and never will; `committed` means its
 * record was there first.
 */
export async function tombstoneSegment(volumeId: string, segmentId: string, seq: number): Promise<'tombstoned' | 'committed'> {
  try {
    await dynamo().send(
      new PutItemCommand({
        TableName: config().segmentsTable,
        Item: { volumeId: S(volumeId), segmentId: S(segmentId), seq: N(seq), tombstone: { BOOL: true }, createdAt: S(new Date().toISOString()) },
        ConditionExpression: 'attribute_not_exists(segmentId)', // no record, and no tombstone: the id is free
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return 'tombstoned';
  } catch (err) {
    if (!conditionFailed(err)) throw err;
    return err.Item && isTombstone(err.Item) ? 'tombstoned' : 'committed';
  }
}

/** Every tombstone of a volume (GC deletes those the head has passed; a volume's reclaim, all). */
export async function* listSegmentTombstones(volumeId: string): AsyncGenerator<{ segmentId: string; seq: number }> {
  for await (const item of queryVolumeItems(config().segmentsTable, volumeId)) if (isTombstone(item)) yield { segmentId: str(item.segmentId), seq: num(item.seq) };
}

/**
 * Writes a segment record unless one exists (a rebuild restoring a lost record). Returns
 * whether it wrote. Never overwrites: an existing record may carry newer chunk locations.
 */
export async function putSegmentRecordIfAbsent(record: SegmentRecord): Promise<boolean> {
  try {
    await dynamo().send(
      new PutItemCommand({
        TableName: config().segmentsTable,
        Item: segmentToItem(record),
        ConditionExpression: 'attribute_not_exists(segmentId)',
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return true;
  } catch (err) {
    if (conditionFailed(err)) return false;
    throw err;
  }
}

export function segmentRef(volumeId: string, segmentId: string): string {
  return `${volumeId}/${segmentId}`;
}

export function splitSegmentRef(ref: string): [string, string] {
  const slash = ref.indexOf('/');
  invariant(slash > 0, () => `bad segment reference ${ref}`);
  return [ref.slice(0, slash), ref.slice(slash + 1)];
}

/**
 * The items of one volume in a table, in sort-key order, a page of queries at a time
 * (consistent reads). `sortKeyRange` narrows the sort key to `BETWEEN from AND to`.
 */
async function* queryVolumeItems(table: string, volumeId: string, sortKeyRange?: { name: string; from: AttributeValue; to: AttributeValue }): AsyncGenerator<Record<string, AttributeValue>> {
  let start: Record<string, AttributeValue> | undefined;
  for (let page = 0; ; page++) {
    invariant(page < QUERY_PAGES_MAX, () => `query of ${table} for volume ${volumeId} did not end after ${QUERY_PAGES_MAX} pages`);
    const out = await dynamo().send(
      new QueryCommand({
        TableName: table,
        KeyConditionExpression: sortKeyRange ? 'volumeId = :v AND #sk BETWEEN :from AND :to' : 'volumeId = :v',
        ...(sortKeyRange ? { ExpressionAttributeNames: { '#sk': sortKeyRange.name } } : {}),
        ExpressionAttributeValues: { ':v': S(volumeId), ...(sortKeyRange ? { ':from': sortKeyRange.from, ':to': sortKeyRange.to } : {}) },
        ExclusiveStartKey: start,
        ConsistentRead: true,
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    yield* out.Items ?? [];
    start = out.LastEvaluatedKey;
    if (!start) return;
  }
}

/** Every segment record of a volume, in sequence order, a page of queries at a time. */
export async function* listSegmentRecords(volumeId: string): AsyncGenerator<SegmentRecord> {
  for await (const item of queryVolumeItems(config().segmentsTable, volumeId)) if (!isTombstone(item)) yield itemToSegment(item);
}

/** Every page of a volume, in page order. */
export async function* listPages(volume: VolumeRecord): AsyncGenerator<PageRecord> {
  for await (const item of queryVolumeItems(config().pagesTable, volume.volumeId)) yield itemToPage(item, volume.pageBlocks);
}

/** Deletes items by key, 25 at a time, retrying unprocessed ones (bounded). */
export async function deleteItems(table: 'pages' | 'segments', keys: Record<string, AttributeValue>[]): Promise<void> {
  const name = table === 'pages' ? config().pagesTable : config().segmentsTable;
  for (let i = 0; i < keys.length; i += 25) {
    let pending = keys.slice(i, i + 25).map((Key) => ({ DeleteRequest: { Key } }));
    for (let attempt = 0; pending.length > 0; attempt++) {
      invariant(attempt < UNPROCESSED_RETRY_MAX, `BatchWriteItem on ${name} still had unprocessed items`);
      if (attempt > 0) await sleep(Math.min(1000, 20 * 2 ** attempt));
      const out = await dynamo().send(new BatchWriteItemCommand({ RequestItems: { [name]: pending }, ReturnConsumedCapacity: 'TOTAL' }));
      pending = (out.UnprocessedItems?.[name] ?? []) as typeof pending;
    }
  }
}

export function pageKey(volumeId: string, page: number): Record<string, AttributeValue> {
  return { volumeId: S(volumeId), page: N(page) };
}

export function segmentKey(volumeId: string, segmentId: string): Record<string, AttributeValue> {
  return { volumeId: S(volumeId), segmentId: S(segmentId) };
}

// ---------------------------------------------------------------------------------------
// The commit

export interface PageChange {
  page: number;
  /** The version read in step 1, or null if the page had no item. */
  oldVersion: number | null;
  extents: Extent[];
}

/** Why a commit transaction was refused; the writer's next step depends on it. */
export type CommitRefusal = 'head-moved' | 'volume-gone' | 'volume-not-active' | 'page-moved' | 'fenced' | 'segment-taken';

export class CommitRefusedError extends Error {
  override name = 'CommitRefusedError';
  constructor(
    readonly reason: CommitRefusal,
    message: string,
    readonly currentVolume?: VolumeRecord,
  ) {
    super(message);
  }
}

/**
 * Commits a segment: moves the volume's head from `volume.headSeq` to `segment.seq`, records
 * the segment, and replaces the changed pages, in one transaction. See docs/page-map.md.
 *
 * Throws CommitRefusedError when a condition failed (nothing was changed); any other error
 * leaves the outcome unknown, and the caller resolves it with `getSegmentRecord`.
 */
/** The writer a commit is fenced on: the key it presented and that key's registration generation. */
export interface CommitWriter {
  key?: string;
  keyGeneration?: number;
  /**
   * A maintenance writer (compaction, docs/evacuation.md section 6) rewrites bytes a volume
   * already holds and presents no key; it is fenced by the reservation generation it read:
   * any reservation change between its read and its commit refuses it.
   */
  maintenanceAtGeneration?: number;
}

/**
 * The named parts of the writer's access rule (docs/reservations.md), joined with AND into the
 * volume item's commit condition, with the values they use.
 */
export function fencingCondition(writer: CommitWriter): { parts: string[]; names: Record<string, string>; values: Record<string, AttributeValue> } {
  if (writer.maintenanceAtGeneration !== undefined) {
    invariant(writer.key === undefined, 'a maintenance writer presents no key');
    return {
      parts: ['resGen = :maintenanceGen'], // the reservations are exactly as the maintenance writer read them
      names: {},
      values: { ':maintenanceGen': N(writer.maintenanceAtGeneration) },
    };
  }
  if (writer.key === undefined) {
    // Without a key, a writer may commit only while there is no reservation at all.
    return { parts: ['attribute_not_exists(resType)'], names: {}, values: {} };
  }
  invariant(writer.keyGeneration !== undefined, 'a writer with a key needs its registration generation');
  const holderTypes = HOLDER_TYPES.map((_, i) => `:holderType${i}`);
  const registrantTypes = REGISTRANT_TYPES.map((_, i) => `:registrantType${i}`);
  return {
    parts: [
      'registrants.#writerKey = :writerKeyGen', // still registered, by the very registration it started with
      [
        '(attribute_not_exists(resType)', // and there is no reservation,
        `OR (resType IN (${holderTypes.join(', ')}) AND resHolder = :writerKey)`, // or it holds a holder-type one,
        `OR resType IN (${registrantTypes.join(', ')}))`, // or the type lets every registrant write
      ].join(' '),
    ],
    names: { '#writerKey': writer.key },
    values: {
      ':writerKeyGen': N(writer.keyGeneration),
      ':writerKey': S(writer.key),
      ...Object.fromEntries(HOLDER_TYPES.map((t, i) => [`:holderType${i}`, S(t)])),
      ...Object.fromEntries(REGISTRANT_TYPES.map((t, i) => [`:registrantType${i}`, S(t)])),
    },
  };
}

export async function commitSegment(volume: VolumeRecord, segment: SegmentRecord, changes: readonly PageChange[], writer: CommitWriter = {}, clientRequestToken?: string): Promise<void> {
  const fencing = fencingCondition(writer);
  invariant(segment.seq === volume.headSeq + 1, 'segment built on a different head');
  invariant(segment.prev === volume.headSegmentId, 'segment prev is not the head it was built on');
  invariant(changes.length <= MAX_PAGES_PER_COMMIT, () => `${changes.length} pages in one commit, max ${MAX_PAGES_PER_COMMIT}`);
  const cfg = config();
  const now = new Date().toISOString();
  const items: TransactWriteItem[] = [
    {
      Update: {
        TableName: cfg.volumesTable,
        Key: { volumeId: S(volume.volumeId) },
        UpdateExpression: 'SET headSeq = :seq, headSegmentId = :segment, updatedAt = :now',
        ConditionExpression: [
          'attribute_exists(volumeId)', // the volume still exists
          '#state = :active', // and is not being deleted
          'headSeq = :prevSeq', // and nobody committed since we read the head we built on
          ...fencing.parts, // and the writer has not been fenced off (docs/reservations.md)
        ].join(' AND '),
        ExpressionAttributeNames: { '#state': 'state', ...fencing.names },
        ExpressionAttributeValues: {
          ...fencing.values,
          ':seq': N(segment.seq),
          ':prevSeq': N(volume.headSeq),
          ':segment': S(segment.segmentId),
          ':active': S('active'),
          ':now': S(now),
        },
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
      },
    },
    {
      Put: {
        TableName: cfg.segmentsTable,
        Item: segmentToItem(segment),
        // Segment ids are unique; a repeat would mean two commits claim one segment.
        ConditionExpression: 'attribute_not_exists(segmentId)',
      },
    },
    ...changes.map(
      (c): TransactWriteItem => ({
        Put: {
          TableName: cfg.pagesTable,
          Item: pageToItem(volume.volumeId, c.page, (c.oldVersion ?? 0) + 1, c.extents, volume.pageBlocks),
          ...(c.oldVersion === null
            ? { ConditionExpression: 'attribute_not_exists(page)' } // the page had no item when we read it
            : {
                ConditionExpression: 'version = :v', // the page is the version we merged into
                ExpressionAttributeValues: { ':v': N(c.oldVersion) },
              }),
        },
      }),
    ),
  ];
  try {
    // The token makes DynamoDB answer a repeat of an applied commit with success (the SDK reuses
    // it across its own retries; the writer passes it again when it resends the transaction).
    await dynamo().send(new TransactWriteItemsCommand({ TransactItems: items, ReturnConsumedCapacity: 'TOTAL', ClientRequestToken: clientRequestToken }));
  } catch (err) {
    if (!(err instanceof TransactionCanceledException) && (err as { name?: string })?.name !== 'TransactionCanceledException') throw err;
    const reasons = (err as TransactionCanceledException).CancellationReasons ?? [];
    const vol = reasons[0];
    if (vol?.Code === 'ConditionalCheckFailed') {
      const current = vol.Item ? itemToVolume(vol.Item) : undefined;
      if (!current) throw new CommitRefusedError('volume-gone', `volume ${volume.volumeId} does not exist`);
      if (current.state !== 'active') throw new CommitRefusedError('volume-not-active', `volume ${volume.volumeId} is ${current.state}`, current);
      const r = current.reservations;
      if (writer.maintenanceAtGeneration !== undefined && r.generation !== writer.maintenanceAtGeneration) {
        throw new CommitRefusedError('fenced', `maintenance commit refused: the reservations of volume ${volume.volumeId} changed (generation ${writer.maintenanceAtGeneration} -> ${r.generation})`, current);
      }
      const stillRegistered = writer.key === undefined || r.registrants[writer.key] === writer.keyGeneration;
      const allowed = writer.maintenanceAtGeneration !== undefined || stillRegistered && (writer.key === undefined ? !r.reservation : !r.reservation || !HOLDER_TYPES.includes(r.reservation.type) || r.reservation.holder === writer.key);
      if (!allowed) {
        throw new CommitRefusedError(
          'fenced',
          `commit refused: writer ${writer.key ?? '(no key)'} was fenced off volume ${volume.volumeId} (reservation generation ${r.generation}${r.reservation ? `, reserved ${r.reservation.type} by ${r.reservation.holder}` : ''})`,
          current,
        );
      }
      throw new CommitRefusedError('head-moved', `volume ${volume.volumeId} head moved from ${volume.headSeq} to ${current.headSeq}`, current);
    }
    if (reasons[1]?.Code === 'ConditionalCheckFailed') {
      // The segment id holds a record or a tombstone: a settled attempt of this very commit.
      throw new CommitRefusedError('segment-taken', `segment ${segment.segmentId} of volume ${volume.volumeId} already has a record or a tombstone`);
    }
    if (reasons.slice(2).some((r) => r?.Code === 'ConditionalCheckFailed')) {
      throw new CommitRefusedError('page-moved', `a page of volume ${volume.volumeId} changed without a head change`);
    }
    // TransactionConflict, throttling and the like: the caller retries the same transaction.
    throw err;
  }
}

// ---------------------------------------------------------------------------------------
// Chunk moves and segment deletion (docs/evacuation.md, sections 3 and 6)

export type MoveOutcome =
  | { kind: 'moved' }
  | { kind: 'refused'; reason: 'record-gone' | 'location-changed'; current: SegmentRecord | null }
  | { kind: 'refused'; reason: 'target-inactive'; current: null };

/**
 * Points chunk `index` of a segment at `to`, in one transaction with a check that the target
 * drive takes new chunks. Refused (nothing changed) when the segment is gone, the chunk is no
 * longer at `from`, or the target drive is not active. Other errors leave the outcome unknown:
 * the caller re-reads the record.
 */
export async function moveChunkLocation(volumeId: string, segmentId: string, index: number, from: ChunkLocation, to: ChunkLocation, targetDriveId: string): Promise<MoveOutcome> {
  invariant(Number.isInteger(index) && index >= 0 && index < 64, () => `bad chunk index ${index}`);
  const cfg = config();
  try {
    await dynamo().send(
      new TransactWriteItemsCommand({
        TransactItems: [
          {
            Update: {
              TableName: cfg.segmentsTable,
              Key: { volumeId: S(volumeId), segmentId: S(segmentId) },
              // The index is part of the expression: DynamoDB takes list indexes only as literals.
              UpdateExpression: `SET locations[${index}] = :to`,
              ConditionExpression: [
                'attribute_exists(segmentId)', // the segment was not collected meanwhile
                `locations[${index}] = :from`, // and nobody moved this chunk since we read the record
              ].join(' AND '),
              ExpressionAttributeValues: { ':to': S(formatLocation(to)), ':from': S(formatLocation(from)) },
              ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
            },
          },
          {
            ConditionCheck: {
              TableName: cfg.drivesTable,
              Key: { driveId: S(targetDriveId) },
              ConditionExpression: '#state = :active', // no record may come to point at a drive that stopped taking chunks
              ExpressionAttributeNames: { '#state': 'state' },
              ExpressionAttributeValues: { ':active': S('active') },
            },
          },
        ],
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return { kind: 'moved' };
  } catch (err) {
    if (!(err instanceof TransactionCanceledException) && (err as { name?: string })?.name !== 'TransactionCanceledException') throw err;
    const reasons = (err as TransactionCanceledException).CancellationReasons ?? [];
    if (reasons[0]?.Code === 'ConditionalCheckFailed') {
      const item = reasons[0].Item;
      return item && !isTombstone(item) ? { kind: 'refused', reason: 'location-changed', current: itemToSegment(item) } : { kind: 'refused', reason: 'record-gone', current: null };
    }
    if (reasons[1]?.Code === 'ConditionalCheckFailed') return { kind: 'refused', reason: 'target-inactive', current: null };
    throw err;
  }
}

/**
 * Deletes a segment record if its locations are still `locations` (the chunks the caller
 * deleted). Returns the record as it is when they differ (an evacuation moved a chunk), null
 * when deleted or already gone.
 */
export async function deleteSegmentRecordIf(volumeId: string, segmentId: string, locations: readonly ChunkLocation[]): Promise<SegmentRecord | null> {
  try {
    await dynamo().send(
      new DeleteItemCommand({
        TableName: config().segmentsTable,
        Key: { volumeId: S(volumeId), segmentId: S(segmentId) },
        // The chunks deleted were the ones the record names; a moved chunk would be left behind.
        ConditionExpression: 'attribute_not_exists(segmentId) OR locations = :deleted',
        ExpressionAttributeValues: { ':deleted': { L: locations.map((l) => S(formatLocation(l))) } },
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return null;
  } catch (err) {
    if (!conditionFailed(err)) throw err;
    return err.Item && !isTombstone(err.Item) ? itemToSegment(err.Item) : null;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// ---------------------------------------------------------------------------------------
// Checkpoints and rebuild (docs/checkpoints.md): the pointer on the volume item, the rebuild
// fence, and page items in their stored form.

function readCheckpointFields(item: Record<string, AttributeValue>, v: VolumeRecord): void {
  if (item.checkpointEveryCommits?.N !== undefined) v.checkpointEveryCommits = num(item.checkpointEveryCommits);
  const c = item.checkpoint?.M;
  if (c) {
    v.checkpoint = {
      id: str(c.id),
      seq: num(c.seq),
      crc: num(c.crc),
      bytes: num(c.bytes),
      pages: num(c.pages),
      placement: str(c.placement),
    };
  }
  if (item.checkpointFloorSeq?.N !== undefined) v.checkpointFloorSeq = num(item.checkpointFloorSeq);
  if (item.rebuilds?.N !== undefined) v.rebuilds = num(item.rebuilds);
  if (item.rebuildToken?.S !== undefined) v.rebuildToken = item.rebuildToken.S;
}

/** A page item exactly as stored: restoring these fields restores the item byte for byte. */
export interface StoredPage {
  page: number;
  version: number;
  segs: string[];
  ext: Uint8Array;
}

function itemToStoredPage(item: Record<string, AttributeValue>): StoredPage {
  return { page: num(item.page), version: num(item.version), segs: (item.segs?.L ?? []).map(str), ext: item.ext?.B ?? new Uint8Array() };
}

function storedPageToItem(volumeId: string, p: StoredPage): Record<string, AttributeValue> {
  return { volumeId: S(volumeId), page: N(p.page), version: N(p.version), segs: { L: p.segs.map(S) }, ext: { B: p.ext } };
}

/** Every page item of a volume in stored form, in page order (consistent reads). */
export async function* listStoredPages(volumeId: string): AsyncGenerator<StoredPage> {
  for await (const item of queryVolumeItems(config().pagesTable, volumeId)) yield itemToStoredPage(item);
}

/** The stored pages among `pages` (consistent reads; missing pages are absent from the map). */
export async function getStoredPages(volumeId: string, pages: readonly number[]): Promise<Map<number, StoredPage>> {
  const items = await batchGet(config().pagesTable, pages.map((p) => pageKey(volumeId, p)));
  return new Map(items.map((item) => [num(item.page), itemToStoredPage(item)]));
}

/** Committed segment records with `afterSeq < seq <= uptoSeq`, in sequence order. */
export async function listSegmentRecordsBetween(volumeId: string, afterSeq: number, uptoSeq: number): Promise<SegmentRecord[]> {
  const out: SegmentRecord[] = [];
  if (uptoSeq <= afterSeq) return out;
  // Segment ids start with their seq in 12 digits, so a key range is a seq range: from the
  // first id of seq afterSeq + 1 to the last of uptoSeq ('.' sorts after '-').
  const range = { name: 'segmentId', from: S(String(afterSeq + 1).padStart(12, '0')), to: S(`${String(uptoSeq).padStart(12, '0')}.`) };
  for await (const item of queryVolumeItems(config().segmentsTable, volumeId, range)) if (!isTombstone(item)) out.push(itemToSegment(item));
  return out;
}

/**
 * Records `pointer` as the volume's latest checkpoint if it is newer than the recorded one.
 * Returns false (and changes nothing) when the recorded checkpoint is as new or newer.
 */
export async function recordCheckpoint(volumeId: string, pointer: CheckpointPointer): Promise<{ recorded: boolean; current: VolumeRecord | null }> {
  try {
    const out = await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: 'SET #checkpoint = :pointer',
        ConditionExpression: [
          'attribute_exists(volumeId)', // the volume exists
          '(attribute_not_exists(#checkpoint) OR #checkpoint.#seq < :seq)', // and this checkpoint is newer than the recorded one: the pointer only moves forward
        ].join(' AND '),
        ExpressionAttributeNames: { '#checkpoint': 'checkpoint', '#seq': 'seq' },
        ExpressionAttributeValues: {
          ':seq': N(pointer.seq),
          ':pointer': {
            M: {
              id: S(pointer.id),
              seq: N(pointer.seq),
              crc: N(pointer.crc),
              bytes: N(pointer.bytes),
              pages: N(pointer.pages),
              placement: S(pointer.placement),
            },
          },
        },
        ReturnValues: 'ALL_NEW',
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return { recorded: true, current: itemToVolume(out.Attributes!) };
  } catch (err) {
    if (!conditionFailed(err)) throw err;
    const current = err.Item ? itemToVolume(err.Item) : null;
    // A retry whose first attempt applied (its response was lost) finds its own pointer there.
    return { recorded: current?.checkpoint?.id === pointer.id, current };
  }
}

/** Raises the checkpoint floor to `seq`; a floor already as high is left alone. */
export async function raiseCheckpointFloor(volumeId: string, seq: number): Promise<void> {
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: 'SET checkpointFloorSeq = :seq',
        ConditionExpression: [
          'attribute_exists(volumeId)', // the volume exists
          '(attribute_not_exists(checkpointFloorSeq) OR checkpointFloorSeq < :seq)', // and the floor only rises
        ].join(' AND '),
        ExpressionAttributeValues: { ':seq': N(seq) },
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
  } catch (err) {
    if (!conditionFailed(err)) throw err;
  }
}

/**
 * Fences a volume for a rebuild: `state` becomes `rebuilding` under `token`, which from then
 * on refuses every commit (they require `active`). A rebuild that finds the volume already
 * fenced takes over with its own token (`tookOver`: the map may be half rewritten by the
 * rebuild it replaces). Returns the volume as fenced.
 */
export async function fenceForRebuild(volumeId: string, token: string): Promise<{ volume: VolumeRecord; tookOver: boolean }> {
  try {
    const out = await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: 'SET #state = :rebuilding, rebuildToken = :token, rebuilds = if_not_exists(rebuilds, :zero) + :one, updatedAt = :now',
        ConditionExpression: [
          'attribute_exists(volumeId)', // the volume exists
          '#state IN (:active, :rebuilding)', // and is serving, or is fenced by a rebuild that this one takes over
        ].join(' AND '),
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: {
          ':rebuilding': S('rebuilding'),
          ':active': S('active'),
          ':token': S(token),
          ':zero': N(0),
          ':one': N(1),
          ':now': S(new Date().toISOString()),
        },
        ReturnValues: 'ALL_OLD',
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    const old = itemToVolume(out.Attributes!);
    return { volume: { ...old, state: 'rebuilding', rebuildToken: token, rebuilds: (old.rebuilds ?? 0) + 1 }, tookOver: old.state === 'rebuilding' };
  } catch (err) {
    if (!conditionFailed(err)) throw err;
    if (!err.Item) throw new NotFoundError(`volume ${volumeId} does not exist`);
    throw new ConflictError(`volume ${volumeId} is ${str(err.Item.state)}; only an active volume can be rebuilt`);
  }
}

/** Lifts the rebuild fence held under `token`. Returns false if another rebuild took it over. */
export async function unfenceAfterRebuild(volumeId: string, token: string): Promise<boolean> {
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: 'SET #state = :active, updatedAt = :now REMOVE rebuildToken',
        ConditionExpression: [
          '#state = :rebuilding', // the volume is fenced for a rebuild
          'rebuildToken = :token', // and the fence is ours, not a rebuild's that took over
        ].join(' AND '),
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: { ':active': S('active'), ':rebuilding': S('rebuilding'), ':token': S(token), ':now': S(new Date().toISOString()) },
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return true;
  } catch (err) {
    if (!conditionFailed(err)) throw err;
    return false;
  }
}

/** The rebuild lost its fence to another rebuild (or the volume went away) while writing pages. */
export class RebuildFenceLostError extends Error {
  override name = 'RebuildFenceLostError';
}

/** Page writes per rebuild transaction: 100 items, one of them the fence check. */
const REBUILD_WRITES_PER_TRANSACTION = 99;

/**
 * Writes rebuilt pages and deletes pages the rebuilt map lacks, in transactions that each also
 * check the fence (`state = rebuilding AND rebuildToken = :token`): a rebuild that lost its
 * fence can never overwrite a page committed after the fence was lifted.
 */
export async function writeRebuiltPages(volumeId: string, token: string, puts: readonly StoredPage[], deletes: readonly number[]): Promise<void> {
  const cfg = config();
  const writes: TransactWriteItem[] = [
    ...puts.map((p): TransactWriteItem => ({ Put: { TableName: cfg.pagesTable, Item: storedPageToItem(volumeId, p) } })),
    ...deletes.map((page): TransactWriteItem => ({ Delete: { TableName: cfg.pagesTable, Key: pageKey(volumeId, page) } })),
  ];
  for (let i = 0; i < writes.length; i += REBUILD_WRITES_PER_TRANSACTION) {
    const fence: TransactWriteItem = {
      ConditionCheck: {
        TableName: cfg.volumesTable,
        Key: { volumeId: S(volumeId) },
        ConditionExpression: [
          '#state = :rebuilding', // the volume is still fenced for a rebuild
          'rebuildToken = :token', // by this rebuild
        ].join(' AND '),
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: { ':rebuilding': S('rebuilding'), ':token': S(token) },
      },
    };
    try {
      await dynamo().send(new TransactWriteItemsCommand({ TransactItems: [fence, ...writes.slice(i, i + REBUILD_WRITES_PER_TRANSACTION)], ReturnConsumedCapacity: 'TOTAL' }));
    } catch (err) {
      const reasons = (err as TransactionCanceledException).CancellationReasons ?? [];
      if (reasons[0]?.Code === 'ConditionalCheckFailed') {
        throw new RebuildFenceLostError(`the rebuild of volume ${volumeId} lost its fence to another rebuild; it stopped writing pages`, { cause: err });
      }
      throw err;
    }
  }
}
