/**
 * Multi-attach read leases and the write intent (docs/nbd-gateway.md, "Multi-attach with
 * lease-guarded caches"): the rules, as pure functions. The conditional writes that store them
 * live in shared/aws/pagemap/read-leases.ts, and the commit's condition part that enforces them
 * in shared/aws/pagemap/transactions.ts (`intentCondition`).
 */
import { ConflictError, InvalidInputError } from '../core/errors.ts';
import type { ReadLease, VolumeRecord, WriteIntent } from '../core/records.ts';
import { checkKey } from './reservations.ts';

/** The lease term T a reader asks for: 6 s by default, between 1 s and 15 s (a writer waits at most T plus the margin for a stalled reader). */
export const READ_LEASE_MS_DEFAULT = 6000;
export const READ_LEASE_MS_MIN = 1000;
export const READ_LEASE_MS_MAX = 15_000;
/** Leases per volume: each is one named part of every commit's condition. */
export const READ_LEASES_MAX = 16;
/** Expired leases are dropped from the map this long after they expired. */
export const EXPIRED_LEASE_KEEP_MS = 60_000;

export type ReadLeaseCommand =
  | {
      action: 'renew';
      key: string;
      leaseMs: number;
      /** The closed epoch the reader caches under, or null: it holds nothing (it acknowledges the current epoch). */
      ackEpoch: number | null;
      /** Close the intent if it is open and the head is still this seq (the reader saw no commit for a while). */
      closeAtSeq?: number;
    }
  | { action: 'release'; key: string };

function wholeNumber(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0)
    throw new InvalidInputError(`${name} must be a non-negative integer, got ${JSON.stringify(value)}`);
  return value;
}

/** Parses `POST /volumes/{id}/read-lease`; bad input is a 400 that changes nothing. */
export function parseReadLeaseBody(body: Record<string, unknown>): ReadLeaseCommand {
  const action = body.action;
  if (action === 'release') {
    const extra = Object.keys(body).filter((k) => k !== 'action' && k !== 'key');
    if (extra.length > 0) throw new InvalidInputError(`unknown field ${JSON.stringify(extra[0])}; a release takes action and key`);
    return { action, key: checkKey(body.key) };
  }
  if (action !== 'renew') throw new InvalidInputError(`action must be "renew" or "release", got ${JSON.stringify(action)}`);
  const extra = Object.keys(body).filter((k) => !['action', 'key', 'leaseMs', 'ackEpoch', 'closeAtSeq'].includes(k));
  if (extra.length > 0) throw new InvalidInputError(`unknown field ${JSON.stringify(extra[0])}; a renewal takes action, key, leaseMs, ackEpoch and closeAtSeq`);
  const leaseMs = body.leaseMs === undefined ? READ_LEASE_MS_DEFAULT : wholeNumber(body.leaseMs, 'leaseMs');
  if (leaseMs < READ_LEASE_MS_MIN || leaseMs > READ_LEASE_MS_MAX)
    throw new InvalidInputError(`leaseMs must be from ${READ_LEASE_MS_MIN} to ${READ_LEASE_MS_MAX}, got ${leaseMs}`);
  const ackEpoch = body.ackEpoch === undefined || body.ackEpoch === null ? null : wholeNumber(body.ackEpoch, 'ackEpoch');
  return {
    action,
    key: checkKey(body.key),
    leaseMs,
    ackEpoch,
    ...(body.closeAtSeq === undefined ? {} : { closeAtSeq: wholeNumber(body.closeAtSeq, 'closeAtSeq') }),
  };
}

/** What a renewal or release stores: the whole lease map and the intent, computed from the volume item as read. */
export interface LeaseUpdate {
  leases: Record<string, ReadLease>;
  intent: WriteIntent;
  /** The renewal closes the intent: the store is conditioned on the head being `volume.headSeq` still. */
  closes: boolean;
}

/**
 * Applies a command to the volume item as read, at the head's clock `nowMs`. A reader must be a
 * registrant (its identity on the volume, as for writers). The first lease creates the intent
 * open: commits in flight then find it open and every lease acknowledged (a new reader holds
 * nothing), and the readers close it once no commit came for a while.
 */
export function applyLeaseCommand(v: VolumeRecord, cmd: ReadLeaseCommand, nowMs: number): LeaseUpdate {
  const intent: WriteIntent = v.writeIntent ?? { epoch: 1, open: true };
  const leases: Record<string, ReadLease> = {};
  for (const [k, l] of Object.entries(v.readLeases ?? {})) if (l.expiresAtMs >= nowMs - EXPIRED_LEASE_KEEP_MS) leases[k] = l;
  if (cmd.action === 'release') {
    delete leases[cmd.key];
    return { leases, intent, closes: false };
  }
  if (v.reservations.registrants[cmd.key] === undefined) {
    throw new ConflictError(`key ${cmd.key} is not registered on volume ${v.volumeId}; a reader registers its key before it takes a read lease`);
  }
  // An acknowledgement never runs ahead of the intent (a reader cannot honour an opening it has not seen).
  const ackedEpoch = cmd.ackEpoch === null ? intent.epoch : Math.min(cmd.ackEpoch, intent.epoch);
  leases[cmd.key] = { expiresAtMs: nowMs + cmd.leaseMs, ackedEpoch };
  if (Object.keys(leases).length > READ_LEASES_MAX) {
    throw new ConflictError(`volume ${v.volumeId} has ${READ_LEASES_MAX} read leases already; stop a reader or wait a minute after one stopped`);
  }
  const closes = cmd.closeAtSeq !== undefined && intent.open && v.headSeq === cmd.closeAtSeq;
  return { leases, intent: closes ? { epoch: intent.epoch, open: false } : intent, closes };
}

/** Leases that are live at `nowMs` and have not acknowledged the intent's epoch: a commit must wait for them. */
export function pendingLeases(v: VolumeRecord, nowMs: number): string[] {
  const epoch = v.writeIntent?.epoch ?? 0;
  return Object.entries(v.readLeases ?? {})
    .filter(([, l]) => l.expiresAtMs >= nowMs && l.ackedEpoch < epoch)
    .map(([k]) => k);
}

/**
 * Whether a commit built on `read` (the volume item its head read) could pass the intent part of
 * its condition against `current` at `nowMs`: the same rule as `intentCondition`, in memory.
 */
export function intentAllows(read: VolumeRecord, current: VolumeRecord, nowMs: number): boolean {
  if (!read.writeIntent) return !current.writeIntent;
  if (!current.writeIntent || !current.writeIntent.open || current.writeIntent.epoch !== read.writeIntent.epoch) return false;
  const epoch = read.writeIntent.epoch;
  return Object.keys(read.readLeases ?? {}).every((k) => {
    const l = current.readLeases?.[k];
    return !l || l.expiresAtMs < nowMs || l.ackedEpoch >= epoch;
  });
}

/** What the reader learns from a renewal. */
export interface ReadLeaseView {
  volumeId: string;
  key: string;
  leaseMs: number;
  ackedEpoch: number;
  intent: WriteIntent;
  headSeq: number;
}
