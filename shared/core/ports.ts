/**
 * What the domain needs from AWS, as small interfaces (ports). The SDK adapters that implement
 * them live in shared/aws/; the domain reaches them through shared/ports.ts and never builds an
 * SDK command itself. Each method says what it guarantees, not how the service is asked.
 */
import type { ChunkLocation, ListedChunk, VolumeChunk } from '../data/sleds.ts';
import type { ReservationState } from '../control/reservations.ts';
import type { LeaseUpdate } from '../control/read-leases.ts';
import type { DriveErrorKind, DriveRecord, DriveState, DumpAttributes, EvacuationState } from './drive-records.ts';
import type {
  CheckpointPointer,
  CommitWriter,
  FlattenProgress,
  FrozenPage,
  HeadDesignation,
  MoveOutcome,
  PageChange,
  PageRecord,
  SegmentRecord,
  SnapshotRecord,
  StoredPage,
  StoredFrozen,
  VolumeRecord,
  WriteIntent,
} from './records.ts';
import type { WorkMessage } from './work-messages.ts';

/** Chunk objects (and other objects, such as dumps) on the sleds. A missing object reads as null. */
export interface ChunkStore {
  /** Writes a chunk that must not exist yet (`If-None-Match: *`), with a CRC32C the store verifies. */
  putChunk(loc: ChunkLocation, body: Buffer, crc32c: number): Promise<void>;
  /** Whether the object at `loc` is exactly `body` (its CRC32C `crc32c`); false when it is missing. */
  storedChunkEquals(loc: ChunkLocation, body: Buffer, crc32c: number): Promise<boolean>;
  /** Bytes `[start, end)` of a chunk, or null if it does not exist; read into `into` (end - start bytes) when given. */
  getChunkRange(loc: ChunkLocation, start: number, end: number, into?: Buffer): Promise<Buffer | null>;
  /**
   * A URL that lets its holder GET bytes `[start, end)` of a chunk (with exactly that Range
   * header) for `expiresSeconds`, signed with the head's credentials; no request is sent.
   */
  presignChunkRange(loc: ChunkLocation, start: number, end: number, expiresSeconds: number): Promise<string>;
  /**
   * A URL that lets its holder PUT one new chunk object of exactly `bytes` bytes with CRC32C
   * `crc32c` (both signed in, with `If-None-Match: *`) for `expiresSeconds`, and the headers to send.
   */
  presignChunkPut(loc: ChunkLocation, bytes: number, crc32c: number, expiresSeconds: number): Promise<{ url: string; headers: Record<string, string> }>;
  /** A chunk object's length and stored whole-object CRC32C (base64), without its body; null if it does not exist. */
  statChunk(loc: ChunkLocation): Promise<{ bytes: number; crc32c?: string } | null>;
  /** The last `bytes` bytes of a chunk (all of it if shorter), or null if it does not exist. */
  getChunkTail(loc: ChunkLocation, bytes: number): Promise<Buffer | null>;
  /** A whole chunk, or null if it does not exist. */
  getChunk(loc: ChunkLocation): Promise<Buffer | null>;
  /** Deletes a chunk; deleting a missing chunk succeeds. */
  deleteChunk(loc: ChunkLocation): Promise<void>;
  /** Deletes a chunk if it exists; true if it did. */
  deleteChunkIfPresent(loc: ChunkLocation): Promise<boolean>;
  /** Every chunk object of a volume on every sled and drive. */
  listVolumeChunks(volumeId: string, buckets: readonly string[]): AsyncGenerator<ListedChunk>;
  /** One page of the objects on a drive after the key `startAfter`; `next` continues it. */
  listDrivePage(bucket: string, drive: string, startAfter: string, maxKeys: number): Promise<{ objects: ListedChunk[]; next?: string }>;
  /** The chunk objects of a volume whose object id starts with `namePrefix` and sorts after `startAfterName`. */
  listChunks(volumeId: string, buckets: readonly string[], opts?: { namePrefix?: string; startAfterName?: string }): Promise<VolumeChunk[]>;
  /** Whether an error is the store's answer to a write of a chunk that already exists. */
  isPreconditionFailed(err: unknown): boolean;
  /** Writes any object (dumps), optionally only if it does not exist yet. */
  putObject(loc: ChunkLocation, body: Buffer, opts?: { contentType?: string; ifAbsent?: boolean }): Promise<void>;
  /** A whole object; a missing one is an error. */
  readObject(loc: ChunkLocation): Promise<Buffer>;
}

