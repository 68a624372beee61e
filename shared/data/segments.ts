/**
 * The segment format: how one write becomes k+m self-describing chunks.
 *
 * A chunk object is `chunkSizeBytes` of data (plain payload for chunks 0..k-1, Reed-Solomon
 * parity for k..k+m-1) followed by a trailer: the segment descriptor as JSON, then a 16-byte
 * footer `SLDGSEG1 | u32 json length | u32 CRC32C of the json`. Data comes first so that a read
 * of payload bytes is a plain ranged GET at the same offset.
 *
 * A granule (64 KiB of each chunk) is both the checksum unit and the erasure-coding stripe:
 * granule g of the parity chunks is computed from granule g of the data chunks alone, so a
 * reader can rebuild one granule from the same byte range of any k chunks. Every chunk carries
 * the CRC32C of every granule of every chunk of its segment, so a reader checks each granule
 * it fetches, and any one readable chunk identifies the segment.
 */
import { randomBytes } from 'node:crypto';
import { segmentBuffers, type Lease } from './buffer-pool.ts';
import { crc32c, crc32cCombine } from './crc32c.ts';
import { codec } from './erasure.ts';
import { invariant } from '../core/errors.ts';
import type { SegmentRecord } from '../core/records.ts';
import type { ChunkLocation } from './sleds.ts';

export const GRANULE_BYTES = 64 * 1024;
export const SEGMENT_FOOTER_MAGIC = Buffer.from('SLDGSEG1', 'ascii');
export const FOOTER_BYTES = 16;

/** Who wrote a segment. Reservations add the key and generation the writer held. */
export interface WriterIdentity {
  id: string;
  key?: string;
  generation?: number;
}

/** `[firstBlock, blockCount, segmentBlockOffset]`; offset -1 marks a zero (trim) extent. */
export type DescriptorExtent = [number, number, number];

export interface SegmentDescriptor {
  v: 1;
  volumeId: string;
  segmentId: string;
  /** The commit sequence this segment was built for: the volume's `headSeq + 1`. */
  seq: number;
  /** The segment that was the volume's commit head when this one was built ('' for the first). */
  prev: string;
  writer: WriterIdentity;
  k: number;
  m: number;
  chunkSizeBytes: number;
  granuleBytes: number;
  blockSizeBytes: number;
  payloadBytes: number;
  extents: DescriptorExtent[];
  /**
   * Pages this commit replaced whole, as `[page, segs, ext (base64)]` exactly as stored (a
   * rollback to a snapshot, docs/snapshots.md); replayed after `extents`.
   */
  pages?: Array<[number, string[], string]>;
  /** `crcs[chunk][granule]`: CRC32C of each granule of each chunk. */
  crcs: number[][];
  createdAt: string;
}

export interface EncodedSegment {
  descriptor: SegmentDescriptor;
  /** k+m chunk objects, data then trailer. */
  chunks: Buffer[];
  /** CRC32C of each whole chunk object, sent to S3 so that it verifies the upload. */
  objectCrcs: number[];
  /**
   * Returns the chunks' memory to the segment buffer pool: call once every PUT of the chunks
   * has settled, and never read `chunks` after. Not calling it is safe (the memory is then
   * collected as garbage).
   */
  release(): void;
}

/** `<seq, 12 digits>-<8 random hex>`: sorts by sequence, unique even when writers race. */
export function newSegmentId(seq: number): string {
  invariant(Number.isSafeInteger(seq) && seq > 0 && seq < 1e12, () => `bad segment sequence ${seq}`);
  return `${String(seq).padStart(12, '0')}-${randomBytes(4).toString('hex')}`;
}

/** Whether `x` has the form of a segment id (`newSegmentId`): a 12-digit seq, a dash, 8 hex digits. */
export function isSegmentId(x: unknown): x is string {
  return typeof x === 'string' && /^\d{12}-[0-9a-f]{8}$/.test(x);
}

/** The commit sequence a segment id was built for (its 12-digit prefix). */
export function segmentIdSeq(segmentId: string): number {
  const m = /^(\d{12})-/.exec(segmentId);
  invariant(m, () => `segment id ${segmentId} does not start with its sequence`);
  return Number(m[1]);
}

/** Chunk size for a payload: enough for the payload over k chunks, whole blocks, multiple of 8. */
export function chunkSizeFor(payloadBytes: number, k: number, blockSizeBytes: number): number {
  const perChunk = Math.ceil(payloadBytes / k);
  return Math.ceil(perChunk / blockSizeBytes) * blockSizeBytes;
}

/** CRC32C of each granule of `chunk` (the last granule may be short). */
export function granuleCrcs(chunk: Uint8Array, granuleBytes = GRANULE_BYTES): number[] {
  const out: number[] = [];
  for (let o = 0; o < chunk.length; o += granuleBytes) out.push(crc32c(chunk.subarray(o, Math.min(chunk.length, o + granuleBytes))));
  return out;
}

