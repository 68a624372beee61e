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

/**
 * Encodes a batch body.
 *
 * @example
 * encodeBatch([{ offset: 0, data: Buffer.alloc(4096, 1) }, { offset: 8192, length: 4096, zero: true }]);
 */
export function encodeBatch(pieces: ReadonlyArray<{ offset: number; data: Buffer } | { offset: number; length: number; zero: true }>): Buffer {
  const extents: BatchExtent[] = pieces.map((p) =>
    'data' in p ? { offset: p.offset, length: p.data.length } : { offset: p.offset, length: p.length, zero: true },
  );
  const header = Buffer.from(JSON.stringify({ extents }), 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32BE(header.length);
  return Buffer.concat([MAGIC, len, header, ...pieces.flatMap((p) => ('data' in p ? [p.data] : []))]);
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
