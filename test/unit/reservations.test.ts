import { describe, expect, it } from 'vitest';
import { ConflictError } from '#shared/core/errors.ts';
import {
  ACCESS,
  EMPTY_RESERVATIONS,
  HOLDER_TYPES,
  REGISTRANT_TYPES,
  RESERVATION_TYPES,
  apply,
  parseReservationBody,
  readRefusal,
  writeAllowed,
  writeRefusal,
  type ReservationState,
} from '#shared/control/reservations.ts';
import { fencingCondition } from '#shared/aws/pagemap/transactions.ts';

const V = 'vol-1';
const run = (...cmds: Array<Parameters<typeof apply>[2]>): ReservationState => cmds.reduce((s, c) => apply(V, s, c), EMPTY_RESERVATIONS);

describe('reservation rules', () => {
  it('raises the generation on every change and not on no-ops', () => {
    const s1 = run({ action: 'register', key: 'a' });
    expect(s1.generation).toBe(1);
    expect(apply(V, s1, { action: 'register', key: 'a' })).toBe(s1);
    const s2 = apply(V, s1, { action: 'reserve', key: 'a', type: 'write-exclusive' });
    expect(s2.generation).toBe(2);
    expect(apply(V, s2, { action: 'reserve', key: 'a', type: 'write-exclusive' })).toBe(s2);
  });

  it('gives each registration its own generation, so re-registering is a new identity', () => {
    const s = run({ action: 'register', key: 'a' }, { action: 'register', key: 'b' }, { action: 'preempt', key: 'b', victimKey: 'a' }, { action: 'register', key: 'a' });
    expect(s.registrants).toEqual({ b: 2, a: 4 });
  });

  it('refuses with messages that say who holds what', () => {
    const s = run({ action: 'register', key: 'a' }, { action: 'register', key: 'b' }, { action: 'reserve', key: 'a', type: 'write-exclusive' });
    expect(() => apply(V, s, { action: 'reserve', key: 'b', type: 'exclusive-access' })).toThrow(/reserved write-exclusive by key a; key b cannot reserve/);
    expect(() => apply(V, s, { action: 'release', key: 'b' })).toThrow(/does not hold it/);
    expect(() => apply(V, s, { action: 'release', key: 'a', type: 'exclusive-access' })).toThrow(ConflictError);
    expect(() => apply(V, s, { action: 'reserve', key: 'c', type: 'write-exclusive' })).toThrow(/key c is not registered/);
    expect(() => apply(V, s, { action: 'unregister', key: 'c' })).toThrow(/not registered/);
    expect(() => apply(V, s, { action: 'preempt', key: 'b', victimKey: 'c' })).toThrow(/nothing to preempt/);
    expect(() => apply(V, s, { action: 'clear', key: 'c' })).toThrow(/not registered/);
  });

  it('moves the reservation to the preemptor when the victim held it', () => {
    const s = run(
      { action: 'register', key: 'a' },
      { action: 'register', key: 'b' },
      { action: 'reserve', key: 'a', type: 'exclusive-access' },
      { action: 'preempt-and-abort', key: 'b', victimKey: 'a' },
    );
    expect(s.reservation).toEqual({ holder: 'b', type: 'exclusive-access' });
    expect(s.registrants.a).toBeUndefined();
  });

  it('keeps an all-registrants reservation until the last registrant leaves', () => {
    let s = run({ action: 'register', key: 'a' }, { action: 'register', key: 'b' }, { action: 'reserve', key: 'a', type: 'write-exclusive-all-registrants' });
    s = apply(V, s, { action: 'unregister', key: 'a' });
    expect(s.reservation?.type).toBe('write-exclusive-all-registrants');
    s = apply(V, s, { action: 'unregister', key: 'b' });
    expect(s.reservation).toBeNull();
  });

  it('releases a holder reservation when its holder unregisters, and clear removes everything', () => {
    let s = run({ action: 'register', key: 'a' }, { action: 'register', key: 'b' }, { action: 'reserve', key: 'a', type: 'write-exclusive' });
    expect(apply(V, s, { action: 'unregister', key: 'a' }).reservation).toBeNull();
    s = apply(V, s, { action: 'clear', key: 'b' });
    expect(s).toMatchObject({ registrants: {}, reservation: null, generation: 4 });
  });

  it('allows reads and writes exactly as SPC-3 types say', () => {
    const base = run({ action: 'register', key: 'h' }, { action: 'register', key: 'r' });
    const cases: Array<[string, string | undefined, boolean, boolean]> = [
      // type, requester, may write, may read
      ['write-exclusive', 'h', true, true],
      ['write-exclusive', 'r', false, true],
      ['write-exclusive', undefined, false, true],
      ['exclusive-access', 'r', false, false],
      ['exclusive-access', undefined, false, false],
      ['write-exclusive-registrants-only', 'r', true, true],
      ['write-exclusive-registrants-only', undefined, false, true],
      ['exclusive-access-registrants-only', 'r', true, true],
      ['exclusive-access-registrants-only', undefined, false, false],
      ['write-exclusive-all-registrants', 'r', true, true],
      ['exclusive-access-all-registrants', undefined, false, false],
    ];
    for (const [type, key, write, read] of cases) {
      const s = apply(V, base, { action: 'reserve', key: 'h', type: type as 'write-exclusive' });
      expect(writeRefusal(V, s, key) === null, `${type} write by ${key}`).toBe(write);
      expect(readRefusal(V, s, key) === null, `${type} read by ${key}`).toBe(read);
    }
    // No reservation: anyone, but a presented key must be registered.
    expect(writeRefusal(V, base, undefined)).toBeNull();
    expect(writeRefusal(V, base, 'stranger')).toMatch(/not registered/);
  });

  it('validates commands', () => {
    expect(() => parseReservationBody({ action: 'steal', key: 'a' })).toThrow(/action must be one of/);
    expect(() => parseReservationBody({ action: 'register', key: 'a b' })).toThrow(/key must be/);
    expect(() => parseReservationBody({ action: 'reserve', key: 'a' })).toThrow(/reserve needs a type/);
    expect(() => parseReservationBody({ action: 'reserve', key: 'a', type: 'mine' })).toThrow(/type must be one of/);
    expect(() => parseReservationBody({ action: 'preempt', key: 'a' })).toThrow(/victimKey must be/);
    expect(() => parseReservationBody({ action: 'register', key: 'a', victimKey: 'b' })).toThrow(/only for preempt/);
    expect(() => parseReservationBody({ action: 'register', key: 'a', colour: 1 })).toThrow(/unknown field/);
  });
});