/** The k data and m parity shards of a payload, and the CRC32C of every granule of each. */
export interface Stripes {
  chunkSizeBytes: number;
  /** k data shards then m parity shards, each `chunkSizeBytes` long. */
  shards: Buffer[];
  /** `crcs[chunk][granule]`. */
  crcs: number[][];
}

/**
 * Splits a payload over k zero-padded data shards of whole `alignBytes` units and computes m
 * parity shards granule by granule. Segments and checkpoints are both stored this way.
 *
 * All k+m shards live in one allocation (one large buffer per write instead of dozens keeps
 * the garbage collector's external-memory pressure down). With `tailRoom`, each shard is
 * followed by that many spare bytes, so a caller can append a trailer in place and send
 * `shard + trailer` as one view, without copying the chunk.
 */
export async function encodeStripes(
  k: number,
  m: number,
  alignBytes: number,
  payload: Buffer | readonly Buffer[],
  opts: { tailRoom?: number; allocate?: (bytes: number) => Buffer } = {},
): Promise<Stripes & { stride: number }> {
  const tailRoom = opts.tailRoom ?? 0;
  const parts = Buffer.isBuffer(payload) ? [payload] : payload;
  const payloadBytes = parts.reduce((n, p) => n + p.length, 0);
  const chunkSizeBytes = chunkSizeFor(payloadBytes, k, alignBytes);
  const stride = chunkSizeBytes + tailRoom;
  // Uninitialized: every byte that is ever read is written below (payload, padding, parity),
  // and the tail room only by the caller's trailer.
  const region = (opts.allocate ?? Buffer.allocUnsafeSlow)((k + m) * stride);
  invariant(region.length === (k + m) * stride, 'allocator returned a buffer of the wrong size');
  const shards = Array.from({ length: k + m }, (_, i) => region.subarray(i * stride, i * stride + chunkSizeBytes));
  // The payload, copied once into the data shards (a part may straddle two shards).
  let at = 0;
  for (const p of parts) {
    for (let from = 0; from < p.length; ) {
      const shard = Math.floor(at / chunkSizeBytes);
      const offset = at - shard * chunkSizeBytes;
      const n = Math.min(p.length - from, chunkSizeBytes - offset);
      p.copy(shards[shard]!, offset, from, from + n);
      from += n;
      at += n;
    }
  }
  // Zero padding after the payload, to the end of the data shards.
  for (let i = Math.floor(at / chunkSizeBytes); i < k; i++) shards[i]!.fill(0, Math.max(0, at - i * chunkSizeBytes));
  // Parity is computed granule by granule, each granule an independent Reed-Solomon stripe.
  // The codec (a Cauchy bit-matrix code, like @ronomon/reed-solomon) mixes bytes across a
  // whole shard, so parity computed over the whole chunk could not rebuild a single granule
  // from the same byte range of the other chunks; per-granule stripes can.
  const data = shards.slice(0, k);
  const parity = shards.slice(k);
  for (let a = 0; a < chunkSizeBytes; a += GRANULE_BYTES) {
    const b = Math.min(chunkSizeBytes, a + GRANULE_BYTES);
    await codec().encode(
      k,
      m,
      data.map((d) => d.subarray(a, b)),
      parity.map((p) => p.subarray(a, b)),
    );
  }
  invariant(shards.length === k + m && shards.every((s) => s.length === chunkSizeBytes), 'encoder returned wrong shard count or size');
  return { chunkSizeBytes, shards, crcs: shards.map((s) => granuleCrcs(s)), stride };
}

/** The largest value of a granule CRC: the trailer-size bound assumes every CRC has its digits. */
const MAX_CRC = 0xffffffff;

/**
 * Builds the chunks of a segment from its payload (the extents' bytes concatenated in order).
 *
 * @example
 * const seg = await encodeSegment({ volumeId, segmentId: newSegmentId(1), seq: 1, prev: '', writer: { id: 'head-1' },
 *   k: 4, m: 2, blockSizeBytes: 4096, extents: [[0, 1, 0]] }, Buffer.alloc(4096, 7));
 * seg.chunks.length; // 6
 */
