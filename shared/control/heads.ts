/**
 * Primary and reserve heads of a volume, with the primary's lease (docs/reservations.md).
 * A head is a reservation key `head:<name>`; the primary holds a write-exclusive reservation,
 * so promotion is a preempt and the old primary is fenced by the commit condition itself.
 */
import { ConflictError, FencedError, InvalidInputError, UnavailableError } from '../core/errors.ts';
import { sleep } from '../core/async.ts';
import { type HeadDesignation, type VolumeRecord } from '../core/records.ts';
import { apply, checkKey, type ReservationState } from './reservations.ts';
import { startDump, type DumpHandle } from './dumps.ts';
import { inflightWrites } from '../data/write.ts';
import { requireActive } from '../data/volume-rules.ts';
import { pageMap } from '../ports.ts';

export const DEFAULT_LEASE_DURATION_MS = 10_000;
const MIN_RESERVES = 2;
const ATTEMPT_MAX = 8;

export function headKey(name: string): string {
  return checkKey(`head:${name}`, 'head');
}

export interface HeadsView {
  volumeId: string;
  primary: string | null;
  reserves: string[];
  leaseDurationMs: number | null;
  leaseExpiresAt: string | null;
  leaseLapsed: boolean | null;
  reservationGeneration: number;
}

export function headsView(v: VolumeRecord, nowMs = Date.now()): HeadsView {
  const h = v.heads;
  return {
    volumeId: v.volumeId,
    primary: h?.primary ?? null,
    reserves: h?.reserves ?? [],
    leaseDurationMs: h?.leaseDurationMs ?? null,
    leaseExpiresAt: h ? new Date(h.leaseExpiresAtMs).toISOString() : null,
    leaseLapsed: h ? h.leaseExpiresAtMs < nowMs : null,
    reservationGeneration: v.reservations.generation,
  };
}

async function active(volumeId: string): Promise<VolumeRecord> {
  return requireActive(await pageMap().getVolume(volumeId), volumeId);
}

function headName(value: unknown, field: string): string {
  if (typeof value !== 'string') throw new InvalidInputError(`${field} must be a head name`);
  headKey(value);
  return value;
}

export async function describeHeads(volumeId: string): Promise<HeadsView> {
  return headsView(await active(volumeId));
}

/**
 * Designates the primary and reserves: registers every head's key and reserves
 * write-exclusive for the primary, in one conditional write.
 */
export async function designateHeads(volumeId: string, body: Record<string, unknown>): Promise<HeadsView> {
  const primary = headName(body.primary, 'primary');
  if (!Array.isArray(body.reserves)) throw new InvalidInputError('reserves must be a list of head names');
  const reserves = body.reserves.map((r, i) => headName(r, `reserves[${i}]`));
  if (reserves.length < MIN_RESERVES) throw new InvalidInputError(`a volume needs at least ${MIN_RESERVES} reserve heads, got ${reserves.length}`);
  if (new Set([primary, ...reserves]).size !== reserves.length + 1) throw new InvalidInputError('head names must be distinct');
  const leaseDurationMs = body.leaseDurationMs === undefined ? DEFAULT_LEASE_DURATION_MS : body.leaseDurationMs;
  if (typeof leaseDurationMs !== 'number' || !Number.isSafeInteger(leaseDurationMs) || leaseDurationMs < 100 || leaseDurationMs > 3_600_000) {
    throw new InvalidInputError('leaseDurationMs must be an integer from 100 to 3600000');
  }
  for (let attempt = 0; attempt < ATTEMPT_MAX; attempt++) {
    if (attempt > 0) await sleep(Math.random() * 20 * 2 ** attempt);
    const v = await active(volumeId);
    let r: ReservationState = v.reservations;
    for (const name of [primary, ...reserves]) r = apply(volumeId, r, { action: 'register', key: headKey(name) });
    r = apply(volumeId, r, { action: 'reserve', key: headKey(primary), type: 'write-exclusive' });
    const heads: HeadDesignation = { primary, reserves, leaseDurationMs, leaseExpiresAtMs: Date.now() + leaseDurationMs };
    if (await pageMap().storeReservations(volumeId, v.reservations.generation, r, { heads })) {
      return headsView({ ...v, reservations: r, heads });
    }
  }
  throw new UnavailableError(`heads of volume ${volumeId} kept changing; retry`);
}