/** A message as received from a queue (dead letters): what is shown, moved back, or released. */
export interface QueuedMessage {
  messageId: string;
  body: string;
  /** Identifies this receive; needed to release or delete it. */
  receiptHandle: string;
  /** The queue's own attributes of the message (`ApproximateReceiveCount`, `SentTimestamp`...). */
  attributes: Record<string, string>;
  /** The sender's message attributes, carried as they are when the message is moved back. */
  messageAttributes?: unknown;
}

/**
 * The work queues. A message goes to the queue its type belongs to (`queueOf` in
 * shared/core/work-messages.ts); every body is the message's JSON.
 */
export interface WorkQueue {
  /** Puts one message on its queue, visible after `delaySeconds` when given (0 to 900). */
  send(message: WorkMessage, opts?: { delaySeconds?: number }): Promise<void>;
  /** Puts up to 10 messages of one queue in one request; returns the ones not accepted. */
  sendBatch(messages: readonly WorkMessage[]): Promise<Array<{ code?: string; message?: string }>>;
  /** About how many messages a queue holds, visible or not. */
  approximateCount(queueUrl: string): Promise<number>;
  /** Receives up to 10 messages, each hidden from other receivers for `holdSeconds`. */
  receive(queueUrl: string, max: number, holdSeconds: number): Promise<QueuedMessage[]>;
  /** Makes up to 10 received messages visible again at once. */
  release(queueUrl: string, messages: readonly QueuedMessage[]): Promise<void>;
  /** Sends a received message's body and attributes, unchanged, to another queue. */
  resend(queueUrl: string, message: QueuedMessage): Promise<void>;
  /** Deletes a received message. */
  delete(queueUrl: string, message: QueuedMessage): Promise<void>;
}

/**
 * The page map (docs/page-map.md): volume items, page items and segment records. Every read is
 * consistent. Conditional writes report a refusal as a result (false, null, a refusal object)
 * or as the domain error the doc names; any other error leaves the outcome unknown.
 */
export interface PageMapStore {
  // Volume items
  getVolume(volumeId: string): Promise<VolumeRecord | null>;
  /** Like getVolume, but a missing volume is a NotFoundError. */
  requireVolume(volumeId: string): Promise<VolumeRecord>;
  /** Creates the item; refused if the id exists. */
  putNewVolume(v: VolumeRecord): Promise<void>;
  /**
   * One page of the volume list; `next` continues it. With `owner`, only that principal's
   * volumes, in id order, `limit` to a page but the last, and `next` is one of them.
   */
  listVolumes(limit: number, startAfter?: string, owner?: string): Promise<{ volumes: VolumeRecord[]; next?: string }>;
  /** Grows an active volume (never shrinks it): NotFoundError or ConflictError otherwise. */
  growVolume(volumeId: string, sizeBytes: number): Promise<VolumeRecord>;
  /** Marks an active volume as being deleted; false if it already was. */
  /** `deleting` unless the volume has a snapshot tag ('has-snapshots'); false when it was not active. */
  markDeleting(volumeId: string): Promise<boolean | 'has-snapshots'>;
  deleteVolumeItem(volumeId: string): Promise<void>;
  /** Stores reservations computed from generation `expected` (and heads, when given); false if they changed since. */
  storeReservations(
    volumeId: string,
    expected: number,
    next: ReservationState,
    change?: { heads: HeadDesignation; primaryWas?: { head: string; leaseLapsedBeforeMs?: number } },
  ): Promise<boolean>;
  /** Stores readers' leases and the write intent computed from `read`; false if they (or the head, where it matters) changed since. */
  storeReadLeases(read: VolumeRecord, update: LeaseUpdate): Promise<boolean>;
  /** Opens the write intent `read` (closed) at the next epoch; false if it changed since. */
  openWriteIntent(volumeId: string, read: WriteIntent): Promise<boolean>;
  /** Extends the primary's lease while it is still the primary by the same registration. */
  renewLease(
    volumeId: string,
    heads: HeadDesignation,
    primary: { head: string; key: string; keyGeneration: number },
  ): Promise<{ ok: true } | { ok: false; current: VolumeRecord | null }>;
  /** Records a newer checkpoint pointer; `recorded` is false when the recorded one is as new or newer. */
  recordCheckpoint(volumeId: string, pointer: CheckpointPointer): Promise<{ recorded: boolean; current: VolumeRecord | null }>;
  /** Raises the checkpoint floor to `seq` (never lowers it). */
  raiseCheckpointFloor(volumeId: string, seq: number): Promise<void>;
  /** Fences a volume for a rebuild under `token` (taking over a rebuild in progress). */
  fenceForRebuild(volumeId: string, token: string): Promise<{ volume: VolumeRecord; tookOver: boolean }>;
  /** Lifts the rebuild fence held under `token`; false if another rebuild took it over. */
  unfenceAfterRebuild(volumeId: string, token: string, folded?: { seq: number; segmentId: string }): Promise<boolean>;

