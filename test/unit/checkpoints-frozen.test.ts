/**
 * Frozen pages in checkpoints and rebuilds (docs/checkpoints.md, "Frozen pages"), as pure
 * functions, against a model of the protocol: writers freeze each changed page under the newest
 * snapshot's tag before committing, snapshots are taken at the head, purges move copies down or
 * drop them, and refused writers leave stray copies. After every step each snapshot must read as
 * it was taken from the model's table; a checkpoint taken at a random step, plus the commits after
 * it, must rebuild frozen pages from which every snapshot reads the same.
 */
import { describe, expect, it } from 'vitest';
import type { StoredFrozen, StoredPage } from '#shared/core/records.ts';
import { encodePage } from '#shared/data/extents.ts';
import type { DescriptorExtent } from '#shared/data/segments.ts';
import { decodeCheckpointContents, encodeCheckpointPayload, samePage } from '#shared/maintenance/checkpoints/format.ts';
import { replaySegment } from '#shared/maintenance/checkpoints/chain.ts';
import { canonicalFrozen, changedPages, frozenId, replayFreezes, tagBelow } from '#shared/maintenance/checkpoints/frozen.ts';
import { compareFrozen } from '#shared/maintenance/checkpoints/frozen-scan.ts';
import { seeded } from './seed.ts';

const PAGE_BLOCKS = 64;
const PAGES = 12;
const VOL = 'vol-00000000000000bb';

type Desc = { volumeId: string; segmentId: string; seq: number; extents: DescriptorExtent[] };

function randomCommit(rng: ReturnType<typeof seeded>, seq: number): Desc {
  const extents: DescriptorExtent[] = [];
  let block = rng.int(PAGE_BLOCKS * 3);
  let segBlock = 0;
  for (let i = 0; i < 1 + rng.int(3) && block < PAGES * PAGE_BLOCKS - 1; i++) {
    const count = Math.min(PAGES * PAGE_BLOCKS - block, 1 + rng.int(rng.next() < 0.7 ? 8 : 150));
    if (rng.next() < 0.2) extents.push([block, count, -1]);
    else {
      extents.push([block, count, segBlock]);
      segBlock += count;
    }
    block += count + rng.int(200);
  }
  return { volumeId: VOL, segmentId: `${String(seq).padStart(12, '0')}-${((seq * 2654435761) >>> 0).toString(16).padStart(8, '0')}`, seq, extents };
}

interface Snap {
  id: string;
  seq: number;
  state: 'ready' | 'deleting';
  /** The pages as they were when it was taken. */
  expected: Map<number, StoredPage>;
}

function empty(page: number): StoredPage {
  const e = encodePage([], page, PAGE_BLOCKS);
  return { page, version: 0, segs: e.segs, ext: e.ext };
}

/** A snapshot read of `page` (docs/snapshots.md): the copy under the smallest named tag at or after its seq, else the live page. */
function readSnapshot(s: Snap, page: number, tags: readonly number[], frozen: ReadonlyMap<string, StoredFrozen>, live: ReadonlyMap<number, StoredPage>) {
  for (const t of tags) {
    if (t < s.seq) continue;
    const f = frozen.get(frozenId(t, page));
    if (f) return { page, version: f.version, segs: f.segs, ext: f.ext };
  }
  return live.get(page) ?? empty(page);
}

function expectReads(snaps: readonly Snap[], tags: readonly number[], frozen: ReadonlyMap<string, StoredFrozen>, live: ReadonlyMap<number, StoredPage>, context: string) {
  for (const s of snaps.filter((x) => x.state === 'ready')) {
    for (let page = 0; page < PAGES; page++) {
      const got = readSnapshot(s, page, tags, frozen, live);
      const want = s.expected.get(page) ?? empty(page);
      expect(samePage(got, want), `${context}: snapshot ${s.id} (seq ${s.seq}) page ${page}`).toBe(true);
    }
  }
}