/** The primary renews its lease. Refused (409) for anyone who is not the registered primary. */
export async function renewLease(volumeId: string, body: Record<string, unknown>): Promise<HeadsView> {
  const head = headName(body.head, 'head');
  const v = await active(volumeId);
  if (!v.heads) throw new ConflictError(`volume ${volumeId} has no heads; designate them first`);
  const gen = v.reservations.registrants[headKey(head)];
  if (v.heads.primary !== head || gen === undefined)
    throw new FencedError(`head ${head} is not the primary of volume ${volumeId} (the primary is ${v.heads.primary})`);
  const heads = { ...v.heads, leaseExpiresAtMs: Date.now() + v.heads.leaseDurationMs };
  // Only while still the primary, by the same registration (not preempted since we read).
  const out = await pageMap().renewLease(volumeId, heads, { head, key: headKey(head), keyGeneration: gen });
  if (!out.ok)
    throw new FencedError(`head ${head} lost the primary role of volume ${volumeId} while renewing (primary now ${out.current?.heads?.primary ?? 'none'})`);
  return headsView({ ...v, heads });
}

/**
 * Promotes a reserve to primary when the lease has lapsed (or `force`): it preempts the old
 * primary's key, so the old primary's in-flight and later commits are refused.
 */
export async function promote(volumeId: string, body: Record<string, unknown>): Promise<HeadsView> {
  const head = headName(body.head, 'head');
  if (body.force !== undefined && typeof body.force !== 'boolean') throw new InvalidInputError('force must be a boolean');
  const force = body.force === true;
  for (let attempt = 0; attempt < ATTEMPT_MAX; attempt++) {
    if (attempt > 0) await sleep(Math.random() * 20 * 2 ** attempt);
    const v = await active(volumeId);
    const h = v.heads;
    if (!h) throw new ConflictError(`volume ${volumeId} has no heads; designate them first`);
    if (h.primary === head) return headsView(v);
    if (!h.reserves.includes(head)) throw new ConflictError(`head ${head} is not a reserve of volume ${volumeId}; reserves are ${h.reserves.join(', ')}`);
    const now = Date.now();
    if (!force && h.leaseExpiresAtMs >= now) {
      throw new ConflictError(
        `the lease of primary ${h.primary} on volume ${volumeId} runs until ${new Date(h.leaseExpiresAtMs).toISOString()}; promote with force to take over now`,
      );
    }
    let r = v.reservations;
    if (r.registrants[headKey(head)] === undefined) r = apply(volumeId, r, { action: 'register', key: headKey(head) });
    if (r.registrants[headKey(h.primary)] !== undefined) {
      r = apply(volumeId, r, { action: 'preempt', key: headKey(head), victimKey: headKey(h.primary), type: 'write-exclusive' });
    }
    if (!r.reservation) r = apply(volumeId, r, { action: 'reserve', key: headKey(head), type: 'write-exclusive' });
    const heads: HeadDesignation = { ...h, primary: head, reserves: h.reserves.filter((x) => x !== head), leaseExpiresAtMs: now + h.leaseDurationMs };
    const stored = await pageMap().storeReservations(volumeId, v.reservations.generation, r, {
      heads,
      // The primary we preempt is the one we read, and (unless forced) its lease has lapsed.
      primaryWas: force ? { head: h.primary } : { head: h.primary, leaseLapsedBeforeMs: now },
    });
    if (stored) return headsView({ ...v, reservations: r, heads });
  }
  throw new UnavailableError(`promotion on volume ${volumeId} kept racing other changes; retry`);
}

