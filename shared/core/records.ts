/**
 * The page map's records as the domain sees them: volumes, pages, segment records, and what a
 * commit changes. No storage knowledge here; the DynamoDB adapter (shared/aws/pagemap/) stores
 * them, and docs/page-map.md describes the protocol.
 */
import type { Extent } from '../data/extents.ts';
import type { ChunkLocation } from '../data/sleds.ts';
import type { ReservationState } from '../control/reservations.ts';
import { invariant } from './errors.ts';

/** At most this many pages change in one commit (a transaction holds 100 items; see the doc). */
export const MAX_PAGES_PER_COMMIT = 96;
/** Pages a folder creates in one transaction at most: DynamoDB's 100 items less the check that the volume serves. */
export const FOLDED_CREATES_MAX = 99;

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
  /** The canonical ARN of the principal that created it (shared/api/authz.ts); absent: operators only. */
  owner?: string;
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
  /** The tag commits freeze changed pages under: the newest snapshot's seq (docs/snapshots.md). */
  snapSeq?: number;
  /**
   * A folding volume (docs/page-map.md, "Folding"): every committed segment up to this seq is in
   * the page items; later ones are the tail. Absent: the volume commits its pages directly.
   */
  foldedSeq?: number;
  /** The segment at `foldedSeq` ('' at 0). */
  foldedSegmentId?: string;
  /** The most commits the tail holds (config `foldTailMax` when the volume was made). */
  foldTailMax?: number;
  /** For a clone: the snapshot it reads through to. */
  parent?: ParentRef;
  /** A snapshot purge of this volume holds this token while it runs (one at a time). */
  snapPurge?: string;
  /** A clone's flatten in progress (docs/snapshots.md, "Flatten"). */
  flatten?: FlattenProgress;
  /** The consistency group the volume is in (docs/consistency-groups.md). */
  groupId?: string;
  /** A group snapshot's write barrier; commits wait while it is up (docs/consistency-groups.md). */
  barrier?: WriteBarrier;
  /** Multi-attach (docs/nbd-gateway.md): absent until the first read lease; commits need it open. */
  writeIntent?: WriteIntent;
  /** Readers' leases on their caches, by reservation key (docs/nbd-gateway.md, "Multi-attach"). */
  readLeases?: Record<string, ReadLease>;
  /** Rises on every rewrite of `readLeases`, which is conditioned on it. */
  leaseRev?: number;
}

/** The writer's intent over the whole volume: open = commits may apply and nobody caches; closed = no commit applies. */
export interface WriteIntent {
  epoch: number;
  open: boolean;
}

/** A reader's lease: live until `expiresAtMs` (the head's clock); it has honoured openings up to `ackedEpoch`. */
export interface ReadLease {
  expiresAtMs: number;
  ackedEpoch: number;
}

/** A write barrier: raised by group snapshot `id`, live until `expiresAtMs` (the coordinator's clock). */
export interface WriteBarrier {
  id: string;
  expiresAtMs: number;
}

export interface FlattenProgress {
  pagesDone: number;
  pages: number;
  bytesCopied: number;
  startedAt: string;
  updatedAt: string;
}

/** A clone's parent: the snapshot, its volume and its seq (docs/snapshots.md). */
export interface ParentRef {
  volumeId: string;
  snapshotId: string;
  seq: number;
}

/** `pending`: a member of a group snapshot not committed yet (docs/consistency-groups.md). */
export type SnapshotState = 'ready' | 'deleting' | 'pending';

/** A snapshot of a volume: its state as of commit `seq` (docs/snapshots.md). */
export interface SnapshotRecord {
  volumeId: string;
  snapshotId: string;
  seq: number;
  name?: string;
  sizeBytes: number;
  createdAt: string;
  state: SnapshotState;
  /** The volume's parent when the snapshot was taken (snapshots of clones read through it too). */
  parent?: ParentRef;
  /** Clones (`vol-...`) and snapshots of clones (`snap-...`) that read through this snapshot. */
  dependants: string[];
  /** The group snapshot this one is a member of (docs/consistency-groups.md). */
  groupSnapshotId?: string;
}

/** A frozen page: page `page` as it was at snapshot tag `tag` (empty extents: no item then). */
export interface FrozenPage {
  tag: number;
  page: number;
  version: number;
  extents: Extent[];
}

/** The volume's primary head, its reserves, and the primary's lease (docs/reservations.md). */
export interface HeadDesignation {
  primary: string;
  reserves: string[];
  leaseExpiresAtMs: number;
  leaseDurationMs: number;
}

export interface PageRecord {
  page: number;
  version: number;
  extents: Extent[];
  /** The snapshot tag the last commit made sure a frozen copy exists under (docs/snapshots.md). */
  frozenTag?: number;
  /** On a folding volume: the seq the folder folded this page to (docs/page-map.md, "Folding"). */
  foldedTo?: number;
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
  /** On a folding volume: the segment's extents, `[firstBlock, blockCount, segmentBlockOffset or -1 for zeros]` (the descriptor's). */
  extents?: Array<[number, number, number]>;
}

/** A page item exactly as stored: restoring these fields restores the item byte for byte. */
export interface StoredPage {
  page: number;
  version: number;
  segs: string[];
  ext: Uint8Array;
  /** On a folding volume: the seq the page is folded to (a rebuild writes its pages at the head). */
  foldedTo?: number;
}

/** A frozen page item exactly as stored: page `page` as it was at snapshot tag `tag` (docs/snapshots.md). */
export interface StoredFrozen extends StoredPage {
  tag: number;
}

export function segmentRef(volumeId: string, segmentId: string): string {
  return `${volumeId}/${segmentId}`;
}

export function splitSegmentRef(ref: string): [string, string] {
  const slash = ref.indexOf('/');
  invariant(slash > 0, () => `bad segment reference ${ref}`);
  return [ref.slice(0, slash), ref.slice(slash + 1)];
}

export interface PageChange {
  page: number;
  /** The version read in step 1, or null if the page had no item. */
  oldVersion: number | null;
  extents: Extent[];
}

/** Why a commit transaction was refused; the writer's next step depends on it. */
export type CommitRefusal =
  | 'head-moved'
  | 'volume-gone'
  | 'volume-not-active'
  | 'page-moved'
  | 'fenced'
  | 'segment-taken'
  | 'snapshot-moved'
  | 'barrier-raised'
  | 'tail-full'
  | 'intent-unacked';

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

export type MoveOutcome =
  | { kind: 'moved' }
  | { kind: 'refused'; reason: 'record-gone' | 'location-changed'; current: SegmentRecord | null }
  | { kind: 'refused'; reason: 'target-inactive'; current: null };

/** The rebuild lost its fence to another rebuild (or the volume went away) while writing pages. */
export class RebuildFenceLostError extends Error {
  override name = 'RebuildFenceLostError';
}
