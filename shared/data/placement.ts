/**
 * Where chunks go: a stripe's k+m chunks on k+m distinct sleds, only on drives that take new
 * chunks, and replacements that keep the sleds distinct (docs/evacuation.md, sections 1 and 3).
 * Pure: the caller passes which drives are writable (from the registry, shared/maintenance/drives.ts).
 */
import { createHash } from 'node:crypto';
import { UnavailableError, invariant } from '../core/errors.ts';
import { DRIVES_PER_SLED, chunkKey, driveName, type ChunkLocation } from './sleds.ts';

/** Sled bucket -> the drives on it that may receive new chunks (state `active`). */
export type WritableDrives = ReadonlyMap<string, readonly string[]>;

/** Every drive of every sled: the placement when no registry is consulted. */
export function allDrivesWritable(buckets: readonly string[]): WritableDrives {
  const every = Array.from({ length: DRIVES_PER_SLED }, (_, d) => driveName(d));
  return new Map(buckets.map((b) => [b, every]));
}

/** The drive (key prefix) a chunk location is on. */
export function driveOf(loc: ChunkLocation): string {
  const slash = loc.key.indexOf('/');
  invariant(slash > 0, () => `chunk key ${loc.key} has no drive prefix`);
  return loc.key.slice(0, slash);
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/**
 * Places the k+m chunks of a segment on k+m distinct sleds, rotating the starting sled by a hash
 * of the segment id so that load spreads over all sleds and drives. Sleds with no writable drive
 * are skipped; with fewer than `chunkCount` usable sleds the write cannot keep its durability
 * and fails with 503.
 *
 * @example
 * placeStripe('vol-1', '000000000001-0a1b2c3d', 6, sleds, allDrivesWritable(sleds)); // 6 locations, 6 sleds
 */
export function placeStripe(volumeId: string, segmentId: string, chunkCount: number, buckets: readonly string[], writable: WritableDrives): ChunkLocation[] {
  const hash = digest(`${volumeId}/${segmentId}`);
  const start = hash.readUInt32BE(0) % buckets.length;
  const locations: ChunkLocation[] = [];
  for (let s = 0; s < buckets.length && locations.length < chunkCount; s++) {
    const bucket = buckets[(start + s) % buckets.length]!;
    const drives = writable.get(bucket) ?? [];
    if (drives.length === 0) continue;
    const i = locations.length;
    const drive = drives[hash[4 + (i % 28)]! % drives.length]!;
    locations.push({ bucket, key: chunkKey(drive, volumeId, segmentId, i) });
  }
  if (locations.length < chunkCount) {
    throw new UnavailableError(`a stripe of ${chunkCount} chunks needs ${chunkCount} sleds with an active drive; only ${locations.length} have one`, {
      retryAfterSeconds: 5,
    });
  }
  invariant(new Set(locations.map((l) => l.bucket)).size === chunkCount, 'chunk placement reused a sled');
  return locations;
}

/** Picks one of `options` by a hash of `seed`: the same inputs always give the same choice. */
function pick<T>(options: readonly T[], seed: string): T | undefined {
  if (options.length === 0) return undefined;
  return options[digest(seed).readUInt32BE(0) % options.length];
}

/**
 * Where to write chunk `chunkIndex` again after its PUT failed: an active drive on a sled that
 * no chunk of the stripe uses and that was not tried already (`excludedSleds`, which includes
 * the failed chunk's own sled). Never another drive of a sled the stripe uses: that would put
 * two chunks of one stripe in one failure domain. Null when no such sled exists.
 */
export function replacementLocation(
  volumeId: string,
  segmentId: string,
  chunkIndex: number,
  stripe: readonly ChunkLocation[],
  excludedSleds: ReadonlySet<string>,
  buckets: readonly string[],
  writable: WritableDrives,
): ChunkLocation | null {
  const used = new Set(stripe.map((l) => l.bucket));
  const sleds = buckets.filter((b) => !used.has(b) && !excludedSleds.has(b) && (writable.get(b)?.length ?? 0) > 0);
  const seed = `${volumeId}/${segmentId}/${chunkIndex}/${excludedSleds.size}`;
  const bucket = pick(sleds, seed);
  if (bucket === undefined) return null;
  const drive = pick(writable.get(bucket)!, `${seed}/drive`)!;
  return { bucket, key: chunkKey(drive, volumeId, segmentId, chunkIndex) };
}

/**
 * Where evacuation moves chunk `chunkIndex` (now at `stripe[chunkIndex]`): an active drive on a
 * sled no other chunk of the stripe uses, preferring sleds outside the stripe, then another drive
 * of the chunk's own sled. Distinct sleds hold either way, since the old copy goes away. The
 * choice is a hash of the chunk's identity over the candidates, so a retried move picks the same
 * target while the registry does not change. Null when there is none.
 */
export function evacuationTarget(
  volumeId: string,
  segmentId: string,
  chunkIndex: number,
  stripe: readonly ChunkLocation[],
  buckets: readonly string[],
  writable: WritableDrives,
): ChunkLocation | null {
  const old = stripe[chunkIndex];
  invariant(old, () => `chunk ${chunkIndex} is not in a stripe of ${stripe.length}`);
  const used = new Set(stripe.map((l) => l.bucket));
  const seed = `${volumeId}/${segmentId}/${chunkIndex}`;
  const free = buckets.filter((b) => !used.has(b) && (writable.get(b)?.length ?? 0) > 0);
  const bucket = pick(free, seed);
  if (bucket !== undefined) {
    return { bucket, key: chunkKey(pick(writable.get(bucket)!, `${seed}/drive`)!, volumeId, segmentId, chunkIndex) };
  }
  const oldDrive = driveOf(old);
  const sameSled = (writable.get(old.bucket) ?? []).filter((d) => d !== oldDrive);
  const drive = pick(sameSled, `${seed}/drive`);
  return drive === undefined ? null : { bucket: old.bucket, key: chunkKey(drive, volumeId, segmentId, chunkIndex) };
}

/** Whether a stripe keeps its chunks on distinct sleds (asserted after every placement change). */
export function sledsDistinct(stripe: readonly ChunkLocation[]): boolean {
  return new Set(stripe.map((l) => l.bucket)).size === stripe.length;
}
