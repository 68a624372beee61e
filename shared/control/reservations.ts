/**
 * SCSI-3 style persistent reservations: the rules, as pure functions. The conditional writes
 * that store them and fence commits live in shared/aws/pagemap/; the protocol is docs/reservations.md.
 */
import { ConflictError, InvalidInputError } from '../core/errors.ts';

export const RESERVATION_TYPES = [
  'write-exclusive',
  'exclusive-access',
  'write-exclusive-registrants-only',
  'exclusive-access-registrants-only',
  'write-exclusive-all-registrants',
  'exclusive-access-all-registrants',
] as const;
export type ReservationType = (typeof RESERVATION_TYPES)[number];

export const RESERVATION_ACTIONS = ['register', 'unregister', 'reserve', 'release', 'clear', 'preempt', 'preempt-and-abort'] as const;
export type ReservationAction = (typeof RESERVATION_ACTIONS)[number];

/**
 * Who may write and who may read under each reservation type (docs/reservations.md, the table
 * under "State"). The single source of the fencing rule: `writeAllowed` and `readRefusal`
 * apply it in memory, and the commit's DynamoDB condition (fencingCondition in
 * shared/aws/pagemap/transactions.ts) states it for the item, from HOLDER_TYPES and
 * REGISTRANT_TYPES below. With no reservation, anyone may write and read.
 */
export const ACCESS: Readonly<Record<ReservationType, { write: 'holder' | 'registrants'; read: 'anyone' | 'holder' | 'registrants' }>> = {
  'write-exclusive': { write: 'holder', read: 'anyone' },
  'exclusive-access': { write: 'holder', read: 'holder' },
  'write-exclusive-registrants-only': { write: 'registrants', read: 'anyone' },
  'exclusive-access-registrants-only': { write: 'registrants', read: 'registrants' },
  'write-exclusive-all-registrants': { write: 'registrants', read: 'anyone' },
  'exclusive-access-all-registrants': { write: 'registrants', read: 'registrants' },
};

/** Types with a single holder, who alone may write; under the others every registrant may. */
export const HOLDER_TYPES: readonly ReservationType[] = RESERVATION_TYPES.filter((t) => ACCESS[t].write === 'holder');
export const REGISTRANT_TYPES: readonly ReservationType[] = RESERVATION_TYPES.filter((t) => ACCESS[t].write === 'registrants');
const ALL_REGISTRANTS_TYPES: readonly ReservationType[] = ['write-exclusive-all-registrants', 'exclusive-access-all-registrants'];

export interface ReservationState {
  generation: number;
  /** key -> registration generation (the generation at which it registered). */
  registrants: Record<string, number>;
  reservation: { holder: string; type: ReservationType } | null;
}

export const EMPTY_RESERVATIONS: ReservationState = { generation: 0, registrants: {}, reservation: null };

export interface ReservationCommand {
  action: ReservationAction;
  key: string;
  type?: ReservationType;
  victimKey?: string;
}

const KEY_PATTERN = /^[A-Za-z0-9._:-]{1,64}$/;

export function checkKey(key: unknown, field = 'key'): string {
  if (typeof key !== 'string' || !KEY_PATTERN.test(key)) {
    throw new InvalidInputError(`${field} must be 1 to 64 characters from A-Z a-z 0-9 . _ : -, got ${JSON.stringify(key)}`);
  }
  return key;
}

/** Parses and validates a command body. */
export function parseReservationBody(body: Record<string, unknown>): ReservationCommand {
  const allowed = new Set(['action', 'key', 'type', 'victimKey']);
  for (const k of Object.keys(body))
    if (!allowed.has(k)) throw new InvalidInputError(`unknown field ${JSON.stringify(k)}; allowed: ${[...allowed].join(', ')}`);
  const action = body.action;
  if (typeof action !== 'string' || !(RESERVATION_ACTIONS as readonly string[]).includes(action)) {
    throw new InvalidInputError(`action must be one of ${RESERVATION_ACTIONS.join(', ')}, got ${JSON.stringify(action)}`);
  }
  const cmd: ReservationCommand = { action: action as ReservationAction, key: checkKey(body.key) };
  if (body.type !== undefined) {
    if (typeof body.type !== 'string' || !(RESERVATION_TYPES as readonly string[]).includes(body.type)) {
      throw new InvalidInputError(`type must be one of ${RESERVATION_TYPES.join(', ')}, got ${JSON.stringify(body.type)}`);
    }
    cmd.type = body.type as ReservationType;
  }
  if (cmd.action === 'reserve' && !cmd.type) throw new InvalidInputError('reserve needs a type');
  if (cmd.action === 'preempt' || cmd.action === 'preempt-and-abort') cmd.victimKey = checkKey(body.victimKey, 'victimKey');
  else if (body.victimKey !== undefined) throw new InvalidInputError(`victimKey is only for preempt, not ${cmd.action}`);
  return cmd;
}

function describe(volumeId: string, s: ReservationState): string {
  return s.reservation ? `volume ${volumeId} is reserved ${s.reservation.type} by key ${s.reservation.holder}` : `volume ${volumeId} has no reservation`;
}

function requireRegistered(volumeId: string, s: ReservationState, key: string, what: string): void {
  if (s.registrants[key] === undefined) throw new ConflictError(`key ${key} is not registered on volume ${volumeId}; register it before ${what}`);
}