  // Pages and segment records
  /** The volume item and the stored pages among `pages`, in one request. */
  getVolumeWithPages(
    geometry: Pick<VolumeRecord, 'volumeId' | 'pageBlocks'>,
    pages: readonly number[],
  ): Promise<{ volume: VolumeRecord | null; pages: Map<number, PageRecord> }>;
  getPages(volume: Pick<VolumeRecord, 'volumeId' | 'pageBlocks'>, pages: readonly number[]): Promise<Map<number, PageRecord>>;
  /** Every page of a volume, in page order. */
  listPages(volume: VolumeRecord): AsyncGenerator<PageRecord>;
  /** Every page item of a volume in stored form, in page order. */
  listStoredPages(volumeId: string): AsyncGenerator<StoredPage>;
  getStoredPages(volumeId: string, pages: readonly number[]): Promise<Map<number, StoredPage>>;
  deletePages(volumeId: string, pages: readonly number[]): Promise<void>;
  /** Segment records by reference (`<volumeId>/<segmentId>`). */
  getSegmentRecords(refs: readonly string[]): Promise<Map<string, SegmentRecord>>;
  getSegmentRecord(volumeId: string, segmentId: string): Promise<SegmentRecord | null>;
  /** Every segment record of a volume, in sequence order. */
  listSegmentRecords(volumeId: string): AsyncGenerator<SegmentRecord>;
  /** Committed segment records with `afterSeq < seq <= uptoSeq`, in sequence order. */
  listSegmentRecordsBetween(volumeId: string, afterSeq: number, uptoSeq: number): Promise<SegmentRecord[]>;
  /** Tombstones of never-committed segment ids (docs/page-map.md, "Settling an outcome"). */
  listSegmentTombstones(volumeId: string): AsyncGenerator<{ segmentId: string; seq: number }>;
  /** Puts a tombstone under a segment id with no record: `tombstoned` (it can never commit) or `committed`. */
  tombstoneSegment(volumeId: string, segmentId: string, seq: number): Promise<'tombstoned' | 'committed'>;
  /** Writes a record unless one exists; whether it wrote. */
  putSegmentRecordIfAbsent(record: SegmentRecord): Promise<boolean>;
  /** Deletes a record if its locations are still `locations`; the record as it is when they differ. */
  deleteSegmentRecordIf(volumeId: string, segmentId: string, locations: readonly ChunkLocation[]): Promise<SegmentRecord | null>;
  deleteSegmentRecords(volumeId: string, segmentIds: readonly string[]): Promise<void>;

