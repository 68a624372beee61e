/**
 * Checkpoints of a page map (docs/checkpoints.md): their ids, descriptors, placement and payload
 * format, as pure functions. A checkpoint is the page map of a volume as of one commit seq,
 * stored like a segment: erasure-coded k+m on distinct sleds, checksummed per granule and as a
 * whole, with a self-describing trailer.
 */
import { randomBytes } from 'node:crypto';
import { invariant } from '../../core/errors.ts';
import { type StoredFrozen, type StoredPage } from '../../core/records.ts';
import { chunkKey, parseObjectChunkKey, type ChunkLocation } from '../../data/sleds.ts';

/** How many checkpoints a volume keeps; older ones are reclaimed (docs/checkpoints.md). */
export const CHECKPOINT_RETAIN = 3;

/** A checkpoint object set newer than the recorded one is left alone this long (its job may be running). */
export const CHECKPOINT_GRACE_MS = 60 * 60 * 1000;

/** The largest checkpoint payload a worker builds in memory (about a 16 TiB volume written everywhere). */
export const CHECKPOINT_PAYLOAD_MAX_BYTES = 512 * 1024 * 1024;

/** Rounds of re-reading pages changed by commits during a checkpoint's scan. */
export const SETTLE_ROUNDS_MAX = 8;

/**
 * A checkpoint replays at most this many segments onto the previous one (one trailer GET
 * each); further back, it scans the live page map instead (docs/checkpoints.md).
 */
export const CHECKPOINT_REPLAY_SEGMENTS_MAX = 4096;

/** Parallel trailer reads and deletes. */
export const IO_CONCURRENCY = 16;

/** Checkpoint data chunks are whole multiples of this. */
export const CHECKPOINT_ALIGN_BYTES = 4096;

/** Bytes fetched from the end of a chunk to find its trailer; a longer trailer costs a second GET. */
export const TAIL_GUESS_BYTES = 16 * 1024;

/** Volumes scanned per sweep message. */
export const SWEEP_VOLUMES_PER_MESSAGE = 100;

export const CHECKPOINT_ID_PREFIX = 'ckpt-';

export const CHECKPOINT_FOOTER_MAGIC = Buffer.from('SLDGCKP1', 'ascii');

/** A payload of pages only (checkpoints taken before frozen pages were part of them). */
const PAYLOAD_MAGIC = Buffer.from('SLDGMAP1', 'ascii');

/** A payload of pages, then frozen pages (docs/checkpoints.md, "Frozen pages"). */
const PAYLOAD_MAGIC_FROZEN = Buffer.from('SLDGMAP2', 'ascii');

/** Raised when a checkpoint cannot be read back intact (too few chunks, a bad checksum). */
export class CheckpointUnreadableError extends Error {
  override name = 'CheckpointUnreadableError';
}

/** Raised when the commit chain cannot be walked from the head down to the checkpoint. */
export class ChainBrokenError extends Error {
  override name = 'ChainBrokenError';
}

/** Raised when a checkpoint payload is malformed. */
export class CheckpointFormatError extends Error {
  override name = 'CheckpointFormatError';
}

export const pad12 = (seq: number) => String(seq).padStart(12, '0');

/** `ckpt-<seq, 12 digits>-<8 random hex>`: sorts by seq, unique when jobs race. */
export function newCheckpointId(seq: number): string {
  invariant(Number.isSafeInteger(seq) && seq > 0 && seq < 1e12, () => `bad checkpoint sequence ${seq}`);
  return `${CHECKPOINT_ID_PREFIX}${pad12(seq)}-${randomBytes(4).toString('hex')}`;
}

/** The seq in a checkpoint id, or null if `id` is not one. */
export function checkpointIdSeq(id: string): number | null {
  const m = /^ckpt-(\d{12})-[0-9a-f]{8}$/.exec(id);
  return m ? Number(m[1]) : null;
}

/** The seq in a segment id, or null if `id` is not one. */
export function segmentIdSeq(id: string): number | null {
  const m = /^(\d{12})-[0-9a-f]{8}$/.exec(id);
  return m ? Number(m[1]) : null;
}

/** What every chunk's trailer says about its checkpoint. */
export interface CheckpointDescriptor {
  v: 1;
  kind: 'checkpoint';
  volumeId: string;
  checkpointId: string;
  /** The commit seq the page map is as of. */
  seq: number;
  /** The segment committed at `seq` ('' for seq 0): where a rebuild's chain walk must arrive. */
  headSegmentId: string;
  k: number;
  m: number;
  chunkSizeBytes: number;
  granuleBytes: number;
  payloadBytes: number;
  payloadCrc: number;
  pages: number;
  /** How the map was built: `replay` (a previous checkpoint plus the committed segments) or `scan` (of the live items). */
  method: 'replay' | 'scan';
  /** Whether the map was checked page by page against the live page items before writing. */
  verified: boolean;
  crcs: number[][];
  createdAt: string;
}

