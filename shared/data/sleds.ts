/**
 * The sleds: S3 buckets (failure domains) whose key prefixes are drives, and the names of the
 * chunk objects on them (pure). The S3 requests for chunks are in shared/aws/chunk-store.ts.
 */
import { createHash } from 'node:crypto';
import { InvalidInputError, invariant } from '../core/errors.ts';

/** Drives per sled until the drive registry exists: prefixes `d00`..`d03`. */
export const DRIVES_PER_SLED = 4;

export interface ChunkLocation {
  bucket: string;
  key: string;
}

export function driveName(index: number): string {
  return `d${String(index).padStart(2, '0')}`;
}

export function chunkKey(drive: string, volumeId: string, segmentId: string, chunkIndex: number): string {
  return `${drive}/${volumeId}/${segmentId}.${chunkIndex}`;
}

/**
 * Places the k+m chunks of a segment on k+m distinct sleds, rotating the starting sled by a
 * hash of the segment id so that load spreads over all sleds and drives.
 */
export function placeChunks(volumeId: string, segmentId: string, chunkCount: number, buckets: readonly string[]): ChunkLocation[] {
  if (chunkCount > buckets.length) {
    throw new InvalidInputError(`${chunkCount} chunks per stripe need ${chunkCount} sleds, this deployment has ${buckets.length}`);
  }
  const hash = createHash('sha256').update(`${volumeId}/${segmentId}`).digest();
  const start = hash.readUInt32BE(0) % buckets.length;
  const locations: ChunkLocation[] = [];
  for (let i = 0; i < chunkCount; i++) {
    const bucket = buckets[(start + i) % buckets.length]!;
    const drive = driveName(hash[4 + (i % 28)]! % DRIVES_PER_SLED);
    locations.push({ bucket, key: chunkKey(drive, volumeId, segmentId, i) });
  }
  invariant(new Set(locations.map((l) => l.bucket)).size === chunkCount, 'chunk placement reused a sled');
  return locations;
}

export function formatLocation(loc: ChunkLocation): string {
  return `${loc.bucket}/${loc.key}`;
}

/** Whether `a` (absent when a record has no such chunk) is the location `b`. */
export function sameLocation(a: ChunkLocation | undefined, b: ChunkLocation): boolean {
  return a !== undefined && a.bucket === b.bucket && a.key === b.key;
}

export function parseLocation(text: string): ChunkLocation {
  const slash = text.indexOf('/');
  invariant(slash > 0, () => `bad chunk location ${text}`);
  return { bucket: text.slice(0, slash), key: text.slice(slash + 1) };
}

/** A listed object: where it is, its size and when it was written. */
export interface ListedChunk extends ChunkLocation {
  sizeBytes: number;
  lastModifiedMs: number;
}

/** The parts of a chunk key `<drive>/<volumeId>/<objectId>.<chunkIndex>`, or null for other keys. */
export function parseObjectChunkKey(key: string): { drive: string; volumeId: string; objectId: string; chunkIndex: number } | null {
  const m = /^([^/]+)\/([^/]+)\/([^/]+)\.(\d+)$/.exec(key);
  if (!m) return null;
  return { drive: m[1]!, volumeId: m[2]!, objectId: m[3]!, chunkIndex: Number(m[4]) };
}

/** A listed chunk object. */
export interface VolumeChunk extends ChunkLocation {
  lastModified: Date | undefined;
}

/** A segment chunk key parsed: `<drive>/<volumeId>/<segmentId>.<chunkIndex>`, or null for other objects. */
export function parseChunkKey(key: string): { drive: string; volumeId: string; segmentId: string; chunkIndex: number } | null {
  const m = /^([^/]+)\/(vol-[0-9a-f]+)\/(\d{12}-[0-9a-f]{8})\.(\d{1,2})$/.exec(key);
  if (!m) return null;
  return { drive: m[1]!, volumeId: m[2]!, segmentId: m[3]!, chunkIndex: Number(m[4]) };
}