  // Transactions
  /** The commit (docs/page-map.md, step 4); CommitRefusedError when a condition failed. */
  commitSegment(
    volume: VolumeRecord,
    segment: SegmentRecord,
    changes: readonly PageChange[],
    writer?: CommitWriter,
    clientRequestToken?: string,
  ): Promise<void>;
  /**
   * Writes a folded page if the item is still `read` (docs/page-map.md, "Folding"): 'changed'
   * when it is not; 'stopped' when the page had no item and the volume no longer serves.
   */
  putFoldedPage(volumeId: string, pageBlocks: number, folded: PageRecord, read: PageRecord | null): Promise<'written' | 'changed' | 'stopped'>;
  /**
   * Creates folded pages that had no item when read, all or none, with one check that the volume
   * serves (at most 99): 'changed' when any page has an item now (nothing written), 'stopped' when
   * the volume no longer serves.
   */
  createFoldedPages(volumeId: string, pageBlocks: number, pages: readonly PageRecord[]): Promise<'written' | 'changed' | 'stopped'>;
  /** Raises a folding volume's folded point while it serves; false when refused. */
  advanceFoldedSeq(volumeId: string, seq: number, segmentId: string): Promise<boolean>;
  /** Points a chunk of a segment at `to` if it is still at `from` and the target drive is active. */
  moveChunkLocation(volumeId: string, segmentId: string, index: number, from: ChunkLocation, to: ChunkLocation, targetDriveId: string): Promise<MoveOutcome>;
  /** Writes and deletes rebuilt pages while the rebuild fence is `token`'s (RebuildFenceLostError otherwise). */
  writeRebuiltPages(volumeId: string, token: string, puts: readonly StoredPage[], deletes: readonly number[]): Promise<void>;
  /** The same for frozen pages (docs/checkpoints.md, "Frozen pages"). */
  writeRebuiltFrozen(volumeId: string, token: string, puts: readonly StoredFrozen[], deletes: ReadonlyArray<{ tag: number; page: number }>): Promise<void>;

  // Snapshots and clones (docs/snapshots.md)
  /** Puts frozen pages that do not exist yet; a refused put (the copy exists) is not an error. Returns how many were written. */
  freezePages(volumeId: string, pageBlocks: number, pages: readonly FrozenPage[]): Promise<number>;
  /** The frozen pages among `keys` that exist. */
  getFrozenPages(volumeId: string, pageBlocks: number, keys: ReadonlyArray<{ tag: number; page: number }>): Promise<FrozenPage[]>;
  /** Frozen pages with `fromTag <= tag < toTag` (to the end when `toTag` is absent), in tag then page order. */
  listFrozenPages(volumeId: string, pageBlocks: number, fromTag: number, toTag?: number): AsyncGenerator<FrozenPage>;
  deleteFrozenPage(volumeId: string, tag: number, page: number): Promise<void>;
  /** Every frozen page item of a volume in stored form, in tag then page order. */
  listStoredFrozen(volumeId: string): AsyncGenerator<StoredFrozen>;
  getSnapshot(volumeId: string, snapshotId: string): Promise<SnapshotRecord | null>;
  /** Every snapshot record of a volume, ready or deleting, in seq order. */
  listSnapshots(volumeId: string): Promise<SnapshotRecord[]>;
  /** Sets `snapSeq` to the head and puts the record, while head, state and fencing hold (CommitRefusedError otherwise). */
  createSnapshotRecord(volume: VolumeRecord, snap: SnapshotRecord, writer: CommitWriter): Promise<void>;
  /** Puts a clone's volume item and adds it to its parent snapshot's dependants (NotFoundError if that is not ready). */
  createCloneVolume(clone: VolumeRecord): Promise<void>;
  removeDependant(parent: { volumeId: string; snapshotId: string }, dependant: string): Promise<void>;
  /** `ready -> deleting` while nothing depends on it; the record as it is when refused. */
  markSnapshotDeleting(volumeId: string, snapshotId: string): Promise<{ ok: true } | { ok: false; current: SnapshotRecord | null }>;
  deleteSnapshotRecord(volumeId: string, snapshotId: string): Promise<void>;
  /** Takes the volume's purge lock under `token` (again, if it is ours); false when another purge holds it. */
  lockSnapshotPurge(volumeId: string, token: string): Promise<boolean>;
  /** Releases the purge lock; with `dropSnapSeq`, also removes `snapSeq` if it is still that value. */
  unlockSnapshotPurge(volumeId: string, token: string, dropSnapSeq?: number): Promise<boolean>;
  /** Records a clone's flatten progress while it still has that parent; false otherwise. */
  setFlattenProgress(volumeId: string, parentSnapshotId: string, progress: FlattenProgress): Promise<boolean>;
  /** Removes a clone's parent (and its flatten progress) while it is still that parent; false when refused. */
  finishFlatten(volumeId: string, parentSnapshotId: string): Promise<boolean>;
}