describe('frozen pages in checkpoints', () => {
  it('round-trips frozen pages in the payload, and still reads the pages-only format', () => {
    const a: StoredPage = { page: 3, version: 7, segs: [`${VOL}/000000000001-00000001`], ext: new Uint8Array(10) };
    const f: StoredFrozen = { ...a, tag: 5, version: 6 };
    const both = decodeCheckpointContents(encodeCheckpointPayload([a], [f, { ...empty(1), tag: 2 }]));
    expect(both.pages.map((p) => p.version)).toEqual([7]);
    expect(both.frozen?.map((x) => [x.tag, x.page, x.version])).toEqual([
      [2, 1, 0],
      [5, 3, 6],
    ]);
    expect(decodeCheckpointContents(encodeCheckpointPayload([a])).frozen).toBeNull();
  });

  it('rebuilds frozen pages from a checkpoint plus the commits after it, so that every snapshot reads as taken', () => {
    const rng = seeded('frozen-pages model');
    const seed = rng.seed;
    for (let run = 0; run < 40; run++) {
      const live = new Map<number, StoredPage>();
      const frozen = new Map<string, StoredFrozen>();
      const commits: Desc[] = [];
      const snaps: Snap[] = [];
      let snapSeq: number | undefined;
      let head = 0;
      let checkpoint: { seq: number; pages: StoredPage[]; frozen: StoredFrozen[] } | null = null;
      const tags = () => [...new Set(snaps.map((s) => s.seq))].sort((a, b) => a - b);
      const freeze = (tag: number, page: number) => {
        if (!frozen.has(frozenId(tag, page))) frozen.set(frozenId(tag, page), { ...(live.get(page) ?? empty(page)), tag });
      };
      const steps = 60 + rng.int(60);
      for (let step = 0; step < steps; step++) {
        const context = `seed ${seed}/${run} step ${step}`;
        const r = rng.next();
        if (r < 0.55) {
          const d = randomCommit(rng, ++head);
          if (snapSeq !== undefined) for (const p of changedPages(d, PAGE_BLOCKS)) freeze(snapSeq, p);
          replaySegment(live, d, PAGE_BLOCKS);
          commits.push(d);
        } else if (r < 0.65) {
          // A writer whose commit was then refused: its copy, put where absent, stays.
          if (snapSeq !== undefined) freeze(snapSeq, rng.int(PAGES));
        } else if (r < 0.78) {
          if (snaps.filter((s) => s.state === 'ready').length >= 6) continue;
          snaps.push({ id: `s${step}`, seq: head, state: 'ready', expected: new Map([...live].map(([p, v]) => [p, { ...v }])) });
          snapSeq = head;
        } else if (r < 0.92) {
          const ready = snaps.filter((s) => s.state === 'ready');
          if (ready.length === 0) continue;
          ready[rng.int(ready.length)]!.state = 'deleting';
          // The purge, as shared/control/snapshots.ts does it.
          if (!snaps.some((s) => s.state === 'ready')) {
            frozen.clear();
            snaps.length = 0;
            snapSeq = undefined;
            continue;
          }
          for (const d of snaps.filter((s) => s.state === 'deleting').sort((a, b) => b.seq - a.seq)) {
            const sameTagReady = snaps.some((s) => s.state === 'ready' && s.seq === d.seq);
            if (!sameTagReady && d.seq === snapSeq) continue; // deferred
            if (!sameTagReady && !snaps.some((s) => s !== d && s.seq === d.seq)) {
              const older = snaps.filter((s) => s !== d && s.seq < d.seq).map((s) => s.seq);
              const to = older.length > 0 ? Math.max(...older) : undefined;
              for (const [id, f] of [...frozen]) {
                if (f.tag !== d.seq) continue;
                if (to !== undefined && !frozen.has(frozenId(to, f.page))) frozen.set(frozenId(to, f.page), { ...f, tag: to });
                frozen.delete(id);
              }
            }
            snaps.splice(snaps.indexOf(d), 1);
          }
        } else if (!checkpoint || rng.next() < 0.3) {
          // A checkpoint at the head: the scanned copies in canonical form, up to its seq.
          const payload = encodeCheckpointPayload(live.values(), [...canonicalFrozen(frozen.values(), tags()).values()].filter((f) => f.tag <= head));
          const back = decodeCheckpointContents(payload);
          checkpoint = { seq: head, pages: back.pages, frozen: back.frozen! };
        }
        expectReads(snaps, tags(), frozen, live, `${context} (live table)`);
      }
      // The rebuild: the checkpoint's copies for today's tags, then the commits after it.
      const base = checkpoint ?? { seq: 0, pages: [], frozen: [] };
      const now = tags();
      const rebuilt = canonicalFrozen(base.frozen, now);
      const map = new Map(base.pages.map((p) => [p.page, p]));
      for (const d of commits.filter((c) => c.seq > base.seq)) {
        replayFreezes(rebuilt, map, d, now, PAGE_BLOCKS);
        replaySegment(map, d, PAGE_BLOCKS);
      }
      const want = canonicalFrozen(rebuilt.values(), now);
      expectReads(snaps, now, want, map, `seed ${seed}/${run} rebuilt from the checkpoint at ${base.seq}`);
      // The live table holds the same copies, plus harmless strays.
      const check = compareFrozen(want, canonicalFrozen(frozen.values(), now), live, new Set(), PAGE_BLOCKS);
      expect(check.mismatch, `seed ${seed}/${run}`).toBeUndefined();
      expect(tagBelow(now, Number.MAX_SAFE_INTEGER)).toBe(now.at(-1));
    }
  });
});
