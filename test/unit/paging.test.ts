import { describe, expect, it } from 'vitest';
import { InvalidInputError } from '#shared/core/errors.ts';
import { decimalParam, pageLimit, pageStart } from '#shared/core/paging.ts';
import { isVolumeId } from '#shared/control/volumes.ts';
import { isSnapshotOf } from '#shared/data/views.ts';
import { isGroupSnapshotOf } from '#shared/control/group-snapshots.ts';

/** How every paged list reads `limit` and `next` (shared/core/paging.ts), without a network. */
describe('the paging of every list', () => {
  it('read limit and changed-blocks offsets as plain decimal integers only', () => {
    expect(decimalParam('0')).toBe(0);
    expect(decimalParam('1000')).toBe(1000);
    expect(decimalParam('007')).toBe(7);
    // Number() takes all of these; a query parameter written so is not a plain integer.
    for (const bad of ['', '1e3', '0x10', '0b1', '0o7', '+5', '-1', ' 5', '5 ', '10.0', '1.5', '1_000', 'Infinity', 'ten', '9'.repeat(20)]) {
      expect(decimalParam(bad), JSON.stringify(bad)).toBeUndefined();
    }
  });

  it('refuse a limit out of range or not in plain decimal with one message, and take a list of its own bounds', () => {
    expect(pageLimit(undefined)).toBe(100);
    expect(pageLimit('1')).toBe(1);
    expect(pageLimit('1000')).toBe(1000);
    for (const bad of ['0', '1001', '1e3', '0x10', '+5', ' 5', '10.0', '']) {
      expect(() => pageLimit(bad), bad).toThrow(InvalidInputError);
      expect(() => pageLimit(bad), bad).toThrow(`limit must be an integer from 1 to 1000, got ${bad}`);
    }
    // changed-blocks: 1 to 10000, default 1000.
    const bounds = { max: 10_000, fallback: 1000 };
    expect(pageLimit(undefined, bounds)).toBe(1000);
    expect(pageLimit('10000', bounds)).toBe(10_000);
    expect(() => pageLimit('10001', bounds)).toThrow('limit must be an integer from 1 to 10000, got 10001');
    expect(() => pageLimit('1e4', bounds)).toThrow('limit must be an integer from 1 to 10000, got 1e4');
  });

  it("take as next only ids of the list's own kind and owner", () => {
    const vol = 'vol-0123456789abcdef';
    const other = 'vol-fedcba9876543210';
    expect(pageStart(vol, 'volumes', isVolumeId)).toBe(vol);
    for (const bad of ['vol-0123', 'VOL-0123456789ABCDEF', `${vol}x`, 'snap-0123456789abcdef-000000000001-a1b2c3', 'garbage']) {
      expect(() => pageStart(bad, 'volumes', isVolumeId)).toThrow(`next must be a token from an earlier answer listing volumes, got ${JSON.stringify(bad)}`);
    }
    const snap = 'snap-0123456789abcdef-000000000042-a1b2c3';
    expect(isSnapshotOf(snap, vol)).toBe(true);
    expect(isSnapshotOf(snap, other)).toBe(false);
    expect(isSnapshotOf(`${snap}x`, vol)).toBe(false);
    expect(isSnapshotOf(vol, vol)).toBe(false);
    const gsnap = 'gsnap-0123456789abcdef-a1b2c3d4';
    expect(isGroupSnapshotOf(gsnap, 'cg-0123456789abcdef')).toBe(true);
    expect(isGroupSnapshotOf(gsnap, 'cg-fedcba9876543210')).toBe(false);
    expect(isGroupSnapshotOf('gsnap-0123456789abcdef-a1b2c3', 'cg-0123456789abcdef')).toBe(false);
    expect(isGroupSnapshotOf(snap, 'cg-0123456789abcdef')).toBe(false);
  });
});
