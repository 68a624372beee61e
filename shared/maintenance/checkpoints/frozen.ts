/**
 * Frozen pages in checkpoints and rebuilds (docs/checkpoints.md, "Frozen pages"), as pure
 * functions: the canonical set of frozen pages for a volume's snapshot tags, and the copies a
 * replayed commit made.
 *
 * The rule they rest on (docs/snapshots.md): for each snapshot tag `T` (the seq of a snapshot
 * record, ready or deleting) and page `p`, the copy `(T, p)` exists exactly when a commit in
 * `(T, next tag]` changed `p`, and holds `p` as it was at `T`. Commits and purges keep the
 * table in that form; this module computes it from any superset of copies.
 */
import { type StoredFrozen, type StoredPage } from '../../core/records.ts';
import { encodePage } from '../../data/extents.ts';
import { type SegmentDescriptor } from '../../data/segments.ts';
import { touchedPages } from './chain.ts';

/** A map key for frozen page `(tag, page)`. */
export function frozenId(tag: number, page: number): string {
  return `${tag}/${page}`;
}

/** The newest tag below `seq` (the tag a commit at `seq` froze under), or undefined. `tags` ascending. */
export function tagBelow(tags: readonly number[], seq: number): number | undefined {
  let out: number | undefined;
  for (const t of tags) {
    if (t >= seq) break;
    out = t;
  }
  return out;
}

/**
 * The canonical frozen pages for the snapshot tags `tags`, from `copies`: for each tag `T` and
 * page, the copy with the smallest tag in `[T, next tag)`. A copy under a tag that no record
 * names any more (a purged snapshot, or a stray put by a writer whose commit was refused) holds
 * the page as it was at its own tag; taking it for the named tag below it, when that tag has no
 * copy of its own, is exactly what the purge does when it moves frames down: no copy there means
 * the page did not change in between. Copies below the oldest tag are dropped.
 */
export function canonicalFrozen(copies: Iterable<StoredFrozen>, tags: readonly number[]): Map<string, StoredFrozen> {
  const named = [...new Set(tags)].sort((a, b) => a - b);
  const best = new Map<string, StoredFrozen>();
  for (const c of copies) {
    const tag = tagBelow(named, c.tag + 1); // the newest named tag at or below the copy's
    if (tag === undefined) continue;
    const id = frozenId(tag, c.page);
    const have = best.get(id);
    if (!have || c.tag < have.tag) best.set(id, c);
  }
  const out = new Map<string, StoredFrozen>();
  for (const [id, c] of best) {
    const tag = tagBelow(named, c.tag + 1)!;
    out.set(id, c.tag === tag ? c : { ...c, tag });
  }
  return out;
}

/** The pages a commit changed: its extents' pages and a rollback's replaced pages. */
export function changedPages(d: Pick<SegmentDescriptor, 'volumeId' | 'segmentId' | 'extents' | 'pages'>, pageBlocks: number): number[] {
  return [...new Set([...touchedPages(d, pageBlocks), ...(d.pages ?? []).map(([page]) => page)])];
}

/**
 * Adds the copies the commit of `d` made before it changed `map` (call it before replaying `d`
 * onto `map`): under the newest tag below its seq, each changed page as it was, unless a copy
 * under that tag exists (an earlier commit since the tag made it). A page with no item then is
 * frozen as an empty page at version 0, as the writer does.
 */
export function replayFreezes(
  frozen: Map<string, StoredFrozen>,
  map: ReadonlyMap<number, StoredPage>,
  d: Pick<SegmentDescriptor, 'volumeId' | 'segmentId' | 'extents' | 'pages' | 'seq'>,
  tags: readonly number[],
  pageBlocks: number,
): void {
  const tag = tagBelow(tags, d.seq);
  if (tag === undefined) return;
  for (const page of changedPages(d, pageBlocks)) {
    const id = frozenId(tag, page);
    if (frozen.has(id)) continue;
    const old = map.get(page);
    if (old) frozen.set(id, { ...old, tag });
    else {
      const empty = encodePage([], page, pageBlocks);
      frozen.set(id, { tag, page, version: 0, segs: empty.segs, ext: empty.ext });
    }
  }
}