/**
 * The drive registry (docs/evacuation.md): one record per drive. Conditional updates return
 * the record after the change, or null when their condition failed (nothing changed).
 */
export interface DriveRegistry {
  /** Adds records for the deployment's drives that have none (existing ones are kept). */
  ensureDrives(): Promise<void>;
  /** Every record, read consistently, in no particular order. */
  scanDrives(): Promise<DriveRecord[]>;
  getDrive(id: string): Promise<DriveRecord | null>;
  /** Sets attributes of a drive in the registry (operators and tests). */
  updateDrive(id: string, attrs: Partial<Pick<DriveRecord, 'state' | 'capacityBytes' | 'usedBytes' | 'serviceLoad' | 'dumpPrepared'>>): Promise<void>;
  /** Counts an error of `kind` into its open window (opened after `cutoffMs`). */
  countDriveError(id: string, kind: DriveErrorKind, cutoffMs: number): Promise<DriveRecord | null>;
  /** Opens a window of `kind` at `nowMs` holding this error, when none is open. */
  openDriveErrorWindow(id: string, kind: DriveErrorKind, cutoffMs: number, nowMs: number): Promise<DriveRecord | null>;
  /** `seen -> retiring` with the evacuation run `evac`. */
  startRetirement(id: string, seen: DriveState, evac: EvacuationState, nowMs: number): Promise<DriveRecord | null>;
  /** The scan chain of run `run` from `step` to `step + 1` at `cursor` (totals on the first pass). */
  advanceScan(
    id: string,
    run: string,
    step: number,
    cursor: string,
    listed: { chunks: number; bytes: number; unmanaged: number },
    firstPass: boolean,
  ): Promise<DriveRecord | null>;
  /** Records that the message for `step` was sent. */
  markStepSent(id: string, run: string, step: number): Promise<void>;
  /** Adds to the run's progress counters. */
  addEvacuationProgress(
    id: string,
    run: string,
    delta: { chunksMoved?: number; bytesMoved?: number; chunksRebuilt?: number; chunksDropped?: number; bytesDropped?: number },
    nowMs?: number,
  ): Promise<void>;
  /** Starts pass `pass + 1` at step `step + 1`. */
  startNextPass(id: string, run: string, pass: number, step: number, nowMs?: number): Promise<DriveRecord | null>;
  /** Counts one finish check of pass `pass` (from `checks`). */
  countFinishCheck(id: string, run: string, pass: number, checks: number): Promise<DriveRecord | null>;
  /** `retiring -> retired` under run `run`. */
  markRetired(id: string, run: string, nowMs: number): Promise<DriveRecord | null>;
  /** Back to `active`, forgetting errors and evacuation. */
  reactivate(id: string): Promise<DriveRecord | null>;
  /** Claims a drive for a dump; false when another dump is being written there. */
  claimDump(driveId: string, dumpId: string, attrs: DumpAttributes): Promise<boolean>;
  /** Marks the dump complete and the dump area prepared, while the claim is still this dump's. */
  completeDump(driveId: string, dumpId: string, nowIso: string): Promise<void>;
}

/** Every port, as bound in shared/ports.ts. */
/** Where a note is kept: never a volume's or group's key. */
export interface NoteKey {
  partition: string;
  sort: string;
}

/**
 * Small JSON notes at the primary (a backup's job record when the vault does not answer, the
 * last failure of a work message). A missing note reads as null; `getMany` keys its answers by
 * `partition + "\n" + sort` and leaves missing ones out.
 */
export interface NoteStore {
  get(key: NoteKey): Promise<Record<string, unknown> | null>;
  getMany(keys: readonly NoteKey[]): Promise<Map<string, Record<string, unknown>>>;
  /** Writes the note, replacing any note under the key. */
  put(key: NoteKey, doc: Record<string, unknown>): Promise<void>;
  /** Deletes the note; deleting a missing one succeeds. */
  delete(key: NoteKey): Promise<void>;
}

export interface Ports {
  pageMap: PageMapStore;
  drives: DriveRegistry;
  chunks: ChunkStore;
  queue: WorkQueue;
}