/** `<sled index>/<drive>` per chunk, comma-joined: the compact location kept on the volume item. */
export function formatPlacement(locations: readonly ChunkLocation[], buckets: readonly string[]): string {
  return locations
    .map((l) => {
      const sled = buckets.indexOf(l.bucket);
      const parsed = parseObjectChunkKey(l.key);
      invariant(sled >= 0 && parsed, () => `chunk ${l.bucket}/${l.key} is not on a known sled`);
      return `${sled}/${parsed.drive}`;
    })
    .join(',');
}

/** The chunk locations a placement names, or null for a chunk whose sled is not in `buckets`. */
export function parsePlacement(placement: string, volumeId: string, checkpointId: string, buckets: readonly string[]): Array<ChunkLocation | null> {
  return placement.split(',').map((part, i) => {
    const m = /^(\d+)\/(d\d{2})$/.exec(part);
    const bucket = m ? buckets[Number(m[1])] : undefined;
    return bucket && m ? { bucket, key: chunkKey(m[2]!, volumeId, checkpointId, i) } : null;
  });
}

// ---------------------------------------------------------------------------------------
// The payload: the page map in stored form (pure)

/** What a checkpoint holds: the live pages and, unless it predates them, the frozen pages. */
export interface CheckpointContents {
  pages: StoredPage[];
  /** Null for a payload written before checkpoints held frozen pages (`SLDGMAP1`). */
  frozen: StoredFrozen[] | null;
}

function storedBytes(p: StoredPage): number {
  return 6 + 2 + 4 * p.segs.length + 4 + p.ext.length;
}

/**
 * Encodes pages (any order; written in page order) and frozen pages (written in tag, then page
 * order) as a checkpoint payload: a string table of segment references, then per page its
 * version, its `segs` as table indexes, and its `ext` bytes verbatim, then the frozen pages the
 * same way after their tag (format in docs/checkpoints.md). Without `frozen`, the older
 * pages-only format.
 *
 * @example
 * const payload = encodeCheckpointPayload([{ page: 0, version: 1, segs: ['vol-1/000000000001-ab12cd34'], ext }], []);
 * decodeCheckpointContents(payload); // { pages: [the same page], frozen: [] }
 */
export function encodeCheckpointPayload(pages: Iterable<StoredPage>, frozen?: Iterable<StoredFrozen>): Buffer {
  const sorted = [...pages].sort((a, b) => a.page - b.page);
  const frames = frozen === undefined ? null : [...frozen].sort((a, b) => a.tag - b.tag || a.page - b.page);
  const table = new Map<string, number>();
  for (const p of [...sorted, ...(frames ?? [])]) for (const s of p.segs) if (!table.has(s)) table.set(s, table.size);
  const strings = [...table.keys()].map((s) => Buffer.from(s, 'utf8'));
  let size = 8 + 4 + strings.reduce((n, b) => n + 2 + b.length, 0) + 4;
  for (const p of sorted) size += 4 + storedBytes(p);
  if (frames) size += 4 + frames.reduce((n, f) => n + 6 + 4 + storedBytes(f), 0);
  invariant(size <= CHECKPOINT_PAYLOAD_MAX_BYTES, () => `checkpoint payload of ${size} bytes is over the limit of ${CHECKPOINT_PAYLOAD_MAX_BYTES}`);
  const out = Buffer.alloc(size);
  let o = (frames ? PAYLOAD_MAGIC_FROZEN : PAYLOAD_MAGIC).copy(out, 0);
  o = out.writeUInt32BE(strings.length, o);
  for (const b of strings) {
    invariant(b.length <= 0xffff, 'segment reference longer than 65535 bytes');
    o = out.writeUInt16BE(b.length, o);
    o += b.copy(out, o);
  }
  const writeStored = (p: StoredPage) => {
    invariant(Number.isSafeInteger(p.version) && p.version >= 0 && p.version < 2 ** 48, () => `page ${p.page}: version ${p.version} does not fit 48 bits`);
    invariant(p.ext.length % 10 === 0 && p.segs.length <= 0xffff, () => `page ${p.page}: malformed stored page`);
    o = out.writeUIntBE(p.version, o, 6);
    o = out.writeUInt16BE(p.segs.length, o);
    for (const s of p.segs) o = out.writeUInt32BE(table.get(s)!, o);
    o = out.writeUInt32BE(p.ext.length, o);
    o += Buffer.from(p.ext.buffer, p.ext.byteOffset, p.ext.byteLength).copy(out, o);
  };
  o = out.writeUInt32BE(sorted.length, o);
  for (let i = 0; i < sorted.length; i++) {
    const p = sorted[i]!;
    invariant(i === 0 || sorted[i - 1]!.page < p.page, () => `page ${p.page} appears twice`);
    o = out.writeUInt32BE(p.page, o);
    writeStored(p);
  }
  if (frames) {
    o = out.writeUInt32BE(frames.length, o);
    for (let i = 0; i < frames.length; i++) {
      const f = frames[i]!;
      const prev = frames[i - 1];
      invariant(!prev || prev.tag < f.tag || prev.page < f.page, () => `frozen page ${f.tag}/${f.page} appears twice`);
      invariant(Number.isSafeInteger(f.tag) && f.tag >= 0 && f.tag < 2 ** 48, () => `frozen page ${f.page}: tag ${f.tag} does not fit 48 bits`);
      o = out.writeUIntBE(f.tag, o, 6);
      o = out.writeUInt32BE(f.page, o);
      writeStored(f);
    }
  }
  invariant(o === size, 'checkpoint payload size miscounted');
  return out;
}