export async function encodeSegment(
  meta: Omit<SegmentDescriptor, 'v' | 'chunkSizeBytes' | 'granuleBytes' | 'payloadBytes' | 'crcs' | 'createdAt'>,
  payload: Buffer | readonly Buffer[],
): Promise<EncodedSegment> {
  const { k, m, blockSizeBytes } = meta;
  const parts = Buffer.isBuffer(payload) ? [payload] : payload;
  const payloadBytes = parts.reduce((n, p) => n + p.length, 0);
  invariant(payloadBytes % blockSizeBytes === 0, `payload ${payloadBytes} is not whole blocks`);
  // Everything in the descriptor but the CRCs is known now, so the trailer's size is bounded
  // before encoding: room for it is left after each chunk.
  const chunkSize = chunkSizeFor(payloadBytes, k, blockSizeBytes);
  const granules = Math.ceil(chunkSize / GRANULE_BYTES);
  const base: Omit<SegmentDescriptor, 'crcs'> = {
    v: 1,
    ...meta,
    chunkSizeBytes: chunkSize,
    granuleBytes: GRANULE_BYTES,
    payloadBytes,
    createdAt: new Date().toISOString(),
  };
  const widest: SegmentDescriptor = { ...base, crcs: Array.from({ length: k + m }, () => new Array<number>(granules).fill(MAX_CRC)) };
  const tailRoom = trailerBytesFor({ ...widest, chunkIndex: k + m - 1 });
  let lease: Lease | undefined;
  const allocate = (bytes: number) => (lease = segmentBuffers.take(bytes)).buffer;
  let stripes: Awaited<ReturnType<typeof encodeStripes>>;
  try {
    stripes = await encodeStripes(k, m, blockSizeBytes, parts, { tailRoom, allocate });
  } catch (err) {
    lease?.release();
    throw err;
  }
  const { chunkSizeBytes, shards, crcs, stride } = stripes;
  invariant(chunkSizeBytes === chunkSize, 'chunk size changed under the encoder');
  const descriptor: SegmentDescriptor = { ...base, crcs };
  const chunks: Buffer[] = [];
  const objectCrcs: number[] = [];
  shards.forEach((shard, i) => {
    const region = Buffer.from(shard.buffer, shard.byteOffset, stride);
    const trailerLength = writeTrailer(JSON.stringify({ ...descriptor, chunkIndex: i }), SEGMENT_FOOTER_MAGIC, region, chunkSizeBytes);
    const chunk = region.subarray(0, chunkSizeBytes + trailerLength);
    chunks.push(chunk);
    // The whole-object CRC (which S3 verifies on upload) from the granule CRCs: no second pass
    // over the data.
    let crc = 0;
    crcs[i]!.forEach((g, n) => (crc = crc32cCombine(crc, g, Math.min(GRANULE_BYTES, chunkSizeBytes - n * GRANULE_BYTES))));
    objectCrcs.push(crc32c(chunk.subarray(chunkSizeBytes), crc));
  });
  return { descriptor, chunks, objectCrcs, release: () => lease?.release() };
}

/**
 * The trailer of chunk `chunkIndex`: the descriptor (as parsed from any chunk of the segment)
 * with that chunk's index. Byte-identical to the one written with the segment, since the keys
 * keep their order. Evacuation uses it to rebuild a whole chunk object.
 */
export function chunkTrailer(descriptor: SegmentDescriptor & { chunkIndex: number }, chunkIndex: number): Buffer {
  return encodeTrailer({ ...descriptor, chunkIndex }, SEGMENT_FOOTER_MAGIC);
}

/**
 * A descriptor with its keys in the order `encodeSegment` writes them, from its fields alone:
 * the trailer of a segment encoded elsewhere (a gateway's direct write, docs/nbd-gateway.md) is
 * then byte-identical to the one the head would write, whatever order the fields arrived in.
 */
export function canonicalDescriptor(d: SegmentDescriptor): SegmentDescriptor {
  const writer: WriterIdentity = { id: d.writer.id };
  if (d.writer.key !== undefined) writer.key = d.writer.key;
  if (d.writer.generation !== undefined) writer.generation = d.writer.generation;
  return {
    v: 1,
    volumeId: d.volumeId,
    segmentId: d.segmentId,
    seq: d.seq,
    prev: d.prev,
    writer,
    k: d.k,
    m: d.m,
    blockSizeBytes: d.blockSizeBytes,
    extents: d.extents.map((e) => [e[0], e[1], e[2]]),
    chunkSizeBytes: d.chunkSizeBytes,
    granuleBytes: d.granuleBytes,
    payloadBytes: d.payloadBytes,
    createdAt: d.createdAt,
    crcs: d.crcs.map((c) => [...c]),
  };
}

/**
 * Chunk `i`'s trailer, whole-object length and whole-object CRC32C, from the descriptor alone
 * (the granule CRCs combined, then the trailer): what `encodeSegment` writes and S3 stores.
 */
export function chunkObjectOf(d: SegmentDescriptor, i: number): { trailer: Buffer; bytes: number; crc: number } {
  const trailer = encodeTrailer({ ...d, chunkIndex: i }, SEGMENT_FOOTER_MAGIC);
  let crc = 0;
  d.crcs[i]!.forEach((g, n) => (crc = crc32cCombine(crc, g, Math.min(d.granuleBytes, d.chunkSizeBytes - n * d.granuleBytes))));
  return { trailer, bytes: d.chunkSizeBytes + trailer.length, crc: crc32c(trailer, crc) };
}

