/**
 * The batch write body: many extents in one request, committed as one segment.
 *
 * Layout: `SLB1` (4 bytes) | u32 big-endian header length H | H bytes of JSON
 * `{"extents":[{"offset":N,"length":L},{"offset":N,"length":L,"zero":true}]}` | the bytes of the
 * data extents (those without `zero`), in header order. Zero extents carry no bytes.
 */
import { InvalidInputError } from '../core/errors.ts';
import type { WritePiece } from '../data/write.ts';

const MAGIC = Buffer.from('SLB1', 'ascii');
/** The header is bounded so a malformed length cannot make the head allocate much. */
export const MAX_BATCH_HEADER_BYTES = 1024 * 1024;
export const BATCH_CONTENT_TYPE = 'application/vnd.sledge.batch';

export interface BatchExtent {
  offset: number;
  length: number;
  zero?: boolean;
}

/** A data extent whose bytes are held in pieces (laid end to end), or a run of zeros. */
export type BatchPartsPiece = { offset: number; length: number; parts: readonly Buffer[] } | { offset: number; length: number; zero: true };

/** A data extent held in one buffer. */
export function dataPiece(offset: number, data: Buffer): BatchPartsPiece {
  return { offset, length: data.length, parts: [data] };
}

/**
 * Encodes a batch body as the buffers to send one after another: the magic, length and header
 * in one, then each data extent's pieces as they are. Nothing is copied into a joined body: a
 * 4 MiB batch would otherwise cost a 4 MiB copy into fresh memory per request.
 *
 * @example
 * encodeBatchParts([{ offset: 0, length: 8192, parts: [a4k, b4k] }, { offset: 8192, length: 4096, zero: true }]);
 */
export function encodeBatchParts(pieces: readonly BatchPartsPiece[]): Buffer[] {
  const extents: BatchExtent[] = pieces.map((p) => ('zero' in p ? { offset: p.offset, length: p.length, zero: true } : { offset: p.offset, length: p.length }));
  const header = Buffer.from(JSON.stringify({ extents }), 'utf8');
  const head = Buffer.allocUnsafe(8 + header.length);
  MAGIC.copy(head, 0);
  head.writeUInt32BE(header.length, 4);
  header.copy(head, 8);
  const out: Buffer[] = [head];
  for (const p of pieces) {
    if ('zero' in p) continue;
    let bytes = 0;
    for (const part of p.parts) {
      out.push(part);
      bytes += part.length;
    }
    if (bytes !== p.length) throw new RangeError(`batch extent at ${p.offset} declares ${p.length} bytes but holds ${bytes}`);
  }
  return out;
}

/**
 * Encodes a batch body in one buffer.
 *
 * @example
 * encodeBatch([{ offset: 0, data: Buffer.alloc(4096, 1) }, { offset: 8192, length: 4096, zero: true }]);
 */
export function encodeBatch(pieces: ReadonlyArray<{ offset: number; data: Buffer } | { offset: number; length: number; zero: true }>): Buffer {
  return Buffer.concat(encodeBatchParts(pieces.map((p) => ('data' in p ? dataPiece(p.offset, p.data) : p))));
}

/** Parses a batch body into write pieces; every malformation is a 400 saying what is wrong. */
export function decodeBatch(body: Buffer): WritePiece[] {
  if (body.length < 8 || !body.subarray(0, 4).equals(MAGIC))
    throw new InvalidInputError('batch body must start with the 4 bytes "SLB1" and a 4-byte header length');
  const headerBytes = body.readUInt32BE(4);
  if (headerBytes > MAX_BATCH_HEADER_BYTES || 8 + headerBytes > body.length) {
    throw new InvalidInputError(`batch header length ${headerBytes} is beyond the body (${body.length} bytes) or over ${MAX_BATCH_HEADER_BYTES}`);
  }
  let header: unknown;
  try {
    header = JSON.parse(body.subarray(8, 8 + headerBytes).toString('utf8'));
  } catch (err) {
    throw new InvalidInputError(`batch header is not valid JSON: ${(err as Error).message}`);
  }
  const extents = (header as { extents?: unknown })?.extents;
  if (!Array.isArray(extents) || extents.length === 0) throw new InvalidInputError('batch header must have a non-empty "extents" array');
  let pos = 8 + headerBytes;
  const pieces: WritePiece[] = extents.map((e: unknown, i) => {
    const { offset, length, zero } = (e ?? {}) as Record<string, unknown>;
    if (
      typeof offset !== 'number' ||
      typeof length !== 'number' ||
      !Number.isSafeInteger(offset) ||
      !Number.isSafeInteger(length) ||
      length <= 0 ||
      offset < 0
    ) {
      throw new InvalidInputError(`batch extent ${i} needs integer offset >= 0 and length > 0`);
    }
    if (zero !== undefined && typeof zero !== 'boolean') throw new InvalidInputError(`batch extent ${i}: zero must be a boolean`);
    if (zero) return { offset, length };
    if (pos + length > body.length) throw new InvalidInputError(`batch extent ${i} needs ${length} bytes but the body ends ${body.length - pos} bytes later`);
    const data = body.subarray(pos, pos + length);
    pos += length;
    return { offset, length, data };
  });
  if (pos !== body.length) throw new InvalidInputError(`batch body has ${body.length - pos} bytes after the last extent`);
  return pieces;
}