/** A head (re)joins as a reserve: registers its key (a new generation) and is listed. */
export async function joinAsReserve(volumeId: string, body: Record<string, unknown>): Promise<HeadsView> {
  const head = headName(body.head, 'head');
  for (let attempt = 0; attempt < ATTEMPT_MAX; attempt++) {
    if (attempt > 0) await sleep(Math.random() * 20 * 2 ** attempt);
    const v = await active(volumeId);
    if (!v.heads) throw new ConflictError(`volume ${volumeId} has no heads; designate them first`);
    if (v.heads.primary === head) throw new ConflictError(`head ${head} is already the primary of volume ${volumeId}`);
    const r = apply(volumeId, v.reservations, { action: 'register', key: headKey(head) });
    const heads = { ...v.heads, reserves: v.heads.reserves.includes(head) ? v.heads.reserves : [...v.heads.reserves, head] };
    if (await pageMap().storeReservations(volumeId, v.reservations.generation, r, { heads })) return headsView({ ...v, reservations: r, heads });
  }
  throw new UnavailableError(`heads of volume ${volumeId} kept changing; retry`);
}

/**
 * A head's unrecoverable failure: dump its in-flight state for the volume to the best drive
 * (docs/dumps.md). It does not touch the heads or the lease: a reserve takes over on its own,
 * without waiting for the dump.
 */
export async function failHead(volumeId: string, head: string, error: Error, opts: { gate?: Promise<void> } = {}): Promise<DumpHandle> {
  const writes = inflightWrites(volumeId);
  return startDump(
    {
      volumeId,
      head,
      error: { name: error.name, message: error.message, stack: error.stack },
      pendingWrites: writes.map(({ prepared, ...w }) => ({ ...w, segmentId: prepared?.segmentId, chunkLocations: prepared?.locations })),
      pageItems: writes.flatMap((w) => w.prepared?.pages ?? []),
    },
    opts,
  );
}

const DUMP_WAIT_MS = 30_000;

/** `POST /volumes/{id}/heads/fail`: a forced failure of this head (chaos tests, operators). */
export async function forcedFailure(volumeId: string, body: Record<string, unknown>): Promise<{ dumpId: string; driveId: string; key: string; state: string }> {
  const head = headName(body.head, 'head');
  const reason = typeof body.reason === 'string' ? body.reason : 'forced failure';
  await active(volumeId);
  const dump = await failHead(volumeId, head, new Error(reason));
  let timer: NodeJS.Timeout | undefined;
  const finished = await Promise.race([
    dump.done.then(() => true),
    new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), DUMP_WAIT_MS))),
  ]).finally(() => clearTimeout(timer));
  return { dumpId: dump.dumpId, driveId: dump.driveId, key: dump.key, state: finished ? 'complete' : 'in-progress' };
}

const SWEEP_PAGE_MAX = 1000;

/**
 * The lease watchdog: promotes the first reserve of every volume whose primary's lease has
 * lapsed. Runs on a schedule (SQS message `sweep-leases`); harmless to run twice, since a
 * promotion is conditioned on the lapsed lease and on the primary it replaces.
 */
export async function sweepLeases(nowMs = Date.now()): Promise<{ checked: number; promoted: Array<{ volumeId: string; from: string; to: string }> }> {
  const promoted: Array<{ volumeId: string; from: string; to: string }> = [];
  let checked = 0;
  let next: string | undefined;
  for (let page = 0; page < SWEEP_PAGE_MAX; page++) {
    const batch = await pageMap().listVolumes(100, next);
    for (const v of batch.volumes) {
      checked++;
      const h = v.heads;
      if (v.state !== 'active' || !h || h.leaseExpiresAtMs >= nowMs) continue;
      const candidate = h.reserves.find((r) => v.reservations.registrants[headKey(r)] !== undefined);
      if (!candidate) {
        console.error(`volume ${v.volumeId}: lease of ${h.primary} lapsed and no registered reserve can take over`);
        continue;
      }
      try {
        const view = await promote(v.volumeId, { head: candidate });
        if (view.primary === candidate) promoted.push({ volumeId: v.volumeId, from: h.primary, to: candidate });
      } catch (err) {
        // A renewal or another sweeper got there first; the next sweep looks again.
        console.warn(`volume ${v.volumeId}: promotion of ${candidate} refused: ${(err as Error).message}`);
      }
    }
    next = batch.next;
    if (!next) break;
  }
  return { checked, promoted };
}