/** Decodes a checkpoint payload of either format; any malformation is a CheckpointFormatError. */
export function decodeCheckpointContents(payload: Buffer): CheckpointContents {
  let o = 0;
  const need = (n: number) => {
    if (o + n > payload.length) throw new CheckpointFormatError(`checkpoint payload ends at ${payload.length}, needed ${o + n}`);
  };
  need(12);
  const magic = payload.subarray(0, 8);
  const withFrozen = magic.equals(PAYLOAD_MAGIC_FROZEN);
  if (!withFrozen && !magic.equals(PAYLOAD_MAGIC)) throw new CheckpointFormatError('checkpoint payload magic missing');
  o = 8;
  const stringCount = payload.readUInt32BE(o);
  o += 4;
  const strings: string[] = [];
  for (let i = 0; i < stringCount; i++) {
    need(2);
    const len = payload.readUInt16BE(o);
    o += 2;
    need(len);
    strings.push(payload.toString('utf8', o, o + len));
    o += len;
  }
  const readStored = (page: number): StoredPage => {
    need(8);
    const version = payload.readUIntBE(o, 6);
    const segCount = payload.readUInt16BE(o + 6);
    o += 8;
    need(4 * segCount + 4);
    const segs: string[] = [];
    for (let j = 0; j < segCount; j++, o += 4) {
      const s = strings[payload.readUInt32BE(o)];
      if (s === undefined) throw new CheckpointFormatError(`page ${page}: segment index out of range`);
      segs.push(s);
    }
    const extBytes = payload.readUInt32BE(o);
    o += 4;
    need(extBytes);
    if (extBytes % 10 !== 0) throw new CheckpointFormatError(`page ${page}: extent bytes ${extBytes} not a multiple of 10`);
    const ext = new Uint8Array(payload.subarray(o, o + extBytes));
    o += extBytes;
    return { page, version, segs, ext };
  };
  need(4);
  const pageCount = payload.readUInt32BE(o);
  o += 4;
  const pages: StoredPage[] = [];
  for (let i = 0; i < pageCount; i++) {
    need(4);
    const page = payload.readUInt32BE(o);
    o += 4;
    if (pages.length > 0 && pages[pages.length - 1]!.page >= page) throw new CheckpointFormatError(`page ${page} out of order`);
    pages.push(readStored(page));
  }
  let frozen: StoredFrozen[] | null = null;
  if (withFrozen) {
    need(4);
    const frameCount = payload.readUInt32BE(o);
    o += 4;
    frozen = [];
    for (let i = 0; i < frameCount; i++) {
      need(10);
      const tag = payload.readUIntBE(o, 6);
      const page = payload.readUInt32BE(o + 6);
      o += 10;
      const prev = frozen[frozen.length - 1];
      if (prev && (prev.tag > tag || (prev.tag === tag && prev.page >= page))) throw new CheckpointFormatError(`frozen page ${tag}/${page} out of order`);
      frozen.push({ tag, ...readStored(page) });
    }
  }
  if (o !== payload.length) throw new CheckpointFormatError(`checkpoint payload has ${payload.length - o} bytes after the last page`);
  return { pages, frozen };
}

/** The live pages of a checkpoint payload of either format. */
export function decodeCheckpointPayload(payload: Buffer): StoredPage[] {
  return decodeCheckpointContents(payload).pages;
}

/** Whether two stored pages are identical (version, segment references, extent bytes). */
export function samePage(a: StoredPage, b: StoredPage): boolean {
  return (
    a.page === b.page &&
    a.version === b.version &&
    a.segs.length === b.segs.length &&
    a.segs.every((s, i) => s === b.segs[i]) &&
    Buffer.from(a.ext.buffer, a.ext.byteOffset, a.ext.byteLength).equals(Buffer.from(b.ext.buffer, b.ext.byteOffset, b.ext.byteLength))
  );
}