/** Whether `key` holds the reservation (every registrant does, for all-registrants types). */
export function holds(s: ReservationState, key: string): boolean {
  if (!s.reservation) return false;
  if (ALL_REGISTRANTS_TYPES.includes(s.reservation.type)) return s.registrants[key] !== undefined;
  return s.reservation.holder === key;
}

/**
 * Applies a command. Returns the new state (generation + 1) or the same object when the
 * command changes nothing; throws ConflictError, saying who holds what, when it is not allowed.
 *
 * @example
 * let s = apply('vol-1', EMPTY_RESERVATIONS, { action: 'register', key: 'a' });
 * s = apply('vol-1', s, { action: 'reserve', key: 'a', type: 'write-exclusive' });
 */
export function apply(volumeId: string, s: ReservationState, cmd: ReservationCommand): ReservationState {
  const next = (registrants: Record<string, number>, reservation: ReservationState['reservation']): ReservationState => ({
    generation: s.generation + 1,
    registrants,
    reservation,
  });
  const { key } = cmd;
  switch (cmd.action) {
    case 'register':
      if (s.registrants[key] !== undefined) return s;
      return next({ ...s.registrants, [key]: s.generation + 1 }, s.reservation);
    case 'unregister': {
      requireRegistered(volumeId, s, key, 'unregistering');
      const registrants = { ...s.registrants };
      delete registrants[key];
      let reservation = s.reservation;
      if (reservation) {
        const allRegistrants = ALL_REGISTRANTS_TYPES.includes(reservation.type);
        if (allRegistrants ? Object.keys(registrants).length === 0 : reservation.holder === key) reservation = null;
        else if (allRegistrants && reservation.holder === key) reservation = { ...reservation, holder: Object.keys(registrants).sort()[0]! };
      }
      return next(registrants, reservation);
    }
    case 'reserve': {
      requireRegistered(volumeId, s, key, 'reserving');
      const type = cmd.type!;
      if (s.reservation) {
        if (holds(s, key) && s.reservation.type === type) return s;
        throw new ConflictError(`${describe(volumeId, s)}; key ${key} cannot reserve it ${type}`);
      }
      return next(s.registrants, { holder: key, type });
    }
    case 'release': {
      requireRegistered(volumeId, s, key, 'releasing');
      if (!s.reservation) return s;
      if (!holds(s, key)) throw new ConflictError(`${describe(volumeId, s)}; key ${key} does not hold it and cannot release it`);
      if (cmd.type && cmd.type !== s.reservation.type) throw new ConflictError(`${describe(volumeId, s)}; release named type ${cmd.type}`);
      return next(s.registrants, null);
    }
    case 'clear':
      requireRegistered(volumeId, s, key, 'clearing');
      return next({}, null);
    case 'preempt':
    case 'preempt-and-abort': {
      requireRegistered(volumeId, s, key, 'preempting');
      const victim = cmd.victimKey!;
      if (s.registrants[victim] === undefined) throw new ConflictError(`key ${victim} is not registered on volume ${volumeId}; nothing to preempt`);
      const registrants = { ...s.registrants };
      delete registrants[victim];
      let reservation = s.reservation;
      if (reservation && (reservation.holder === victim || ALL_REGISTRANTS_TYPES.includes(reservation.type))) {
        reservation = { holder: key, type: cmd.type ?? reservation.type };
      }
      return next(registrants, reservation);
    }
  }
}

/**
 * The fencing rule: whether a writer presenting `key` (or none) may commit under `s`. A key
 * must be registered, and, when `keyGeneration` is given, by that very registration (a commit
 * is fenced on the registration it started with). Then: no reservation, anyone; otherwise only
 * a key, and it must be the holder under a holder type (ACCESS). The commit's DynamoDB
 * condition states exactly this (fencingCondition), and the refusal analysis of a commit uses it.
 */
export function writeAllowed(s: ReservationState, key: string | undefined, keyGeneration?: number): boolean {
  if (key !== undefined) {
    const registered = s.registrants[key];
    if (registered === undefined || (keyGeneration !== undefined && registered !== keyGeneration)) return false;
  }
  if (!s.reservation) return true;
  if (key === undefined) return false;
  return ACCESS[s.reservation.type].write === 'registrants' || s.reservation.holder === key;
}

/** Whether a request presenting `key` (or none) may write now (`writeAllowed`); null if so, else why not. */
export function writeRefusal(volumeId: string, s: ReservationState, key: string | undefined): string | null {
  if (writeAllowed(s, key)) return null;
  if (key !== undefined && s.registrants[key] === undefined) {
    return `key ${key} is not registered on volume ${volumeId} (it was never registered, or it was preempted or cleared)`;
  }
  if (key === undefined) return `${describe(volumeId, s)}; writes must present a reservation key in x-sledge-reservation-key`;
  return `${describe(volumeId, s)}; key ${key} may not write`;
}

/** Whether a request presenting `key` (or none) may read; null if so, else why not. */
export function readRefusal(volumeId: string, s: ReservationState, key: string | undefined): string | null {
  if (key !== undefined && s.registrants[key] === undefined) return `key ${key} is not registered on volume ${volumeId}`;
  if (!s.reservation || ACCESS[s.reservation.type].read === 'anyone') return null;
  if (key === undefined) return `${describe(volumeId, s)}; reads must present a reservation key`;
  if (ACCESS[s.reservation.type].read === 'holder' && s.reservation.holder !== key) return `${describe(volumeId, s)}; key ${key} may not read`;
  return null;
}
