/**
 * Pipelined writes (docs/page-map.md, "Pipelined writes"): per volume, the write this process
 * started last, until it is settled. A write of the same writer that arrives meanwhile builds
 * on it rather than on the head it would read: sequence number one higher, `prev` its segment,
 * its pages as that commit leaves them. So one writer's writes upload their chunks at the same
 * time and commit one after the other in arrival order, instead of racing for the head and
 * uploading again. A write whose predecessor does not commit deletes its chunks and starts
 * over on the head, as after a lost race.
 *
 * `writePieces` (shared/data/write.ts) joins the chain when it starts, tells its link what it
 * built on (`built`) and what its commit left (`settled`), and leaves when it is done.
 */
import { type Deferred, deferred } from '../core/async.ts';
import type { PageChange, PageRecord, VolumeRecord } from '../core/records.ts';
import { pageMap } from '../ports.ts';
import type { WriterIdentity } from './segments.ts';

/** One write in a volume's chain. */
export interface ChainLink {
  writer: WriterIdentity;
  /** The volume it built on, its seq and segment, once chosen; null if it failed before. */
  built: Deferred<{ volume: VolumeRecord; seq: number; segmentId: string } | null>;
  /** The pages its commit left, once committed; null once it is known not to have committed (on its first attempt). */
  settled: Deferred<Map<number, PageRecord> | null>;
}

/** Per volume, the link of the write this process started last, while it is not settled. */
const chains = new Map<string, ChainLink>();

/** Thrown by `pagesAfter` when the write a commit was built on did not commit: start over on the head. */
export class PredecessorFailedError extends Error {
  override name = 'PredecessorFailedError';
}

/**
 * Makes a new write of `writer` the tail of the volume's chain. Returns its link, and the
 * predecessor to build on: the previous tail, if it is the same writer's (same id and key).
 */
export function joinChain(volumeId: string, writer: WriterIdentity): { link: ChainLink; predecessor: ChainLink | undefined } {
  const tail = chains.get(volumeId);
  const predecessor = tail && tail.writer.id === writer.id && tail.writer.key === writer.key ? tail : undefined;
  const link: ChainLink = { writer, built: deferred(), settled: deferred() };
  chains.set(volumeId, link);
  return { link, predecessor };
}

/**
 * Ends a write's part in the chain: whatever its link has not told yet it never will (null),
 * so a successor waiting on it goes on, and the volume's chain ends if the link is its tail.
 */
export function leaveChain(volumeId: string, link: ChainLink): void {
  link.built.resolve(null);
  link.settled.resolve(null);
  if (chains.get(volumeId) === link) chains.delete(volumeId);
}

/** The pages a commit leaves: each changed page at its next version. */
export function pagesOf(changes: readonly PageChange[]): Map<number, PageRecord> {
  return new Map(changes.map((c) => [c.page, { page: c.page, version: (c.oldVersion ?? 0) + 1, extents: c.extents }]));
}

/** The pages as they are once `predecessor` committed: its own from its commit, the others read then. */
export async function pagesAfter(predecessor: ChainLink, v: VolumeRecord, pages: number[]): Promise<Map<number, PageRecord>> {
  const after = await predecessor.settled.promise;
  if (!after) throw new PredecessorFailedError(`the write ${v.volumeId} was built on did not commit`);
  const out = new Map<number, PageRecord>();
  const others = pages.filter((p) => !after.has(p));
  for (const p of pages) if (after.has(p)) out.set(p, after.get(p)!);
  if (others.length > 0) for (const [p, r] of await pageMap().getPages(v, others)) out.set(p, r);
  return out;
}