/** A trailer: `json | 8-byte magic | u32 json length | u32 CRC32C of the json`. */
export function encodeTrailer(descriptor: object, magic: Buffer): Buffer {
  const json = JSON.stringify(descriptor);
  const out = Buffer.alloc(Buffer.byteLength(json, 'utf8') + FOOTER_BYTES);
  writeTrailer(json, magic, out, 0);
  return out;
}

/** Bytes the trailer of `descriptor` takes. */
export function trailerBytesFor(descriptor: object): number {
  return Buffer.byteLength(JSON.stringify(descriptor), 'utf8') + FOOTER_BYTES;
}

/** Writes the trailer whose descriptor is `json` into `target` at `offset`; returns its length. Throws if it does not fit. */
function writeTrailer(json: string, magic: Buffer, target: Buffer, offset: number): number {
  invariant(magic.length === 8, 'a footer magic is 8 bytes');
  const jsonBytes = Buffer.byteLength(json, 'utf8');
  invariant(offset + jsonBytes + FOOTER_BYTES <= target.length, () => `trailer of ${jsonBytes + FOOTER_BYTES} bytes does not fit in ${target.length - offset}`);
  target.write(json, offset, 'utf8');
  const footer = target.subarray(offset + jsonBytes, offset + jsonBytes + FOOTER_BYTES);
  magic.copy(footer, 0);
  footer.writeUInt32BE(jsonBytes, 8);
  footer.writeUInt32BE(crc32c(target.subarray(offset, offset + jsonBytes)), 12);
  return jsonBytes + FOOTER_BYTES;
}

/**
 * Parses the trailer at the end of `tail` (the last bytes of an object, at least the whole
 * trailer) whose footer carries `magic`. Throws if the trailer is damaged or of another kind.
 */
export function decodeTrailer<T>(tail: Buffer, magic: Buffer): T {
  invariant(tail.length >= FOOTER_BYTES, 'chunk tail shorter than the footer');
  const footer = tail.subarray(tail.length - FOOTER_BYTES);
  invariant(footer.subarray(0, 8).equals(magic), () => `chunk footer magic ${magic.toString('ascii')} missing`);
  const jsonBytes = footer.readUInt32BE(8);
  invariant(tail.length >= FOOTER_BYTES + jsonBytes, () => `need ${FOOTER_BYTES + jsonBytes} tail bytes, have ${tail.length}`);
  const json = tail.subarray(tail.length - FOOTER_BYTES - jsonBytes, tail.length - FOOTER_BYTES);
  invariant(crc32c(json) === footer.readUInt32BE(12), 'chunk descriptor checksum mismatch');
  return JSON.parse(json.toString('utf8')) as T;
}

/**
 * Parses the trailer at the end of `tail` (the last bytes of a chunk object, at least the
 * whole trailer). Returns the descriptor and the chunk's index, or throws if the trailer is
 * damaged. Used by rebuild and evacuation, which read chunks without a segment record.
 */
export function parseTrailer(tail: Buffer): SegmentDescriptor & { chunkIndex: number } {
  return decodeTrailer(tail, SEGMENT_FOOTER_MAGIC);
}

/** Bytes of trailer in `tail`'s footer (any kind), or null if `tail` does not end in one. */
export function trailerBytesIn(tail: Buffer): number | null {
  if (tail.length < FOOTER_BYTES) return null;
  return tail.readUInt32BE(tail.length - 8) + FOOTER_BYTES;
}

/** Bytes of trailer that follow the data in chunk objects with this footer. */
export function trailerBytesFromFooter(footer: Buffer): number {
  invariant(footer.length === FOOTER_BYTES && footer.subarray(0, 8).equals(SEGMENT_FOOTER_MAGIC), 'not a chunk footer');
  return footer.readUInt32BE(8) + FOOTER_BYTES;
}

/**
 * The segment record of a segment (docs/page-map.md, "What is stored where"): its descriptor
 * and where its chunks are. The one place the record's shape is built, for a commit and for a
 * rebuild restoring a lost record.
 */
export function segmentRecordOf(d: SegmentDescriptor, locations: ChunkLocation[]): SegmentRecord {
  return {
    volumeId: d.volumeId,
    segmentId: d.segmentId,
    seq: d.seq,
    prev: d.prev,
    k: d.k,
    m: d.m,
    chunkSizeBytes: d.chunkSizeBytes,
    granuleBytes: d.granuleBytes,
    blockSizeBytes: d.blockSizeBytes,
    payloadBytes: d.payloadBytes,
    locations,
    crcs: d.crcs,
    createdAt: d.createdAt,
  };
}
