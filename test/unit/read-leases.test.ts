/**
 * Multi-attach read leases (docs/nbd-gateway.md): the API's pure rules, the commit's condition
 * part, and the reader gateway's lease state machine against a scripted API.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ConflictError, InvalidInputError } from '#shared/core/errors.ts';
import { EMPTY_RESERVATIONS } from '#shared/control/reservations.ts';
import { EXPIRED_LEASE_KEEP_MS, READ_LEASES_MAX, applyLeaseCommand, intentAllows, parseReadLeaseBody, pendingLeases } from '#shared/control/read-leases.ts';
import { intentCondition } from '#shared/aws/pagemap/transactions.ts';
import type { VolumeRecord } from '#shared/core/records.ts';
import { ReadLease } from '#gateway/read-lease.ts';
import type { ReadLeaseAnswer } from '#gateway/volume-client.ts';

const NOW = 1_000_000;

function volume(extra: Partial<VolumeRecord> = {}): VolumeRecord {
  return {
    volumeId: 'vol-1',
    sizeBytes: 1 << 20,
    blockSizeBytes: 4096,
    dataChunks: 4,
    parityChunks: 2,
    pageBlocks: 256,
    state: 'active',
    headSeq: 7,
    headSegmentId: 'seg-7',
    reservations: { ...EMPTY_RESERVATIONS, registrants: { r1: 1, r2: 2, w: 3 } },
    createdAt: '',
    updatedAt: '',
    ...extra,
  };
}

describe('read-lease rules', () => {
  it('refuses bad bodies with 400', () => {
    expect(() => parseReadLeaseBody({ action: 'renew' })).toThrow(InvalidInputError);
    expect(() => parseReadLeaseBody({ action: 'grab', key: 'r1' })).toThrow(InvalidInputError);
    expect(() => parseReadLeaseBody({ action: 'renew', key: 'r1', leaseMs: 10 })).toThrow(/leaseMs/);
    expect(() => parseReadLeaseBody({ action: 'renew', key: 'r1', ackEpoch: -1 })).toThrow(/ackEpoch/);
    expect(() => parseReadLeaseBody({ action: 'renew', key: 'r1', extra: 1 })).toThrow(/unknown field/);
    expect(() => parseReadLeaseBody({ action: 'release', key: 'r1', leaseMs: 6000 })).toThrow(/unknown field/);
    expect(parseReadLeaseBody({ action: 'renew', key: 'r1' })).toEqual({ action: 'renew', key: 'r1', leaseMs: 6000, ackEpoch: null });
  });

  it('the first lease creates the intent open and acknowledged; a reader must be registered', () => {
    const u = applyLeaseCommand(volume(), { action: 'renew', key: 'r1', leaseMs: 6000, ackEpoch: null }, NOW);
    expect(u.intent).toEqual({ epoch: 1, open: true });
    expect(u.leases).toEqual({ r1: { expiresAtMs: NOW + 6000, ackedEpoch: 1 } });
    expect(() => applyLeaseCommand(volume(), { action: 'renew', key: 'stranger', leaseMs: 6000, ackEpoch: null }, NOW)).toThrow(ConflictError);
  });

  it('acknowledges no further than the intent, closes only at the head the reader saw, and prunes old leases', () => {
    const v = volume({
      writeIntent: { epoch: 4, open: true },
      readLeases: { r2: { expiresAtMs: NOW - EXPIRED_LEASE_KEEP_MS - 1, ackedEpoch: 1 }, w: { expiresAtMs: NOW - 5, ackedEpoch: 2 } },
    });
    const ahead = applyLeaseCommand(v, { action: 'renew', key: 'r1', leaseMs: 6000, ackEpoch: 9 }, NOW);
    expect(ahead.leases.r1!.ackedEpoch).toBe(4);
    expect(Object.keys(ahead.leases).sort()).toEqual(['r1', 'w']);
    expect(applyLeaseCommand(v, { action: 'renew', key: 'r1', leaseMs: 6000, ackEpoch: 3, closeAtSeq: 6 }, NOW)).toMatchObject({ closes: false, intent: { epoch: 4, open: true } });
    expect(applyLeaseCommand(v, { action: 'renew', key: 'r1', leaseMs: 6000, ackEpoch: 3, closeAtSeq: 7 }, NOW)).toMatchObject({ closes: true, intent: { epoch: 4, open: false } });
    expect(applyLeaseCommand(v, { action: 'release', key: 'w' }, NOW).leases).toEqual({});
  });

  it(`refuses a lease past ${READ_LEASES_MAX}`, () => {
    const registrants = Object.fromEntries(Array.from({ length: READ_LEASES_MAX + 1 }, (_, i) => [`r${i}`, i + 1]));
    const readLeases = Object.fromEntries(Array.from({ length: READ_LEASES_MAX }, (_, i) => [`r${i}`, { expiresAtMs: NOW + 1000, ackedEpoch: 1 }]));
    const v = volume({ reservations: { ...EMPTY_RESERVATIONS, registrants }, writeIntent: { epoch: 1, open: false }, readLeases });
    expect(() => applyLeaseCommand(v, { action: 'renew', key: `r${READ_LEASES_MAX}`, leaseMs: 6000, ackEpoch: null }, NOW)).toThrow(ConflictError);
  });

  it('a commit waits for live leases behind the epoch, not for expired ones', () => {
    const read = volume({
      writeIntent: { epoch: 3, open: true },
      readLeases: { r1: { expiresAtMs: NOW + 100, ackedEpoch: 2 }, r2: { expiresAtMs: NOW - 1, ackedEpoch: 1 }, w: { expiresAtMs: NOW + 100, ackedEpoch: 3 } },
    });
    expect(pendingLeases(read, NOW)).toEqual(['r1']);
    expect(intentAllows(read, read, NOW)).toBe(false);
    expect(intentAllows(read, read, NOW + 101)).toBe(true);
    const acked = volume({ ...read, readLeases: { ...read.readLeases, r1: { expiresAtMs: NOW + 100, ackedEpoch: 3 } } });
    expect(intentAllows(read, acked, NOW)).toBe(true);
    // Closed, or opened again since the read: refused.
    expect(intentAllows(read, { ...acked, writeIntent: { epoch: 3, open: false } }, NOW)).toBe(false);
    expect(intentAllows(read, { ...acked, writeIntent: { epoch: 4, open: true } }, NOW)).toBe(false);
    // No reader ever: no intent, and none may have appeared.
    expect(intentAllows(volume(), volume(), NOW)).toBe(true);
    expect(intentAllows(volume(), acked, NOW)).toBe(false);
  });

  it('the commit condition names the intent and every lease read', () => {
    expect(intentCondition(volume()).parts).toEqual(['attribute_not_exists(writeIntent)']);
    const c = intentCondition(volume({ writeIntent: { epoch: 3, open: true }, readLeases: { 'gw:a': { expiresAtMs: 1, ackedEpoch: 1 }, b: { expiresAtMs: 1, ackedEpoch: 3 } } }));
    expect(c.parts).toHaveLength(3);
    expect(c.names).toMatchObject({ '#lease0': 'gw:a', '#lease1': 'b', '#intentEpoch': 'epoch', '#intentOpen': 'open' });
    expect(c.values[':intentEpoch']).toEqual({ N: '3' });
  });
});

describe('the reader gateway lease', () => {
  afterEach(() => vi.restoreAllMocks());

  /** A scripted API: answers from `answers` in turn, recording what each renewal sent. */
  function scripted(answers: Array<Partial<ReadLeaseAnswer> & Pick<ReadLeaseAnswer, 'intent' | 'headSeq'>>) {
    const sent: Array<{ ackEpoch: number | null; closeAtSeq?: number }> = [];
    const api = {
      async renewReadLease(body: { ackEpoch: number | null; closeAtSeq?: number }): Promise<ReadLeaseAnswer> {
        sent.push({ ackEpoch: body.ackEpoch, ...(body.closeAtSeq !== undefined ? { closeAtSeq: body.closeAtSeq } : {}) });
        const a = answers.shift();
        if (!a) throw new Error('no more answers');
        return { leaseMs: 6000, ackedEpoch: a.intent.epoch, ...a };
      },
      async releaseReadLease(): Promise<void> {},
    };
    return { api, sent };
  }

  it('caches only under a closed intent, drops on an opening, and acknowledges after dropping', async () => {
    let clock = 0;
    vi.spyOn(performance, 'now').mockImplementation(() => clock);
    let drops = 0;
    const { api, sent } = scripted([
      { intent: { epoch: 1, open: false }, headSeq: 5 },
      // The writer opened epoch 2: the head still holds acknowledgement 1.
      { intent: { epoch: 2, open: true }, headSeq: 5, ackedEpoch: 1 },
      { intent: { epoch: 2, open: true }, headSeq: 6 },
    ]);
    const lease = new ReadLease(api, { invalidate: () => drops++ }, { key: 'r1', leaseMs: 6000 });
    await lease.start();
    expect(lease.cacheUsable()).toBe(true);
    // Valid until T - ε after the send: 6000 - 500.
    clock = 5499;
    expect(lease.cacheUsable()).toBe(true);
    clock = 5500;
    expect(lease.cacheUsable(), 'lapsed').toBe(false);
    // A renewal after the lapse that shows an opening: the cache is dropped, then acknowledged at once with null.
    const renew = (lease as unknown as { renew(): Promise<boolean> }).renew.bind(lease);
    expect(await renew()).toBe(true);
    expect(lease.cacheUsable()).toBe(false);
    expect(await renew()).toBe(false);
    expect(sent.map((s) => s.ackEpoch)).toEqual([null, 1, null]);
    expect(drops).toBeGreaterThanOrEqual(2);
    expect(lease.cacheUsable()).toBe(false);
  });

  it('keeps its lines across a lapse only when the intent and the head did not change', async () => {
    let clock = 0;
    vi.spyOn(performance, 'now').mockImplementation(() => clock);
    let drops = 0;
    const { api } = scripted([
      { intent: { epoch: 1, open: false }, headSeq: 5 },
      { intent: { epoch: 1, open: false }, headSeq: 5 },
      { intent: { epoch: 2, open: false }, headSeq: 6 },
    ]);
    const lease = new ReadLease(api, { invalidate: () => drops++ }, { key: 'r1', leaseMs: 6000 });
    await lease.start();
    const afterStart = drops;
    const renew = (lease as unknown as { renew(): Promise<boolean> }).renew.bind(lease);
    clock = 60_000;
    expect(lease.cacheUsable()).toBe(false);
    await renew();
    expect(drops, 'nothing changed: the lines stay').toBe(afterStart);
    expect(lease.cacheUsable()).toBe(true);
    clock = 120_000;
    await renew();
    expect(drops, 'a commit happened meanwhile (epoch 2, head 6): everything dropped').toBeGreaterThan(afterStart);
    expect(lease.cacheUsable()).toBe(true);
  });

  it('asks to close an open intent once it saw no commit for the quiet time', async () => {
    let clock = 0;
    vi.spyOn(performance, 'now').mockImplementation(() => clock);
    const { api, sent } = scripted([
      { intent: { epoch: 1, open: true }, headSeq: 5 },
      { intent: { epoch: 1, open: true }, headSeq: 5 },
      { intent: { epoch: 1, open: false }, headSeq: 5 },
    ]);
    const lease = new ReadLease(api, { invalidate: () => undefined }, { key: 'r1', leaseMs: 6000, quietMs: 2000 });
    await lease.start();
    const renew = (lease as unknown as { renew(): Promise<boolean> }).renew.bind(lease);
    clock = 1000;
    await renew();
    clock = 2000;
    await renew();
    expect(sent).toEqual([{ ackEpoch: null }, { ackEpoch: null }, { ackEpoch: null, closeAtSeq: 5 }]);
    expect(lease.cacheUsable()).toBe(true);
    await lease.stop();
  });
});
