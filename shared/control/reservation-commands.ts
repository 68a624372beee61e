/**
 * Reservation commands on a volume (docs/reservations.md): describe, and apply one command
 * under the `resGen` condition, re-reading and retrying when it moved.
 */
import { UnavailableError } from '../core/errors.ts';
import { sleep } from '../core/async.ts';
import { apply, parseReservationBody, type ReservationState } from './reservations.ts';
import { requireActive } from '../data/volume-rules.ts';
import { pageMap } from '../ports.ts';

export interface ReservationView {
  volumeId: string;
  generation: number;
  registrants: Array<{ key: string; generation: number }>;
  reservation: { holder: string; type: string } | null;
}

export function reservationView(volumeId: string, r: ReservationState): ReservationView {
  return {
    volumeId,
    generation: r.generation,
    registrants: Object.entries(r.registrants)
      .map(([key, generation]) => ({ key, generation }))
      .sort((a, b) => a.generation - b.generation),
    reservation: r.reservation,
  };
}

export async function describeReservations(volumeId: string): Promise<ReservationView> {
  const v = requireActive(await pageMap().getVolume(volumeId), volumeId);
  return reservationView(volumeId, v.reservations);
}

const RESERVATION_ATTEMPT_MAX = 8;

/**
 * Runs one reservation command (docs/reservations.md): read the state, apply the rule, store
 * the result on condition that the generation did not move; re-read and retry when it did.
 */
export async function applyReservationBody(volumeId: string, body: Record<string, unknown>): Promise<ReservationView> {
  const cmd = parseReservationBody(body);
  for (let attempt = 0; attempt < RESERVATION_ATTEMPT_MAX; attempt++) {
    if (attempt > 0) await sleep(Math.random() * 20 * 2 ** attempt);
    const v = requireActive(await pageMap().getVolume(volumeId), volumeId);
    const next = apply(volumeId, v.reservations, cmd);
    if (next === v.reservations) return reservationView(volumeId, next);
    if (await pageMap().storeReservations(volumeId, v.reservations.generation, next)) return reservationView(volumeId, next);
  }
  throw new UnavailableError(`reservations of volume ${volumeId} kept changing under ${RESERVATION_ATTEMPT_MAX} attempts; retry`);
}