describe('the fencing rule has one source (ACCESS)', () => {
  const keys = [undefined, 'a', 'b', 'c'];
  const states: ReservationState[] = [EMPTY_RESERVATIONS];
  for (const type of RESERVATION_TYPES) {
    states.push({ generation: 3, registrants: { a: 1, b: 2 }, reservation: { holder: 'a', type } });
  }
  states.push({ generation: 2, registrants: { a: 1, b: 2 }, reservation: null });

  it('writeRefusal refuses exactly what writeAllowed does not allow', () => {
    for (const s of states) for (const key of keys) expect(writeRefusal('vol-1', s, key) === null, `${s.reservation?.type} ${key}`).toBe(writeAllowed(s, key));
  });

  it('a commit is fenced on the registration it started with', () => {
    const s: ReservationState = { generation: 4, registrants: { a: 4 }, reservation: null };
    expect(writeAllowed(s, 'a', 4)).toBe(true);
    expect(writeAllowed(s, 'a', 1)).toBe(false); // re-registered since: an old in-flight commit is refused
    expect(writeAllowed(s, 'b', 4)).toBe(false);
  });

  it('the commit condition names the same holder and registrant types as the table', () => {
    expect([...HOLDER_TYPES, ...REGISTRANT_TYPES].sort()).toEqual([...RESERVATION_TYPES].sort());
    for (const t of RESERVATION_TYPES) expect(HOLDER_TYPES.includes(t)).toBe(ACCESS[t].write === 'holder');
    const c = fencingCondition({ key: 'a', keyGeneration: 1 });
    const typesNamed = (prefix: string) => Object.entries(c.values).filter(([k]) => k.startsWith(prefix)).map(([, v]) => v.S);
    expect(typesNamed(':holderType')).toEqual([...HOLDER_TYPES]);
    expect(typesNamed(':registrantType')).toEqual([...REGISTRANT_TYPES]);
    expect(fencingCondition({}).parts).toEqual(['attribute_not_exists(resType)']);
  });

  it('reads follow the same table', () => {
    for (const s of states) {
      for (const key of ['a', 'b']) {
        const read = s.reservation ? ACCESS[s.reservation.type].read : 'anyone';
        const registered = s.registrants[key] !== undefined;
        const expected = registered && (read === 'anyone' || read === 'registrants' || s.reservation?.holder === key);
        expect(readRefusal('vol-1', s, key) === null, `${s.reservation?.type} ${key}`).toBe(expected);
      }
    }
  });
});
