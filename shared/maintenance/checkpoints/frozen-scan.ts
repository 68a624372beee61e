/**
 * Reading a volume's frozen pages for a checkpoint (docs/checkpoints.md, "Frozen pages"): a
 * scan of the `#frozen` partition that no snapshot purge overlapped, and its check against the
 * copies the commit chain implies.
 */
import { UnavailableError } from '../../core/errors.ts';
import { sleep } from '../../core/async.ts';
import { type StoredFrozen, type StoredPage } from '../../core/records.ts';
import { encodePage } from '../../data/extents.ts';
import { samePage } from './format.ts';
import { pageMap } from '../../ports.ts';

/** Attempts at a scan that no purge overlapped, a second apart, before the job is retried later. */
const FROZEN_SCAN_ATTEMPTS_MAX = 8;

/** The volume's snapshot tags, and a signature that changes whenever a purge may have moved copies. */
export async function snapshotTags(volumeId: string): Promise<{ tags: number[]; signature: string; purgeRunning: boolean }> {
  const [records, v] = await Promise.all([pageMap().listSnapshots(volumeId), pageMap().getVolume(volumeId)]);
  const tags = [...new Set(records.map((r) => r.seq))].sort((a, b) => a - b);
  // A purge moves copies, then deletes the record it purged; it holds the lock all along. So a
  // scan that starts and ends with the same records and no lock held saw no copy move.
  const signature = records
    .map((r) => `${r.snapshotId}:${r.state}`)
    .sort()
    .join(',');
  return { tags, signature, purgeRunning: v?.snapPurge !== undefined };
}

/** The volume's frozen pages, as stored, in one scan. */
export async function scanFrozen(volumeId: string): Promise<StoredFrozen[]> {
  const copies: StoredFrozen[] = [];
  for await (const f of pageMap().listStoredFrozen(volumeId)) copies.push(f);
  return copies;
}

/** Waits (a second at a time) until no purge holds the volume's lock; the tags then. */
export async function tagsWithoutPurge(volumeId: string): Promise<{ tags: number[]; signature: string }> {
  for (let attempt = 1; ; attempt++) {
    const now = await snapshotTags(volumeId);
    if (!now.purgeRunning) return now;
    if (attempt >= FROZEN_SCAN_ATTEMPTS_MAX) {
      throw new UnavailableError(`snapshots of volume ${volumeId} kept being purged during its checkpoint; retry later`, { retryAfterSeconds: 10 });
    }
    await sleep(1000);
  }
}

/** Whether a scan that started at `before` saw no copy move: the same records, and no purge running now. */
export async function stillStable(volumeId: string, before: { signature: string }): Promise<boolean> {
  const after = await snapshotTags(volumeId);
  return !after.purgeRunning && after.signature === before.signature;
}

/** Attempts at a checkpoint build that no purge overlapped. */
export const STABLE_ATTEMPTS_MAX = FROZEN_SCAN_ATTEMPTS_MAX;

/**
 * Checks the frozen pages found in the table (`scanned`, canonical) against those the commit
 * chain implies (`derived`), skipping pages that commits after the checkpoint's head changed.
 * A derived copy missing or different is a mismatch. A found copy the chain does not imply is a
 * stray (put by a writer whose commit was then refused); it is harmless when it holds what a read
 * of its snapshot would find without it (the next copy of the page, else the page itself), and
 * a mismatch otherwise. Returns the number of copies compared and the first mismatch.
 */
export function compareFrozen(
  derived: ReadonlyMap<string, StoredFrozen>,
  scanned: ReadonlyMap<string, StoredFrozen>,
  map: ReadonlyMap<number, StoredPage>,
  skipPages: ReadonlySet<number>,
  pageBlocks: number,
): { compared: number; strays: number; mismatch?: string } {
  let compared = 0;
  let strays = 0;
  for (const [id, want] of derived) {
    if (skipPages.has(want.page)) continue;
    const have = scanned.get(id);
    if (!have || !samePage(have, want))
      return { compared, strays, mismatch: `frozen page ${id} is ${have ? `version ${have.version}` : 'missing'}, the chain says version ${want.version}` };
    compared++;
  }
  const byPage = new Map<number, StoredFrozen[]>();
  for (const f of derived.values()) {
    let list = byPage.get(f.page);
    if (!list) byPage.set(f.page, (list = []));
    list.push(f);
  }
  for (const [id, have] of scanned) {
    if (derived.has(id) || skipPages.has(have.page)) continue;
    const next = (byPage.get(have.page) ?? []).filter((f) => f.tag > have.tag).sort((a, b) => a.tag - b.tag)[0];
    const empty = encodePage([], have.page, pageBlocks);
    const reads = next ?? map.get(have.page) ?? { page: have.page, version: 0, segs: empty.segs, ext: empty.ext };
    if (!samePage(have, { ...reads, page: have.page }))
      return {
        compared,
        strays,
        mismatch: `frozen page ${id} (version ${have.version}) is not implied by the chain and differs from what its snapshot reads without it`,
      };
    strays++;
  }
  return { compared, strays };
}
