/**
 * Volume geometry: defaults and limits, and the checks every request passes before anything is
 * read or written (so bad input changes nothing).
 */
import { randomBytes } from 'node:crypto';
import { InvalidInputError, NotFoundError, UnavailableError } from '../core/errors.ts';
import { type VolumeRecord } from '../core/records.ts';

export const DEFAULT_BLOCK_SIZE_BYTES = 4096;

export const DEFAULT_DATA_CHUNKS = 4;

export const DEFAULT_PARITY_CHUNKS = 2;

/** Blocks per page-map item (1 MiB of address space at 4 KiB blocks). */
export const PAGE_BLOCKS = 256;

/** The largest single read or write, and the largest data in one batch. */
export const MAX_IO_BYTES = 4 * 1024 * 1024;

/** 64 TiB, the same ceiling as an EBS io2 Block Express volume. */
export const MAX_VOLUME_BYTES = 64 * 1024 ** 4;

/** The identity this process writes segments under. */
export const HEAD_ID = `head-${process.pid}-${randomBytes(4).toString('hex')}`;

export function integerField(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) {
    throw new InvalidInputError(`${name} must be an integer, got ${JSON.stringify(value)}`);
  }
  return value;
}

export function checkAligned(value: number, blockSizeBytes: number, name: string): void {
  if (value % blockSizeBytes !== 0) throw new InvalidInputError(`${name} ${value} is not a multiple of the block size ${blockSizeBytes}`);
}

/** Checks a byte range against the volume: aligned, non-empty, inside the volume. */
export function checkRange(v: VolumeRecord, offset: number, length: number, maxLength: number | null): void {
  if (!Number.isSafeInteger(offset) || offset < 0) throw new InvalidInputError(`offset must be a non-negative integer, got ${offset}`);
  if (!Number.isSafeInteger(length) || length <= 0) throw new InvalidInputError(`length must be a positive integer, got ${length}`);
  checkAligned(offset, v.blockSizeBytes, 'offset');
  checkAligned(length, v.blockSizeBytes, 'length');
  if (maxLength !== null && length > maxLength) throw new InvalidInputError(`length ${length} is over the limit of ${maxLength} bytes per request`);
  if (offset + length > v.sizeBytes) {
    throw new InvalidInputError(`range [${offset}, ${offset + length}) is beyond the end of volume ${v.volumeId} (${v.sizeBytes} bytes)`);
  }
}

/** The volume, if it can serve now: 404 if missing or being deleted, 503 while a rebuild holds it. */
export function requireActive(v: VolumeRecord | null, volumeId: string): VolumeRecord {
  if (!v) throw new NotFoundError(`volume ${volumeId} does not exist`);
  if (v.state === 'rebuilding') throw rebuildingError(volumeId);
  if (v.state !== 'active') throw new NotFoundError(`volume ${volumeId} is being deleted`);
  return v;
}

/** I/O while a page-map rebuild holds the fence: retry once it is done (docs/checkpoints.md). */
export function rebuildingError(volumeId: string): UnavailableError {
  return new UnavailableError(`volume ${volumeId} is being rebuilt from its checkpoint; retry when the rebuild is done`, { retryAfterSeconds: 5 });
}
